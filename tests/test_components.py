"""TorchX components: valid AppDefs, and a real 2-process launch with local_cwd."""

import json
import subprocess
import sys

import pytest
from torchx import specs
from torchx.runner import get_runner

from components import kd
from tests.conftest import REPO, TINY
from tests.multiprocess import wait_app

COMPONENTS = {"train_teacher": "train-teacher", "train_student": "train-student", "distill": "distill",
              "distill_qat": "distill-qat", "score_teacher": "score-teacher",
              "quantize": "quantize", "experiment": "experiment", "report": "report", "export": "quantize --source distilled",
              "evaluate": "evaluate --source distilled --split test",
              "predict": "predict --model m --out p.csv --split test",
              "retrieve": "retrieve --model m --out p.csv --k 100 --split test"}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_each_component_returns_an_appdef_that_runs_the_cli(component):
    extra = {"model": "m", "out": "p.csv"} if component in ("predict", "retrieve") else {}
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


# the three dry runs in one interpreter: each component imports torch to check its input (~4 s)
_DRYRUNS = """
import contextlib, io, sys
from torchx.cli import argparse_util
from torchx.cli.main import main
for scheduler, cfg in (("local_cwd", []), ("kubernetes", ["-cfg", "queue=default"]), ("slurm", [])):
    argparse_util.torchxconfig.called_args.clear()  # torchx refuses a flag it saw before (-s)
    argparse_util.ArgOnceAction.called_args.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["run", "-s", scheduler, *cfg, "--workspace", "", "--dryrun", "components/kd.py:experiment", "-j", "2x2",
              "--python", "python", "--image", "torchrec_kd:latest", "--config", "configs/tiny_synthetic.yaml"])
    print(scheduler, "torchrec_kd.launch" in out.getvalue())
"""


def test_dryrun_for_cluster_schedulers():
    out = subprocess.run([sys.executable, "-c", _DRYRUNS], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["local_cwd", "True", "kubernetes", "True", "slurm", "True"], out.stdout


PLUGIN = "examples.custom_ranker.kd_plugin"
PLUGIN_RUN = ["student.arch=mlp_ranker", "student.args={hidden: [16, 8]}",
              "distill.losses=[{name: hard_bce, weight: 0.5}, {name: confident_soft_bce, weight: 0.5, args: {gamma: 0.5}},"
              " {name: hint_mse, weight: 0.05, args: {student: mlp, teacher: over_arch.model.0}}]"]


def _torchx(app, tmp_path):
    runner = get_runner()
    try:
        handle = runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "logs")})
        status = wait_app(runner, handle)  # with a deadline, unlike runner.wait
    finally:
        runner.close()
    return status


def test_torchx_local_cwd_two_processes_distil_a_plugin_model_with_a_plugin_loss(tiny_teacher, tmp_path):
    out = tmp_path / "run"  # the session's teacher is only read
    app = kd.distill("train.steps=4", f"distill.teacher_checkpoint={tiny_teacher / 'teacher'}", *PLUGIN_RUN, config=str(TINY),
                     output_dir=str(out), j="1x2", plugin=[PLUGIN])
    status = _torchx(app, tmp_path)
    assert status is not None and status.state == specs.AppState.SUCCEEDED, status
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distilled"]["world_size"] == 2 and 0.5 < metrics["distilled"]["auc"] <= 1.0
    meta = json.loads((out / "distilled" / "meta.json").read_text())
    assert meta["model"]["arch"] == "mlp_ranker" and meta["model"]["args"] == {"hidden": [16, 8]}
    assert meta["plugins"] == [PLUGIN]  # what evaluate / quantize / predict need to rebuild it


def _torchx_cli(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv,error", [
    (["trian.steps=1"], "unknown top-level key 'trian'; did you mean 'train'?"),
    (["--plugin", "nosuch.module"], "--plugin nosuch.module: no module named 'nosuch'"),
    (["--output_dir", "", "train.steps=1"], "output_dir (--output-dir) is empty; name a directory"),  # not the default
], ids=["bad_key", "missing_plugin", "empty_output_dir"])
def test_torchx_run_with_bad_input_ends_with_one_error_line_and_exit_2_before_launching(argv, error, tmp_path):
    out = tmp_path / "never"
    dest = [] if "--output_dir" in argv else ["--output_dir", str(out)]  # torchx refuses a repeated flag
    done = _torchx_cli("components/kd.py:train_teacher", "--config", "configs/tiny_synthetic.yaml", *dest, *argv)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and error in lines[-1], done.stderr[-2000:]
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in done.stderr
    assert "AppStatus" not in done.stderr and not done.stdout.strip()  # no app handle: nothing was launched
    assert not out.exists()


def test_a_component_refuses_a_misspelt_plugin_arg_before_building_the_job(capsys):
    bad = [PLUGIN_RUN[0], "student.args={hiden: [16, 8]}"]
    with pytest.raises(SystemExit) as e:
        kd.train_student("train.steps=2", *bad, config=str(TINY), j="1x2", plugin=[PLUGIN])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: ")
    assert "student.args: unknown key 'hiden'; did you mean 'hidden'?" in err


def test_a_config_only_the_named_image_holds_is_left_to_the_ranks():
    app = kd.train_teacher("trian.steps=1", config="configs/in_the_image_only.yaml", image="torchrec_kd:latest",
                           plugin=["only_in.the_image"])
    assert "--config configs/in_the_image_only.yaml --plugin only_in.the_image" in app.roles[0].args[1]
    with pytest.raises(SystemExit):  # without an image the job runs here: the same config is refused
        kd.train_teacher(config="configs/in_the_image_only.yaml")


def test_bad_input_only_the_ranks_can_see_ends_with_their_error_line_then_torchx_status(tmp_path):
    """What TorchX returns when a rank finds bad input (docs/launching.md): exit code 1, the rank's one
    ``error:`` line as the job's last output, then TorchX's own "Job finished: FAILED" and AppStatus."""
    done = _torchx_cli("components/kd.py:distill", "-j", "1x1", "--config", "configs/tiny_synthetic.yaml",
                       "--output_dir", str(tmp_path / "run"), f"distill.teacher_checkpoint={tmp_path / 'none'}",
                       timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    job = [line for line in lines if line.startswith("cli/0 [0]:")]
    assert job[-1].endswith(f"error: {tmp_path / 'none' / 'meta.json'} not found: {tmp_path / 'none'} is not a "
                            "torchrec_kd checkpoint (run train-teacher / train-student / distill first)"), job
    after = lines[lines.index(job[-1]) + 1:]
    assert "Job finished: FAILED" in after[0] and "AppStatus:" in after[1] and len(after) <= 8, after
    assert "Traceback" not in done.stderr and sum("error:" in line for line in lines) == 1


def test_resources_scale_with_gpus_and_one_process_per_gpu_is_required(capsys):
    cpu_only = kd.distill(config="configs/tiny_synthetic.yaml").roles[0].resource
    assert (cpu_only.cpu, cpu_only.gpu, cpu_only.memMB) == (2, 0, 8192)
    gpus = kd.distill(config="configs/tiny_synthetic.yaml", j="2x8", gpu=8).roles[0].resource
    assert (gpus.cpu, gpus.gpu, gpus.memMB) == (8 * kd.CPUS_PER_GPU, 8, 8 * kd.MEM_MB_PER_GPU)
    asked = kd.distill(config="configs/tiny_synthetic.yaml", j="1x8", gpu=8, cpu="32", memMB="65536").roles[0].resource
    assert (asked.cpu, asked.memMB) == (32, 65536)  # TorchX passes Optional[int] arguments as strings
    with pytest.raises(SystemExit) as e:
        kd.distill(config="configs/tiny_synthetic.yaml", j="1x2", gpu=8)
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: -j 1x2 starts 2 processes per node but --gpu 8")
