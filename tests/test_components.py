"""TorchX components: valid AppDefs, and a real 2-process launch with local_cwd."""

import json
import subprocess
import sys

import pytest
from torchx import specs
from torchx.runner import get_runner

from components import kd
from tests.conftest import REPO, TINY

COMPONENTS = {"train_teacher": "train-teacher", "train_student": "train-student", "distill": "distill",
              "distill_qat": "distill-qat", "score_teacher": "score-teacher",
              "quantize": "quantize", "experiment": "experiment", "report": "report", "export": "quantize --source distilled",
              "evaluate": "evaluate --source distilled --split test",
              "predict": "predict --model m --out p.csv --split test"}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_each_component_returns_an_appdef_that_runs_the_cli(component):
    extra = {"model": "m", "out": "p.csv"} if component == "predict" else {}
    app = getattr(kd, component)("train.steps=3", config="configs/tiny_synthetic.yaml", j="2x4", python="python3",
                                 output_dir="out", max_retries=2, **extra)
    assert isinstance(app, specs.AppDef)
    role = app.roles[0]
    assert role.num_replicas == 2 and role.max_retries == 2
    cmd = role.args[1]
    assert cmd.startswith("python3 -m torchrec_kd.launch ")
    assert "--nproc_per_node 4" in cmd
    command, *options = COMPONENTS[component].split(" ", 1)
    assert cmd.endswith(f"-m torchrec_kd.cli {command} --config configs/tiny_synthetic.yaml --output-dir out "
                        + (options[0] + " " if options else "") + "train.steps=3")
    assert "Args:" in getattr(kd, component).__doc__  # what `torchx run … --help` shows


def test_dryrun_for_cluster_schedulers():
    for scheduler, cfg in (("local_cwd", []), ("kubernetes", ["-cfg", "queue=default"]), ("slurm", [])):
        out = subprocess.run(
            [sys.executable, "-m", "torchx.cli.main", "run", "-s", scheduler, *cfg, "--workspace", "", "--dryrun",
             "components/kd.py:experiment", "-j", "2x2", "--python", "python", "--image", "torchrec_kd:latest",
             "--config", "configs/tiny_synthetic.yaml"],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "torchrec_kd.launch" in out.stdout + out.stderr


def test_torchx_local_cwd_two_processes(tmp_path):
    app = kd.train_teacher("train.steps=4", config=str(TINY), output_dir=str(tmp_path), j="1x2")
    runner = get_runner()
    try:
        handle = runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "logs")})
        status = runner.wait(handle, wait_interval=1)
    finally:
        runner.close()
    assert status is not None and status.state == specs.AppState.SUCCEEDED, status
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["teacher"]["world_size"] == 2
    assert 0.5 < metrics["teacher"]["auc"] <= 1.0
    assert (tmp_path / "teacher" / "meta.json").is_file()


def test_resources_scale_with_gpus_and_one_process_per_gpu_is_required():
    cpu_only = kd.distill(config="configs/tiny_synthetic.yaml").roles[0].resource
    assert (cpu_only.cpu, cpu_only.gpu, cpu_only.memMB) == (2, 0, 8192)
    gpus = kd.distill(config="configs/tiny_synthetic.yaml", j="2x8", gpu=8).roles[0].resource
    assert (gpus.cpu, gpus.gpu, gpus.memMB) == (8 * kd.CPUS_PER_GPU, 8, 8 * kd.MEM_MB_PER_GPU)
    asked = kd.distill(config="configs/tiny_synthetic.yaml", j="1x8", gpu=8, cpu="32", memMB="65536").roles[0].resource
    assert (asked.cpu, asked.memMB) == (32, 65536)  # TorchX passes Optional[int] arguments as strings
    with pytest.raises(ValueError, match="-j 1x2 starts 2 processes per node but --gpu 8"):
        kd.distill(config="configs/tiny_synthetic.yaml", j="1x2", gpu=8)
