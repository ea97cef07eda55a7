"""Staging from Immich: the HTTP client (:mod:`.client`), users and keys (:mod:`.config`), the resumable
stage (:mod:`.stage`), its state journal (:mod:`.state`) and the paths it may write (:mod:`.paths`)."""
