"""Process-group set-up shared by every command.

Under ``torchrun`` the usual env vars (RANK, WORLD_SIZE, MASTER_ADDR…) are set; run
directly, a one-process group is created so the code path is the same. The backend
is nccl when CUDA is available (one GPU per local rank) and gloo otherwise.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from torchrec_kd.config import DistributedConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes files and shows progress."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(cfg: DistributedConfig) -> DistEnv:
    """Create (or reuse) the default process group.

    Args:
        cfg (DistributedConfig): backend choice and collective timeout.

    Returns:
        DistEnv: rank, world size and the device this rank computes on.
    """
    # Without torchrun's env vars: a one-process group on a free local port. The
    # environment is left alone, so processes this one starts are not misled by it.
    launched = "RANK" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    created = not dist.is_initialized()
    if created:
        timeout = datetime.timedelta(seconds=cfg.timeout_s)
        if launched:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout, rank=0, world_size=1,
                                    init_method=f"tcp://127.0.0.1:{_free_port()}")
    env = DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)
    if created:  # once per process, not once per recipe of an experiment
        logger.info("rank %d/%d on %s (%s)", env.rank, env.world_size, env.device, backend)
    return env


def shutdown_distributed(synchronize: bool = False) -> None:
    """Destroy the default process group if this process made one.

    Args:
        synchronize (bool): wait for every rank first (on success: no rank closes its
            connections while a peer is still in a collective). Leave it off on an error
            path, where the other ranks may never arrive.
    """
    if dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
