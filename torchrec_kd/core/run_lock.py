"""One run per output directory: an exclusive lock held while the command runs.

Rank 0 of a job takes ``<output_dir>/.lock`` with ``flock`` before any work; a second job
into the same directory stops at once with an error naming the holder. The kernel drops
the lock when the holding process exits however it exits, so a killed run never leaves a
lock behind; the file's text (pid, host, command, start time) only says who held it. The
same step makes sure the directory can be written before a model is built.

Example::

    hold_output_dir(cfg.out_dir)   # raises ConfigError if another run holds it
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Dict

from torchrec_kd.core.layout import LOCK_FILE
from torchrec_kd.errors import ConfigError

_held: Dict[str, IO[str]] = {}  # output dir -> the open lock file (closing it releases the lock)


def hold_output_dir(out_dir: Path, wait_s: float = 10.0) -> None:
    """Create ``out_dir`` if needed and hold its lock until this process exits.

    Args:
        out_dir (Path): the run's output directory.
        wait_s (float): how long to wait for a holder to go away (a run that was just
            killed, whose ranks are still exiting) before giving up.

    Raises:
        ConfigError: the directory cannot be created or written, or another live run holds it.
    """
    out_dir = Path(out_dir)
    key = str(out_dir.resolve())
    if key in _held:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fh = open(out_dir / LOCK_FILE, "a+")
    except OSError as e:
        raise ConfigError(f"cannot write to the output directory {out_dir} ({e.strerror}); pass a writable "
                          "--output-dir (or output_dir=…)") from None
    deadline = time.monotonic() + wait_s  # a run killed a moment ago releases its lock as it exits
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(f"{out_dir} is in use by another run ({holder}); wait for it to finish or pass another "
                              "--output-dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "command": " ".join(sys.argv[1:3])}))
    fh.flush()
    _held[key] = fh


def release_output_dirs() -> None:
    """Release every output-directory lock this process holds (the CLI's ``main`` ends with it, so
    commands called one after another in one process, e.g. from Python, each take their directory)."""
    while _held:
        _, fh = _held.popitem()
        fh.close()
