"""Continual distillation: warm start (train.warm_start) and the `continual` workflow window by window.

One process, tiny models: a warm-started model is the checkpoint at step 0 and refuses another
architecture; the workflow scores window t+1 with the models trained through t, writes the
contract's continual.json, and a resumed run continues at the right window.
"""

import dataclasses
import json
import logging

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, TINY
from torchrec_kd.config import load_config
from torchrec_kd.core.fingerprint import step_fingerprint, warm_start_digest
from torchrec_kd.data import build_data
from torchrec_kd.errors import CheckpointError
from torchrec_kd.reporting.continual import auc
from torchrec_kd.training.model_run import TrainModelRun
from torchrec_kd.training.row_scores import split_logits
from torchrec_kd.workflows import continual


def _warm(cfg, path, out):
    return dataclasses.replace(cfg, output_dir=str(out), train=dataclasses.replace(cfg.train, warm_start=str(path)))


def _test_logits(run):
    run.model.eval()
    return split_logits(run.score, run.data, "test", run.cfg.data.batch_size, run.env)


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory):
    """A tiny student trained 4 steps, saved, with its test logits."""
    out = tmp_path_factory.mktemp("warm") / "a"
    cfg = load_config(TINY, ["train.steps=4", "train.eval_every=2", f"output_dir={out}"])
    run = TrainModelRun(cfg, "student")
    run.setup()
    run.train()
    logits, labels = _test_logits(run)
    run.save(run.evaluate("test"))
    return cfg, out / "student", logits, labels


def test_warm_start_is_the_checkpoint_at_step_0(trained_student, tmp_path):
    cfg, ckpt, logits, labels = trained_student
    fresh = TrainModelRun(dataclasses.replace(cfg, output_dir=str(tmp_path / "cold")), "student")
    fresh.setup()
    cold, _ = _test_logits(fresh)
    assert np.abs(cold - logits).max() > 1e-4  # a fresh model is not the trained one: the test can fail
    run = TrainModelRun(_warm(cfg, ckpt, tmp_path / "b"), "student")
    run.setup()
    warm, warm_labels = _test_logits(run)
    np.testing.assert_array_equal(warm_labels, labels)
    np.testing.assert_allclose(warm, logits, rtol=0, atol=1e-6)


def test_warm_start_refuses_another_architecture(trained_student, tmp_path):
    cfg, ckpt, _, _ = trained_student
    other = _warm(cfg, ckpt, tmp_path / "c")
    other = dataclasses.replace(other, student=dataclasses.replace(other.student, over_arch_layer_sizes=[8, 1]))
    with pytest.raises(CheckpointError, match=r"another architecture \(over_arch_layer_sizes: \[16, 1\] there, \[8, 1\] here\)"):
        TrainModelRun(other, "student").setup()
    with pytest.raises(CheckpointError, match="meta.json not found"):
        TrainModelRun(_warm(cfg, tmp_path / "nothing", tmp_path / "d"), "student").setup()


def test_warm_start_digest_is_in_the_fingerprint(trained_student, tmp_path):
    """A remade warm-start checkpoint makes the step stale; moving the run dir does not."""
    cfg, ckpt, _, _ = trained_student
    import shutil

    copy = tmp_path / "moved" / "student"
    shutil.copytree(ckpt, copy)
    same = step_fingerprint(_warm(cfg, ckpt, tmp_path / "x"), "student")
    moved = step_fingerprint(_warm(cfg, copy, tmp_path / "x"), "student")
    assert same["digest"] == moved["digest"]
    assert same["digest"] != step_fingerprint(cfg, "student")["digest"]
    meta = json.loads((copy / "meta.json").read_text())
    meta["selection"]["best_step"] = -1  # the checkpoint was remade differently
    (copy / "meta.json").write_text(json.dumps(meta))
    remade = step_fingerprint(_warm(cfg, copy, tmp_path / "x"), "student")
    assert remade["digest"] != same["digest"] and remade["base"] == same["base"]
    assert step_fingerprint(_warm(cfg, tmp_path / "none", tmp_path / "x"), "student")["inputs"]["warm_start"] == "missing"


# ----------------------------------------------------------------------------- the workflow
def _drift_config(tmp_path, out, *overrides):
    """The tiny config on the drifting synthetic world: 4 windows of 1,280 rows (val 256), one epoch per window."""
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["synthetic"]["drift"] = {"windows": 4, "rows_per_window": 1280}
    raw["data"]["windows"] = {"count": 4, "val_fraction": 0.2}
    raw["train"] = {"epochs": 1, "log_every": 0}
    raw["distill"] = {"qat": None}
    path = tmp_path / "drift.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, [f"output_dir={out}", *overrides])


@pytest.fixture(scope="module")
def continual_run(tmp_path_factory):
    """Windows 0..1 (scored on 1..2), then a second launch through window 2: (cfg, out, first doc, doc, log)."""
    tmp = tmp_path_factory.mktemp("continual")
    out = tmp / "run"
    first = continual.run(_drift_config(tmp, out, "continual.last_window=1"))
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("windows/*/*/meta.json")}
    handler, log = _Records(), logging.getLogger("torchrec_kd")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        cfg = _drift_config(tmp, out, "continual.last_window=2")
        doc = continual.run(cfg)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return cfg, out, first, doc, handler.messages, stamps


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_continual_json_has_the_contract_keys(continual_run):
    _, out, first, doc, _, _ = continual_run
    assert [w["window"] for w in first["windows"]] == [1, 2]
    on_disk = json.loads((out / "continual.json").read_text())
    assert on_disk["windows"] == doc["windows"] and [w["window"] for w in doc["windows"]] == [1, 2, 3]
    assert set(doc) >= {"windows", "kd_gain", "cost_ratio"}
    assert set(doc["kd_gain"]) >= {"auc_mean", "auc_ci95", "significant"}
    diffs = [w["models"]["distilled"]["auc"] - w["models"]["student"]["auc"] for w in doc["windows"]]
    assert doc["kd_gain"]["auc_mean"] == pytest.approx(np.mean(diffs))
    for w in doc["windows"]:
        assert w["trained_through"] == w["window"] - 1
        assert set(w) >= {"window", "models", "update_s", "export_bytes", "delta_bytes"}
        assert set(w["models"]) == {"teacher", "distilled", "student", "scratch"}
        assert set(w["update_s"]) >= {"distilled", "student", "scratch"}
        for m in w["models"].values():
            assert set(m) >= {"auc", "ne", "rows", "slices"} and 0.0 < m["auc"] < 1.0
            assert set(m["slices"]) == {"new", "rare", "rest"}
            assert sum(s["rows"] for s in m["slices"].values()) == m["rows"] == 1280
            assert all(set(s) >= {"auc", "rows"} for s in m["slices"].values())
        assert w["export_bytes"] > 0
    assert doc["windows"][0]["delta_bytes"] is None  # no previous export at the first window
    assert all(0 < w["delta_bytes"] for w in doc["windows"][1:])
    assert (out / "continual.md").read_text().count("| 3 |") >= 1 and (out / "continual.png").stat().st_size > 0


def test_warm_start_loads_the_previous_windows_best_student(continual_run):
    _, out, _, _, _, _ = continual_run
    for model in ("student", "distilled"):
        meta = json.loads((out / "windows" / "2" / model / "meta.json").read_text())
        prev = out / "windows" / "1" / model
        assert meta["config"]["train"]["warm_start"] == str(prev)
        # the previous window's saved (best validated) model, by content
        assert meta["fingerprint"]["inputs"]["warm_start"] == warm_start_digest(str(prev))
        assert json.loads((prev / "meta.json").read_text())["selection"]["best_step"] is not None
    scratch = json.loads((out / "windows" / "2" / "scratch" / "student" / "meta.json").read_text())
    assert scratch["config"]["train"]["warm_start"] is None and scratch["config"]["data"]["windows"]["history"]
    # window 0 warms up on the history: nothing before it
    assert json.loads((out / "windows" / "0" / "student" / "meta.json").read_text())["config"]["train"]["warm_start"] is None


def test_progressive_validation_scores_the_next_window(continual_run):
    """Window 2's entry is the model trained through window 1, scored on window 2's rows (never trained on)."""
    cfg, out, _, doc, _, _ = continual_run
    plan = continual.window_plan(cfg, 1)
    assert plan.student.data.windows.index == 1 and plan.student.out_dir == out / "windows" / "1"
    again = continual.score_saved(plan.student, out / "windows" / "1" / "student", "student")
    entry = next(w for w in doc["windows"] if w["window"] == 2)
    assert entry["models"]["student"]["auc"] == pytest.approx(auc(again.logits, again.labels), abs=1e-6)
    log = build_data(plan.student.data, cfg.seed)  # its test split is window 2, whole
    assert log.window == 1 and len(log.splits["test"]) == log.window_rows[2] == len(again.labels)
    np.testing.assert_array_equal(log.splits["test"].labels, again.labels)


def test_resume_continues_at_the_right_window(continual_run):
    _, out, _, _, messages, stamps = continual_run
    assert any("window 0 (seed 0) already done" in m for m in messages), messages
    assert any("window 1 (seed 0) already done" in m for m in messages), messages
    assert any("window 2, student: student not done yet" in m for m in messages), messages
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing of windows 0..1 was remade
    assert (out / "windows" / "2" / "distilled" / "meta.json").is_file()


def test_the_continual_component_launches_the_cli_command():
    from torchx.specs.file_linter import validate

    from components import kd

    app = kd.continual("continual.teacher=fine_tune", j="1x2", python="python3", output_dir="out", seeds="0,1")
    cmd = app.roles[0].args[1]
    assert cmd.startswith("python3 -m torchrec_kd.launch ") and "--nproc_per_node 2" in cmd
    assert cmd.endswith("-m torchrec_kd.cli continual --config configs/continual_synthetic.yaml --output-dir out "
                        "continual.teacher=fine_tune 'experiment.seeds=[0,1]'")
    assert not validate(str(REPO / "components" / "kd.py"), "continual")  # TorchX reads its signature


def test_a_changed_config_reruns_from_the_first_window_it_affects(continual_run, tmp_path):
    """Fine-tuning the teacher changes nothing at window 0 (no previous teacher) and re-runs window 1 on;
    the distilled student of window 1 follows its teacher, the student alone stays done."""
    from torchrec_kd.reporting.lineage import expected_fingerprints
    from torchrec_kd.workflows.experiment import _stale

    cfg, out, _, _, _, _ = continual_run
    changed = _drift_config(tmp_path, out, "continual.last_window=2", "continual.teacher=fine_tune")

    def stale(c, entry):
        return _stale(c.out_dir, [entry], {entry: expected_fingerprints(c)[entry]})

    w0, w1 = continual.window_plan(changed, 0), continual.window_plan(changed, 1)
    assert stale(w0.teacher, "teacher") is None and stale(w0.distilled, "distilled") is None
    why = stale(w1.teacher, "teacher")
    assert why and "made by another config" in why and "warm" in why, why
    assert stale(w1.student, "student") is None
    assert w1.distilled.distill.teacher_checkpoint == str(out / "windows" / "1" / "teacher")


def test_warm_epochs_bound_both_warm_updates_alike(tmp_path):
    """continual.warm_epochs is the warm updates' budget (alone and distilled alike); the reference keeps its own."""
    cfg = _drift_config(tmp_path, tmp_path / "run", "train.epochs=3", "continual.warm_epochs=1")
    first, warm = continual.window_plan(cfg, 0), continual.window_plan(cfg, 1)
    assert first.student.train.epochs == first.distilled.train.epochs == 3  # the warm-up is no warm update
    assert warm.student.train.epochs == warm.distilled.train.epochs == 1
    assert warm.scratch.train.epochs == warm.teacher.train.epochs == 3
    unset = continual.window_plan(_drift_config(tmp_path, tmp_path / "run2", "train.epochs=3"), 1)
    assert unset.student.train.epochs == unset.distilled.train.epochs == 3


def test_a_fine_tuned_teacher_updates_on_the_window_from_its_previous_version(tmp_path):
    """fine_tune: window t's teacher starts from window t-1's and reads window t; retrain reads the history."""
    out = tmp_path / "run"
    fine = continual.window_plan(_drift_config(tmp_path, out, "continual.teacher=fine_tune"), 1)
    assert fine.teacher.train.warm_start == str(out / "windows" / "0" / "teacher")
    assert fine.teacher.data.windows.history is False and fine.teacher.data.windows.index == 1
    first = continual.window_plan(_drift_config(tmp_path, out, "continual.teacher=fine_tune"), 0)
    assert first.teacher.data.windows.history is True and first.teacher.train.warm_start is None
    retrain = continual.window_plan(_drift_config(tmp_path, out), 1)
    assert retrain.teacher.data.windows.history is True and retrain.teacher.train.warm_start is None
