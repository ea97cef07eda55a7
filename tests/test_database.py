"""The PostgreSQL store against a real embedded PostgreSQL with pgvector."""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from facesets.base.errors import DatabaseError, SchemaError
from facesets.cli import main
from facesets.store.database import connect
from facesets.store.migrations import LATEST, check_schema, ensure_extension, migrate
from tests.conftest import REPO


def tables(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}


def test_migrate_from_empty_creates_the_schema(database: str) -> None:
    with connect(database) as conn:
        with pytest.raises(SchemaError, match="run `facesets migrate` first"):
            check_schema(conn)
        applied = migrate(conn)
        assert [m.version for m in applied] == list(range(1, LATEST + 1)) and check_schema(conn) == LATEST == 7
        assert tables(conn) >= {
            "galleries",
            "images",
            "gallery_images",
            "immich_assets",
            "face_detections",
            "clip_embeddings",
            "persons",
            "person_names",
            "face_sets",
            "face_not_person",
            "models",
            "schema_migrations",
        }
        indexes = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname='public'"))
        assert "USING hnsw (embedding vector_cosine_ops)" in indexes["face_detections_embedding"]
        assert "USING hnsw (embedding vector_cosine_ops)" in indexes["clip_embeddings_embedding"]
        assert migrate(conn) == []  # safe to run twice
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == LATEST


@pytest.mark.parametrize("version", [1, 2])
def test_migrate_from_an_older_version_keeps_the_data(database: str, version: int) -> None:
    with connect(database) as conn:
        assert [m.version for m in migrate(conn, target=version)] == list(range(1, version + 1))
        with pytest.raises(SchemaError, match=f"at version {version}, older"):
            check_schema(conn)
        conn.execute("INSERT INTO images(id, size) VALUES ('abc', 1)")
        conn.execute(
            "INSERT INTO immich_assets(asset_id, owner_id, checksum, image_id) "
            "VALUES ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002', 'c', 'abc')"
        )
        person = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO person_names VALUES (%s, 'Ann')", (person,))
        face = conn.execute(
            "INSERT INTO face_detections(image_id, box, keypoints, score, face_short, model, embedding, person_id, "
            "assigned_by) VALUES ('abc', '{1,2,3,4}', '{}', 0.9, 3, 'pack', %s, %s, 'manual') RETURNING id",
            ("[" + ",".join(["0.1"] * 512) + "]", person),
        ).fetchone()[0]
        assert [m.version for m in migrate(conn)] == list(range(version + 1, LATEST + 1))
        assert conn.execute("SELECT * FROM face_persons").fetchall() == [(face, person, "manual")]
        assert check_schema(conn) == LATEST
        assert conn.execute("SELECT owner_id::text, user_label FROM immich_assets").fetchone() == (
            "00000000-0000-4000-8000-000000000002",
            None,
        )
        assert conn.execute("SELECT name FROM person_names").fetchone() == ("Ann",)
        second = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0]
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO person_names VALUES (%s, 'ANN')", (second,))


def test_person_names_go_with_their_person(database: str) -> None:
    with connect(database) as conn:
        migrate(conn)
        person = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO person_names(person_id, name) VALUES (%s, 'Ann')", (person,))
        conn.execute("DELETE FROM persons WHERE id = %s", (person,))
        assert conn.execute("SELECT count(*) FROM person_names").fetchone()[0] == 0


def test_concurrent_migrate_from_two_processes(database: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "facesets", "migrate", "--database", database]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum("applied migration 1" in out for out, _ in outputs) == 1
    with connect(database) as conn:
        assert conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [
            (version,) for version in range(1, LATEST + 1)
        ]


def test_newer_schema_is_refused(database: str) -> None:
    with connect(database) as conn:
        migrate(conn)
        conn.execute("INSERT INTO schema_migrations(version, name) VALUES (99, 'from the future')")
        conn.commit()
        with pytest.raises(SchemaError, match=r"version 99, newer than this facesets knows .* upgrade facesets"):
            check_schema(conn)
        with pytest.raises(SchemaError, match="upgrade facesets"):
            migrate(conn)


def test_missing_extension_gives_the_create_extension_hint(database: str) -> None:
    with connect(database) as conn, pytest.raises(DatabaseError, match="CREATE EXTENSION vector_not_installed;"):
        ensure_extension(conn, "vector_not_installed")


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--database", "postgresql://faces:s3cret@127.0.0.1:1/faces"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database server at faces@127.0.0.1:1/faces" in err
    assert "s3cret" not in err


def test_database_missing(server: tuple[str, Path]) -> None:
    url = psycopg.conninfo.make_conninfo(server[0], dbname="no_such_db")
    with pytest.raises(DatabaseError, match="/no_such_db does not exist: create it"):
        connect(url)


def test_bad_password(server: tuple[str, Path]) -> None:
    url, data = server
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS pwuser")
        admin.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-password'")
        hba = data / "pg_hba.conf"
        hba.write_text("local all pwuser scram-sha-256\n" + hba.read_text())
        admin.execute("SELECT pg_reload_conf()")
    wrong = psycopg.conninfo.make_conninfo(url, user="pwuser", password="wrong-password")
    with pytest.raises(DatabaseError, match="rejected the password") as info:
        connect(wrong)
    assert "wrong-password" not in str(info.value)
    right = psycopg.conninfo.make_conninfo(url, user="pwuser", password="right-password")
    connect(right).close()


def test_database_url_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://env:s3cret@127.0.0.1:1/fromenv")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database server at env@127.0.0.1:1/fromenv" in err and "s3cret" not in err


def _postmaster_running(data: Path) -> bool:
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_embedded_server_left_by_a_killed_command_is_adopted_and_stopped() -> None:
    import shutil
    import signal
    import tempfile
    import time

    base = Path(tempfile.mkdtemp(prefix="facesets-kill-"))
    base.chmod(0o777)
    data = base / "pg"
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from pathlib import Path\n"
             "from facesets.store.database import embedded_server\n"
             "with embedded_server(Path(sys.argv[1])) as url:\n    print(url, flush=True); time.sleep(120)", str(data)],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdout.readline().startswith("postgresql://")
        holder.send_signal(signal.SIGKILL)  # a killed load: the server it started keeps running
        holder.wait()
        holder.stdout.close()
        assert _postmaster_running(data)
        done = subprocess.run(
            [sys.executable, "-m", "facesets", "migrate", "--data", str(data)],
            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 30
        while _postmaster_running(data) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _postmaster_running(data)  # adopted, then stopped when the command ended
    finally:
        subprocess.run(["pkill", "-f", f"-D {data}"], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("everything", [True, False], ids=["with-initdb", "initdb-goes-on"])
def test_a_command_killed_while_the_embedded_server_is_initialised_does_not_break_the_next_run(
    tmp_path: Path, everything: bool
) -> None:
    import signal
    import time

    tmp_path.chmod(0o777)  # as root, PostgreSQL runs as a system user that must reach the data folder
    data = tmp_path / "pg"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-m", "facesets", "migrate", "--data", str(data)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (data / "PG_VERSION").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    if everything:  # the command and initdb with it, as a closed terminal does
        os.killpg(first.pid, signal.SIGKILL)
    else:  # the command alone: its initdb may go on writing while the next run starts
        first.send_signal(signal.SIGKILL)
    first.wait()
    assert (data / "PG_VERSION").exists() and not (data / "postmaster.opts").exists(), "initdb had finished"
    again = subprocess.run(
        [sys.executable, "-m", "facesets", "migrate", "--data", str(data)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "schema at version" in again.stdout and (data / "postmaster.opts").exists()


def test_a_data_folder_with_other_files_is_never_removed(tmp_path: Path) -> None:
    from facesets.store.database import _discard_unfinished_init

    (tmp_path / "PG_VERSION").write_text("16\n")
    (tmp_path / "notes.txt").write_text("mine")
    _discard_unfinished_init(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["PG_VERSION", "notes.txt"]


def test_a_lock_file_half_written_by_a_server_killed_while_starting_is_no_obstacle(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    data = tmp_path / "pg"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "facesets", "migrate", "--data", str(data)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    # what PostgreSQL writes first, before the socket and the status lines: a server killed right then
    (data / "postmaster.pid").write_text(f"{gone.stdout.strip()}\n{data}\n1796148496\n5432\n")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"schema at version {LATEST} (already up to date)" in again.stdout


def test_a_failed_start_says_why_in_one_line_and_shows_the_servers_output_only_with_v(tmp_path: Path) -> None:
    """A --data folder that holds other files: initdb refuses it. The message is one line with initdb's own
    reason (the server package's dump of initdb's whole output appears only with -v), and the folder is kept."""
    tmp_path.chmod(0o777)  # as root, PostgreSQL runs as a system user that must reach the data folder
    data = tmp_path / "pg"
    data.mkdir()
    data.chmod(0o777)
    (data / "notes.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "facesets", "migrate", "--data", str(data)]
    quiet = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 1
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1, quiet.stderr
    assert lines[0].startswith(f"error: cannot start the embedded PostgreSQL in {data}: initdb exited with status 1 (")
    assert f'initdb: error: directory "{data}" exists but is not empty' in lines[0]
    assert lines[0].endswith("(-v shows the server's output).") and "Traceback" not in quiet.stderr
    verbose = subprocess.run([*command, "-v"], env=env, capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 1 and "Failed postgres command" in verbose.stderr
    assert sorted(path.name for path in data.iterdir()) == ["notes.txt"]


def test_the_root_hint_names_the_folder_closed_to_the_servers_user(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tempfile

    from facesets.store.database import _start_failure

    closed = Path(tempfile.mkdtemp())  # mode 0700, in the system's temporary folder (open to everyone)
    failure = subprocess.CalledProcessError(1, ("/opt/pg/bin/initdb", "-D", "x"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    text = _start_failure(closed / "pg", failure, ['FATAL:  could not open directory "x": Permission denied'])
    assert text == (
        f"cannot start the embedded PostgreSQL in {closed / 'pg'}: initdb exited with status 1 (FATAL:  could not "
        'open directory "x": Permission denied). Running as root, PostgreSQL runs as a system user that must be '
        f"able to traverse every parent folder of the data folder, and {closed} is closed to others: choose a "
        "--data folder outside it, or pass --database (-v shows the server's output)."
    )
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _start_failure(closed / "pg", RuntimeError("Version mismatch."), []) == (
        f"cannot start the embedded PostgreSQL in {closed / 'pg'}: Version mismatch. Another --data folder, or "
        "--database for an external server (-v shows the server's output)."
    )
    shutil.rmtree(closed)
