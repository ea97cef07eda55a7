"""Shared ground every stage stands on: the one exception hierarchy (:mod:`.errors`), the defaults
(:mod:`.settings`), atomic writes and locks (:mod:`.fsio`), progress bars (:mod:`.progress`), bounded maps
and regular-file reads (:mod:`.pipeline`), Linux/Windows paths (:mod:`.paths`) and safe messages
(:mod:`.messages`). Imports nothing of facesets outside itself."""
