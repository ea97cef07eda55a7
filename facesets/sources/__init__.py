"""Where photos come from: local galleries (:mod:`.galleries`) and Immich servers (:mod:`.immich`); plain
folders are queued by :func:`facesets.artifacts.queue.scan_folders`."""
