"""The Immich stage users know: ``python work/immich_stage.py --user peter``.

The same as ``facesets immich stage`` (see ``--help``); runs from a checkout without installing it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.cli import main
from facesets.cli.immich import immich_stage

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], immich_stage, "immich_stage.py"))
