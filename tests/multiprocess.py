"""Run a function on N gloo ranks in fresh processes (as TorchRec's multi_process tests do), and wait for a
TorchX app; both with a deadline, so a hang fails its test instead of the whole session."""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

# how much of each rank's stderr an error message carries
_LOG_TAIL_CHARS = 2500
# the longest a multi-process test may run before its ranks are killed (tests take seconds to a minute)
RANKS_TIMEOUT_S = 600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., Any], out_dir: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1")
    # stderr (Python's and C++'s) into a file the parent reads back: a rank killed by a
    # signal leaves no Python traceback, and its last lines are what says why
    log = os.open(Path(out_dir) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    faulthandler.enable()  # a fatal signal prints every thread's Python stack
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.barrier()  # no rank tears down while another is still in a collective
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _logs(out: Path, world_size: int, tail: int = 0) -> str:
    """Every rank's stderr (its last ``tail`` characters when ``tail`` > 0)."""
    parts = []
    for r in range(world_size):
        log = out / f"rank{r}.log"
        if log.is_file():
            text = log.read_text(errors="replace")
            parts.append(f"--- rank {r} stderr ---\n{text[-tail:] if tail else text}")
    return "\n".join(parts)


def run_ranks(fn: Callable[..., Any], world_size: int, tmp_path: Path, *args: Any,
              timeout: float = RANKS_TIMEOUT_S) -> list:
    """Spawn ``world_size`` processes running ``fn(rank, world_size, *args)``; return their results.

    ``fn`` must be a module-level function; results must be ``torch.save``-able. Each rank's
    stderr is echoed to this process's stderr (pytest shows it with a failure). A rank killed
    by a signal raises an error that carries the end of its stderr, unless every rank had
    already returned its result: a crash in process teardown is reported as a warning. Ranks
    still running after ``timeout`` seconds (a hang in a collective) are killed and the call
    fails with their stderr, instead of blocking the test session forever.
    """
    out = Path(tmp_path) / f"ranks_{fn.__name__}_{world_size}"
    out.mkdir(parents=True, exist_ok=True)
    for r in range(world_size):
        (out / f"rank{r}.pt").unlink(missing_ok=True)
    try:
        context = mp.start_processes(_entry, args=(world_size, _free_port(), fn, str(out), args),
                                     nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in context.processes:
                    if p.is_alive():
                        p.kill()
                for p in context.processes:
                    p.join(10)
                raise RuntimeError(f"{fn.__name__}: ranks still running after {timeout:.0f} s, killed\n"
                                   f"{_logs(out, world_size, _LOG_TAIL_CHARS)}")
    except mp.ProcessExitedException as e:
        finished = [r for r in range(world_size) if (out / f"rank{r}.pt").is_file()]
        tail = _logs(out, world_size, _LOG_TAIL_CHARS)
        if len(finished) < world_size:
            raise RuntimeError(f"{fn.__name__}: rank {e.error_index} died ({e.signal_name or e.exit_code}); "
                               f"ranks that had returned: {finished}\n{tail}") from e
        warnings.warn(f"{fn.__name__}: every rank returned, then rank {e.error_index} died in teardown "
                      f"({e.signal_name or e.exit_code})\n{tail}", stacklevel=2)
    finally:
        sys.stderr.write(_logs(out, world_size))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def wait_app(runner: Any, handle: str, timeout: float = RANKS_TIMEOUT_S, interval: float = 1.0) -> Any:
    """TorchX's ``runner.wait`` with a deadline: an app still running after ``timeout`` seconds is cancelled.

    Args:
        runner: a ``torchx.runner.Runner``.
        handle (str): the app handle ``runner.run`` returned.
        timeout (float): seconds before the app is cancelled and the call fails.
        interval (float): seconds between status polls.

    Returns:
        The app's terminal ``AppStatus`` (None if the scheduler no longer knows the app).

    Raises:
        TimeoutError: the app did not end in time (it was cancelled).
    """
    deadline = time.monotonic() + timeout
    while True:
        status = runner.status(handle)
        if status is None or status.is_terminal():
            return status
        if time.monotonic() > deadline:
            runner.cancel(handle)
            raise TimeoutError(f"{handle}: still {status.state} after {timeout:.0f} s; cancelled")
        time.sleep(interval)
