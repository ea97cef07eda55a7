"""The files stages pass to each other, each with one owner: every name (:mod:`.layout`), typed records
(:mod:`.records`), ``queue.json`` (:mod:`.queue`), face caches and their operations (:mod:`.cache`,
:mod:`.cacheops`), the cluster plan (:mod:`.plan`), the face-set folders (:mod:`.facesetdir`), the gallery
index state (:mod:`.indexstate`) and the CLIP vector store (:mod:`.clipstore`)."""
