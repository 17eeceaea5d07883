"""The whole job through TorchX with 2 processes, and resuming it skips finished steps."""

import json

from torchx import specs
from torchx.runner import get_runner

from components import kd
from tests.conftest import TINY


def _run(app, tmp_path):
    runner = get_runner()
    try:
        handle = runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "logs")})
        return runner.wait(handle, wait_interval=1)
    finally:
        runner.close()


def test_experiment_two_processes_writes_report_then_skips_done_steps(tmp_path):
    out = tmp_path / "run"
    app = kd.experiment("train.steps=6", "quantize.dtypes=[int8,int4]", config=str(TINY), output_dir=str(out), j="1x2")
    status = _run(app, tmp_path)
    assert status is not None and status.state == specs.AppState.SUCCEEDED, status
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"teacher", "student", "distilled", "distilled_int8", "distilled_int4"} <= metrics.keys()
    assert all(metrics[m]["latency_ms_b1"] > 0 for m in ("teacher", "student", "distilled", "distilled_int4"))
    report = (out / "report.md").read_text()
    assert "Distillation moved the student's test AUC" in report and "| distilled_int4 |" in report
    assert (out / "report.png").is_file() and (out / "tensorboard" / "teacher").is_dir()
    assert (out / "export" / "distilled_int4" / "model.ts").is_file()

    # a second launch finds every step done: nothing retrained
    teacher_meta = (out / "teacher" / "meta.json").stat().st_mtime
    status = _run(kd.experiment("train.steps=6", "quantize.dtypes=[int8,int4]", config=str(TINY),
                                output_dir=str(out), j="1x2"), tmp_path)
    assert status.state == specs.AppState.SUCCEEDED
    assert (out / "teacher" / "meta.json").stat().st_mtime == teacher_meta
