"""The Windows side of ``finalize`` under WSL: the embed worker runs with the Windows Python on the GPU.

    queue-<user>.json ──copy (Windows paths)──▶ WIN_ROOT/queue-<user>.json
    WIN_PYTHON -m facesets embed --queue ... --cache ...      (through WSL interop: powershell.exe)
    WIN_ROOT/<user>.npz ──read, verify, write atomically──▶ caches/<user>.npz

The boundary is small on purpose: a function that maps a Linux path to its Windows form and a function that
runs a Windows command line. Tests replace both to run the worker locally over mapped paths. The worker's cache
stays in WIN_ROOT, so a killed or failed run resumes there; the copy back only happens after the worker exits 0,
and only a cache that loads completely (journal included) replaces the local one.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..artifacts.cache import load_cache, write_npz
from ..artifacts.layout import user_cache, user_queue
from ..artifacts.queue import QueueEntry, read_queue, write_queue
from ..base.errors import ConfigError, PathMappingError
from ..base.paths import require_windows

log = logging.getLogger(__name__)


def running_under_wsl(proc_version: Path = Path("/proc/version")) -> bool:
    try:
        return "microsoft" in proc_version.read_text().lower()
    except OSError:
        return False


def powershell_command(command: Sequence[str]) -> list[str]:
    """The WSL command line that runs ``command`` in PowerShell: each part single-quoted (quotes doubled), so
    spaces, ``$`` and non-ASCII characters reach the program unchanged."""
    quoted = " ".join("'" + part.replace("'", "''") + "'" for part in command)
    return ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command", f"& {quoted}; exit $LASTEXITCODE"]


def powershell(command: Sequence[str]) -> int:
    """Run a Windows command line through WSL interop; its output streams to ours."""
    try:
        return subprocess.run(powershell_command(command)).returncode
    except FileNotFoundError as exc:
        raise ConfigError(
            "powershell.exe is not reachable: WSL interop is off or this is not WSL. Run the embed step locally "
            "(--embed local, or EMBED=local) or enable interop ([interop] enabled=true in /etc/wsl.conf)."
        ) from exc


@dataclass(frozen=True)
class WindowsSide:
    root: Path  # WIN_ROOT as seen from Linux, e.g. /mnt/c/face_embed
    python: str  # WIN_PYTHON, e.g. C:\\Python311\\python.exe or py
    # None: `-m facesets embed` (facesets installed on the Windows side); else WIN_WORKER, the path of
    # work/embed_worker.py in a checkout the Windows Python can read
    worker: Path | None = None
    options: tuple[str, ...] = ()  # more embed options (--providers dml,cpu ...)
    to_windows: Callable[[str], str] = require_windows
    run: Callable[[Sequence[str]], int] = field(default=powershell)

    def embed(self, queue: Path, cache: Path, user: str) -> Path:
        """Embed ``queue`` on the Windows side and bring the cache back to ``cache``; returns ``cache``."""
        self.root.mkdir(parents=True, exist_ok=True)
        remote_queue = user_queue(self.root, user)
        remote_cache = user_cache(self.root, user)
        write_queue(remote_queue, self._windows_entries(queue))
        program = ["-m", "facesets", "embed"] if self.worker is None else [self.to_windows(str(self.worker.absolute()))]
        command = [
            self.python,
            *program,
            "--queue",
            self.to_windows(str(remote_queue.absolute())),
            "--cache",
            self.to_windows(str(remote_cache.absolute())),
            *self.options,
        ]
        log.info("running the embed worker on Windows: %s", " ".join(command))
        code = self.run(command)
        if code != 0:
            raise ConfigError(
                f"the Windows embed worker exited with {code}; its cache {remote_cache} keeps what it finished, and "
                "the same finalize command resumes it. Run the printed command in PowerShell to see the problem."
            )
        data = load_cache(remote_cache)  # journal folded in: the whole result, or a CacheError naming the file
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_npz(cache, data)
        return cache

    def _windows_entries(self, queue: Path) -> list[QueueEntry]:
        entries = read_queue(queue)
        mapped, unmapped = [], []
        for entry in entries:
            try:
                mapped.append(replace(entry, windows_path=self.to_windows(entry.path)))
            except PathMappingError:
                unmapped.append(entry.path)
        if unmapped:
            shown = "\n".join(f"  - {path}" for path in unmapped[:10])
            raise PathMappingError(
                f"{len(unmapped)} queued file(s) have no Windows form, so the Windows worker cannot read them:\n"
                f"{shown}\nKeep staging on a Windows drive (e.g. --staging /mnt/d/staging) or use --embed local."
            )
        return mapped
