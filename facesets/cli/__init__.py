"""The ``facesets`` command line: option parsing and messages only; the work is in the library.

One module per command family (:mod:`.embed`: queue, embed, cache; :mod:`.index`: index, backfill;
:mod:`.cluster`: cluster, export; :mod:`.store`: migrate, load, persons, search, similar; :mod:`.immich`;
:mod:`.flow`: finalize), the option bundles in :mod:`.options`, the group and the error handling in
:mod:`.main`. Stage modules (numpy, OpenCV, onnxruntime behind them) are imported inside the commands that
use them, so that ``--help`` and runs with nothing to do start fast.
"""

from .main import cli, main, run

__all__ = ["cli", "main", "run"]
