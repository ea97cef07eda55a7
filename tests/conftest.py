"""Shared fixtures. Tests use the real model packs and photos in ../shared and fail loudly without them."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from facesets.models.faces import FaceEngine, build_engine
from facesets.models.packs import ModelPack, resolve_pack
from facesets.models.runtime import RuntimeOptions

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FACESETS_SHARED", REPO.parent / "shared"))
CPU = RuntimeOptions(("CPUExecutionProvider",), 1)


def wait_for_segments(cache: Path, count: int = 1, timeout: float = 120) -> None:
    """Wait until the journal of ``cache`` holds ``count`` segments (a run has flushed that often), or
    ``timeout`` seconds have passed."""
    from facesets.artifacts.cache import journal_segments

    deadline = time.monotonic() + timeout
    while len(journal_segments(cache)) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"test data missing: {path}. These tests need the project's shared folder (models and labeled photos) "
            "beside the checkout at ../shared, or FACESETS_SHARED pointing at it.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return shared_path("data", "faces")


@pytest.fixture(scope="session")
def labels(faces_dir: Path) -> dict[str, str]:
    return dict(orjson.loads((faces_dir / "labels.json").read_bytes()))


@pytest.fixture(scope="session")
def pack_dir() -> Path:
    return shared_path("models", "scrfd500m-mbf")


@pytest.fixture(scope="session")
def pack(pack_dir: Path) -> ModelPack:
    return resolve_pack(pack_dir)


@pytest.fixture(scope="session")
def engine(pack: ModelPack) -> FaceEngine:
    return build_engine(pack, CPU)


@pytest.fixture(scope="session")
def engine_25g() -> FaceEngine:
    return build_engine(resolve_pack(shared_path("models", "scrfd2.5g-mbf")), CPU)


@pytest.fixture(scope="session")
def t1_jpg() -> Path:
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    assert path.exists(), f"insightface's bundled t1.jpg is missing at {path}"
    return path


@pytest.fixture
def sample_photos(faces_dir: Path) -> list[Path]:
    """Four labeled single-person photos of two people (two each)."""
    return [
        faces_dir / "deepface" / "img1.jpg",
        faces_dir / "deepface" / "img2.jpg",
        faces_dir / "celeb5" / "madonna" / "train_01.jpg",
        faces_dir / "celeb5" / "madonna" / "train_02.jpg",
    ]


@pytest.fixture
def chdir_tmp(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def server() -> Iterator[tuple[str, Path]]:
    """An embedded server in a folder its system user can traverse (pytest's tmp root is mode 0700)."""
    base = Path(tempfile.mkdtemp(prefix="facesets-pg-"))
    base.chmod(0o777)
    from facesets.store.database import embedded_server

    try:
        with embedded_server(base / "pg") as url:
            yield url, base / "pg"
    finally:
        shutil.rmtree(base, ignore_errors=True)


counter = iter(range(1_000_000))


@pytest.fixture
def database(server: tuple[str, Path]) -> str:
    """A fresh, empty database on the embedded server; its URL."""
    url, _ = server
    name = f"t{os.getpid()}_{next(counter)}"
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return str(psycopg.conninfo.make_conninfo(url, dbname=name))
