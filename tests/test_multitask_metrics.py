"""Multi-task metrics, selection, summary and report (issue 25, engineer D).

Per-task metrics go through TorchRec's RecMetricModule with one RecTaskInfo per task; they must
equal the single-task evaluation of each column restricted to the task's space, and the
regression MSE its hand value. The summary's per-task paired interval and the report's
per-task tables are checked on hand-made metrics.
"""

from __future__ import annotations

import math
from typing import List

import pytest
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.core.tasks import Task
from torchrec_kd.errors import ConfigError
from torchrec_kd.training.evaluate import _env, evaluate
from torchrec_kd.training.selection import selection_task

B = 64
# click on every row; conversion only where click is 1; dwell a regression on every row
TASKS = [Task("click"), Task("conversion", space=0, weight=3.0), Task("dwell", "regression")]


def _batch(outputs: torch.Tensor, labels: torch.Tensor) -> Batch:
    """A batch whose dense features ARE the model's outputs (the scorer below just returns them)."""
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.zeros(0, dtype=torch.long),
                                              lengths=torch.zeros(labels.shape[0], dtype=torch.int32))
    return Batch(dense_features=outputs, sparse_features=kjt, labels=labels)


def _hand_made(batches: int = 3, seed: int = 0) -> List[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        click = (torch.rand(B, generator=g) < 0.4).float()
        conv = click * (torch.rand(B, generator=g) < 0.5).float()  # observed only on clicks
        dwell = torch.randn(B, generator=g)
        labels = torch.stack([click, conv, dwell], 1)
        outputs = torch.stack([torch.randn(B, generator=g) + click, torch.randn(B, generator=g) + conv * 2,
                               dwell + 0.5 * torch.randn(B, generator=g)], 1)
        # out of conversion's space its label is 0 and its output anything: it must not count
        outputs[:, 1] = torch.where(click > 0, outputs[:, 1], torch.full_like(outputs[:, 1], 9.0))
        out.append(_batch(outputs, labels))
    return out


def _score(batch: Batch) -> torch.Tensor:
    return batch.dense_features


def _evaluate(batches: List[Batch], tasks=None, select=None) -> dict:
    rows = sum(b.labels.shape[0] for b in batches)
    return evaluate(_score, batches, _env(), B, rows, tasks=tasks, select=select)


def _one_column(batches: List[Batch], i: int, space: int | None) -> List[Batch]:
    """Column ``i`` as a single-task evaluation set, restricted to the rows of its space."""
    outs = torch.cat([b.dense_features[:, i] for b in batches])
    labels = torch.cat([b.labels[:, i] for b in batches])
    if space is not None:
        keep = torch.cat([b.labels[:, space] for b in batches]) > 0.5
        outs, labels = outs[keep], labels[keep]
    return [_batch(outs, labels)]


def test_per_task_metrics_equal_single_task_evaluation_of_each_column_in_its_space():
    batches = _hand_made()
    got = _evaluate(batches, TASKS)
    assert set(got["tasks"]) == {"click", "conversion", "dwell"}
    for i, task in enumerate(TASKS[:2]):
        one = _one_column(batches, i, task.space)
        rows = one[0].labels.shape[0]
        want = evaluate(_score, one, _env(), rows, rows)
        for key in ("auc", "ne", "logloss", "calibration", "rows"):
            assert got["tasks"][task.name][key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (task.name, key)
    assert got["tasks"]["conversion"]["rows"] < got["rows"] == 3 * B
    # null selection = the first task: the top-level metrics are click's
    assert got["selection_task"] == "click"
    assert {k: got[k] for k in ("auc", "ne", "logloss")} == {k: got["tasks"]["click"][k] for k in ("auc", "ne", "logloss")}


def test_regression_mse_by_hand():
    batches = _hand_made()
    got = _evaluate(batches, TASKS)["tasks"]["dwell"]
    err = torch.cat([(b.dense_features[:, 2] - b.labels[:, 2]) ** 2 for b in batches])
    assert got["mse"] == pytest.approx(float(err.mean()), rel=1e-5)
    assert got["rows"] == 3 * B and "auc" not in got


def test_out_of_space_outputs_do_not_change_a_tasks_metrics():
    batches = _hand_made()
    before = _evaluate(batches, TASKS)["tasks"]["conversion"]
    for b in batches:
        b.dense_features[:, 1] = torch.where(b.labels[:, 0] > 0, b.dense_features[:, 1], -b.dense_features[:, 1] * 7)
    assert _evaluate(batches, TASKS)["tasks"]["conversion"] == before


def test_selection_on_a_named_task_and_on_the_weighted_mean():
    batches = _hand_made()
    named = _evaluate(batches, TASKS, "conversion")
    assert named["selection_task"] == "conversion" and named["auc"] == named["tasks"]["conversion"]["auc"]
    mean = _evaluate(batches, TASKS, "mean")
    per = mean["tasks"]
    # weights 1 (click) and 3 (conversion); dwell is regression and not in the mean
    for key in ("auc", "ne", "logloss", "calibration"):
        assert mean[key] == pytest.approx((per["click"][key] + 3 * per["conversion"][key]) / 4)
    assert mean["selection_task"] == "mean"


def test_one_task_keeps_todays_result():
    batches = _one_column(_hand_made(), 0, None)
    rows = batches[0].labels.shape[0]
    today = evaluate(_score, batches, _env(), rows, rows)
    assert set(today) == {"auc", "ne", "logloss", "calibration", "rows"}
    assert evaluate(_score, batches, _env(), rows, rows, tasks=[Task("label")]) == today


def test_selection_task_resolution_and_its_errors():
    assert selection_task(TASKS, None) == "click"
    assert selection_task(TASKS, "mean") == "mean"
    with pytest.raises(ConfigError, match="'dwell' is a regression task"):
        selection_task(TASKS, "dwell")
    with pytest.raises(ConfigError, match="null means the first task"):
        selection_task([Task("dwell", "regression"), Task("click")], None)
    with pytest.raises(ConfigError, match="has none"):
        selection_task([Task("a", "regression"), Task("b", "regression")], "mean")
    assert not math.isnan(1.0)
