from pathlib import Path

import orjson
import pytest

from facesets.artifacts.queue import QueueEntry, append_entries, read_queue, scan_folders, write_queue
from facesets.artifacts.records import Source, SourceKind
from facesets.base.errors import QueueError


def entry(name: str) -> QueueEntry:
    return QueueEntry(f"/mnt/d/p/{name}", f"D:\\p\\{name}", "ab" * 32, 10, Source(SourceKind.FOLDER))


def test_round_trip_and_format(tmp_path: Path) -> None:
    queue = tmp_path / "queue.json"
    write_queue(queue, [entry("a.jpg")])
    document = orjson.loads(queue.read_bytes())
    assert document["format"] == "facesets.queue" and document["version"] == 1
    assert document["entries"][0] == {
        "path": "/mnt/d/p/a.jpg",
        "windows_path": "D:\\p\\a.jpg",
        "content_hash": "ab" * 32,
        "size": 10,
        "source": {"kind": "folder"},
    }
    assert read_queue(queue) == [entry("a.jpg")]


def test_append_skips_queued_paths(tmp_path: Path) -> None:
    queue = tmp_path / "queue.json"
    assert append_entries(queue, [entry("a.jpg"), entry("b.jpg"), entry("a.jpg")]) == 2
    assert append_entries(queue, [entry("b.jpg"), entry("c.jpg")]) == 1
    assert [e.path for e in read_queue(queue)] == ["/mnt/d/p/a.jpg", "/mnt/d/p/b.jpg", "/mnt/d/p/c.jpg"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_malformed_queue_is_left_untouched(tmp_path: Path) -> None:
    queue = tmp_path / "queue.json"
    queue.write_bytes(b'{"format": "facesets.queue", "version": 1, "entries": [')
    with pytest.raises(QueueError, match="not valid JSON"):
        append_entries(queue, [entry("a.jpg")])
    assert queue.read_bytes() == b'{"format": "facesets.queue", "version": 1, "entries": ['


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"entries": []}, "is not a facesets queue"),
        ({"format": "facesets.queue", "version": 9, "entries": []}, "has version 9"),
        ({"format": "facesets.queue", "version": 1, "entries": [{"size": 1}]}, r"entry 1 is malformed \(path None"),
        ({"format": "facesets.queue", "version": 1, "entries": [{"path": None}]}, r"entry 1 is malformed \(path None"),
        ({"format": "facesets.queue", "version": 1, "entries": [{"path": "a", "source": [1, 2]}]}, r"source \[1, 2\]"),
        ({"format": "facesets.queue", "version": 1, "entries": [{"path": "a", "size": "9"}]}, "size '9'"),
        ({"format": "facesets.queue", "version": 1, "entries": [{"path": "a"}, 7]}, "entry 2 is malformed"),
        ({"format": "facesets.queue", "version": 1, "entries": {"path": "a"}}, "no list of entries"),
    ],
)
def test_refused_queues(tmp_path: Path, document: dict, message: str) -> None:
    queue = tmp_path / "queue.json"
    queue.write_bytes(orjson.dumps(document))
    with pytest.raises(QueueError, match=message):
        read_queue(queue)


def test_missing_queue(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="does not exist"):
        read_queue(tmp_path / "nope.json")


def test_scan_hashes_images_and_survives_loops(tmp_path: Path, sample_photos: list[Path]) -> None:
    library = tmp_path / "library"
    (library / "a").mkdir(parents=True)
    (library / "a" / "one.jpg").write_bytes(sample_photos[0].read_bytes())
    (library / "a" / "notes.txt").write_text("not an image")
    (library / "b").mkdir()
    (library / "b" / "TWO.JPG").write_bytes(sample_photos[1].read_bytes())
    (library / "b" / "loop").symlink_to(library)
    result = scan_folders([library])
    assert [Path(e.path).name for e in result.entries] == ["one.jpg", "TWO.JPG"]
    assert len(result.entries[0].content_hash) == 64
    assert result.entries[0].size == sample_photos[0].stat().st_size
    assert [why for _, why in result.skipped] == ["folder already visited (symlink loop)"]


def test_a_source_keeps_its_known_fields_and_an_empty_one_is_unknown() -> None:
    from facesets.artifacts.records import NO_SOURCE, ImageRecord, ImageStatus

    stored = {"kind": "immich", "asset_id": "a1", "checksum": "c=", "added_later": "x", "user": None}
    source = Source.from_dict(stored)
    assert source == Source(SourceKind.IMMICH, asset_id="a1", checksum="c=")
    assert source.to_dict() == {"kind": "immich", "asset_id": "a1", "checksum": "c="}
    assert Source.from_dict({}) is NO_SOURCE and Source.from_dict(None) is NO_SOURCE and not NO_SOURCE
    record = ImageRecord("/p/a.jpg", "ab" * 32, 1, ImageStatus.OK, source=source)
    assert ImageRecord.from_dict(record.to_dict()) == record
    assert "source" not in ImageRecord("/p/b.jpg", "cd" * 32, 1, ImageStatus.OK).to_dict()  # as older caches
