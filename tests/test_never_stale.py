"""Never a stale or silently wrong result: runs keyed by their config, and one-line errors (exit 2,
no traceback) for bad input — each case of the "Never stale" issue, as a test."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY

FAST = ["train.steps=6", "train.eval_every=3", "distill.qat=null", "quantize.dtypes=[int8]"]


def _cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "torchrec_kd.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _ok(done):
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _user_error(done, *needles):
    """Exit 2, one `error:` line naming what is wrong, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "weights_only=False" not in done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny experiment (teacher, student, distilled, int8) in one process."""
    out = tmp_path_factory.mktemp("exp") / "run"
    _ok(_cli("experiment", "--config", str(TINY), "--output-dir", str(out), *FAST))
    return out


@pytest.mark.slow
def test_2_experiment_reruns_exactly_the_changed_steps(run, tmp_path):
    out = tmp_path / "run"
    import shutil

    shutil.copytree(run, out)
    (out / ".lock").unlink(missing_ok=True)
    teacher_mtime = (out / "teacher" / "meta.json").stat().st_mtime
    done = _ok(_cli("experiment", "--config", str(TINY), "--output-dir", str(out), *FAST, "student.embedding_dim=4",
                    "student.dense_arch_layer_sizes=[16,4]"))
    log = done.stderr
    assert "teacher already done" in log and (out / "teacher" / "meta.json").stat().st_mtime == teacher_mtime
    assert "student (seed 0): student was made by another config (student.dense_arch_layer_sizes: [16, 8] -> [16, 4]" in log
    assert "distill (seed 0): distilled was made by another config" in log
    assert "quantize (seed 0): distilled_int8 was exported from another distilled model" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student"]["base"] == metrics["distilled"]["base"]
    assert metrics["distilled_int8"]["source_fingerprint"] == metrics["distilled"]["fingerprint"]
    assert json.loads((out / "distilled" / "meta.json").read_text())["config"]["student"]["embedding_dim"] == 4


@pytest.mark.slow
def test_3_report_does_not_compare_models_of_different_configs(run, tmp_path):
    out = tmp_path / "run"
    import shutil

    shutil.copytree(run, out)
    (out / ".lock").unlink(missing_ok=True)
    _ok(_cli("train-student", "--config", str(TINY), "--output-dir", str(out), *FAST, "student.embedding_dim=4",
             "student.dense_arch_layer_sizes=[16,4]"))
    _ok(_cli("report", "--config", str(TINY), "--output-dir", str(out), *FAST))
    report = (out / "report.md").read_text()
    assert "No comparison: the student alone in this directory is not of this config's lineage" in report
    assert "student (made by another config" in report.splitlines()[2] and "same data and maximum budget" not in report


@pytest.mark.slow
def test_damaged_exports_and_checkpoints_are_refused(run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / ".lock").unlink(missing_ok=True)
    weights = out / "export" / "distilled_int8" / "weights.pt"
    weights.write_bytes(os.urandom(weights.stat().st_size))
    _user_error(_cli("evaluate", "--config", str(TINY), "--output-dir", str(out), *FAST, "--source", "distilled_int8"),
                "weights.pt", "truncated or corrupted", "re-run quantize")
    weights.write_bytes(b"")
    _user_error(_cli("evaluate", "--config", str(TINY), "--output-dir", str(out), *FAST, "--source", "distilled_int8"),
                "0 bytes, expected")
    shard = next((out / "teacher" / "model").glob("*.distcp"))
    shard.write_bytes(b"\0" * shard.stat().st_size)  # zero-filled, same size
    _user_error(_cli("distill", "--config", str(TINY), "--output-dir", str(out), *FAST),
                str(shard), "truncated or corrupted", "train it again")


@pytest.mark.slow
def test_predict_names_a_model_trained_on_other_features(run, tmp_path):
    table = REPO / "configs" / "table_example.yaml"
    _user_error(_cli("predict", "--config", str(table), "--model", str(run / "export" / "distilled_int8"),
                     "--out", str(tmp_path / "p.csv")), "was trained on 4 dense features but this data has 2")
    assert not (tmp_path / "p.csv").exists()
