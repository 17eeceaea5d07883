"""TorchX components for torchrec_kd: each launches ``python -m torchrec_kd.cli <command>``
under torchrun via ``torchx.components.dist.ddp``.

Run them by path; the scheduler picks where::

    torchx run -s local_cwd components/kd.py:train_teacher -j 1x2 --config configs/dlrm_teacher_synthetic.yaml
    torchx run -s kubernetes --workspace "" components/kd.py:train_teacher -j 4x8 --gpu 8 --image <your image> --python python ...

(``--workspace ""``: run the image as it is; without it TorchX first builds a new image of this
directory with docker.)
"""

import sys
from typing import Dict, List, Optional

import torchx
from torchx import specs
from torchx.components import dist

DEFAULT_CONFIG = "configs/dlrm_teacher_synthetic.yaml"


# Per node: without GPUs, what a 2-core laptop or CI runner has; with GPUs, per GPU, what a
# typical 8-GPU training host gives each one (12 of 96 cores, 128 of 1024 GB).
CPU_ONLY_CPUS, CPU_ONLY_MEM_MB = 2, 8192
CPUS_PER_GPU, MEM_MB_PER_GPU = 12, 131072


def resources(gpu: int, cpu: Optional[int], memMB: Optional[int]) -> tuple:
    """CPUs and memory per node: what was asked for, else scaled with the GPUs.

    Args:
        gpu (int): GPUs per node.
        cpu (Optional[int]): CPUs asked for (None: the default for ``gpu``; TorchX may pass a string).
        memMB (Optional[int]): memory asked for in MB (None: the default for ``gpu``).

    Returns:
        tuple: (cpu, memMB).
    """
    default_cpu, default_mem = (CPUS_PER_GPU * gpu, MEM_MB_PER_GPU * gpu) if gpu > 0 else (CPU_ONLY_CPUS, CPU_ONLY_MEM_MB)
    # TorchX parses an Optional[int] argument as a string
    return (int(cpu) if cpu is not None else default_cpu), (int(memMB) if memMB is not None else default_mem)


def _launch(command: str, script_args: tuple, config: str, output_dir: Optional[str], j: str, image: str,
            python: str, cpu: Optional[int], memMB: Optional[int], gpu: int, h: Optional[str], max_retries: int,
            env: Optional[Dict[str, str]], name: Optional[str], options: tuple = (),
            plugin: Optional[List[str]] = None) -> specs.AppDef:
    """``dist.ddp`` running the CLI, with torchrun started as ``<python> -m torchrec_kd.launch``.

    dist.ddp calls a bare ``torchrun`` that is only on PATH inside an activated venv;
    running it through the interpreter works wherever that interpreter is.
    ``torchrec_kd.launch`` is torchrun itself, except that bad input ends the job with
    rank 0's one-line error and exit code 2 instead of torchrun's failure report.
    """
    nproc = j.split("x")[-1]
    if gpu > 0 and nproc.isdigit() and int(nproc) != gpu:
        raise ValueError(f"-j {j} starts {nproc} processes per node but --gpu {gpu} gives each node {gpu} GPUs; "
                         f"run one process per GPU, e.g. -j {j.split('x')[0] if 'x' in j else 1}x{gpu}")
    cpu, memMB = resources(gpu, cpu, memMB)
    args = [command, "--config", config]
    for module in plugin or []:  # the same modules imported on every rank
        args += ["--plugin", module]
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
        script_args: config overrides, dotted key=value (e.g. train.steps=100); optional,
            whatever the "(required)" TorchX prints after this says
        config: YAML run config, relative to the job's working directory
        output_dir: where results go (default outputs/<run_name>)
        j: {nnodes}x{nproc_per_node}: 1x2 is two processes on one host
        image: container image (ignored by local_cwd, which runs in this directory)
        python: interpreter on the hosts that runs torchrun; the default is the one running torchx
            (right for local_cwd); use "python" for images
        cpu: CPUs per node (default 2 without GPUs, 12 per GPU with them)
        memMB: memory per node in MB (default 8192 without GPUs, 131072 per GPU with them)
        gpu: GPUs per node, one process each (-j 1x8 with --gpu 8); the job then uses nccl
        h: a registered named resource (overrides cpu/gpu/memMB)
        max_retries: scheduler restarts on failure
        env: extra environment variables, e.g. LOGLEVEL=INFO
        name: job name (default: the command)
        plugin: modules to import first, comma-separated (e.g. my_pkg.kd): they register model builders
            and loss terms the config names (--plugin on the CLI)

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
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("train-teacher", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def train_student(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("train-student", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def distill(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("distill", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def distill_qat(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("distill-qat", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def score_teacher(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("score-teacher", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def quantize(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("quantize", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def experiment(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
    seeds: Optional[str] = None,
) -> specs.AppDef:
    if seeds:  # the same as the override experiment.seeds=[...]
        script_args = (*script_args, f"experiment.seeds=[{seeds}]")
    return _launch("experiment", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def report(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x1",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("report", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, plugin=plugin)


def export(
    *script_args: str,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    source: str = "distilled",
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("quantize", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name or "export", ("--source", source), plugin=plugin)


def evaluate(
    *script_args: str,
    source: str = "distilled",
    split: str = "test",
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    return _launch("evaluate", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, ("--source", source, "--split", split), plugin=plugin)


def predict(
    *script_args: str,
    model: str = "outputs/dlrm_teacher_synthetic/export/distilled_int4",
    out: str = "outputs/dlrm_teacher_synthetic/predictions.csv",
    split: str = "test",
    input: Optional[str] = None,
    columns: Optional[str] = None,
    config: str = DEFAULT_CONFIG,
    output_dir: Optional[str] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    python: str = sys.executable,
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    gpu: int = 0,
    h: Optional[str] = None,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    plugin: Optional[List[str]] = None,
) -> specs.AppDef:
    # --input: traffic (file, folder or glob in the model's input format); --columns: ids passed through
    flags = ("--model", model, "--out", out, "--split", split, *(("--input", input) if input else ()),
             *(("--columns", columns) if columns else ()))
    return _launch("predict", script_args, config, output_dir, j, image, python, cpu, memMB, gpu, h,
                   max_retries, env, name, flags, plugin=plugin)


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
predict.__doc__ = "Score traffic (or a configured split) with an export; write CSV (or Parquet).\n" + _ARGS_DOC.replace(
    "        config:", "        model: exported model directory (<output_dir>/export/<name>)\n"
    "        out: output file, .csv or .parquet\n        split: val or test (when no input is given)\n"
    "        input: traffic to score: a file, folder or glob in the model's input format, labels optional\n"
    "        columns: comma-separated input columns copied to the output (ids to join on)\n        config:")
