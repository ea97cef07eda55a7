from pathlib import Path

import numpy as np
import pytest

from facesets.base.errors import ModelPackError, ProviderError
from facesets.models.packs import DEFAULT_PACK, MODEL_ROOT_ENV, resolve_pack
from facesets.models.runtime import RuntimeOptions, SerialSession, choose_providers, create_session


def test_resolve_by_dir(pack_dir: Path) -> None:
    pack = resolve_pack(pack_dir)
    assert pack.name == "scrfd500m-mbf"
    assert pack.detector.name == "scrfd_500m_bnkps.onnx"
    assert pack.recognizer.name == "fr_feature.onnx"


def test_resolve_by_name_under_env_root(pack_dir: Path) -> None:
    pack = resolve_pack(None, "scrfd500m-mbf", env={MODEL_ROOT_ENV: str(pack_dir.parent)})
    assert pack.folder == pack_dir.parent / "scrfd500m-mbf"


def test_identity_records_content_hashes(pack_dir: Path, tmp_path: Path) -> None:
    identity = resolve_pack(pack_dir).identity()
    assert identity.name == "scrfd500m-mbf"
    assert len(identity.detector_blake3) == 64 and len(identity.recognizer_blake3) == 64
    other = resolve_pack(pack_dir.parent / "scrfd2.5g-mbf").identity()
    assert other.recognizer_blake3 == identity.recognizer_blake3  # same recognizer file: same vectors
    assert other.detector_blake3 != identity.detector_blake3


def test_missing_pack_lists_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError) as info:
        resolve_pack(None, DEFAULT_PACK, env={MODEL_ROOT_ENV: str(tmp_path)})
    message = str(info.value)
    assert str(tmp_path / "buffalo_l") in message
    assert str(Path("~/.insightface/models/buffalo_l").expanduser()) in message
    assert "buffalo_l.zip" in message and "--model-dir" in message


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="model pack folder not found"):
        resolve_pack(tmp_path / "nope")


def test_unknown_layout_names_files(tmp_path: Path) -> None:
    (tmp_path / "mystery.onnx").write_bytes(b"x")
    with pytest.raises(ModelPackError, match=r"no known detector file. Found: mystery.onnx"):
        resolve_pack(tmp_path)


def test_unreadable_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "scrfd_2.5g.onnx").write_bytes(b"not a model")
    (tmp_path / "fr_feature.onnx").write_bytes(b"not a model")
    pack = resolve_pack(tmp_path)
    with pytest.raises(ModelPackError, match=r"cannot load model .*scrfd_2.5g.onnx"):
        create_session(pack.detector, RuntimeOptions(("CPUExecutionProvider",)))


@pytest.mark.parametrize(
    ("available", "requested", "expected"),
    [
        (["CPUExecutionProvider"], None, ["CPUExecutionProvider"]),
        (["CPUExecutionProvider", "DmlExecutionProvider"], None, ["DmlExecutionProvider", "CPUExecutionProvider"]),
        (
            ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"],
            None,
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (["AzureExecutionProvider", "CPUExecutionProvider"], None, ["CPUExecutionProvider"]),
        (
            ["CoreMLExecutionProvider", "CPUExecutionProvider"],
            None,
            ["CoreMLExecutionProvider", "CPUExecutionProvider"],
        ),
        (["DmlExecutionProvider", "CPUExecutionProvider"], ["cpu"], ["CPUExecutionProvider"]),
        (["DmlExecutionProvider", "CPUExecutionProvider"], ["dml"], ["DmlExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_choose_providers(available: list[str], requested: list[str] | None, expected: list[str]) -> None:
    assert choose_providers(available, requested) == expected


def test_requested_provider_missing() -> None:
    with pytest.raises(ProviderError, match=r"DmlExecutionProvider not available.*available: CPUExecutionProvider"):
        choose_providers(["CPUExecutionProvider"], ["directml"])


def test_no_provider_at_all() -> None:
    with pytest.raises(ProviderError, match="no usable execution provider"):
        choose_providers([])


def test_embed_uses_chosen_providers(monkeypatch: pytest.MonkeyPatch, pack_dir: Path) -> None:
    """With a faked DirectML in the available list, sessions are asked for it first and serialised."""
    import onnxruntime

    seen: list[list[str]] = []
    real = onnxruntime.InferenceSession

    def fake_session(path: str, options: object, providers: list[str]) -> object:
        seen.append(providers)
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", fake_session)
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["DmlExecutionProvider", "CPUExecutionProvider"]
    )
    from facesets.models.runtime import available_providers

    providers = choose_providers(available_providers())
    session = create_session(resolve_pack(pack_dir).recognizer, RuntimeOptions(tuple(providers)))
    assert seen == [["DmlExecutionProvider", "CPUExecutionProvider"]]
    assert isinstance(session, SerialSession)
    out = session.run(None, {"input": np.zeros((1, 3, 112, 112), np.float32)})
    assert out[0].shape == (1, 512)


def test_a_lazy_model_is_made_once_whatever_the_threads() -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from facesets.models.runtime import Lazy, runtime_options

    made: list[int] = []
    lock = threading.Lock()

    def make() -> object:
        time.sleep(0.05)
        with lock:
            made.append(1)
        return object()

    holder = Lazy(make)
    assert holder.made is None
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: holder.get(), range(32)))
    assert len(made) == 1 and all(result is results[0] for result in results) and holder.made is results[0]
    assert runtime_options(("cpu",)).providers == ("CPUExecutionProvider",)
    assert runtime_options().intra_op_threads == 1
