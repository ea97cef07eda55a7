"""Workflows over several stages: ``finalize`` for one staged user (:mod:`.finalize`) and the embed step
on a Windows machine (:mod:`.winside`)."""
