"""Model selection: early stopping at the best validation step, the kept checkpoint, the
multi-seed summary's interval, the finite synthetic train split and the weak-teacher warning."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, TINY
from torchrec_kd.config import EarlyStoppingConfig, SyntheticDataConfig
from torchrec_kd.data.synthetic import SyntheticClickLog
from torchrec_kd.reporting.report import kd_summary
from torchrec_kd.reporting.summary import paired_interval, summarize, summary_markdown, t_quantile_975, teacher_warning
from torchrec_kd.training.selection import ModelSelector

# a run built to overfit: 4 batches of rows seen again and again at a high learning rate
OVERFIT = ["data.synthetic.train_rows=512", "train.epochs=60", "train.eval_every=4", "train.embedding_lr=0.3",
           "train.dense_lr=0.1", "train.early_stopping.patience=3", "train.log_every=10"]


def _cli(*args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_selector_tracks_the_best_and_stops_after_patience():
    sel = ModelSelector(EarlyStoppingConfig(metric="auc", patience=2, min_delta=0.001))
    assert sel.observe(10, {"auc": 0.70, "ne": 0.9}) and sel.state.best_step == 10
    assert sel.observe(20, {"auc": 0.72, "ne": 0.8})
    assert not sel.observe(30, {"auc": 0.7205, "ne": 0.8})  # within min_delta: no improvement
    assert not sel.should_stop
    assert not sel.observe(40, {"auc": 0.71, "ne": 0.8}) and sel.should_stop
    assert sel.state.best_step == 20 and sel.state.best == {"auc": 0.72, "ne": 0.8}
    resumed = ModelSelector(sel.cfg, json.loads(json.dumps(sel.to_dict())))  # through the training state
    assert resumed.state == sel.state and resumed.should_stop


def test_selector_lower_is_better_for_ne_and_patience_zero_never_stops():
    sel = ModelSelector(EarlyStoppingConfig(metric="ne", patience=0))
    assert sel.observe(1, {"ne": 0.9, "auc": 0.6})
    assert not sel.observe(2, {"ne": 0.95, "auc": 0.7})
    assert sel.observe(3, {"ne": 0.85, "auc": 0.5}) and sel.state.best_step == 3
    for step in range(4, 20):
        sel.observe(step, {"ne": 1.0, "auc": 0.5})
    assert not sel.should_stop


def test_interval_on_hand_made_numbers():
    mean, (lo, hi) = paired_interval([0.001, 0.003, 0.005])
    half = 4.303 * 0.002 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean == pytest.approx(0.003) and lo == pytest.approx(0.003 - half) and hi == pytest.approx(0.003 + half)
    assert t_quantile_975(1) == 12.706 and t_quantile_975(1000) == pytest.approx(1.96, abs=0.01)
    assert paired_interval([0.01]) == (0.01, None)


def _run(teacher, student, distilled, best_t=0.8, best_s=0.7):
    return {"teacher": {"auc": teacher, "ne": 0.8, "best_val": {"auc": best_t}, "best_step": 10},
            "student": {"auc": student, "ne": 0.9, "best_val": {"auc": best_s}, "best_step": 20},
            "distilled": {"auc": distilled, "ne": 0.85, "best_val": {"auc": 0.75}, "best_step": 30}}


def test_summary_says_significant_only_when_the_interval_excludes_zero():
    clear = summarize({0: _run(0.80, 0.70, 0.711), 1: _run(0.80, 0.70, 0.712), 2: _run(0.80, 0.70, 0.713)})
    gain = clear["kd_gain"]
    assert clear["seeds"] == [0, 1, 2] and gain["significant"] and gain["auc_ci95"][0] > 0
    assert gain["auc_mean"] == pytest.approx(0.012)
    assert clear["models"]["student"]["auc_mean"] == pytest.approx(0.70)
    assert clear["models"]["student"]["auc_std"] == pytest.approx(0, abs=1e-12)
    assert gain["gap_recovered"] == pytest.approx(0.12)
    md = summary_markdown(clear, "run")
    assert "+0.0120 test AUC (95% CI +0.0095 to +0.0145, 3 seeds" in md and ": significant." in md

    noisy = summarize({0: _run(0.8, 0.70, 0.705), 1: _run(0.8, 0.70, 0.698), 2: _run(0.8, 0.70, 0.703)})
    assert not noisy["kd_gain"]["significant"] and noisy["kd_gain"]["auc_ci95"][0] < 0 < noisy["kd_gain"]["auc_ci95"][1]
    assert "not significant (the interval includes 0)" in summary_markdown(noisy, "run")

    one = summarize({0: _run(0.8, 0.70, 0.75)})
    assert one["kd_gain"]["auc_ci95"] is None and not one["kd_gain"]["significant"]


def test_weak_teacher_is_called_out():
    weak = _run(0.69, 0.70, 0.71, best_t=0.68, best_s=0.70)
    assert "teacher scores below the student alone" in teacher_warning(weak)
    assert "train a better teacher first" in kd_summary(weak) and "cannot help" not in kd_summary(weak)
    assert teacher_warning(_run(0.8, 0.7, 0.75)) is None
    assert summarize({0: weak, 1: _run(0.8, 0.7, 0.75)})["teacher_not_better"] == [0]


def test_a_model_stopped_by_its_budget_is_called_out():
    run = _run(0.8, 0.7, 0.71)
    run["student"].update(best_step=300, max_steps=300, stopped_early=False)
    assert "student reached the maximum budget" in kd_summary(run)
    assert summarize({0: run})["budget_reached"] == [0]
    run["student"].update(best_step=200)
    assert "reached the maximum budget" not in kd_summary(run)


def test_finite_synthetic_split_reads_the_same_rows_each_epoch_in_a_new_order():
    cfg = SyntheticDataConfig(num_dense=2, num_sparse=3, num_embeddings=100, latent_dim=4, num_clusters=8, block_rows=16)
    gen = SyntheticClickLog(cfg, seed=5, train_rows=256)
    assert gen.num_batches("train", 64) == 4
    epochs = [[b.labels for b in gen.batches("train", 64, num_batches=12)][e * 4:(e + 1) * 4] for e in range(3)]
    dense = [torch.cat([b.dense_features for b in gen.batches("train", 64, num_batches=12)][e * 4:(e + 1) * 4])
             for e in range(3)]
    assert all(torch.equal(dense[0].sort(0).values, d.sort(0).values) for d in dense)  # same rows
    assert not torch.equal(dense[0], dense[1])  # reshuffled
    other_seed = torch.cat([b.dense_features for b in SyntheticClickLog(cfg, seed=6, train_rows=256).batches("train", 64)])
    assert torch.equal(other_seed.sort(0).values, dense[0].sort(0).values)  # the world is the seed's, not the run's
    # every epoch is the 4 full batches, and a reshuffled row keeps its own label
    assert [len(e) for e in epochs] == [4, 4, 4]
    pairs = [sorted(zip(map(tuple, d.tolist()), torch.cat(e).tolist())) for d, e in zip(dense, epochs)]
    assert len(pairs[0]) == 256 and pairs[0] == pairs[1] == pairs[2]
    # the student's window is part of the teacher's endless stream
    stream = torch.cat([b.dense_features for b in SyntheticClickLog(cfg, seed=5).batches("train", 64, num_batches=64)])
    rows = {tuple(r.tolist()) for r in stream}
    assert all(tuple(r.tolist()) in rows for r in dense[0])


@pytest.mark.slow
def test_early_stopping_keeps_the_best_step_and_its_checkpoint_scores_it(tmp_path):
    out = tmp_path / "overfit"
    _cli("train-teacher", "--config", str(TINY), "--output-dir", str(out), *OVERFIT)
    entry = json.loads((out / "metrics.json").read_text())["teacher"]
    curve = [(e["step"], e["auc"]) for e in entry["val_curve"]]
    best_step, best_auc = max(curve, key=lambda c: c[1])
    assert entry["stopped_early"] and entry["steps"] < entry["max_steps"] == 240
    assert entry["best_step"] == best_step < entry["steps"]
    assert entry["steps"] == curve[-1][0] and len([s for s, _ in curve if s > best_step]) == 3  # patience 3
    assert entry["best_val"]["auc"] == pytest.approx(best_auc)
    assert json.loads((out / "teacher" / "meta.json").read_text())["selection"]["best_step"] == best_step
    # the saved checkpoint is the best step's model, not the last one's
    _cli("evaluate", "--config", str(TINY), "--output-dir", str(out), "--source", "teacher", "--split", "val", *OVERFIT)
    kept = json.loads((out / "eval_teacher_val.json").read_text())
    assert kept["auc"] == pytest.approx(best_auc, abs=1e-6)


def _torchrun(*args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "torchrec_kd.cli",
           *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_validation_mid_run_does_not_change_training_on_two_ranks(tiny_teacher, tmp_path):
    """Validating detaches the pipeline; training goes on with a new one from the in-flight batches.
    The QAT student (sharded EmbeddingCollections, where re-attaching broke the all-to-alls) must
    train exactly as without validations."""
    base = ["--config", str(TINY), "train.steps=12", "train.log_every=2", "train.early_stopping.patience=0"]
    # the session's teacher, trained on one rank (checkpoints reshard to the distillation's two)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        shutil.copytree(tiny_teacher / "teacher", tmp_path / run / "teacher")
    curves = []
    for run, every in (("a", 0), ("b", 3)):
        _torchrun("distill-qat", "--output-dir", str(tmp_path / run), *base, f"train.eval_every={every}")
        entry = json.loads((tmp_path / run / "metrics.json").read_text())["distilled_qat"]
        curves.append(entry["loss_curve"])
        if every:
            assert [e["step"] for e in entry["val_curve"]] == [3, 6, 9, 12]
    assert [s for s, _ in curves[0]] == [s for s, _ in curves[1]] == [2, 4, 6, 8, 10, 12]
    assert all(a == pytest.approx(b, abs=1e-6) for (_, a), (_, b) in zip(*curves))


def test_budget_in_epochs_or_steps_and_the_teachers_own():
    from torchrec_kd.config import ConfigError, TrainConfig
    from torchrec_kd.core.budget import max_steps

    class Finite:
        def num_batches(self, split, batch_size):
            return 10

    class Endless:
        def num_batches(self, split, batch_size):
            return None

    t = TrainConfig(steps=100, epochs=3)
    assert max_steps(t, Finite(), 64) == 30 and max_steps(t, Finite(), 64, "teacher") == 30
    assert max_steps(TrainConfig(steps=100, epochs=3, teacher_steps=500), Endless(), 64, "teacher") == 500
    assert max_steps(TrainConfig(steps=100, epochs=3, teacher_epochs=5), Finite(), 64, "teacher") == 50
    assert max_steps(TrainConfig(steps=100), Endless(), 64) == 100
    with pytest.raises(ConfigError, match="need a finite train split"):
        max_steps(t, Endless(), 64)
