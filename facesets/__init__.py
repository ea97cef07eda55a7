"""facesets: turn large photo libraries into searchable faces and identities.

A library with a thin command line (:mod:`facesets.cli`), in subpackages that follow the pipeline; each
imports only from those before it (``tests/test_layout.py`` checks it):

- :mod:`facesets.base`       errors, settings, atomic writes and locks, progress, bounded maps, paths, messages
- :mod:`facesets.models`     model packs, onnxruntime sessions, decoding, faces (SCRFD + ArcFace), CLIP towers
- :mod:`facesets.artifacts`  every file passed between stages: layout, records, queue, caches, plan, face-set
                             folders, index state, CLIP store
- :mod:`facesets.sources`    galleries and Immich (client, config, stage, state, paths)
- :mod:`facesets.cluster`    algorithms, neighbour graph, learned and per-model thresholds, plans, evaluation
- :mod:`facesets.embed`      the shared per-image stages; queue embed, gallery index, backfill
- :mod:`facesets.export`     face sets from a plan, and their report
- :mod:`facesets.store`      PostgreSQL: server, schema, copy, load, persons, search
- :mod:`facesets.flow`       finalize for one staged user, the Windows embed side
- :mod:`facesets.review`     the review page (``facesets serve``): app, queries, crops
- :mod:`facesets.cli`        the ``facesets`` command

Order: base < models < artifacts < sources, cluster < embed, export, store < flow, review < cli.
"""

__version__ = "0.1.0"
