"""TorchX components for torchrec_kd: each launches ``python -m torchrec_kd.cli <command>``
under torchrun via ``torchx.components.dist.ddp``.

Run them by path; the scheduler picks where::

    torchx run -s local_cwd components/kd.py:train_teacher -j 1x2 --config configs/dlrm_teacher_synthetic.yaml
    torchx run -s kubernetes --workspace "" components/kd.py:train_teacher -j 4x8 --gpu 8 --image <your image> --python python ...

(``--workspace ""``: run the image as it is; without it TorchX first builds a new image of this
directory with docker.)

Bad input ends ``torchx run`` here, before anything launches: the component checks the config,
the overrides and the plugins as the CLI would, prints one ``error:`` line and raises
``SystemExit(2)``. It checks what this machine has: with a named ``--image`` whose config path
does not exist here, only the ranks check it (then TorchX ends the job, see docs/launching.md).

Each component spells out its parameters because TorchX reads them from this file's source
(``torchx.specs.file_linter`` wants every parameter of the ``def`` annotated) and its ``--help``
from the docstring. Everything they share is done once, in :func:`_job`.
"""

import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torchx
from torchx import specs
from torchx.components import dist

DEFAULT_CONFIG = "configs/dlrm_teacher_synthetic.yaml"


# Per node: without GPUs, what a 2-core laptop or CI runner has; with GPUs, per GPU, what a
# typical 8-GPU training host gives each one (12 of 96 cores, 128 of 1024 GB).
CPU_ONLY_CPUS, CPU_ONLY_MEM_MB = 2, 8192
CPUS_PER_GPU, MEM_MB_PER_GPU = 12, 131072
USER_ERROR = 2  # the CLI's exit code for bad input


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


class _Shared(NamedTuple):
    """The parameters every component has, as TorchX parsed them."""

    script_args: Tuple[str, ...]
    config: str
    output_dir: Optional[str]
    j: str
    image: str
    python: str
    cpu: Optional[int]
    memMB: Optional[int]
    gpu: int
    h: Optional[str]
    max_retries: int
    env: Optional[Dict[str, str]]
    name: Optional[str]
    plugin: Optional[List[str]]


def _refuse(message: str) -> None:
    """End ``torchx run`` as the CLI ends on bad input: one ``error:`` line, exit code 2, nothing launched.

    Args:
        message (str): what was wrong and what to do.

    Raises:
        SystemExit: always, with code 2 (TorchX's own exit path prints a traceback for anything else).
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR)


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it; its parent packages are)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_input(config: str, overrides: Sequence[str], plugins: Sequence[str], image_only: bool = False) -> None:
    """What the CLI checks before any work, done where ``torchx run`` runs.

    Args:
        config (str): the run config's path (relative to the working directory).
        overrides (Sequence[str]): ``key=value`` overrides, ``output_dir=…`` included.
        plugins (Sequence[str]): modules the ranks import first.
        image_only (bool): the job runs in a named image, which may hold a config or plugin
            this machine lacks: those are left to the ranks.

    Raises:
        torchrec_kd.errors.UserError: the config, an override, a plugin, or a model's or loss
            term's name or args is bad (the CLI's message).
    """
    if image_only and not Path(config).exists():
        return
    from torchrec_kd.config import config_source, load_config
    from torchrec_kd.core.plugins import load_plugins

    cfg = load_config(config, overrides)
    if image_only and not all(_importable(m) for m in plugins):
        return  # a plugin that only the image holds: the ranks check the names it registers
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # fbgemm logs a line per kernel library it loads, at INFO on the root logger
    try:
        load_plugins(plugins)
        from torchrec_kd.losses import check_loss_names
        from torchrec_kd.models.build import check_models
    finally:
        logging.disable(previous)
    check_models(cfg, config_source(config, overrides))
    check_loss_names(cfg.distill.losses, config_source(config, overrides))


def _job(command: str, params: Mapping[str, Any], flags: Sequence[str] = (),
         overrides: Sequence[str] = ()) -> specs.AppDef:
    """``dist.ddp`` running the CLI, with torchrun started as ``<python> -m torchrec_kd.launch``.

    dist.ddp calls a bare ``torchrun`` that is only on PATH inside an activated venv;
    running it through the interpreter works wherever that interpreter is.
    ``torchrec_kd.launch`` is torchrun itself, except that bad input found in the ranks ends
    the job with rank 0's one-line error and exit code 2 instead of torchrun's failure report.

    Args:
        command (str): the CLI command.
        params (Mapping[str, Any]): the component's arguments (its ``locals()``); the shared ones are read.
        flags (Sequence[str]): the command's own flags, before the overrides.
        overrides (Sequence[str]): ``key=value`` words the component adds after the user's.

    Returns:
        specs.AppDef: the job.
    """
    p = _Shared(**{k: params[k] for k in _Shared._fields})
    nproc = p.j.split("x")[-1]
    if p.gpu > 0 and nproc.isdigit() and int(nproc) != p.gpu:
        _refuse(f"-j {p.j} starts {nproc} processes per node but --gpu {p.gpu} gives each node {p.gpu} GPUs; "
                f"run one process per GPU, e.g. -j {p.j.split('x')[0] if 'x' in p.j else 1}x{p.gpu}")
    script_args = [*p.script_args, *overrides]
    from torchrec_kd.config import string_override
    from torchrec_kd.errors import UserError

    # '' too, and as the CLI's --output-dir passes it: the loader refuses it rather than using the default
    given = [string_override("output_dir", p.output_dir)] if p.output_dir is not None else []
    try:
        check_input(p.config, [*script_args, *given], p.plugin or [], image_only=p.image != torchx.IMAGE)
    except UserError as e:
        _refuse(str(e))
    cpu, memMB = resources(p.gpu, p.cpu, p.memMB)
    args = [command, "--config", p.config]
    for module in p.plugin or []:  # the same modules imported on every rank
        args += ["--plugin", module]
    if p.output_dir is not None:
        args += ["--output-dir", p.output_dir]
    args += [*flags, *script_args]
    app = dist.ddp(*args, m="torchrec_kd.cli", j=p.j, image=p.image, cpu=cpu, gpu=p.gpu, memMB=memMB, h=p.h,
                   max_retries=p.max_retries, env=p.env, name=p.name or command)
    role = app.roles[0]
    shell, cmd = role.args
    if not cmd.startswith("torchrun "):
        raise RuntimeError(f"unexpected dist.ddp command: {cmd!r}")
    role.args = [shell, f"{p.python} -m torchrec_kd.launch " + cmd[len("torchrun "):]]
    return app


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
    """Train the sharded DLRM teacher through TorchRec's TrainPipelineSparseDist.

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
    return _job("train-teacher", locals())


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
    """Train the student alone: the baseline distillation must beat.

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
    return _job("train-student", locals())


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
    """Distill the trained teacher(s) into the slim student inside TrainPipelineSparseDist.

    distill.offline=true: from score_teacher's stored outputs.

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
    return _job("distill", locals())


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
    """Quantization-aware distillation, saved as distilled_qat.

    The student's rows are fake-quantized as distill.qat (int4 by default) while it learns.

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
    return _job("distill-qat", locals())


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
    """Score the training stream with the frozen teacher(s) once and store the outputs for offline distillation.

    Then distill with distill.offline=true.

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
    return _job("score-teacher", locals())


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
    """Quantize the distilled student's tables (quantize.dtypes), evaluate each, export for serving.

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
    return _job("quantize", locals())


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
    """The whole job: teacher -> student alone -> distillation -> quantization -> report.

    Each model at its best validation step, skipping steps whose outputs exist; with seeds, one
    replicate per seed and summary.json with the distillation gain's 95% interval.

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
        seeds: comma-separated run seeds, e.g. 0,1,2 (experiment.seeds)

    Returns:
        specs.AppDef: the job.
    """
    # the same as the override experiment.seeds=[...], after the user's
    return _job("experiment", locals(), overrides=[f"experiment.seeds=[{seeds}]"] if seeds else [])


def continual(
    *script_args: str,
    config: str = "configs/continual_synthetic.yaml",
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
    """Continual distillation, window by window of data.windows: the teacher, the student alone and
    the distilled student warm-started from their previous versions, the from-scratch reference,
    the export and its delta; every model scored on the next window -> continual.json / .md / .png.

    Resumes at the window where it stopped; a changed config re-runs from the first window it affects.

    Args:
        script_args: config overrides, dotted key=value (e.g. continual.teacher=fine_tune); optional,
            whatever the "(required)" TorchX prints after this says
        config: YAML run config with data.windows (default: the drifting synthetic log)
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
        seeds: comma-separated run seeds, e.g. 0,1,2 (experiment.seeds: one continual run per seed)
    """
    return _job("continual", locals(), overrides=[f"experiment.seeds=[{seeds}]"] if seeds else [])


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
    """Time every model of the run and write report.md, report.png and TensorBoard events.

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
    return _job("report", locals())


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
    """Quantize a trained student (source: distilled or student) to quantize.dtypes, evaluate and export each.

    Each export holds weights.pt + quantized.json and model.ts.

    Args:
        script_args: config overrides, dotted key=value (e.g. train.steps=100); optional,
            whatever the "(required)" TorchX prints after this says
        config: YAML run config, relative to the job's working directory
        output_dir: where results go (default outputs/<run_name>)
        source: which checkpoint: distilled or student
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
        name: job name (default: export)
        plugin: modules to import first, comma-separated (e.g. my_pkg.kd): they register model builders
            and loss terms the config names (--plugin on the CLI)

    Returns:
        specs.AppDef: the job.
    """
    return _job("quantize", {**locals(), "name": name or "export"}, flags=["--source", source])


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
    """Evaluate a saved model of the run (checkpoint or export) on a split.

    Args:
        script_args: config overrides, dotted key=value (e.g. train.steps=100); optional,
            whatever the "(required)" TorchX prints after this says
        source: teacher, student, distilled, or an export such as distilled_int4
        split: val or test
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
    return _job("evaluate", locals(), flags=["--source", source, "--split", split])


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
    """Score traffic (or a configured split) with an export; write CSV (or Parquet).

    Args:
        script_args: config overrides, dotted key=value (e.g. train.steps=100); optional,
            whatever the "(required)" TorchX prints after this says
        model: exported model directory (<output_dir>/export/<name>)
        out: output file, .csv or .parquet
        split: val or test (when no input is given)
        input: traffic to score: a file, folder or glob in the model's input format, labels optional
        columns: comma-separated input columns copied to the output (ids to join on)
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
    flags = ["--model", model, "--out", out, "--split", split, *(["--input", input] if input else []),
             *(["--columns", columns] if columns else [])]
    return _job("predict", locals(), flags=flags)


def retrieve(
    *script_args: str,
    model: str = "outputs/retrieval_synthetic/export/distilled_int8",
    out: str = "outputs/retrieval_synthetic/top100.csv",
    k: int = 100,
    index: Optional[str] = None,
    split: str = "test",
    input: Optional[str] = None,
    columns: Optional[str] = None,
    config: str = "configs/retrieval_synthetic.yaml",
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
    """Each user's top-K items from a two-tower export (exact, or a FAISS index); write CSV (or Parquet).

    Args:
        script_args: config overrides, dotted key=value (e.g. data.retrieval.eval_users=1000); optional,
            whatever the "(required)" TorchX prints after this says
        model: a two-tower export directory (<output_dir>/export/<name>)
        out: output file, .csv or .parquet
        k: items per user
        index: index options: exact (default), or e.g. type=ivf,nlist=1024,nprobe=32 / type=hnsw,m=32
        split: val or test (the configured data's users, seen items excluded, when no input is given)
        input: users' raw rows: a file, folder or glob in the model's input format
        columns: comma-separated input columns copied to the output (ids to join on)
        config: YAML run config, relative to the job's working directory
        output_dir: where results go (default outputs/<run_name>)
        j: {nnodes}x{nproc_per_node}: one process searches (1x1); more processes repeat the search and
            only process 0 writes
        image: container image (ignored by local_cwd, which runs in this directory)
        python: interpreter on the hosts that runs torchrun; the default is the one running torchx
            (right for local_cwd); use "python" for images
        cpu: CPUs per node (default 2 without GPUs, 12 per GPU with them)
        memMB: memory per node in MB (default 8192 without GPUs, 131072 per GPU with them)
        gpu: GPUs per node, one process each; the search itself runs on CPU
        h: a registered named resource (overrides cpu/gpu/memMB)
        max_retries: scheduler restarts on failure
        env: extra environment variables, e.g. LOGLEVEL=INFO
        name: job name (default: the command)
        plugin: modules to import first, comma-separated (e.g. my_pkg.kd): they register model builders
            and loss terms the config names (--plugin on the CLI)

    Returns:
        specs.AppDef: the job.
    """
    flags = ["--model", model, "--out", out, "--k", str(k), "--split", split, *(["--index", index] if index else []),
             *(["--input", input] if input else []), *(["--columns", columns] if columns else [])]
    return _job("retrieve", locals(), flags=flags)
