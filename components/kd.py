"""TorchX components for torchrec_kd: each launches ``python -m torchrec_kd.cli <command>``
under torchrun via ``torchx.components.dist.ddp``.

Run them by path; the scheduler picks where::

    torchx run -s local_cwd components/kd.py:train_teacher -j 1x2 --config configs/dlrm_teacher_synthetic.yaml
    torchx run -s kubernetes components/kd.py:train_teacher -j 4x8 --image <your image> --python python ...
"""

import sys
from typing import Dict, Optional

import torchx
from torchx import specs
from torchx.components import dist

DEFAULT_CONFIG = "configs/dlrm_teacher_synthetic.yaml"


def _launch(command: str, script_args: tuple, config: str, output_dir: Optional[str], j: str, image: str,
            python: str, cpu: int, memMB: int, gpu: int, h: Optional[str], max_retries: int,
            env: Optional[Dict[str, str]], name: Optional[str], options: tuple = ()) -> specs.AppDef:
    """``dist.ddp`` running the CLI, with torchrun started as ``<python> -m torchrec_kd.launch``.

    dist.ddp calls a bare ``torchrun`` that is only on PATH inside an activated venv;
    running it through the interpreter works wherever that interpreter is.
    ``torchrec_kd.launch`` is torchrun itself, except that bad input ends the job with
    rank 0's one-line error and exit code 2 instead of torchrun's failure report.
    """
    args = [command, "--config", config]
    if output_dir:
        args += ["--output-dir", output_dir]
    args += [*options, *script_args]
    app = dist.ddp(*args, m="torchrec_kd.cli", j=j, image=image, cpu=cpu, gpu=gpu, memMB=memMB, h=h,
                   max_retries=max_retries, env=env, name=name or command)
    role = app.roles[0]
    shell, cmd = role.args
    if not cmd.startswith("torchrun "):
        raise RuntimeError(f"unexpected dist.ddp command: {cmd!r}")
    role.args = [shell, f"{python} -m torchrec_kd.launch " + cmd[len("torchrun "):]]
    return app


_ARGS_DOC = """
    Args:
        script_args: config overrides as dotted key=value (e.g. train.steps=100)
        config: YAML run config, relative to the job's working directory
        output_dir: where results go (default outputs/<run_name>)
        j: {nnodes}x{nproc_per_node}: 1x2 is two processes on one host
        image: container image (ignored by local_cwd, which runs in this directory)
        python: interpreter on the hosts that runs torchrun; the default is the one running torchx (right for local_cwd); use "python" for images
        cpu: CPUs per node
        memMB: memory per node in MB
        gpu: GPUs per node (the job uses nccl when GPUs are present)
        h: a registered named resource (overrides cpu/gpu/memMB)
        max_retries: scheduler restarts on failure
        env: extra environment variables, e.g. LOGLEVEL=INFO
        name: job name (default: the command)

    Returns:
        specs.AppDef: the job.
"""


def train_teacher(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("train-teacher", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def train_student(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("train-student", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def distill(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("distill", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def distill_qat(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("distill-qat", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def score_teacher(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("score-teacher", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def quantize(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("quantize", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def experiment(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    seeds: Optional[str] = None,
) -> specs.AppDef:
    if seeds:  # the same as the override experiment.seeds=[...]
        script_args = (*script_args, f"experiment.seeds=[{seeds}]")
    return _launch("experiment", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def report(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x1",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("report", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name)


def export(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    source: str = "distilled",
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("quantize", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name or "export", ("--source", source))


def evaluate(
    *script_args: str,
    source: str = "distilled",
    split: str = "test",
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("evaluate", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, ("--source", source, "--split", split))


def predict(
    *script_args: str,
    model: str = "outputs/dlrm_teacher_synthetic/export/distilled_int4",
    out: str = "outputs/dlrm_teacher_synthetic/predictions.csv",
    split: str = "test",
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: int = 2,
    memMB: int = 8192,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
) -> specs.AppDef:
    return _launch("predict", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, ("--model", model, "--out", out, "--split", split))


# TorchX renders a component's docstring as its --help; the arguments are shared.
train_teacher.__doc__ = "Train the sharded DLRM teacher through TorchRec's TrainPipelineSparseDist.\n" + _ARGS_DOC
train_student.__doc__ = "Train the student alone: the baseline distillation must beat.\n" + _ARGS_DOC
distill.__doc__ = ("Distill the trained teacher(s) into the slim student inside TrainPipelineSparseDist "
                   "(distill.offline=true: from score_teacher's stored outputs).\n" + _ARGS_DOC)
distill_qat.__doc__ = ("Quantization-aware distillation: the student's rows are fake-quantized as distill.qat "
                       "(int4 by default) while it learns; saved as distilled_qat.\n" + _ARGS_DOC)
score_teacher.__doc__ = ("Score the training stream with the frozen teacher(s) once and store the outputs for "
                         "offline distillation (distill with distill.offline=true).\n" + _ARGS_DOC)
quantize.__doc__ = "Quantize the distilled student's tables (quantize.dtypes), evaluate each, export for serving.\n" + _ARGS_DOC
experiment.__doc__ = ("The whole job: teacher -> student alone -> distillation -> quantization -> report, each "
                      "model at its best validation step, skipping steps whose outputs exist; with seeds, one "
                      "replicate per seed and summary.json with the distillation gain's 95% interval.\n"
                      + _ARGS_DOC.replace("        name: job name (default: the command)\n",
                                          "        name: job name (default: the command)\n"
                                          "        seeds: comma-separated run seeds, e.g. 0,1,2 (experiment.seeds)\n"))
report.__doc__ = "Time every model of the run and write report.md, report.png and TensorBoard events.\n" + _ARGS_DOC
export.__doc__ = ("Quantize a trained student (source: distilled or student) to quantize.dtypes, evaluate and "
                  "export each (weights.pt + quantized.json, model.ts).\n" + _ARGS_DOC.replace(
                      "        j:", "        source: which checkpoint: distilled or student\n        j:"))
evaluate.__doc__ = "Evaluate a saved model of the run (checkpoint or export) on a split.\n" + _ARGS_DOC.replace(
    "        config:", "        source: teacher, student, distilled, or an export such as distilled_int4\n"
    "        split: val or test\n        config:")
predict.__doc__ = "Score the configured data with an exported model and write CSV (or Parquet).\n" + _ARGS_DOC.replace(
    "        config:", "        model: exported model directory (<output_dir>/export/<name>)\n"
    "        out: output file, .csv or .parquet\n        split: val or test\n        config:")
