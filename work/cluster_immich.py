"""Cluster and export, as the original tool's step: ``python work/cluster_immich.py --cache caches/peter.npz``.

Clusters the caches into a plan (the options of ``facesets cluster --cache``), then exports that plan into the
face sets (the options of ``facesets export``); see ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.cli import main
from facesets.cli.cluster import cluster_then_export

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], cluster_then_export("cluster_immich.py"), "cluster_immich.py"))
