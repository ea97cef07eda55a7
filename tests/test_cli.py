import re
import shlex
from pathlib import Path

import click
import pytest

from facesets.artifacts.cache import load_cache
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
    targets = re.findall(r"^([a-z][a-z -]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    targets = [name for line in targets for name in line.split()]
    for target in targets:
        if target != "clean":
            assert f"make {target}" in README, target
    named = set(re.findall(r"`make ([a-z][a-z-]*)|^\s+make ([a-z][a-z-]*)", README, flags=re.MULTILINE))
    assert {name for pair in named for name in pair if name} <= set(targets)


def _command(path: list[str]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help", "-h"}


def test_readme_examples_use_options_their_command_has() -> None:
    examples = re.findall(r"^    (?:\$ )?facesets (.+)$", README, flags=re.MULTILINE)
    groups = {name for name, command in cli.commands.items() if isinstance(command, click.Group)}
    for example in examples:
        words = shlex.split(example.split(" #")[0])
        path = words[:2] if words[0] in groups else words[:1]
        known = _options(_command(path)) | _options(cli)
        used = {word.split("=")[0] for word in words[len(path) :] if word.startswith("-")}
        assert used <= known, f"{example}: {sorted(used - known)}"


def test_no_help_text_or_readme_line_names_a_missing_option_or_an_unlanded_feature() -> None:
    everything = _options(cli)
    helps = []
    for _path, command in _commands(cli):
        everything |= _options(command)
        helps.append(command.help or "")
        helps += [param.help or "" for param in command.params if isinstance(param, click.Option)]
    for text in [*helps, README]:
        for stale in ("not available yet", "has not landed", "not landed", "once the loader lands"):
            assert stale not in text, stale
    named = {option for text in helps for option in re.findall(r"(?<![\w-])--[a-z][a-z-]+", text)}
    assert named <= everything, sorted(named - everything)


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

    from facesets.base.progress import Progress

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


def test_progress_fits_the_terminal_and_its_eta_follows_the_recent_rate() -> None:
    from facesets.base.progress import WINDOW, Progress

    bar = Progress(1000, "embed", enabled=False)
    bar.started = 0.0
    bar._samples.clear()
    bar._samples.append((0.0, 0))
    bar.done = 10  # 10 images in the first 100 s, then 90 in the next 10 s
    bar.rate(100.0)
    bar.done = 100
    assert abs(bar.rate(100.0 + WINDOW / 3) - 90 / (WINDOW / 3)) < 1e-6
    for columns in (50, 80, 200):
        line = bar.line(100.0 + WINDOW / 3, columns)
        assert len(line) <= columns - 1 and "100/1000" in line and "ETA 0:01:40" in line
    assert "[" not in bar.line(111.0, 30) and len(bar.line(111.0, 30)) <= 29  # too narrow for a bar


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


def test_human_summaries_have_no_python_reprs_and_times_have_units(capsys: pytest.CaptureFixture[str]) -> None:
    from facesets.cli.options import emit

    emit({"new_sets": ["faceset_001", "faceset_002"], "already_applied": False, "elapsed": 62.812, "none": []}, False)
    assert capsys.readouterr().out.splitlines() == [
        "new_sets         faceset_001, faceset_002",
        "already_applied  no",
        "elapsed          62.8 s",
        "none             -",
    ]


def test_queue_commands_print_json(
    tmp_path: Path, sample_photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.jpg").write_bytes(sample_photos[0].read_bytes())
    queue = str(tmp_path / "q.json")
    capsys.readouterr()
    assert main(["queue", "add", "--queue", queue, str(tmp_path / "lib"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"queue": queue, "added": 1, "already_queued": 0, "skipped": 0}
    assert main(["queue", "info", queue, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 1 and info["bytes"] == sample_photos[0].stat().st_size and info["with_windows_path"] == 0


def test_every_command_that_prints_a_result_takes_json() -> None:
    servers = ("serve",)  # runs until stopped: no result to print
    without = [" ".join(path) for path, command in _commands(cli) if not isinstance(command, click.Group)]
    without = [name for name in without if name not in servers]
    without = [name for name in without if "--json" not in _options(_command(name.split()))]
    assert without == []


def test_readme_quotes_every_url_with_an_ampersand() -> None:
    for line in README.splitlines():
        for url in re.findall(r"\S*://\S*&\S*", line):
            assert url.startswith(("'", "`'")) or url.strip("`").startswith("'"), line


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (OSError(28, "No space left on device", "/data/q.json"), "error: the disk is full (writing /data/q.json)"),
        (RuntimeError("boom\nsecond line"), "error: RuntimeError: boom (run with -vv for the details"),
    ],
)
def test_no_exception_reaches_the_user_as_a_traceback(
    raised: Exception, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(path: object) -> None:
        raise raised

    monkeypatch.setattr("facesets.artifacts.queue.read_queue", broken)
    assert main(["queue", "info", "q.json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected) and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_database_server_with_a_full_disk_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    def full(path: object) -> None:
        raise psycopg.errors.DiskFull("could not extend file base/5/16384: No space left on device")

    monkeypatch.setattr("facesets.artifacts.queue.read_queue", full)
    assert main(["queue", "info", "q.json"]) == 1
    assert capsys.readouterr().err == (
        "error: the database server's disk is full: what was committed before is kept; free space on the server and "
        "run the same command again\n"
    )


def test_commands_on_the_store_without_one_say_so_and_create_nothing(
    chdir_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["cluster"]) == 1
    assert "nothing to cluster: no --cache given" in capsys.readouterr().err
    assert main(["persons", "list"]) == 1
    assert (
        "no database: no --database (or $DATABASE_URL) and no embedded one under caches/pg" in capsys.readouterr().err
    )
    assert not (chdir_tmp / "caches").exists()
    assert main(["cluster", "--cache", "c.npz", "--threshold", "0.65"]) == 2
    assert "--threshold and --database are for clustering the persons" in capsys.readouterr().err


def test_sigterm_is_handled_only_while_a_command_runs() -> None:
    """main() turns SIGTERM into an orderly stop for the command's duration and gives the handler back."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert main(["--version"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
