"""Reliability: SIGKILL mid-run and restart resumes to the same result (on the same or another world size);
corrupt checkpoints are refused. (Distillation's resume, a dying rank and non-finite losses: test_reliability.py.)

One uninterrupted run and one killed run serve every test of this file (module fixtures): a test copies
what it changes. The runs are short (120 steps, killed after step 40), the kill still lands mid-run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

STEPS = ["train.teacher_steps=120", "train.checkpoint_every=20", "train.log_every=20", "train.eval_every=20"]
# the killed run dies after this checkpoint, with 80 of its 120 steps still to run
KILL_AFTER = "step_00000040"


def _torchrun(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "torchrec_kd.cli", *args]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _teacher(out: Path, nproc: int = 2, extra=()):
    return _torchrun(nproc, "train-teacher", "--config", str(TINY), "--output-dir", str(out), *STEPS, *extra)


def _kill_after_checkpoint(cmd, ckpt: Path, timeout=240):
    """Start the torchrun ``cmd``; SIGKILL it and its ranks as soon as the checkpoint ``ckpt`` is complete."""
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
        # torchrun starts each rank in a session of its own: killing torchrun's group alone leaves the
        # ranks training on to the end (the "killed" run would then finish, and its restart resume nothing)
        ranks = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                text=True).stdout.split()]
        for pid in ranks:
            _killpg(pid)
        _killpg(proc.pid)
        proc.wait(timeout=60)
        for pid in ranks:  # not our children (torchrun's, now dead): wait until each is gone or a zombie
            while _alive(pid):
                assert time.time() < deadline + 60, f"rank {pid} survived SIGKILL"
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _auc(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["teacher"]["auc"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    done = subprocess.run(_teacher(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A 2-rank run of ``STEPS`` SIGKILLed after its ``KILL_AFTER`` checkpoint (read-only: tests resume a copy)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    _kill_after_checkpoint(_teacher(out), out / "train_state" / "teacher" / KILL_AFTER)
    return out


def _copy_killed(killed: Path, out: Path) -> Path:
    shutil.copytree(killed, out)
    assert not (out / "metrics.json").exists()  # it really died before finishing
    return out


def test_sigkill_and_restart_ends_like_an_uninterrupted_run(uninterrupted, killed, tmp_path):
    out = _copy_killed(killed, tmp_path / "killed")
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
    assert [e["step"] for e in resumed["val_curve"]] == [20, 40, 60, 80, 100, 120]
    assert resumed["best_step"] == straight["best_step"]
    assert resumed["best_val"]["auc"] == pytest.approx(straight["best_val"]["auc"], abs=1e-4)


def test_resume_on_another_world_size(uninterrupted, killed, tmp_path):
    out = _copy_killed(killed, tmp_path / "resized")
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
