"""Try to break facesets: bad input, damaged artifacts, kill -9 at random moments, secrets in arguments.

Every case runs the real command line in a fresh process and is judged from the outside:

- **bad input** (one kind per run, through ``queue add`` + ``embed`` and through ``index``): the run must end in
  bounded time with exit 0 and the file counted as a skip or an error, never a traceback;
- **damaged artifacts** (a cache with a flipped block, malformed queues, a hostile plan, a damaged index state):
  one ``error:`` line, exit 1, the artifact byte-identical afterwards and nothing written outside the work folder;
- **kill -9** of ``queue add``, ``embed``, ``index``, ``cluster``, ``cache extend``, ``export``, ``migrate``
  (from the embedded PostgreSQL's first start on) and ``load`` at a random moment (several seeds), then the
  same command again: the result must equal an uninterrupted run's, and no server may be left running;
- **a full disk** (``queue add``, ``embed``, ``index``, ``export`` and ``immich stage`` (downloads from an
  Immich server) writing onto a small tmpfs, where mounting
  one is allowed): one error line that says the disk is full, no traceback, no temporary file left;
- **secrets** (passwords and keys in URLs, the environment and key files): never in any output or file.

Prints one line per failure and the totals: cases tried, survived, crashes, hangs, data lost, secrets found.
``--quick`` runs a few cases of each part (the test suite runs it so).

    python scripts/torture.py --shared ../shared [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0
SECRET = "Sw0rdfish-LeakMe"


@dataclass
class Tally:
    tried: int = 0
    survived: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def judge(self, name: str, problem: str, kind: str = "crash") -> None:
        self.tried += 1
        if not problem:
            self.survived += 1
            return
        {"crash": self.crashes, "hang": self.hangs, "lost": self.lost, "secret": self.secrets}[kind].append(
            f"{name}: {problem}"
        )
        print(f"  FAIL {kind:<6} {name}: {problem}", flush=True)


def facesets(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """Exit code (None: it hung and was killed), stdout, stderr."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "facesets", *args], cwd=cwd, env=environment, capture_output=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return None, "", ""
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def problem_of(code: int | None, err: str, expected: tuple[int, ...] = (0,)) -> tuple[str, str]:
    if code is None:
        return f"no answer in {TIMEOUT:.0f} s", "hang"
    if "Traceback" in err:
        return f"traceback: {err.strip().splitlines()[-1][:160]}", "crash"
    if code not in expected:
        return f"exit {code}: {err.strip()[-160:]}", "crash"
    return "", "crash"


# -- bad input -------------------------------------------------------------------------------------------


def _jpeg(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _save(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def bad_inputs(photo: bytes) -> dict[str, Callable[[Path], None]]:
    """Name -> a function that creates the bad file (or folder) of that kind in a folder."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    base = Image.fromarray(noise)

    def write(name: str, data: bytes) -> Callable[[Path], None]:
        def create(folder: Path) -> None:
            (folder / name).write_bytes(data)

        return create

    def fifo(folder: Path) -> None:
        os.mkfifo(folder / "fifo.jpg")

    def link(name: str, target: str) -> Callable[[Path], None]:
        return lambda folder: (folder / name).symlink_to(target)

    def sparse(folder: Path) -> None:
        with open(folder / "big.jpg", "wb") as handle:
            handle.truncate(5 << 30)

    def loop(folder: Path) -> None:
        (folder / "loop").symlink_to(folder)

    def directory(folder: Path) -> None:
        (folder / "dir.jpg").mkdir()

    def bad_utf8(folder: Path) -> None:
        os.close(os.open(os.fsencode(folder) + b"/bad-\xff\xfe.jpg", os.O_CREAT | os.O_WRONLY))

    def unreadable(folder: Path) -> None:
        (folder / "locked.jpg").write_bytes(photo)
        (folder / "locked.jpg").chmod(0)

    bomb = bytearray(_save(Image.new("L", (8, 8)), "PNG"))
    bomb[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")  # IHDR: 60,000 x 60,000
    exif = base.getexif()
    exif[0x0112] = 9  # an orientation that does not exist
    frames = [Image.fromarray(np.roll(noise, i, axis=0)) for i in range(3)]
    return {
        "zero-byte": write("empty.jpg", b""),
        "random bytes": write("random.jpg", rng.integers(0, 255, 5000, dtype=np.uint8).tobytes()),
        "truncated JPEG": write("half.jpg", photo[: len(photo) // 2]),
        "JPEG without end marker": write("noeoi.jpg", photo[:-2]),
        "JPEG header only": write("header.jpg", photo[:200]),
        "garbage after JPEG end": write("tail.jpg", photo + b"\x00garbage" * 100),
        "damaged PNG": write("damaged.png", _save(base, "PNG")[:-30] + b"\x00" * 30),
        "16-bit PNG": write("deep.png", _save(Image.fromarray(noise[:, :, 0].astype(np.uint16) * 257), "PNG")),
        "CMYK JPEG": write("cmyk.jpg", _save(base.convert("CMYK"), "JPEG")),
        "palette PNG with transparency": write("palette.png", _save(base.convert("P"), "PNG", transparency=0)),
        "RGBA PNG": write("alpha.png", _save(base.convert("RGBA"), "PNG")),
        "animated GIF": write("anim.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:])),
        "multi-page TIFF": write("pages.tif", _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])),
        "WebP": write("image.webp", _save(base, "WEBP")),
        "BMP": write("image.bmp", _save(base, "BMP")),
        "orientation 9": write("orient.jpg", _save(base, "JPEG", exif=exif)),
        "text named .png": write("text.png", b"just some words\n" * 20),
        "SVG named .jpg": write("vector.jpg", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>'),
        "EPS named .jpg": write("eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
        "HTML named .jpeg": write("page.jpeg", b"<!DOCTYPE html><html><body>hi</body></html>"),
        "ZIP named .jpg": write("archive.jpg", b"PK\x03\x04" + b"\x00" * 100),
        "fake HEIC": write("fake.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100),
        "PNG bomb header": write("bomb.png", bytes(bomb)),
        "1x1 JPEG": write("tiny.jpg", _jpeg(noise[:1, :1])),
        "10000x8 JPEG": write("strip.jpg", _jpeg(np.zeros((8, 10000, 3), np.uint8))),
        "grayscale JPEG": write("gray.jpg", _save(base.convert("L"), "JPEG")),
        "FIFO": fifo,
        "symlink to /dev/zero": link("zero.jpg", "/dev/zero"),
        "symlink to /dev/urandom": link("urandom.jpg", "/dev/urandom"),
        "broken symlink": link("gone.jpg", "/nonexistent/photo.jpg"),
        "symlink loop": loop,
        "folder named .jpg": directory,
        "5 GB sparse file": sparse,
        "name with newline and escapes": write("x\nerror: forged\x1b[2J.jpg", photo),
        "name not valid UTF-8": bad_utf8,
        "250-byte name": write("n" * 246 + ".jpg", photo),
        "unreadable file": unreadable,
    }


def run_bad_inputs(photo: bytes, pack: Path, work: Path, tally: Tally, quick: bool) -> None:
    kinds = bad_inputs(photo)
    names = list(kinds)[:: 6 if quick else 1]
    for name in names:
        for route in ("embed", "index"):
            folder = work / f"bad-{route}-{names.index(name)}"
            library = folder / "library" / "gallery"
            (library / "tn").mkdir(parents=True)
            (library / "index.json").write_text('{"title": "t"}')
            (library / "good.jpg").write_bytes(photo)
            kinds[name](library)
            if route == "embed":
                code, _, err = facesets(["queue", "add", "--queue", "q.json", "library"], folder)
                problem, kind = problem_of(code, err)
                if not problem:
                    args = ["embed", "--queue", "q.json", "--cache", "c.npz", "--model-dir", str(pack), "--json"]
                    code, out, err = facesets(args, folder)
                    problem, kind = problem_of(code, err)
                    if not problem and json.loads(out)["embedded"] < 1:
                        problem, kind = "the good photo beside it was not embedded", "crash"
            else:
                args = ["index", "--target", "library", "--model-dir", str(pack), "--no-clip", "--json"]
                code, out, err = facesets(args, folder)
                problem, kind = problem_of(code, err)
                if not problem and json.loads(out)["files_embedded"] < 1:
                    problem, kind = "the good photo beside it was not embedded", "crash"
            if not problem and "\x1b" in err:
                problem = "a control character reached the terminal"
            tally.judge(f"bad input via {route}: {name}", problem, kind)
            _unlock(folder)


def _unlock(folder: Path) -> None:
    for path in folder.rglob("locked.jpg"):
        path.chmod(0o644)


# -- damaged artifacts -------------------------------------------------------------------------------------


def run_damaged(photo: bytes, pack: Path, work: Path, tally: Tally, quick: bool) -> None:
    base = work / "artifacts"
    (base / "photos").mkdir(parents=True)
    for index in range(3):
        (base / "photos" / f"{index}.jpg").write_bytes(
            photo if index == 0 else _jpeg(np.full((64, 64, 3), index, np.uint8))
        )
    facesets(["queue", "add", "--queue", "q.json", "photos"], base)
    facesets(["embed", "--queue", "q.json", "--cache", "c.npz", "--model-dir", str(pack)], base)
    cache = (base / "c.npz").read_bytes()
    damaged = bytearray(cache)
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(64)
    cases: list[tuple[str, str, bytes, list[str]]] = [
        ("cache with a zeroed block", "c.npz", bytes(damaged), ["cache", "info", "c.npz"]),
        ("cache with a zeroed block, embed into it", "c.npz", bytes(damaged),
         ["embed", "--queue", "q.json", "--cache", "c.npz", "--model-dir", str(pack)]),
        ("queue that is not JSON", "q.json", b"{not json", ["queue", "info", "q.json"]),
        ("queue entry with a list as source", "q.json",
         b'{"format": "facesets.queue", "version": 1, "entries": [{"path": "a", "source": [1, 2]}]}',
         ["embed", "--queue", "q.json", "--cache", "d.npz", "--model-dir", str(pack)]),
        ("queue entry with a null path", "q.json",
         b'{"format": "facesets.queue", "version": 1, "entries": [{"path": null}]}', ["queue", "info", "q.json"]),
        ("plan with a path in a photo hash", "plan.json", _hostile_plan(), ["export", "--plan", "plan.json"]),
    ]  # fmt: skip
    for name, target, content, args in cases[:: 2 if quick else 1]:
        (base / target).write_bytes(content)
        before = _listing(work)
        code, _, err = facesets(args, base)
        problem, kind = problem_of(code, err, expected=(1,))
        if not problem and not err.startswith("error: "):
            problem = f"not one error line: {err[:120]!r}"
        if not problem and (base / target).read_bytes() != content:
            problem, kind = "the artifact was changed", "lost"
        if not problem and {path for path in _listing(work) - before if not path.startswith(f"{base}/")}:
            problem, kind = "wrote outside its work folder", "lost"
        tally.judge(f"damaged artifact: {name}", problem, kind)
        (base / "c.npz").write_bytes(cache)


def _hostile_plan() -> bytes:
    face = {"key": "k", "hash": "../../../ESCAPED", "bbox": [0, 0, 9, 9], "kps": [[1, 1]] * 5, "source": "/x.jpg"}
    plan = {"format": "facesets.clusters", "version": 1, "id": "x", "identities": [{"set": 1, "new": True,
            "members": [face]}], "thresholds": {}, "processed": [], "sets_dir": "sets", "min_faces": 1}  # fmt: skip
    return json.dumps(plan).encode()


def _listing(root: Path) -> set[str]:
    return {str(path) for path in root.rglob("*")}


# -- kill -9 -----------------------------------------------------------------------------------------------


def run_kills(photos: list[Path], pack: Path, work: Path, tally: Tally, seeds: int) -> None:
    base = work / "kills"
    library = base / "library"
    for index, photo in enumerate(photos):
        gallery = library / f"g{index // 10}"
        (gallery / "tn").mkdir(parents=True, exist_ok=True)
        (gallery / "index.json").write_text('{"title": "t"}')
        (gallery / f"{index}.jpg").write_bytes(photo.read_bytes())
    facesets(["queue", "add", "--queue", "q.json", "library"], base)
    stages = [
        _Stage("embed", lambda out: ["embed", "--queue", "q.json", "--cache", f"{out}.npz", "--model-dir", str(pack),
                                     "--flush-every", "3"], _cache_records(lambda out: f"{out}.npz"), (0.5, 4.0)),
        _Stage("index", lambda out: ["index", "--target", "library", "--caches", out, "--model-dir", str(pack),
                                     "--no-clip", "--flush-every", "3"], _cache_records(lambda out: f"{out}/faces.npz"),
               (0.5, 4.0)),
        _Stage("cache extend", lambda out: ["cache", "extend", f"{out}-master.npz", "reference.npz",
                                            "reference/faces.npz"], _cache_records(lambda out: f"{out}-master.npz"),
               (0.05, 0.8)),
        _Stage("queue add", lambda out: ["queue", "add", "--queue", f"{out}-q.json", "library"], _queue, (0.3, 1.2)),
        _Stage("cluster", lambda out: ["cluster", "--cache", "reference.npz", "--sets", f"{out}-none", "--plan",
                                       f"{out}-cplan.json", "--min-faces", "2"], _plan, (0.3, 1.5)),
        _Stage("export", lambda out: ["export", "--plan", f"{out}-plan.json"], _sets, (0.2, 2.0),
               lambda out: ["cluster", "--cache", "reference.npz", "--sets", f"{out}-sets", "--plan",
                            f"{out}-plan.json", "--min-faces", "2"]),
        _Stage("migrate", lambda out: ["migrate", "--data", f"{out}-pg"], _store, (0.05, 1.5)),
        _Stage("load", lambda out: ["load", "--data", f"{out}-pg", "--caches", "reference", "--cache", "reference.npz",
                                    "--sets", "reference-sets", "--batch", "4"], _store, (0.3, 3.0),
               lambda out: ["migrate", "--data", f"{out}-pg"]),
    ]  # fmt: skip
    for stage in stages:
        if stage.prepare:
            facesets(stage.prepare("reference"), base)
        code, _, err = facesets(stage.command("reference"), base)
        if code != 0:
            tally.judge(f"kill -9: {stage.name} reference run", f"exit {code}: {err[-160:]}")
            continue
        reference = stage.result(base, "reference")
        for seed in range(seeds):
            out = f"{stage.name.replace(' ', '-')}-killed-{seed}"
            if stage.prepare:
                facesets(stage.prepare(out), base)
            delay = random.Random(seed).uniform(*stage.delays)
            environment = {**os.environ, "PYTHONPATH": str(REPO)}
            victim = subprocess.Popen(
                [sys.executable, "-m", "facesets", *stage.command(out)], cwd=base, env=environment,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(delay)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            code, _, err = facesets(stage.command(out), base)
            problem, kind = problem_of(code, err)
            if not problem and stage.result(base, out) != reference:
                problem, kind = f"after a kill at {delay:.2f} s the result differs from an uninterrupted run", "lost"
            if not problem and list(base.rglob(f".{out}*.tmp")) + list(base.glob(f"{out}*/.*.tmp")):
                problem, kind = "temporary files were left behind", "lost"
            tally.judge(f"kill -9: {stage.name} at {delay:.2f} s (seed {seed})", problem, kind)


@dataclass(frozen=True)
class _Stage:
    name: str
    command: Callable[[str], list[str]]  # the command for the output named ``out``
    result: Callable[[Path, str], object]  # what must equal the uninterrupted run's
    delays: tuple[float, float]  # the kill comes this many seconds after the start
    prepare: Callable[[str], list[str]] | None = None


def _cache_records(where: Callable[[str], str]) -> Callable[[Path, str], object]:
    def records(base: Path, out: str) -> object:
        sys.path.insert(0, str(REPO))
        from facesets.artifacts.cache import load_cache

        data = load_cache(base / where(out))
        return sorted((Path(r.path).name, r.content_hash, r.status.value, r.faces) for r in data.images)

    return records


STORE_TABLES = ("galleries", "images", "gallery_images", "face_detections", "persons", "person_names")


def _store(base: Path, out: str) -> object:
    """The rows of each table of the store, and whether a server was left running when the command ended."""
    sys.path.insert(0, str(REPO))
    import psycopg

    from facesets.store.database import embedded_server

    data = base / f"{out}-pg"
    deadline = time.monotonic() + 30
    while _server_running(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    left_running = _server_running(data)
    with embedded_server(data) as url, psycopg.connect(url) as conn:
        rows = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone() for table in STORE_TABLES}
    return left_running, rows


def _server_running(data: Path) -> bool:
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def _queue(base: Path, out: str) -> object:
    sys.path.insert(0, str(REPO))
    from facesets.artifacts.queue import read_queue

    return sorted((Path(entry.path).name, entry.content_hash) for entry in read_queue(base / f"{out}-q.json"))


def _plan(base: Path, out: str) -> object:
    """The plan's sets and their member faces."""
    sys.path.insert(0, str(REPO))
    from facesets.artifacts.plan import read_plan

    plan = read_plan(base / f"{out}-cplan.json")
    return sorted((identity.set, sorted(face.key for face in identity.members)) for identity in plan.identities)


def _sets(base: Path, out: str) -> object:
    """Each face set's folder name, crop files and member keys."""
    found = []
    for folder in sorted((base / f"{out}-sets").glob("faceset_*")):
        members = json.loads((folder / "manifest.json").read_bytes())["members"]
        crops = sorted(path.name for path in folder.glob("*.jpg"))
        found.append((folder.name, crops, sorted(member["key"] for member in members)))
    return found


# -- a full disk -------------------------------------------------------------------------------------------


def run_full_disk(photos: list[Path], pack: Path, work: Path, tally: Tally) -> None:
    """Each stage writing onto a small tmpfs that fills up (needs root; otherwise said and skipped)."""
    base = work / "full"
    (base / "library" / "g" / "tn").mkdir(parents=True)
    (base / "library" / "g" / "index.json").write_text('{"title": "t"}')
    for index, photo in enumerate(photos):
        (base / "library" / "g" / f"{index}.jpg").write_bytes(photo.read_bytes())
    facesets(["queue", "add", "--queue", "q.json", "library"], base)
    facesets(["embed", "--queue", "q.json", "--cache", "c.npz", "--model-dir", str(pack)], base)
    facesets(["cluster", "--cache", "c.npz", "--sets", "tiny/sets", "--plan", "plan.json", "--min-faces", "2"], base)
    cases = [
        ("queue add", ["queue", "add", "--queue", "tiny/q.json", "library"]),
        ("embed", ["embed", "--queue", "q.json", "--cache", "tiny/c.npz", "--model-dir", str(pack)]),
        ("index", ["index", "--target", "library", "--caches", "tiny", "--model-dir", str(pack), "--no-clip"]),
        ("export", ["export", "--plan", "plan.json", "--sets", "tiny/sets"]),
        ("immich stage", ["immich", "stage", "--user", "peter", "--url", "", "--staging", "tiny/staging",
                          "--retries", "0"]),
    ]  # fmt: skip
    tiny = base / "tiny"
    with _fake_immich(photos) as (url, key):
        for name, args in cases:
            args = [url if arg == "" else arg for arg in args]
            if not _full_disk_case(base, tiny, name, args, {**os.environ, "IMMICH_API_KEY": key}, tally):
                return


def _full_disk_case(base: Path, tiny: Path, name: str, args: list[str], env: dict[str, str], tally: Tally) -> bool:
    """One command writing onto a tmpfs of 1 MB that is (nearly) full; False: no tmpfs can be mounted here."""
    tiny.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], capture_output=True)
    if mounted.returncode != 0:
        print(f"  full disk: not tried (mounting a small tmpfs needs root): {mounted.stderr.decode()[:80]}")
        return False
    (tiny / "sets").mkdir()
    # export and stage: room for a few files, not all
    _fill(tiny / "filler", 60_000 if name in ("export", "immich stage") else 0)
    try:
        code, _, err = facesets(args, base, env)
        problem, kind = problem_of(code, err, expected=(1,))
        if not problem and "disk is full" not in err and "No space left" not in err:
            problem = f"the message does not say the disk is full: {err.strip()[:160]}"
        if not problem and list(tiny.rglob(".*.tmp")) + list(tiny.rglob("*.part")):
            problem, kind = "temporary files were left on the full disk", "lost"
        tally.judge(f"full disk: {name}", problem, kind)
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
    return True


@contextlib.contextmanager
def _fake_immich(photos: list[Path]) -> Iterator[tuple[str, str]]:
    """An Immich server (the test suite's, which follows Immich's API) holding ``photos`` with one big face each;
    yields its URL and the API key of its user peter."""
    sys.path.insert(0, str(REPO))
    from tests.fakeimmich import FakeAsset, FakeImmich, fake_uuid
    from tests.immichlib import KEY, PETER

    assets = []
    for number, photo in enumerate(photos):
        width, height = Image.open(photo).size
        box = (0, 0, width, height)
        assets.append(FakeAsset(fake_uuid(number), f"/photos/{number}.jpg", photo.read_bytes(), faces=[box],
                                preview=(width, height), size=(width, height)))  # fmt: skip
    with FakeImmich(assets, [PETER]) as server:
        yield server.url, KEY


def _fill(path: Path, leave: int) -> None:
    """Fill the disk ``path`` is on, but for about ``leave`` bytes (room for a command to start writing)."""
    with contextlib.suppress(OSError), open(path, "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    if leave:
        with open(path, "r+b") as handle:
            handle.truncate(max(0, path.stat().st_size - leave))


# -- secrets -----------------------------------------------------------------------------------------------


def run_secrets(work: Path, tally: Tally) -> None:
    base = work / "secrets"
    base.mkdir()
    (base / "key.txt").write_text(SECRET)
    cases: list[tuple[str, list[str], dict[str, str]]] = [
        ("password in a mistyped --database", ["migrate", "--database", f"postgres//u:{SECRET}@127.0.0.1/f"], {}),
        ("password in DATABASE_URL", ["persons", "list"],
         {"DATABASE_URL": f"postgresql://u:{SECRET}@127.0.0.1:9/f?connect_timeout=1"}),
        ("password= in a connection string", ["migrate", "--database", f"host=127.0.0.1 port=9 password={SECRET}"], {}),
        ("password in the Immich URL", ["immich", "stage", "--user", "p", "--url", f"http://a:{SECRET}@127.0.0.1:9",
                                        "--retries", "0"], {"IMMICH_API_KEY": "k"}),
        ("apiKey in the Immich URL", ["immich", "stage", "--user", "p", "--url", f"http://127.0.0.1:9/?apiKey={SECRET}",
                                      "--retries", "0"], {"IMMICH_API_KEY": "k"}),
        ("API key in the environment", ["immich", "stage", "--user", "p", "--url", "http://127.0.0.1:9", "--retries",
                                        "0"], {"IMMICH_API_KEY": SECRET}),
        ("API key in a key file", ["immich", "stage", "--user", "p", "--url", "http://127.0.0.1:9", "--retries", "0"],
         {"IMMICH_API_KEY_FILE": str(base / "key.txt")}),
    ]  # fmt: skip
    for name, args, env in cases:
        code, out, err = facesets([*args, "-vv"], base, env)
        problem, kind = problem_of(code, err, expected=(1, 2))
        written = b"".join(p.read_bytes() for p in base.rglob("*") if p.is_file() and p.name != "key.txt")
        if SECRET in out + err or SECRET.encode() in written:
            problem, kind = "the secret was printed or written", "secret"
        tally.judge(f"secret: {name}", problem, kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--pack", default="scrfd500m-mbf")
    parser.add_argument("--seeds", type=int, default=3, help="kill moments per stage")
    parser.add_argument("--quick", action="store_true", help="a few cases of each part")
    args = parser.parse_args()
    photos = sorted((args.shared / "data" / "faces" / "celeb5").rglob("*.jpg"))[: 12 if args.quick else 40]
    pack = (args.shared / "models" / args.pack).resolve()
    if not photos or not pack.is_dir():
        print(f"error: needs {args.shared}/data/faces and {args.shared}/models/{args.pack}", file=sys.stderr)
        return 1
    tally = Tally()
    work = Path(tempfile.mkdtemp(prefix="facesets-torture-"))
    work.chmod(0o755)  # as root, the embedded PostgreSQL runs as a system user that must reach its data folder
    try:
        print("bad input ...", flush=True)
        run_bad_inputs(photos[0].read_bytes(), pack, work, tally, args.quick)
        print("damaged artifacts ...", flush=True)
        run_damaged(photos[0].read_bytes(), pack, work, tally, args.quick)
        print("kill -9 ...", flush=True)
        run_kills(photos, pack, work, tally, 1 if args.quick else args.seeds)
        print("full disk ...", flush=True)
        run_full_disk(photos[:10], pack, work, tally)
        print("secrets ...", flush=True)
        run_secrets(work, tally)
    finally:
        _unlock(work)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"cases tried {tally.tried}, survived {tally.survived}, crashes {len(tally.crashes)}, hangs "
        f"{len(tally.hangs)}, data lost {len(tally.lost)}, secrets found {len(tally.secrets)}"
    )
    return 0 if tally.survived == tally.tried else 1


if __name__ == "__main__":
    sys.exit(main())
