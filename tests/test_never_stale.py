"""Never a stale or silently wrong result: runs keyed by their config, and one-line errors (exit 2,
no traceback) for bad input — each case of the "Never stale" issue, as a test."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, copy_teacher

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
def run(tmp_path_factory, tiny_teacher):
    """A finished tiny experiment (teacher, student, distilled, int8) in one process.

    The session's tiny teacher was trained with the teacher settings of ``FAST``, so the experiment
    finds it done and trains the rest."""
    out = copy_teacher(tiny_teacher, tmp_path_factory.mktemp("exp") / "run")
    done = _ok(_cli("experiment", "--config", str(TINY), "--output-dir", str(out), *FAST))
    assert "teacher already done" in done.stderr, ("the shared teacher (conftest.TEACHER_OVERRIDES) no longer has "
                                                   "FAST's teacher settings: " + done.stderr[-3000:])
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


def _teacher_meta(out, teacher, feats, rows):
    from torchrec_kd.config import config_to_dict
    from torchrec_kd.models.dlrm import make_tables

    out.mkdir(parents=True)
    meta = {"role": "teacher", "tables": [t.name for t in make_tables(teacher, feats, rows)], "num_embeddings": rows,
            "config": {"teacher": config_to_dict(teacher)}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def test_a_teacher_checkpoint_of_another_config_is_refused_naming_what_differs(tmp_path):
    import dataclasses

    from torchrec_kd.config import ModelConfig
    from torchrec_kd.distill.teachers import check_teacher_checkpoint
    from torchrec_kd.errors import CheckpointError
    from torchrec_kd.models.dlrm import make_tables

    trained = ModelConfig(embedding_dim=64, dense_arch_layer_sizes=[32, 64])
    feats = [f"cat_{i}" for i in range(8)]
    ckpt = _teacher_meta(tmp_path / "teacher", trained, feats, [1000] * 8)
    this = dataclasses.replace(trained, embedding_dim=16, dense_arch_layer_sizes=[32, 16])
    # four features fewer (the first three the same: the old message showed two identical lists), t_cat_0 smaller
    with pytest.raises(CheckpointError) as e:
        check_teacher_checkpoint(ckpt, this, make_tables(this, feats[:4], [500, 1000, 1000, 1000]))
    msg = str(e.value)
    assert "\n" not in msg
    assert "tables only in the checkpoint: t_cat_4, t_cat_5, t_cat_6, t_cat_7" in msg, msg
    assert "tables only in the config" not in msg
    assert "rows of t_cat_0: 1000 -> 500" in msg and "embedding_dim: 64 -> 16" in msg, msg
    assert "dense_arch_layer_sizes: [32, 64] -> [32, 16]" in msg, msg
    # another table prefix: every table differs; a few are named, the rest counted
    other = dataclasses.replace(trained, table_prefix="x_")
    with pytest.raises(CheckpointError) as e:
        check_teacher_checkpoint(ckpt, other, make_tables(other, feats, [1000] * 8))
    msg = str(e.value)
    assert ("tables only in the checkpoint: t_cat_0, t_cat_1, t_cat_2, t_cat_3 and 4 more; "
            "tables only in the config: x_cat_0, x_cat_1, x_cat_2, x_cat_3 and 4 more") in msg, msg
    assert "table_prefix: t_ -> x_" in msg and len(msg.replace(str(ckpt), "")) < 400, msg
    check_teacher_checkpoint(ckpt, trained, make_tables(trained, feats, [1000] * 8))  # the same: accepted


def test_another_config_is_named_by_the_keys_that_differ_not_whole_sections():
    from torchrec_kd.config import load_config
    from torchrec_kd.core.fingerprint import describe_change, step_fingerprint

    losses = "distill.losses=[{name: hard_bce, weight: 0.5}, {name: soft_bce, weight: 0.5, temperature: %s}]"
    old = step_fingerprint(load_config(TINY, [losses % "1.0"]), "distilled", {"teachers": "a"})["inputs"]
    new = step_fingerprint(load_config(TINY, [losses % "3.0", "seed=1", "train.dense_lr=0.5", "train.eps=0.1",
                                              "data.batch_size=64"]), "distilled", {"teachers": "a"})["inputs"]
    change = describe_change(old, new, limit=2)
    assert "distill.losses[1].temperature: 1.0 -> 3.0" in describe_change(old, new, limit=10)
    assert len(change) == 3 and change[-1].startswith("and ") and change[-1].endswith(" more"), change
    line = "distilled was made by another config (" + "; ".join(change) + ")"
    assert len(line) < 200, line  # was 1,027 characters: the whole list of losses, twice
    files = describe_change({"data": {"files": [["/d/a.parquet", 1, 2]] * 3}}, {"data": {"files": [["/d/a.parquet", 1, 3]]}})
    assert files == ["the data files (names, sizes or times): 3 -> 1 files"]
