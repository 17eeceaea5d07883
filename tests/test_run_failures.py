"""Runs that fail: a killed distillation resumes to the same result, a dying rank fails the job fast,
non-finite losses stop or skip. (The teacher's SIGKILL-and-restart runs: test_resume.py; split from it so
pytest-xdist's --dist loadfile can put the two halves on different workers.)"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TINY
from tests.test_resume import _env, _kill_after_checkpoint, _teacher, _torchrun


def test_a_dying_rank_fails_the_job_fast(tmp_path):
    out = tmp_path / "dies"
    log = tmp_path / "dies.log"
    err_file = open(log, "w")
    proc = subprocess.Popen(_teacher(out, extra=["train.teacher_steps=100000"]), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    try:
        # both ranks are training once a checkpoint exists (the lock and the log come before any training)
        deadline = time.time() + 240
        while not list((out / "train_state" / "teacher").glob("step_*")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
        ranks = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "torchrec_kd.cli"], capture_output=True,
                               text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(ranks[-1]), signal.SIGKILL)
        t0 = time.time()
        proc.wait(timeout=90)
        err = log.read_text()
        assert proc.returncode != 0
        assert time.time() - t0 < 90
        assert "ChildFailedError" in err and "Signal 9 (SIGKILL)" in err  # the dead rank is named
    finally:
        err_file.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_policy(policy, tmp_path):
    out = tmp_path / policy
    cmd = [sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY), "--output-dir", str(out),
           "train.teacher_steps=20", "train.log_every=5", "train.checkpoint_every=10", "train.embedding_lr=1e30",
           "train.dense_lr=1e30", "train.eval_every=0", f"train.on_nonfinite={policy}"]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if policy == "stop":
        assert done.returncode == 2, done.stderr[-3000:]  # a user error: one line, exit 2
        assert "non-finite loss at or before step" in done.stderr
        assert not list((out / "train_state").glob("teacher/step_*"))  # nothing NaN was checkpointed
        assert not (out / "metrics.json").exists() and not (out / "teacher").exists()
        return
    assert done.returncode == 0, done.stderr[-3000:]
    # every check (log and checkpoint steps) reports the steps it skipped; lr 1e30 breaks the weights at once
    skipped = [(int(n), int(s)) for n, s in re.findall(r"skipped (\d+) step\(s\) with a non-finite loss up to step (\d+)",
                                                        done.stderr)]
    assert [s for _, s in skipped] == [5, 10, 15, 20], done.stderr[-3000:]
    assert 16 <= sum(n for n, _ in skipped) <= 20
    # the run went on to the end of its budget and wrote its model and metrics
    entry = json.loads((out / "metrics.json").read_text())["teacher"]
    assert entry["steps"] == entry["max_steps"] == 20 and [s for s, _ in entry["loss_curve"]] == [5, 10, 15, 20]
    assert (out / "teacher" / "meta.json").is_file()
    assert (out / "train_state" / "teacher" / "step_00000010").is_dir()



def test_distillation_resumes_after_sigkill(tiny_teacher, tmp_path):
    # any teacher will do (the session's tiny one): what is checked is the student's resume
    distill = ["distill", "--config", str(TINY), "train.steps=60", "train.checkpoint_every=15", "train.log_every=15"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for out in (straight, killed):
        shutil.copytree(tiny_teacher / "teacher", out / "teacher")
    done = subprocess.run(_torchrun(2, *distill, "--output-dir", str(straight)), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _kill_after_checkpoint(_torchrun(2, *distill, "--output-dir", str(killed)),
                           killed / "train_state" / "distill" / "step_00000030")
    assert not (killed / "metrics.json").exists()  # it really died before finishing
    done = subprocess.run(_torchrun(2, *distill, "--output-dir", str(killed)), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    a = json.loads((straight / "metrics.json").read_text())["distilled"]["auc"]
    b = json.loads((killed / "metrics.json").read_text())["distilled"]["auc"]
    assert abs(a - b) < 1e-4
