"""Multi-task metrics, selection, summary and report (issue 25, engineer D).

Per-task metrics go through TorchRec's RecMetricModule with one RecTaskInfo per task; they must
equal the single-task evaluation of each column restricted to the task's space, and the
regression MSE its hand value. The summary's per-task paired interval and the report's
per-task tables are checked on hand-made metrics.
"""

from __future__ import annotations

import copy
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


# ---------------------------------------------------------------- summary and report on hand-made metrics

# per seed: (teacher, student, distilled) test AUC of click and conversion, MSE of dwell
HAND = {0: ((0.80, 0.75, 0.765), (0.70, 0.65, 0.66), (1.00, 1.20, 1.10)),
        1: ((0.81, 0.74, 0.765), (0.71, 0.66, 0.66), (1.05, 1.22, 1.13)),
        2: ((0.79, 0.76, 0.775), (0.69, 0.64, 0.67), (0.98, 1.18, 1.10))}


def _entry(click: float, conv: float, dwell: float) -> dict:
    tasks = {"click": {"auc": click, "ne": 1 - click / 2, "logloss": 0.4, "calibration": 1.0, "rows": 100},
             "conversion": {"auc": conv, "ne": 1 - conv / 2, "logloss": 0.3, "calibration": 1.0, "rows": 40},
             "dwell": {"mse": dwell, "rows": 100}}
    return {**tasks["click"], "rows": 100, "tasks": tasks, "selection_task": "click", "best_step": 4, "steps": 6,
            "max_steps": 6, "best_val": {"auc": click}, "embedding_bytes": 1000, "params": 10,
            "val_curve": [{"step": 4, "auc": click, "tasks": copy.deepcopy(tasks)}]}


def _seed_metrics(seed: int) -> dict:
    (tc, sc, dc), (tv, sv, dv), (tm, sm, dm) = HAND[seed]
    return {"teacher": _entry(tc, tv, tm), "student": _entry(sc, sv, sm), "distilled": _entry(dc, dv, dm)}


def _paired(diffs: List[float]):
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = 4.303 * sd / math.sqrt(n)  # t(0.975, 2 degrees of freedom)
    return mean, [mean - half, mean + half]


def test_per_task_summary_interval_on_hand_made_metrics():
    from torchrec_kd.reporting.summary import summarize

    s = summarize({seed: _seed_metrics(seed) for seed in HAND})
    assert list(s["tasks"]) == ["click", "conversion", "dwell"] and s["selection_task"] == "click"
    assert s["kd_gain"]["auc_mean"] == pytest.approx(s["tasks"]["click"]["kd_gain"]["auc_mean"])  # top = selection task
    for i, task in enumerate(("click", "conversion")):
        gain = s["tasks"][task]["kd_gain"]
        mean, ci = _paired([HAND[k][i][2] - HAND[k][i][1] for k in HAND])
        assert gain["auc_mean"] == pytest.approx(mean)
        assert gain["auc_ci95"] == pytest.approx(ci)
        assert gain["significant"] == (ci[0] > 0 or ci[1] < 0)
        assert s["tasks"][task]["models"]["teacher"]["auc_mean"] == pytest.approx(sum(HAND[k][i][0] for k in HAND) / 3)
    # click: +0.0183, CI above 0 → significant; conversion: +0.0133, CI includes 0 → not
    assert s["tasks"]["click"]["kd_gain"]["significant"] and not s["tasks"]["conversion"]["kd_gain"]["significant"]
    dwell = s["tasks"]["dwell"]
    mean, ci = _paired([HAND[k][2][2] - HAND[k][2][1] for k in HAND])
    assert dwell["type"] == "regression" and dwell["kd_gain"]["lower_is_better"]
    assert dwell["kd_gain"]["mse_mean"] == pytest.approx(mean) and dwell["kd_gain"]["mse_ci95"] == pytest.approx(ci)
    assert dwell["kd_gain"]["significant"] and dwell["kd_gain"]["auc_mean"] is None
    assert dwell["models"]["student"]["mse_mean"] == pytest.approx(sum(HAND[k][2][1] for k in HAND) / 3)


def test_teacher_not_better_is_warned_per_task():
    from torchrec_kd.reporting.summary import summarize

    one = _seed_metrics(0)
    one["teacher"]["tasks"]["conversion"]["auc"] = 0.60  # below the student alone on conversion only
    one["teacher"]["val_curve"][0]["tasks"]["conversion"] = {"auc": 0.60}
    one["teacher"]["tasks"]["dwell"]["mse"] = 1.5  # and worse on dwell (lower is better)
    one["teacher"]["val_curve"][0]["tasks"]["dwell"] = {"mse": 1.5}
    s = summarize({0: one})
    assert s["tasks"]["click"]["teacher_note"] is None
    assert "below the student alone" in s["tasks"]["conversion"]["teacher_note"]
    assert "0.6000 against 0.6500" in s["tasks"]["conversion"]["teacher_note"]
    assert "not below" in s["tasks"]["dwell"]["teacher_note"]


def test_the_report_writes_a_table_and_a_panel_per_task(tmp_path):
    from torchrec_kd.reporting.report import TASKS_PNG, write_report

    metrics = _seed_metrics(0)
    paths = write_report(metrics, tmp_path, "two tasks")
    text = (tmp_path / "report.md").read_text()
    assert "### conversion (binary)" in text and "### dwell (regression)" in text
    conv = text.split("### conversion (binary)")[1].split("###")[0]
    assert "| distilled | 0.6600 |" in conv and "| student | 0.6500 |" in conv and "rows in its space" in conv
    dwell = text.split("### dwell (regression)")[1]
    assert "MSE (lower is better)" in dwell and "| distilled | 1.1000 |" in dwell
    assert "dwell: distilled − student alone: -0.1000 test MSE" in dwell
    assert tmp_path / TASKS_PNG in paths and (tmp_path / TASKS_PNG).stat().st_size > 10_000
    from torchrec_kd.reporting.metrics_file import metrics_table

    logged = metrics_table(metrics)  # the table the recipes log: one per task after the main one
    assert "task conversion (binary):" in logged and "| distilled | 0.6600 | 0.6700 | 0.3000 | 1.0000 | 40 |" in logged
    assert "task dwell (regression: lower MSE is better):" in logged


def test_summary_md_has_a_section_per_task():
    from torchrec_kd.reporting.summary import summarize, summary_markdown

    text = summary_markdown(summarize({seed: _seed_metrics(seed) for seed in HAND}), "three seeds")
    assert "The table above is the selection task's (click, train.early_stopping.task)" in text
    conv = text.split("## Task conversion (binary: AUC)")[1].split("## Task")[0]
    assert "not significant (the interval includes 0)" in conv and "| distilled | 0.6633 |" in conv
    dwell = text.split("## Task dwell (regression: MSE, lower is better)")[1]
    assert "dwell: distilled − student alone: -0.0900 test MSE (lower is better; 95% CI" in dwell
    assert "): significant." in dwell and "| student | 1.2000 |" in dwell


def test_a_single_task_report_has_no_task_sections(tmp_path):
    from torchrec_kd.reporting.report import TASKS_PNG, write_report
    from torchrec_kd.reporting.summary import summarize

    metrics = {m: {k: v for k, v in e.items() if k not in ("tasks", "selection_task")} for m, e in _seed_metrics(0).items()}
    for e in metrics.values():
        e["val_curve"] = [{"step": 4, "auc": e["auc"]}]
    write_report(metrics, tmp_path, "one task")
    assert "Per task" not in (tmp_path / "report.md").read_text() and not (tmp_path / TASKS_PNG).exists()
    assert "tasks" not in summarize({0: metrics})


def test_latency_rows_of_a_multi_task_batch():
    from torchrec_kd.reporting.latency import take_rows

    labels = torch.zeros(6, 2)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=torch.arange(12),
                                              lengths=torch.ones(12, dtype=torch.int32))
    part = take_rows(Batch(dense_features=torch.zeros(6, 3), sparse_features=kjt, labels=labels), 2)
    assert part.labels.shape == (2, 2) and part.sparse_features.values().tolist() == [0, 1, 6, 7]
