"""The PostgreSQL store: server and connections (:mod:`.database`), schema (:mod:`.migrations`), binary
COPY (:mod:`.copy`), the loader (:mod:`.load`, :mod:`.loadsets`), persons (:mod:`.persons`,
:mod:`.personops`) and search (:mod:`.search`)."""
