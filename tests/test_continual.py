"""Continual distillation: warm start (train.warm_start) and the `continual` workflow window by window.

One process, tiny models: a warm-started model is the checkpoint at step 0 and refuses another
architecture; the workflow scores window t+1 with the models trained through t, writes the
contract's continual.json, and a resumed run continues at the right window.
"""

import dataclasses
import json

import numpy as np
import pytest

from tests.conftest import TINY
from torchrec_kd.config import load_config
from torchrec_kd.core.fingerprint import step_fingerprint
from torchrec_kd.errors import CheckpointError
from torchrec_kd.training.model_run import TrainModelRun
from torchrec_kd.training.row_scores import split_logits


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
