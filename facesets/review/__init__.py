"""``facesets serve``: the local review page on the PostgreSQL store. The read-only queries of its pages
(:mod:`.queries`), face crops and photos cut on demand from the store's known images (:mod:`.images`), and the
ASGI app with its security (:mod:`.app`); every change is a call of :mod:`facesets.store.personops`, the same
the ``persons`` commands make. htmx 2 (0BSD licence) is vendored in ``static/``: nothing is fetched at run time."""
