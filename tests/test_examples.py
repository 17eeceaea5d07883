"""The examples in examples/ run as documented."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_a_custom_ranker_distils_in_its_own_torchrec_loop():
    out = subprocess.run([sys.executable, "examples/custom_ranker/own_loop.py"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(line.split()[-1]) for line in out.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 4 and all(l == l for l in losses)  # logged, finite
