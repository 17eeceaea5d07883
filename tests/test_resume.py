"""Reliability: SIGKILL mid-run and restart resumes to the same result; corrupt checkpoints are refused;
a dying rank fails the job fast; non-finite losses stop or skip."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

STEPS = ["train.teacher_steps=300", "train.checkpoint_every=50", "train.log_every=50", "train.eval_every=50"]


def _torchrun(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "torchrec_kd.cli", *args]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _teacher(out: Path, nproc: int = 2, extra=()):
    return _torchrun(nproc, "train-teacher", "--config", str(TINY), "--output-dir", str(out), *STEPS, *extra)


def _kill_after_checkpoint(cmd, ckpt: Path, timeout=240):
    log = ckpt.parents[2] / "killed_run.log"  # a file, not a pipe nobody reads while we wait
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        deadline = time.time() + timeout
        while not ckpt.is_dir():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, mid-training
        proc.wait(timeout=60)


def _auc(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["teacher"]["auc"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    done = subprocess.run(_teacher(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_sigkill_and_restart_ends_like_an_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    _kill_after_checkpoint(_teacher(out), out / "train_state" / "teacher" / "step_00000100")
    assert not (out / "metrics.json").exists()  # it really died before finishing
    done = subprocess.run(_teacher(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    assert abs(_auc(out) - _auc(uninterrupted)) < 1e-4
    straight = json.loads((uninterrupted / "metrics.json").read_text())["teacher"]
    resumed = json.loads((out / "metrics.json").read_text())["teacher"]
    assert [s for s, _ in resumed["loss_curve"]] == [s for s, _ in straight["loss_curve"]]  # the curve survives
    for (_, a), (_, b) in zip(resumed["loss_curve"], straight["loss_curve"]):
        assert abs(a - b) < 1e-4
    # model selection survives the kill: the same validations, the same kept step
    assert [e["step"] for e in resumed["val_curve"]] == [50, 100, 150, 200, 250, 300]
    assert resumed["best_step"] == straight["best_step"]
    assert resumed["best_val"]["auc"] == pytest.approx(straight["best_val"]["auc"], abs=1e-4)


def test_resume_on_another_world_size(uninterrupted, tmp_path):
    out = tmp_path / "resized"
    _kill_after_checkpoint(_teacher(out), out / "train_state" / "teacher" / "step_00000100")
    done = subprocess.run(_teacher(out, nproc=1), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    assert abs(_auc(out) - _auc(uninterrupted)) < 0.01


def test_truncated_checkpoint_is_refused(uninterrupted, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, out)
    ckpt = sorted((out / "train_state" / "teacher").glob("step_*"))[-1]
    shard = next(ckpt.glob("state/*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    (out / "metrics.json").unlink()
    cmd = [sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY), "--output-dir", str(out), *STEPS]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert f"{shard}: 100 bytes, expected" in done.stderr and "truncated or corrupted" in done.stderr
    assert "Traceback" not in done.stderr


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


def test_distillation_resumes_after_sigkill(uninterrupted, tmp_path):
    distill = ["distill", "--config", str(TINY), "train.steps=120", "train.checkpoint_every=30", "train.log_every=30"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for out in (straight, killed):
        shutil.copytree(uninterrupted / "teacher", out / "teacher")
    done = subprocess.run(_torchrun(2, *distill, "--output-dir", str(straight)), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _kill_after_checkpoint(_torchrun(2, *distill, "--output-dir", str(killed)),
                           killed / "train_state" / "distill" / "step_00000060")
    done = subprocess.run(_torchrun(2, *distill, "--output-dir", str(killed)), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    a = json.loads((straight / "metrics.json").read_text())["distilled"]["auc"]
    b = json.loads((killed / "metrics.json").read_text())["distilled"]["auc"]
    assert abs(a - b) < 1e-4
