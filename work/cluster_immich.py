"""Cluster and export, as the original tool's step: ``python work/cluster_immich.py --cache caches/peter.npz``.

Takes the options of ``facesets cluster`` (see ``--help``), then applies the plan with ``facesets export``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.cli import main


def run(argv: list[str]) -> int:
    code = main(["cluster", *argv])
    if code or any(arg in ("-h", "--help") for arg in argv):
        return code
    plan = argv[argv.index("--plan") + 1] if "--plan" in argv else "clusters.json"
    return main(["export", "--plan", plan])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
