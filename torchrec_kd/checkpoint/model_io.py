"""Save and load sharded models with ``torch.distributed.checkpoint`` (DCP).

DCP writes each rank's shards plus global metadata, and on load reshards to
whatever plan the loading job has: a teacher trained on 2 ranks loads on 1 or 8.
``load_module`` can load a checkpoint into a sub-module of a bigger model (the
teacher inside a distillation model) by mapping key prefixes. Loading never
unpickles arbitrary objects: tensors are read with ``weights_only=True`` by DCP and
its metadata through :class:`~torchrec_kd.checkpoint.safe_dcp.SafeFileSystemReader`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from torchrec_kd.checkpoint.integrity import file_records, verify_files
from torchrec_kd.checkpoint.safe_dcp import SafeFileSystemReader
from torchrec_kd.core.layout import META_FILE, MODEL_DIR
from torchrec_kd.core.table_keys import ebc_layout_key
from torchrec_kd.errors import CheckpointError


def save_model(model: nn.Module, path: Path, meta: Dict[str, Any], model_prefix: str = "", ckpt_prefix: str = "") -> None:
    """Save ``model.state_dict()`` (sharded) under ``path/model`` and ``meta`` as JSON.

    Args:
        model (nn.Module): usually a ``DistributedModelParallel``.
        path (Path): checkpoint directory (created).
        meta (Dict[str, Any]): config and facts needed to rebuild the model.
        model_prefix (str): save only keys under it (e.g. the student of a distillation model)…
        ckpt_prefix (str): …renamed to start with this instead (e.g. ``model.``, as ``RankerTrain``).
    """
    path = Path(path)
    # a quantization-aware student's tables are saved in the plain DLRM layout (quantize, export)
    state = {ckpt_prefix + ebc_layout_key(k[len(model_prefix):]): v
             for k, v in model.state_dict().items() if k.startswith(model_prefix)}
    dcp.save(state, checkpoint_id=str(path / MODEL_DIR))
    dist.barrier()  # every rank's shards are on disk before they are recorded
    if dist.get_rank() == 0:
        meta = {**meta, "files": file_records(path / MODEL_DIR)}
        (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    dist.barrier()


def read_meta(path: Path) -> Dict[str, Any]:
    """The JSON written beside a checkpoint by :func:`save_model`."""
    f = Path(path) / META_FILE
    if not f.is_file():
        raise CheckpointError(f"{f} not found: {path} is not a torchrec_kd checkpoint "
                          "(run train-teacher / train-student / distill first)")
    try:
        meta = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable ({e}); the checkpoint is damaged: delete {path} and train it again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{f}: not a checkpoint description; delete {path} and train it again")
    return meta


def verify_checkpoint(path: Path) -> Dict[str, Any]:
    """Check a checkpoint's files against the sizes and hashes its ``meta.json`` recorded; return the meta.

    Raises:
        CheckpointError: no meta; CorruptArtifactError: a shard missing, truncated or altered.
    """
    meta = read_meta(path)
    verify_files(Path(path) / MODEL_DIR, meta.get("files", {}), f"delete {path} and train it again")
    return meta


def load_module(model: nn.Module, path: Path, model_prefix: str = "", ckpt_prefix: str = "") -> None:
    """Load a checkpoint into ``model`` (or the part of it under ``model_prefix``).

    Keys ``model_prefix + k`` of ``model.state_dict()`` are read from ``ckpt_prefix + k``
    in the checkpoint; DCP reshards to the current plan.

    Args:
        model (nn.Module): the (sharded) model to fill in place.
        path (Path): checkpoint directory from :func:`save_model`.
        model_prefix (str): prefix of the target sub-module's keys in ``model``.
        ckpt_prefix (str): prefix of the same keys in the checkpoint.

    Raises:
        CheckpointError: the checkpoint is damaged, lacks a key the model has, or holds a tensor of
            another shape (named with both shapes) — it was saved from a different model.
    """
    full = model.state_dict()
    wanted = {ckpt_prefix + k[len(model_prefix):]: v for k, v in full.items() if k.startswith(model_prefix)}
    if not wanted:
        raise KeyError(f"no parameters under '{model_prefix}' in the model")
    if (Path(path) / META_FILE).is_file():  # a final checkpoint (the best-so-far snapshot has none)
        verify_checkpoint(path)
    model_dir = Path(path) / MODEL_DIR
    _check_fits(model_dir, wanted)
    dcp.load(wanted, storage_reader=SafeFileSystemReader(str(model_dir)))
    # the rest of the model loads its own tensors back: some sharded modules (e.g. an
    # EmbeddingCollection's pre-load hook) require all of their keys to be present
    full.update({model_prefix + k[len(ckpt_prefix):]: v for k, v in wanted.items()})
    model.load_state_dict(full, strict=False)


def _check_fits(model_dir: Path, wanted: Dict[str, Any]) -> None:
    """Every wanted key is in the checkpoint with the model's (global) shape, or a one-line CheckpointError.

    DCP's own message for a mismatch is a bare ValueError (or, on N ranks, a CheckpointException
    holding one per rank) from inside its planner; checking its metadata first names the file and key.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    saved = SafeFileSystemReader(str(model_dir)).read_metadata().state_dict_metadata
    missing = [k for k in wanted if k not in saved]
    what_to_do = ("it was saved from another model: load it with the config that trained it "
                  f"({model_dir.parent / META_FILE} records it), or train it again")
    if missing:
        raise CheckpointError(f"{model_dir}: {len(missing)} key(s) of the model are not in the checkpoint "
                              f"(first: {missing[0]}); {what_to_do}")
    for key, value in wanted.items():
        meta = saved[key]
        # ShardedTensor and DTensor report their global size, as the checkpoint records it
        if isinstance(meta, TensorStorageMetadata) and hasattr(value, "size"):
            have, want = list(meta.size), list(value.size())
            if have != want:
                raise CheckpointError(f"{model_dir}: {key} has shape {have} in the checkpoint but {want} in the "
                                      f"model; {what_to_do}")


def load_full_state_dict(path: Path) -> Dict[str, Any]:
    """Every tensor of a checkpoint, unsharded, in this process (no process group needed).

    Meant for inspection, tests and export of models that fit in memory.

    Args:
        path (Path): checkpoint directory from :func:`save_model`.

    Returns:
        Dict[str, Tensor]: full tensors by key.
    """
    import torch
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    verify_checkpoint(path)
    model_dir = str(Path(path) / MODEL_DIR)
    metadata = SafeFileSystemReader(model_dir).read_metadata()
    state = {k: torch.empty(m.size, dtype=m.properties.dtype)
             for k, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
    dcp.load(state, storage_reader=SafeFileSystemReader(model_dir), no_dist=True)
    return state


def checkpoint_fingerprint(path: Path) -> str:
    """sha256 over a checkpoint's meta.json, DCP metadata and shard file names and sizes.

    Cheap for any checkpoint size (shard contents are covered by DCP's metadata, which
    changes with every save) and changes whenever the checkpoint is rewritten.
    """
    path = Path(path)
    h = hashlib.sha256()
    for f in [path / META_FILE, path / MODEL_DIR / ".metadata"]:
        h.update(f.name.encode())
        h.update(f.read_bytes() if f.is_file() else b"<missing>")
    for f in sorted((path / MODEL_DIR).glob("*.distcp")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()
