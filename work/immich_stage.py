"""The Immich stage users know: ``python work/immich_stage.py --user peter``.

The same as ``facesets immich stage`` (see ``--help``); runs from a checkout without installing it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.cli import main

if __name__ == "__main__":
    sys.exit(main(["immich", "stage", *sys.argv[1:]]))
