"""``torchrun`` for our jobs: the same launcher, but a user error ends the job with one line.

``python -m torchrec_kd.launch <torchrun args> -m torchrec_kd.cli …`` is
``torch.distributed.run`` (what the TorchX components start) except when every failed rank
exited with code 2 — our "bad input" exit, whose one-line ``error:`` rank 0 already printed:
then the job exits 2 without torchrun's failure report and traceback. Any other failure (a
crash, a signal) is reported by torchrun exactly as before.

Example::

    python -m torchrec_kd.launch --standalone --nproc_per_node=2 -m torchrec_kd.cli train-teacher --config X.yaml
"""

from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

USER_ERROR = 2


def main(argv: Optional[List[str]] = None) -> int:
    """Run torchrun's launcher; exit 2 quietly when the ranks failed on bad input.

    Args:
        argv (Optional[List[str]]): torchrun's arguments (default: ``sys.argv[1:]``).

    Returns:
        int: 0 on success, 2 when every failed rank reported bad input.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for N ranks, without its banner
    args = parse_args(argv)
    # the agent logs each failed and each stopped rank as it happens; the report printed
    # below for a real failure says all of it, and bad input needs none of it
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        _, first = e.get_first_failure()
        if first.exitcode == USER_ERROR:  # rank 0 printed the one-line error; the rest were stopped
            return USER_ERROR
        print(e.format_msg(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
