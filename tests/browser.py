"""A real browser and a real server for the review page: Debian's Chromium driven by Playwright, and the review
app on a free loopback port in a thread, served by uvicorn as ``facesets serve`` serves it. Used by the browser
tests, ``scripts/screenshots.py`` and ``scripts/bench_serve.py``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# headless as root, and none of Chromium's background connections (this machine has no network beyond itself)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@contextlib.contextmanager
def served(app: Any, seconds: float = 20.0) -> Iterator[str]:
    """Serve ``app`` on a free loopback port for the block; yields its base URL, stops it at the end."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    try:
        if not server.started:
            raise RuntimeError("the review server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
