"""The whole job through TorchX with 2 processes and 2 seeds: each seed a replicate, a summary with the
distillation gain's interval, and a second launch that skips finished steps."""

import json

import pytest
from torchx import specs
from torchx.runner import get_runner

from components import kd
from tests.conftest import TINY
from tests.multiprocess import wait_app
from torchrec_kd.reporting.summary import paired_interval


def _run(app, tmp_path):
    runner = get_runner()
    try:
        handle = runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "logs")})
        return wait_app(runner, handle)  # with a deadline, unlike runner.wait
    finally:
        runner.close()


ARGS = ("train.steps=6", "train.eval_every=3", "quantize.dtypes=[int8,int4]", "distill.qat=null")


def test_experiment_two_seeds_writes_summary_and_reports_then_skips_done_steps(tmp_path):
    out = tmp_path / "run"
    app = kd.experiment(*ARGS, config=str(TINY), output_dir=str(out), j="1x2", seeds="0,1")
    status = _run(app, tmp_path)
    assert status is not None and status.state == specs.AppState.SUCCEEDED, status
    for seed in (0, 1):
        run = out / f"seed_{seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert {"teacher", "student", "distilled", "distilled_int8", "distilled_int4"} <= metrics.keys()
        assert all(metrics[m]["latency_ms_b1"] > 0 for m in ("teacher", "student", "distilled", "distilled_int4"))
        assert all(metrics[m]["best_step"] in (3, 6) for m in ("teacher", "student", "distilled", "distilled_int4"))
        assert json.loads((run / "distilled" / "meta.json").read_text())["config"]["seed"] == seed
        report = (run / "report.md").read_text()
        assert report.splitlines()[2].startswith("Distilled − student alone:") and "on one seed" in report
        assert "| distilled_int4 |" in report
        assert (run / "report.png").is_file() and (run / "tensorboard" / "teacher").is_dir()
        assert (run / "export" / "distilled_int4" / "model.ts").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    for m in ("teacher", "student", "distilled", "distilled_int8", "distilled_int4"):
        assert {"auc_mean", "auc_std", "ne_mean", "ne_std"} <= summary["models"][m].keys()
    gain = summary["kd_gain"]
    per_seed = [json.loads((out / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
    diffs = [m["distilled"]["auc"] - m["student"]["auc"] for m in per_seed]
    assert gain["per_seed"] == diffs
    # the interval is the paired Student-t one of these two differences: mean ± t(0.975, 1) · |d0 − d1| / 2
    mean, half = sum(diffs) / 2, 12.706 * abs(diffs[0] - diffs[1]) / 2
    assert gain["auc_mean"] == pytest.approx(mean, abs=1e-12)
    assert gain["auc_ci95"] == pytest.approx([mean - half, mean + half], abs=1e-9)
    assert gain["auc_ci95"] == pytest.approx(list(paired_interval(diffs)[1]), abs=1e-12)
    assert gain["significant"] == (mean - half > 0 or mean + half < 0)
    top = (out / "report.md").read_text()
    assert "95% CI" in top.splitlines()[2] and "2 seeds" in top.splitlines()[2]

    # a second launch finds every step done: nothing retrained
    teacher_meta = (out / "seed_1" / "teacher" / "meta.json").stat().st_mtime
    status = _run(kd.experiment(*ARGS, config=str(TINY), output_dir=str(out), j="1x2", seeds="0,1"), tmp_path)
    assert status.state == specs.AppState.SUCCEEDED
    assert (out / "seed_1" / "teacher" / "meta.json").stat().st_mtime == teacher_meta
