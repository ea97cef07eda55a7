import pytest

from facesets.base.errors import PathMappingError
from facesets.base.paths import require_windows, to_linux, to_windows


@pytest.mark.parametrize(
    ("linux", "windows"),
    [
        ("/mnt/x/a/b.jpg", "X:\\a\\b.jpg"),
        ("/mnt/c/Users/Zoë/My Photos/café 1.jpg", "C:\\Users\\Zoë\\My Photos\\café 1.jpg"),
        ("/mnt/d", "D:\\"),
        ("//nas/photos/2019/a.jpg", "\\\\nas\\photos\\2019\\a.jpg"),
    ],
)
def test_round_trip(linux: str, windows: str) -> None:
    assert to_windows(linux) == windows
    assert to_linux(windows) == (linux if linux != "/mnt/d" else "/mnt/d")


def test_drive_letter_case() -> None:
    assert to_windows("/mnt/E/x.jpg") == "E:\\x.jpg"
    assert to_linux("e:\\x.jpg") == "/mnt/e/x.jpg"
    assert to_linux("E:/x/y.jpg") == "/mnt/e/x/y.jpg"


def test_unmappable() -> None:
    assert to_windows("/home/peter/a.jpg") is None
    assert to_windows("/mnt/data/a.jpg") is None  # not a drive letter
    assert to_linux("relative\\a.jpg") is None
    with pytest.raises(PathMappingError, match=r"/home/peter/a\.jpg has no Windows form"):
        require_windows("/home/peter/a.jpg")
