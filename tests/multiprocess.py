"""Run a function on N gloo ranks in fresh processes (as TorchRec's multi_process tests do)."""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., Any], out_dir: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, tmp_path: Path, *args: Any) -> list:
    """Spawn ``world_size`` processes running ``fn(rank, world_size, *args)``; return their results.

    ``fn`` must be a module-level function; results must be ``torch.save``-able.
    """
    out = Path(tmp_path) / f"ranks_{fn.__name__}_{world_size}"
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_entry, args=(world_size, _free_port(), fn, str(out), args), nprocs=world_size,
                       join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
