"""Hostile input: secrets never reach output or files, control characters never reach the terminal, untrusted
ids never name paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from facesets.base.messages import printable, redact, safe
from tests.conftest import REPO, shared_path

SECRET = "LeakMe123"


def facesets(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "facesets", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def everything_written(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["migrate", "--database", f"postgres//faces:{SECRET}@127.0.0.1/faces"], {}),  # a typo in the URL
        (["migrate"], {"DATABASE_URL": f"postgresql://faces:{SECRET}@127.0.0.1:9/faces?connect_timeout=1"}),
        (["migrate", "--database", f"host=127.0.0.1 port=9 password={SECRET} connect_timeout=1"], {}),
        (["persons", "list", "--database", f"postgresql://faces:{SECRET}@127.0.0.1:9/faces?connect_timeout=1"], {}),
        (
            ["immich", "stage", "--user", "p", "--url", f"http://admin:{SECRET}@127.0.0.1:9", "--retries", "0"],
            {"IMMICH_API_KEY": "k"},
        ),
        (
            ["immich", "stage", "--user", "p", "--url", f"http://127.0.0.1:9/?apiKey={SECRET}", "--retries", "0"],
            {"IMMICH_API_KEY": "k"},
        ),
        (
            ["immich", "stage", "--user", "p", "--url", "http://127.0.0.1:9", "--retries", "0"],
            {"IMMICH_API_KEY": SECRET},
        ),
    ],
)
def test_no_secret_reaches_the_output_or_a_file(args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    done = facesets(*args, "-vv", cwd=tmp_path, env=env)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") or "\nerror: " in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET.encode() not in everything_written(tmp_path)


def test_redaction_and_escaping_rules() -> None:
    assert (
        redact("postgresql://ann:s3cr%40t@db:5432/x?sslmode=require")
        == "postgresql://ann:***@db:5432/x?sslmode=require"
    )
    assert redact("http://h/?apiKey=abc&x=1 token=zz password=pw") == "http://h/?apiKey=***&x=1 token=*** password=***"
    assert redact("faces@db.lan:5432/faces") == "faces@db.lan:5432/faces"  # no password: unchanged
    assert printable("a\nerror: forged\x1b[31m") == "a\\nerror: forged\\x1b[31m"
    assert safe("ok/é path") == "ok/é path"


def test_a_file_name_cannot_forge_a_message_line(tmp_path: Path, pack_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    hostile = "x\nerror: all your faces are gone\x1b[2J.jpg"
    (photos / hostile).write_bytes(b"not an image")
    assert facesets("queue", "add", "--queue", "q.json", "photos", cwd=tmp_path).returncode == 0
    done = facesets(
        "embed", "--queue", "q.json", "--cache", "c.npz", "--model-dir", str(tmp_path / "none"), cwd=tmp_path
    )
    lines = done.stderr.splitlines()
    assert not any(line.startswith("error: all your faces") for line in lines)
    assert "\x1b" not in done.stderr


def test_the_torture_script_finds_nothing_in_its_quick_round(tmp_path: Path) -> None:
    """scripts/torture.py --quick: bad input of many kinds, damaged artifacts, kill -9, secrets."""
    shared = shared_path("models").parent
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "torture.py"), "--shared", str(shared), "--quick"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary.endswith("crashes 0, hangs 0, data lost 0, secrets found 0"), summary


def test_a_message_of_several_lines_keeps_its_lines_indented() -> None:
    from facesets.base.messages import safe_lines

    message = "model pack 'x' not found. Looked in:\n  - /a\n  - /b\x1b[2J\nerror: forged"
    assert safe_lines(message) == "model pack 'x' not found. Looked in:\n  - /a\n  - /b\\x1b[2J\n  error: forged"
