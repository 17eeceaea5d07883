"""Shared fixtures: repo paths, tiny configs, and the shared data folder."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = REPO / "configs" / "tiny_synthetic.yaml"

# Keep single-process tests from oversubscribing the 2 cores when run beside spawned ranks.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_config_path() -> Path:
    return TINY
