"""Checkpoints: saved float models (``model_io``), resumable training state (``training_state``),
file checksums (``integrity``) and a DCP reader that unpickles only an allow-list (``safe_dcp``)."""
