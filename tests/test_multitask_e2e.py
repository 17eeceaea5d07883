"""A two-task run end to end on the tiny config, one process: teacher, student alone, distilled,
int8 export, report, predict with one column per task — and what it writes (issue 25's contract)."""

import json

import pandas as pd
import pytest

from tests.conftest import TINY

TWO_TASKS = ["tasks=[{name: click}, {name: conversion, only_where: click}]",
             "teacher.arch=shared_bottom", "student.arch=shared_bottom",
             "train.steps=12", "train.eval_every=6", "train.log_every=0", "quantize.dtypes=[int8]",
             "distill.qat=null", "experiment.seeds=[0,1]"]


@pytest.fixture(scope="module")
def two_task_run(tmp_path_factory):
    from torchrec_kd.cli import main

    out = tmp_path_factory.mktemp("multitask") / "run"
    assert main(["experiment", "--config", str(TINY), "--output-dir", str(out), *TWO_TASKS]) == 0
    return out


def test_every_model_has_per_task_metrics_and_the_selection_tasks_at_the_top(two_task_run):
    metrics = json.loads((two_task_run / "seed_0" / "metrics.json").read_text())
    assert {"teacher", "student", "distilled", "distilled_int8"} <= metrics.keys()
    for name in ("teacher", "student", "distilled", "distilled_int8"):
        entry = metrics[name]
        assert set(entry["tasks"]) == {"click", "conversion"}, name
        for task in ("click", "conversion"):
            assert {"auc", "ne"} <= entry["tasks"][task].keys()
        assert entry["auc"] == entry["tasks"]["click"]["auc"]  # null selection task: the first
    # conversion is scored on clicked rows only
    assert metrics["student"]["tasks"]["conversion"]["rows"] < metrics["student"]["tasks"]["click"]["rows"]


def test_the_summary_carries_each_tasks_gain_with_its_interval(two_task_run):
    summary = json.loads((two_task_run / "summary.json").read_text())
    for task in ("click", "conversion"):
        block = summary["tasks"][task]
        assert {"teacher", "student", "distilled"} <= block["models"].keys()
        gain = block["kd_gain"]
        assert {"auc_mean", "auc_ci95", "significant"} <= gain.keys()
        diffs = []
        for seed in (0, 1):
            m = json.loads((two_task_run / f"seed_{seed}" / "metrics.json").read_text())
            diffs.append(m["distilled"]["tasks"][task]["auc"] - m["student"]["tasks"][task]["auc"])
        assert gain["auc_mean"] == pytest.approx(sum(diffs) / 2, abs=1e-12)


def test_the_export_names_its_tasks_and_predict_writes_one_column_per_task(two_task_run, tmp_path):
    from torchrec_kd.cli import main

    export = two_task_run / "seed_0" / "export" / "distilled_int8"
    contract = json.loads((export / "contract.json").read_text())
    assert [t["name"] for t in contract["tasks"]] == ["click", "conversion"]
    out = tmp_path / "scores.csv"
    assert main(["predict", "--model", str(export), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert {"click", "conversion", "logit_click", "logit_conversion"} <= set(frame.columns)
    assert frame["click"].between(0, 1).all() and frame["conversion"].between(0, 1).all()
    assert not frame["click"].equals(frame["conversion"])
