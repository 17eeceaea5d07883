"""The examples in examples/ run as documented."""

import json
import math
import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_a_custom_ranker_distils_evaluates_and_exports_in_its_own_torchrec_loop(tmp_path):
    export = tmp_path / "export" / "student_int8"
    out = subprocess.run([sys.executable, "examples/custom_ranker/own_loop.py", str(export)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(line.split()[-1]) for line in out.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 4 and all(math.isfinite(l) for l in losses)  # logged, finite (not NaN, not inf)
    # evaluated through evaluate_model (the pipeline detached): every evaluation row, a real AUC and NE
    val = re.search(r"^val auc (\S+) ne (\S+) logloss (\S+) rows (\d+)$", out.stdout, re.M)
    assert val is not None, out.stdout
    auc, ne, logloss, rows = float(val[1]), float(val[2]), float(val[3]), int(val[4])
    assert 0.0 < auc < 1.0 and math.isfinite(ne) and math.isfinite(logloss) and rows == 4 * 256
    # exported for serving: a complete, sealed export that load_model scored within int8's rounding
    assert sorted(p.name for p in export.iterdir()) == ["contract.json", "model.ts", "quantized.json", "weights.pt"]
    sidecar = json.loads((export / "quantized.json").read_text())
    assert set(sidecar["files"]) == {"contract.json", "model.ts", "weights.pt"}
    assert set(sidecar["table_dtypes"].values()) == {"int8"} and sidecar["meta"]["plugins"] == ["kd_plugin"]
    gap = re.search(r"served int8 logits within (\S+) of the trained fp32 student", out.stdout)
    assert gap is not None and float(gap[1]) < 0.02, out.stdout
