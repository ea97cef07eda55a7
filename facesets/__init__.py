"""facesets: turn large photo libraries into searchable faces and identities.

The package is a library with a thin command line (:mod:`facesets.cli`). Modules follow the pipeline:

- :mod:`facesets.queue`   the work list that sources write and the embed worker reads (``queue.json``)
- :mod:`facesets.decode`  image bytes -> RGB pixels (EXIF orientation, reduced JPEG decoding, guards)
- :mod:`facesets.packs`   model packs on disk and their identity
- :mod:`facesets.runtime` onnxruntime sessions and execution-provider choice
- :mod:`facesets.faces`   detection, 5-point alignment and embeddings (the face engine)
- :mod:`facesets.cache`   face caches (NPZ, schema 2) with a crash-safe journal
- :mod:`facesets.embed`   the embed stage: queue in, cache out
- :mod:`facesets.errors`  the one exception hierarchy
"""

__version__ = "0.1.0"
