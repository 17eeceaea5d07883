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


PLUGIN = "examples.custom_ranker.kd_plugin"
PLUGIN_RUN = ["student.arch=mlp_ranker", "student.args={hidden: [16, 8]}",
              "distill.losses=[{name: hard_bce, weight: 0.5}, {name: confident_soft_bce, weight: 0.5, args: {gamma: 0.5}},"
              " {name: hint_mse, weight: 0.05, args: {student: mlp, teacher: over_arch.model.0}}]"]


def _torchx(app, tmp_path):
    runner = get_runner()
    try:
        handle = runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "logs")})
        status = runner.wait(handle, wait_interval=1)
    finally:
        runner.close()
    return status


def test_torchx_local_cwd_two_processes_distil_a_plugin_model_with_a_plugin_loss(tmp_path):
    from torchrec_kd.cli import main

    teacher, out = tmp_path / "teacher_run", tmp_path / "run"  # (this process keeps holding the teacher's dir)
    assert main(["train-teacher", "--config", str(TINY), "--output-dir", str(teacher), "train.steps=4"]) == 0
    app = kd.distill("train.steps=4", f"distill.teacher_checkpoint={teacher / 'teacher'}", *PLUGIN_RUN, config=str(TINY),
                     output_dir=str(out), j="1x2", plugin=[PLUGIN])
    status = _torchx(app, tmp_path)
    assert status is not None and status.state == specs.AppState.SUCCEEDED, status
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distilled"]["world_size"] == 2 and 0.5 < metrics["distilled"]["auc"] <= 1.0
    meta = json.loads((out / "distilled" / "meta.json").read_text())
    assert meta["model"]["arch"] == "mlp_ranker" and meta["model"]["args"] == {"hidden": [16, 8]}
    assert meta["plugins"] == [PLUGIN]  # what evaluate / quantize / predict need to rebuild it


def test_torchx_a_misspelt_plugin_arg_ends_the_job_with_one_line(tmp_path, capfd):
    bad = [PLUGIN_RUN[0], "student.args={hiden: [16, 8]}"]
    status = _torchx(kd.train_student("train.steps=2", *bad, config=str(TINY), output_dir=str(tmp_path), j="1x2",
                                      plugin=[PLUGIN]), tmp_path)
    assert status is not None and status.state == specs.AppState.FAILED
    err = "".join(p.read_text() for p in (tmp_path / "logs").rglob("stderr*") if p.is_file()) + capfd.readouterr().err
    assert "student.args: unknown key 'hiden'; did you mean 'hidden'?" in err, err[-2000:]
    assert "Traceback" not in err


def test_resources_scale_with_gpus_and_one_process_per_gpu_is_required():
    cpu_only = kd.distill(config="configs/tiny_synthetic.yaml").roles[0].resource
    assert (cpu_only.cpu, cpu_only.gpu, cpu_only.memMB) == (2, 0, 8192)
    gpus = kd.distill(config="configs/tiny_synthetic.yaml", j="2x8", gpu=8).roles[0].resource
    assert (gpus.cpu, gpus.gpu, gpus.memMB) == (8 * kd.CPUS_PER_GPU, 8, 8 * kd.MEM_MB_PER_GPU)
    asked = kd.distill(config="configs/tiny_synthetic.yaml", j="1x8", gpu=8, cpu="32", memMB="65536").roles[0].resource
    assert (asked.cpu, asked.memMB) == (32, 65536)  # TorchX passes Optional[int] arguments as strings
    with pytest.raises(ValueError, match="-j 1x2 starts 2 processes per node but --gpu 8"):
        kd.distill(config="configs/tiny_synthetic.yaml", j="1x2", gpu=8)
