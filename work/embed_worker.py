"""The embed worker users know: ``python work/embed_worker.py --queue queue.json --cache out.npz``.

The same as ``facesets embed``; runs from a copy of this repository without installing it (the Windows
side needs only requirements-win.txt).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.cli import main
from facesets.cli.embed import embed

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], embed, "embed_worker.py"))
