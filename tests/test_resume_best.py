"""A resumed run keeps its best-so-far model and patience (its own file so pytest-xdist can balance the resume tests)."""

import json
import subprocess

import pytest

from tests.conftest import REPO
from tests.test_resume import _env, _kill_after_checkpoint, _teacher

# overfits 4 batches of rows: the validation log loss is best early (step 25), before the kill at step 100
OVERFIT = ["train.teacher_steps=200", "train.checkpoint_every=50", "train.log_every=50", "train.eval_every=25",
           "data.synthetic.train_rows=512", "train.embedding_lr=0.3", "train.dense_lr=0.1",
           "train.early_stopping.patience=0", "train.early_stopping.metric=logloss"]


def test_resume_keeps_the_best_so_far(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_teacher(straight, extra=OVERFIT), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _kill_after_checkpoint(_teacher(killed, extra=OVERFIT), killed / "train_state" / "teacher" / "step_00000100")
    assert (killed / "train_state" / "teacher" / "best").is_dir()
    done = subprocess.run(_teacher(killed, extra=OVERFIT), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    a = json.loads((straight / "metrics.json").read_text())["teacher"]
    b = json.loads((killed / "metrics.json").read_text())["teacher"]
    assert a["best_step"] < 100 and b["best_step"] == a["best_step"]  # the best came before the kill
    assert not b["stopped_early"] and b["steps"] == 200
    assert b["best_val"]["logloss"] == pytest.approx(a["best_val"]["logloss"], abs=1e-5)
    assert b["auc"] == pytest.approx(a["auc"], abs=1e-5)  # the kept model is the same one
