"""Checkpoint metadata is never unpickled beyond DCP's own classes."""

import os
import pickle
import shlex

import pytest
import torch
import torch.distributed.checkpoint as dcp

from torchrec_kd.checkpoint.safe_dcp import SafeFileSystemReader
from torchrec_kd.errors import UnsafeCheckpointError


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``: the proof an unpickler ran it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def test_real_metadata_loads(tmp_path):
    dcp.save({"w": torch.arange(6.0).view(2, 3)}, checkpoint_id=str(tmp_path), no_dist=True)
    state = {"w": torch.zeros(2, 3)}
    dcp.load(state, storage_reader=SafeFileSystemReader(str(tmp_path)), no_dist=True)
    assert torch.equal(state["w"], torch.arange(6.0).view(2, 3))


def test_malicious_metadata_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"  # this test's own path: no other run's file can make it pass or fail
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UnsafeCheckpointError, match="refusing to load checkpoint metadata that builds posix.system"):
        SafeFileSystemReader(str(tmp_path)).read_metadata()
    assert not marker.exists()
    pickle.loads((tmp_path / ".metadata").read_bytes())  # the payload is live: plain unpickling runs it
    assert marker.exists()


def test_truncated_metadata_is_refused(tmp_path):
    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(tmp_path), no_dist=True)
    meta = tmp_path / ".metadata"
    meta.write_bytes(meta.read_bytes()[:50])
    with pytest.raises(UnsafeCheckpointError, match="truncated or corrupted"):
        SafeFileSystemReader(str(tmp_path)).read_metadata()
