"""The CLI end to end in one process on the tiny config."""

import json
import subprocess
import sys

from tests.conftest import REPO, TINY


def test_train_teacher_cli_writes_metrics(tmp_path):
    out = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                          "--output-dir", str(tmp_path), "train.steps=10", "train.log_every=5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    entry = json.loads((tmp_path / "metrics.json").read_text())["teacher"]
    for key in ("auc", "ne", "logloss", "params", "embedding_bytes", "train_samples_per_s"):
        assert key in entry
    assert entry["embedding_bytes"] == 4 * 1000 * 16 * 4  # 4 tables x 1000 rows x dim 16 x fp32
    assert [s for s, _ in entry["loss_curve"]] == [5, 10]
    assert "teacher test auc" in out.stderr


def test_cli_bad_config_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                          "teacher.embeding_dim=8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown key 'embeding_dim'; did you mean 'embedding_dim'?" in out.stderr
    assert "Traceback" not in out.stderr
