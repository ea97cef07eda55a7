"""onnxruntime sessions, owned by us: provider choice is a pure function, session options are explicit.

Provider preference: DirectML, CUDA, CoreML, then CPU, intersected with what the installed onnxruntime
offers; ``--providers`` replaces the preference. On the CPU each session runs one intra-op thread that
does not spin, and the embed stage runs several sessions' calls in parallel: two spinning thread pools
plus the decoder oversubscribe a small machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..base.errors import ModelPackError, ProviderError

T = TypeVar("T")

log = logging.getLogger(__name__)

PREFERENCE: tuple[str, ...] = (
    "DmlExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)
SHORT_NAMES = {
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU = "CPUExecutionProvider"


def expand_provider(name: str) -> str:
    return SHORT_NAMES.get(name.strip().lower(), name.strip())


def choose_providers(available: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """The providers to use, best first, always ending with CPU when CPU is available.

    ``requested`` (names or short names such as ``dml``, ``cuda``, ``cpu``) replaces the preference;
    any requested provider that is not available is an error naming what is.
    """
    available_set = set(available)
    if requested:
        wanted = [expand_provider(name) for name in requested]
        missing = [name for name in wanted if name not in available_set]
        if missing:
            raise ProviderError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime; "
                f"available: {', '.join(available) or 'none'}. "
                "Install onnxruntime-directml (Windows) or onnxruntime-gpu (CUDA), or drop --providers."
            )
        chosen = list(dict.fromkeys(wanted))
    else:
        chosen = [name for name in PREFERENCE if name in available_set]
    if CPU in available_set and CPU not in chosen:
        chosen.append(CPU)
    if not chosen:
        raise ProviderError(f"onnxruntime offers no usable execution provider (it lists: {', '.join(available)})")
    return chosen


def is_cpu_only(providers: Sequence[str]) -> bool:
    return list(providers) == [CPU]


@dataclass(frozen=True)
class RuntimeOptions:
    providers: tuple[str, ...]
    intra_op_threads: int = 1


def runtime_options(requested: Sequence[str] = (), threads: int = 1) -> RuntimeOptions:
    """Session options: the ``requested`` providers among those this onnxruntime has (best first; none given:
    the best available), ``threads`` intra-op threads each."""
    return RuntimeOptions(tuple(choose_providers(available_providers(), requested)), threads)


class Lazy(Generic[T]):
    """A model made on first use, once: threads that need it meanwhile wait for the one that makes it."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._value: T | None = None

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    @property
    def made(self) -> T | None:
        """The model if it was made, else None (nothing is made)."""
        return self._value


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def create_session(model: Path, options: RuntimeOptions) -> Any:
    """An ``onnxruntime.InferenceSession`` for one model file, with our options.

    On an accelerator the session is wrapped in :class:`SerialSession` so that parallel callers take turns.
    """
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if "DmlExecutionProvider" in options.providers:
        so.enable_mem_pattern = False  # required by the DirectML provider
    try:
        session = onnxruntime.InferenceSession(str(model), so, providers=list(options.providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ModelPackError(f"cannot load model {model}: {exc}") from exc
    log.info("loaded %s on %s", model.name, ", ".join(session.get_providers()))
    return session if is_cpu_only(options.providers) else SerialSession(session)


class SerialSession:
    """A session whose ``run`` calls take turns: accelerator providers (DirectML) do not allow concurrent runs."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._lock = threading.Lock()

    def run(self, output_names: Any, feeds: Any) -> Any:
        with self._lock:
            return self._session.run(output_names, feeds)

    def get_inputs(self) -> Any:
        return self._session.get_inputs()

    def get_outputs(self) -> Any:
        return self._session.get_outputs()

    def get_providers(self) -> Any:
        return self._session.get_providers()
