"""Shared fixtures: repo paths, tiny configs, the vendored data fixtures and one trained tiny teacher."""

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# 200 real Criteo rows (tests/fixtures/criteo/README.md says where they come from)
CRITEO_SAMPLE = FIXTURES / "criteo" / "criteo_sample.tsv"
TINY = REPO / "configs" / "tiny_synthetic.yaml"

# Keep single-process tests from oversubscribing the 2 cores when run beside spawned ranks.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property tests draw the same examples on every run: a failure is reproducible, never a fluke.
settings.register_profile("repo", derandomize=True)
settings.load_profile("repo")

# The shared teacher's training: given explicitly, so it does not follow the tiny config's defaults
# (``test_never_stale.py``'s experiment passes the same two and so finds its teacher already done).
TEACHER_OVERRIDES = ("train.steps=6", "train.eval_every=3")


@pytest.fixture
def tiny_config_path() -> Path:
    return TINY


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (processes of one machine wait for each other)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test session that every pytest-xdist worker sees (each worker is its own process)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of one ``train-teacher`` run on the tiny config (``TEACHER_OVERRIDES``).

    Trained once per test session: under pytest-xdist the first worker to ask trains it while
    the others wait on a lock file, then all reuse it. It holds ``teacher/`` and ``metrics.json``.
    Treat it as read-only: :func:`copy_teacher` puts a copy where a test writes.

    Returns:
        Path: the run's output directory.
    """
    root = _session_dir(tmp_path_factory)
    done = root / "tiny_teacher"
    with _file_lock(root / "tiny_teacher.lock"):
        if not done.is_dir():
            work = root / f"tiny_teacher.{os.getpid()}.tmp"
            shutil.rmtree(work, ignore_errors=True)
            run = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                                  "--output-dir", str(work), *TEACHER_OVERRIDES], cwd=REPO, capture_output=True,
                                 text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert run.returncode == 0, run.stderr[-3000:]
            (work / ".lock").unlink(missing_ok=True)
            work.rename(done)  # whole or absent: a worker never sees a half-trained teacher
    return done


def copy_teacher(tiny_teacher: Path, out: Path) -> Path:
    """Copy the shared teacher run into ``out`` (created), as if ``train-teacher`` had written it there.

    Args:
        tiny_teacher (Path): the ``tiny_teacher`` fixture's directory.
        out (Path): the test's own output directory.

    Returns:
        Path: ``out``.
    """
    # the model and its metrics entry; not the run's lock, log, training state or event files
    shutil.copytree(tiny_teacher, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".lock", "run.log", "train_state", "tensorboard"))
    return out
