"""facesets: turn large photo libraries into searchable faces and identities.

The package is a library with a thin command line (:mod:`facesets.cli`). Modules follow the pipeline:

- sources:   :mod:`facesets.galleries` (gallery discovery and listing), :mod:`facesets.queue` (``queue.json``)
- decoding:  :mod:`facesets.decode` (bytes -> upright BGR pixels, reduced JPEG decoding, guards)
- models:    :mod:`facesets.packs` (face model packs and their identity), :mod:`facesets.runtime`
             (onnxruntime sessions and provider choice), :mod:`facesets.clip` (CLIP model lookup)
- engines:   :mod:`facesets.faces` (detection, alignment, face embeddings), :mod:`facesets.clipvisual`
             (CLIP image embeddings)
- stages:    :mod:`facesets.embed` (queue -> face cache), :mod:`facesets.index` (galleries -> face cache,
             CLIP store and index state, with four skip layers), :mod:`facesets.backfill` (stat only)
- artifacts: :mod:`facesets.layout` (every file name the stages pass on), :mod:`facesets.plan` (the cluster
             plan, typed), :mod:`facesets.cache` (face caches,
             NPZ schema 2, crash-safe journal), :mod:`facesets.cacheops`
             (extend, purge, summary), :mod:`facesets.indexstate` (SQLite index state),
             :mod:`facesets.clipstore` (CLIP vectors per model)
- database:  :mod:`facesets.database` (server, connections, pool), :mod:`facesets.migrations` (schema)
- shared:    :mod:`facesets.errors` (the one exception hierarchy), :mod:`facesets.records` (typed records),
             :mod:`facesets.fsio` (atomic writes, locks), :mod:`facesets.pipeline` (bounded maps),
             :mod:`facesets.paths` (Linux <-> Windows paths), :mod:`facesets.progress`, :mod:`facesets.settings`
"""

__version__ = "0.1.0"
