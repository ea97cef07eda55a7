"""Faces from pixels: the per-image stages and bounded pools both entry points share (:mod:`.stages`), a queue
into a face cache (:mod:`.queue`), galleries with four skip layers (:mod:`.index`) and the stat-only
backfill (:mod:`.backfill`)."""
