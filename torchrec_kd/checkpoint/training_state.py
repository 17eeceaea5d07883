"""Resumable training state: sharded model + optimizers + step + RNG, written atomically.

Layout under the checkpoint root (``<output_dir>/train_state/<name>/``, ``RunLayout.train_state``)::

    step_00000400/            a complete checkpoint
        state/                torch.distributed.checkpoint shards (model, optimizer)
        meta.json             step, RNG states, config, and the size + sha256 of every file
    .tmp-step_00000600/       being written: never loaded, removed on the next start

Every rank writes its shards into the ``.tmp`` directory; after a barrier rank 0 writes
``meta.json`` and renames the directory, which is atomic on one file system: a crash
at any point leaves either the previous checkpoint or the new complete one. Loading
checks every file's size and hash against ``meta.json`` first and refuses a truncated or
corrupted checkpoint with an error naming the file. Data position is the step: our
streams are indexed by global batch, so resuming at step ``s`` reads batch ``s`` next.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer

from torchrec_kd.checkpoint.integrity import file_records, verify_files
from torchrec_kd.checkpoint.safe_dcp import SafeFileSystemReader
from torchrec_kd.core.layout import META_FILE as META
from torchrec_kd.errors import CorruptArtifactError

logger = logging.getLogger(__name__)

STATE_DIR = "state"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"


CorruptCheckpointError = CorruptArtifactError  # a training checkpoint's files changed after it was written


class TrainingCheckpointer:
    """Save and restore the full training state of a pipelined recipe.

    Args:
        root (Path): directory holding ``step_*`` checkpoints.
        keep (int): how many complete checkpoints to keep (oldest removed first).
    """

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)

    def checkpoints(self) -> List[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith(PREFIX) and (p / META).is_file())

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, or None."""
        done = self.checkpoints()
        return done[-1] if done else None

    def save(self, model: nn.Module, optimizer: KeyedOptimizer, step: int, extra: Dict[str, Any]) -> Path:
        """Write the training state at ``step`` (collective: every rank calls it).

        Args:
            model (nn.Module): the sharded model.
            optimizer (KeyedOptimizer): the optimizer being stepped (fused + dense).
            step (int): optimizer steps done.
            extra (Dict[str, Any]): JSON-serialisable facts to keep (e.g. the config).

        Returns:
            Path: the complete checkpoint directory.
        """
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(tmp / STATE_DIR))
        rng = [None] * dist.get_world_size()
        dist.all_gather_object(rng, torch.get_rng_state().tolist())
        if dist.get_rank() == 0:
            meta = {"step": step, "world_size": dist.get_world_size(), "rng": rng,
                    "files": file_records(tmp, exclude=[META]), **extra}
            (tmp / META).write_text(json.dumps(meta))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # the commit point
            for old in self.checkpoints()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            logger.info("checkpoint at step %d: %s", step, final)
        dist.barrier()
        return final

    def verify(self, path: Path) -> Dict[str, Any]:
        """Check every file of a checkpoint against its ``meta.json``; return the meta.

        Raises:
            CorruptCheckpointError: a file is missing, truncated or altered.
        """
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError) as e:
            raise CorruptCheckpointError(f"{path / META}: unreadable ({e}); delete {path} to resume from an earlier "
                                         "checkpoint") from None
        verify_files(path, meta.get("files", {}), f"delete {path} to resume from an earlier checkpoint")
        return meta

    def load(self, path: Path, model: nn.Module, optimizer: KeyedOptimizer) -> Dict[str, Any]:
        """Restore model and optimizer state in place (resharding to the current plan).

        Args:
            path (Path): a complete checkpoint directory.
            model (nn.Module): the sharded model, built as when it was saved.
            optimizer (KeyedOptimizer): its optimizer.

        Returns:
            Dict[str, Any]: the checkpoint's meta (``step`` …).
        """
        meta = self.verify(path) if dist.get_rank() == 0 else None
        shared = [meta]
        dist.broadcast_object_list(shared, src=0)
        meta = shared[0]
        optimizer.init_state()  # optimizer state is lazy: create it so DCP can load into it
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path / STATE_DIR)))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        rng = meta.get("rng") or []
        if dist.get_rank() < len(rng):
            torch.set_rng_state(torch.tensor(rng[dist.get_rank()], dtype=torch.uint8))
        logger.info("resumed from %s (step %d)", path, meta["step"])
        return meta

    def clean_incomplete(self) -> None:
        """Remove half-written checkpoints a crash left behind (rank 0)."""
        if self.root.is_dir() and dist.get_rank() == 0:
            for p in self.root.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    logger.warning("removing incomplete checkpoint %s", p)
                    shutil.rmtree(p, ignore_errors=True)
