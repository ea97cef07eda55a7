import re
import shlex
from pathlib import Path

import click
import pytest

from facesets.cache import load_cache
from facesets.cli import cli, main
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(all_commands(command, path))
    return found


@pytest.mark.parametrize("command", all_commands(), ids=" ".join)
def test_every_command_has_help_and_is_documented(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    assert "Usage: facesets " + " ".join(command) in capsys.readouterr().out
    assert f"facesets {' '.join(command)}" in README, f"README does not mention `facesets {' '.join(command)}`"


def test_readme_examples_parse(capsys: pytest.CaptureFixture[str]) -> None:
    examples = re.findall(r"^    (?:\$ )?facesets (.+)$", README, flags=re.MULTILINE)
    assert len(examples) >= 5
    for example in examples:
        words = [word for word in shlex.split(example.split(" #")[0]) if word]
        command = [word for word in words if not word.startswith("-")][:2]
        path = [word for word in command if word in {name for c in all_commands() for name in c}]
        assert path, example
        assert main([*path, "--help"]) == 0, example


def test_make_targets_are_documented() -> None:
    targets = re.findall(r"^([a-z][a-z-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    for target in targets:
        if target != "clean":
            assert f"make {target}" in README, target


def test_fatal_errors_are_messages_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "embed",
            "--queue",
            str(tmp_path / "missing.json"),
            "--cache",
            str(tmp_path / "c.npz"),
            "--model-dir",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert "error: queue" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"junk")
    assert main(["cache", "info", str(tmp_path / "bad.npz")]) == 1
    assert "bad.npz is not a face cache: it is not an .npz archive" in capsys.readouterr().err
    (tmp_path / "queue.json").write_text('{"format": "facesets.queue", "version": 1, "entries": []}')
    assert main(["cache", "info", str(tmp_path / "queue.json")]) == 1
    err = capsys.readouterr().err
    assert "queue.json is not a face cache: it is a JSON file" in err
    assert "allow_pickle" not in err and "--cache" not in err


def test_missing_model_pack_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACESETS_MODEL_ROOT", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "q.json").write_text('{"format": "facesets.queue", "version": 1, "entries": []}')
    assert main(["embed", "--queue", str(tmp_path / "q.json"), "--cache", str(tmp_path / "c.npz")]) == 1
    err = capsys.readouterr().err
    assert "model pack 'buffalo_l' not found" in err and str(tmp_path / "buffalo_l") in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed"]) == 2
    assert "Missing option '--queue'" in capsys.readouterr().err


def test_queue_commands(tmp_path: Path, sample_photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lib").mkdir()
    for photo in sample_photos[:2]:
        (tmp_path / "lib" / photo.name).write_bytes(photo.read_bytes())
    queue = tmp_path / "q.json"
    assert main(["queue", "add", "--queue", str(queue), str(tmp_path / "lib")]) == 0
    assert main(["queue", "add", "--queue", str(queue), str(tmp_path / "lib")]) == 0
    out = capsys.readouterr().out
    assert "2 added, 0 already queued" in out and "0 added, 2 already queued" in out
    assert main(["queue", "info", str(queue)]) == 0
    assert "2 entries" in capsys.readouterr().out


def test_progress_line_has_rate_and_eta() -> None:
    import io

    from facesets.progress import Progress

    stream = io.StringIO()
    bar = Progress(4, "hash", "file", stream=stream, enabled=True)
    for _ in range(4):
        bar.advance()
    bar.close()
    last = stream.getvalue().strip().split("\r")[-1]
    assert last.startswith("hash [########################] 4/4 ")
    assert " file/s ETA 0:00:00" in last
    quiet = io.StringIO()
    silent = Progress(4, "hash", stream=quiet, enabled=False)
    silent.advance()
    silent.close()
    assert quiet.getvalue() == ""


def test_cluster_before_embed_names_the_command_that_makes_the_cache(
    chdir_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cluster", "--cache", "caches/faces.npz"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cache caches/faces.npz does not exist: `facesets embed --queue queue.json")


def test_embed_creates_the_cache_folder(
    chdir_tmp: Path, pack_dir: Path, sample_photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (chdir_tmp / "photos").mkdir()
    (chdir_tmp / "photos" / "a.jpg").write_bytes(sample_photos[0].read_bytes())
    assert main(["queue", "add", "--queue", "queue.json", "photos"]) == 0
    args = ["embed", "--queue", "queue.json", "--cache", "caches/faces.npz", "--model-dir", str(pack_dir), "--json"]
    assert main(args) == 0, capsys.readouterr().err
    assert load_cache(chdir_tmp / "caches" / "faces.npz").images[0].status.value == "ok"


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
    return found


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"facesets {' '.join(path)} {param.opts[0]}"
        for path, command in _commands(cli)
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert missing == []


def test_verbose_goes_before_or_after_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    (tmp_path / "q.json").write_text('{"format": "facesets.queue", "version": 1, "entries": []}')
    for argv in (["-v", "queue", "info", str(tmp_path / "q.json")], ["queue", "info", str(tmp_path / "q.json"), "-v"]):
        logging.getLogger().setLevel(logging.WARNING)
        assert main(argv) == 0
        assert logging.getLogger().level == logging.INFO
    assert main(["queue", "info", str(tmp_path / "q.json"), "-vv"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert main(["queue", "info", str(tmp_path / "q.json")]) == 0
    assert logging.getLogger().level == logging.WARNING
