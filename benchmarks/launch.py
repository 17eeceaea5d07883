"""Shared by the quality benchmarks: run one ``torchrec_kd.cli`` command under ``torchrun``."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


def run_cli(command: str, config: str, out: Path, nproc: int, overrides: Sequence[str], args: Sequence[str] = ()) -> float:
    """Run ``python -m torchrec_kd.cli <command>`` on ``nproc`` local ranks; raise if it fails.

    Args:
        command (str): the CLI command (``train-teacher``, ``distill``, ``quantize``, …).
        config (str): config file.
        out (Path): the run's output directory.
        nproc (int): ranks.
        overrides (Sequence[str]): ``key=value`` config overrides.
        args (Sequence[str]): the command's own flags (e.g. ``--source distilled``).

    Returns:
        float: wall seconds.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "torchrec_kd.cli", command, *args, "--config", config, "--output-dir", str(out), *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - t0


def command_line() -> str:
    """The command this process was started with, as run (``python`` and ``sys.argv``), for a results file."""
    return shlex.join(["python", *sys.argv])
