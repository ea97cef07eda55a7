"""Identities from faces: the algorithms (:mod:`.algorithms`) on the neighbour graph (:mod:`.neighbors`),
thresholds learned from the library (:mod:`.calibration`) and per model (:mod:`.thresholds`), the plan from
face caches with matching and refine gates (:mod:`.identify`), and the scores of labeled sets
(:mod:`.evaluation`)."""
