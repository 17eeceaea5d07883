"""train.on_nonfinite in one process on the tiny config: a skipped step leaves every weight (fused
tables and dense layers) and all optimizer state bit-identical and training goes on; ``stop`` stops;
non-finite validations are never selected and non-finite metrics are flagged."""

import logging
import math
from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

from tests.conftest import TINY
from tests.multiprocess import run_ranks
from torchrec_kd.config import EarlyStoppingConfig, load_config
from torchrec_kd.distributed.state import local_tensors
from torchrec_kd.training.guard import NonFiniteGuard, NonFiniteLossError, nonfinite_entry, nonfinite_metrics
from torchrec_kd.training.loop import TrainStats, train
from torchrec_kd.training.model_run import TrainModelRun
from torchrec_kd.training.selection import ModelSelector

STEPS = 6
BAD_STEP = 3  # the step whose batch has a NaN dense feature


def _flat(prefix: str, value, out: Dict[str, bytes]) -> None:
    """Every tensor under ``value`` (nested dicts/lists of tensors, ShardedTensors, numbers) as raw bytes."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}/{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flat(f"{prefix}/{i}", v, out)
    elif isinstance(value, ShardedTensor):
        for i, s in enumerate(value.local_shards()):
            out[f"{prefix}#{i}"] = s.tensor.detach().contiguous().numpy().tobytes()
    elif isinstance(value, torch.Tensor):
        out[prefix] = value.detach().contiguous().numpy().tobytes()
    elif isinstance(value, (int, float)):
        out[prefix] = repr(value).encode()


def _snapshot(run: TrainModelRun) -> Dict[str, bytes]:
    """Bytes of every local weight and every optimizer-state tensor (NaN compares by its bits)."""
    out = {f"w/{k}": v.contiguous().numpy().tobytes() for k, v in local_tensors(run.model).items()}
    _flat("opt", run.optimizer.state_dict()["state"], out)
    return out


def _changed(a: Dict[str, bytes], b: Dict[str, bytes]) -> list:
    assert a.keys() == b.keys()
    return sorted(k for k in a if a[k] != b[k])


def _poisoned(run: TrainModelRun, rank: int = 0) -> Iterator:
    """The run's training batches with a NaN dense feature in the batch of step BAD_STEP (on ``rank`` only)."""
    for step, batch in enumerate(run.train_batches(0), start=1):
        if step == BAD_STEP and run.env.rank == rank:
            batch.dense_features[0, 0] = float("nan")
        yield batch


def _run(tmp_path, policy: str) -> TrainModelRun:
    cfg = load_config(TINY, [f"output_dir={tmp_path / policy}", f"train.steps={STEPS}", "train.eval_every=0",
                             "train.log_every=1", f"train.on_nonfinite={policy}"])
    run = TrainModelRun(cfg, "student")
    run.setup()
    run.model.train()
    return run


def test_skip_leaves_weights_and_optimizer_state_bit_identical_and_training_goes_on(tmp_path, caplog):
    run = _run(tmp_path, "skip")
    snaps = {0: _snapshot(run)}  # after step s (on_checkpoint runs after each step but the last)

    def on_checkpoint(step: int, stats: TrainStats) -> None:
        snaps[step] = _snapshot(run)

    with caplog.at_level(logging.WARNING, logger="torchrec_kd.training.guard"):
        stats = train(run.pipeline, _poisoned(run), STEPS, run.env, run.cfg.data.batch_size, log_every=1,
                      checkpoint_every=1, on_checkpoint=on_checkpoint, guard=run.guard)
    assert stats.steps == STEPS and sorted(snaps) == list(range(STEPS))
    # finite steps change the tables, the dense layers and the optimizer state: the comparison can fail
    for step in (1, 2, BAD_STEP + 1, BAD_STEP + 2):
        changed = _changed(snaps[step - 1], snaps[step])
        assert any(k.startswith("w/") and "embedding" in k for k in changed), (step, changed)
        assert any(k.startswith("w/") and "embedding" not in k for k in changed), (step, changed)
        assert any(k.startswith("opt/") for k in changed), (step, changed)
    # the skipped step: nothing at all changed, bit for bit
    assert _changed(snaps[BAD_STEP - 1], snaps[BAD_STEP]) == []
    assert run.guard.nonfinite_steps == 1
    assert [math.isnan(x) for x in stats.losses] == [s == BAD_STEP for s in range(1, STEPS + 1)]
    # nothing NaN anywhere after the run
    run.pipeline.detach()
    assert all(torch.isfinite(v).all() for v in local_tensors(run.model).values())
    assert "skipped 1 step(s) with a non-finite loss up to step 3" in caplog.text


def _skip_on_ranks(rank: int, world_size: int, out_dir: str) -> Dict[str, list]:
    run = _run(Path(out_dir) / str(rank), "skip")
    snaps = {0: _snapshot(run)}
    train(run.pipeline, _poisoned(run, rank=0), STEPS, run.env, run.cfg.data.batch_size, log_every=1,
          checkpoint_every=1, on_checkpoint=lambda step, stats: snaps.__setitem__(step, _snapshot(run)),
          guard=run.guard)
    return {"changed": [_changed(snaps[s - 1], snaps[s]) for s in range(1, STEPS)],
            "skipped": run.guard.nonfinite_steps}


def test_skip_on_two_ranks_skips_the_step_on_every_rank(tmp_path):
    # only rank 0's batch is NaN: rank 1 must skip too, or its backward would wait for rank 0 forever
    results = run_ranks(_skip_on_ranks, 2, tmp_path, str(tmp_path), timeout=300)
    for r in results:
        assert r["skipped"] == 1
        assert r["changed"][BAD_STEP - 1] == []
        assert all(r["changed"][s - 1] for s in range(1, STEPS) if s != BAD_STEP)


def test_stop_raises_at_the_next_check(tmp_path):
    run = _run(tmp_path, "stop")
    saved = []
    with pytest.raises(NonFiniteLossError, match=f"non-finite loss at or before step {BAD_STEP}"):
        train(run.pipeline, _poisoned(run), STEPS, run.env, run.cfg.data.batch_size, log_every=1,
              checkpoint_every=1, on_checkpoint=lambda step, stats: saved.append(step), guard=run.guard)
    assert saved == [1, 2]  # the NaN step was never checkpointed


def test_guard_rejects_unknown_policy():
    with pytest.raises(Exception, match="train.on_nonfinite"):
        NonFiniteGuard(torch.nn.Identity(), "ignore")


def test_non_finite_validations_are_never_selected():
    sel = ModelSelector(EarlyStoppingConfig(metric="auc", patience=0))
    assert not sel.observe(1, {"auc": float("nan"), "ne": float("nan")})
    assert sel.state.best_step is None
    assert sel.observe(2, {"auc": 0.6, "ne": 0.9}) and sel.state.best_step == 2
    assert not sel.observe(3, {"auc": float("inf"), "ne": 0.8})
    assert not sel.observe(4, {"auc": 0.9, "ne": float("nan")})  # a fine AUC but NaN NE: a broken model
    assert sel.state.best_step == 2 and sel.state.evals_since_best == 2
    low = ModelSelector(EarlyStoppingConfig(metric="ne", patience=0))
    assert not low.observe(1, {"auc": 0.5, "ne": float("-inf")}) and low.observe(2, {"auc": 0.5, "ne": 0.9})
    # a resumed state that kept a NaN best (before this fix) is beaten by any finite value
    old = ModelSelector(EarlyStoppingConfig(metric="auc"), {"best_step": 1, "best": {"auc": float("nan")}})
    assert old.observe(2, {"auc": 0.5, "ne": 1.0}) and old.state.best_step == 2


def test_nonfinite_metrics_are_named_warned_about_and_marked_in_the_entry(caplog):
    assert nonfinite_metrics({"auc": 0.7, "ne": float("nan"), "logloss": float("inf"), "rows": 3}) == ["ne", "logloss"]
    guard = NonFiniteGuard(torch.nn.Identity(), "skip")
    with caplog.at_level(logging.WARNING, logger="torchrec_kd.training.guard"):
        assert nonfinite_entry("student", {"auc": 0.7, "ne": 0.9}, guard) == {}
        assert caplog.text == ""
        guard.count += 3
        assert nonfinite_entry("student", {"auc": 0.5, "ne": float("nan")}, guard) == {
            "nonfinite_steps": 3, "nonfinite_metrics": ["ne"]}
    assert "student: ne is NaN/Inf: this model is not usable (3 training step(s) had a non-finite loss)" in caplog.text
