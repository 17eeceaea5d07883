"""TorchX components: valid AppDefs, and a real 2-process launch with local_cwd."""

import json
import subprocess
import sys

from torchx import specs
from torchx.runner import get_runner

from components import kd
from tests.conftest import REPO, TINY


def test_train_teacher_appdef_runs_torchrun_through_the_interpreter():
    app = kd.train_teacher("train.steps=3", config="configs/tiny_synthetic.yaml", j="2x4", python="python3")
    assert isinstance(app, specs.AppDef)
    role = app.roles[0]
    assert role.num_replicas == 2
    cmd = role.args[1]
    assert cmd.startswith("python3 -m torch.distributed.run ")
    assert "--nproc_per_node 4" in cmd
    assert cmd.endswith("-m torchrec_kd.cli train-teacher --config configs/tiny_synthetic.yaml train.steps=3")


def test_dryrun_for_cluster_schedulers():
    for scheduler, cfg in (("local_cwd", []), ("kubernetes", ["-cfg", "queue=default"]), ("slurm", [])):
        out = subprocess.run(
            [sys.executable, "-m", "torchx.cli.main", "run", "-s", scheduler, *cfg, "--workspace", "", "--dryrun",
             "components/kd.py:train_teacher", "-j", "2x2", "--python", "python", "--image", "torchrec_kd:latest",
             "--config", "configs/tiny_synthetic.yaml"],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "torch.distributed.run" in out.stdout + out.stderr


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
