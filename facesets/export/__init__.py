"""Face sets on disk: applying a cluster plan to ``facesets_swap_ready/`` (:mod:`.sets`) and the contact
sheets and report (:mod:`.report`)."""
