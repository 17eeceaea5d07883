"""Benchmark: training throughput and memory of student alone, online KD, offline KD, teacher.

Each phase runs in its own ``torchrun`` launch (so resident memory is the phase's own)
on the default config, builds the model exactly as the recipes do, pre-generates its
batches (the data generator is not what is measured), warms up, then times ``--repeats``
blocks of ``--steps`` steps with ``torch.utils.benchmark.Timer`` (the same fixed
count on every rank: an adaptive count would desynchronise the collectives) and keeps the
median. Every phase runs through ``TrainPipelineSparseDist`` — the teacher forward too (in eval
mode: forward only), so the online-KD ratio compares pipelined steps with pipelined steps;
offline KD's timed stream includes reading the score cache and checking each batch's digest.
Memory is each phase's peak resident set during the timed steps (weights,
optimizer state, activations) above the process before the model was built, without the
pre-generated batches, summed over ranks (tables are sharded); the teacher's share of
distillation is online KD's peak minus the student-alone peak (also with the teacher's
tables stored fp16 and int8, ``distill.teacher_dtype``). The standing footprint is
the resident set after the timed steps (lazily built optimizer state included). ``--profile`` writes the top ``torch.profiler``
operators of 5 online-KD steps. A run of every phase writes ``benchmarks/results/training.json``
(with the command as run, its date and its whole wall time); ``--phases`` measures only some
phases and writes ``<out>/training.json`` instead, with the ratios those phases allow::

    python benchmarks/training.py [--config configs/perf_criteo_shaped_synthetic.yaml] [--nproc 2] [--profile]
    python benchmarks/training.py --phases student offline_kd --steps 5 --repeats 3 --warmup 5 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import command_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PHASES = ("student", "teacher_train", "teacher_forward", "online_kd", "offline_kd", "online_kd_fp16_teacher",
          "online_kd_int8_teacher")


def _status_gib(key: str) -> float:
    """A memory line of /proc/self/status (``VmRSS``: resident now, ``VmHWM``: peak), in GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _trimmed_rss_gib() -> float:
    """Resident set after returning freed heap to the OS (memory glibc keeps is not the model's)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError as e:
        raise SystemExit(f"cannot trim the heap ({e}); the memory numbers need Linux with glibc") from e
    return _status_gib("VmRSS")


def _reset_peak() -> None:
    """Restart the peak-RSS counter from the (trimmed) resident set now, so a phase's peak
    is that of its timed steps, not of batch generation."""
    _trimmed_rss_gib()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)


def _nbytes(batches) -> int:
    """Bytes held by pre-generated batches (subtracted from the phase's memory)."""
    kjt = lambda b: b.sparse_features.values().nbytes + b.sparse_features.lengths().nbytes  # noqa: E731
    return sum(b.dense_features.nbytes + b.labels.nbytes + kjt(b) for b in batches)


def _sum(value: float) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def _time_steps(step, steps: int, repeats: int, warmup: int) -> List[float]:
    """Seconds per block of ``steps`` calls of ``step()``, ``repeats`` blocks after ``warmup`` calls."""
    import torch.distributed as dist
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        step()
    timer = Timer(stmt="for _ in range(n): step()", globals={"step": step, "n": steps})
    out = []
    for _ in range(repeats):
        dist.barrier()
        out.append(timer.timeit(1).median)
    return out


def _worker(a: argparse.Namespace) -> None:
    import torch

    from torchrec_kd.config import load_config
    from torchrec_kd.distributed.env import init_distributed

    overrides = [f"output_dir={a.out}", *a.overrides]
    cfg = load_config(a.config, overrides)
    env = init_distributed(cfg.distributed)
    # every phase imports the same modules before its baseline
    import torchrec_kd.recipes.distill  # noqa: F401
    import torchrec_kd.recipes.score_teacher  # noqa: F401
    import torchrec_kd.recipes.train_model  # noqa: F401

    _reset_peak()
    base = _status_gib("VmRSS")
    total = a.warmup + a.steps * a.repeats
    result: Dict[str, Any] = {}
    prof_rows = None
    if a.phase != "teacher_forward":
        if a.phase in ("student", "teacher_train"):
            from torchrec_kd.training.model_run import TrainModelRun

            recipe = TrainModelRun(cfg, "student" if a.phase == "student" else "teacher")
        else:
            from torchrec_kd.training.distill_run import DistillRun

            if a.phase == "offline_kd":
                cfg.distill.offline = True
            if a.phase in ("online_kd_fp16_teacher", "online_kd_int8_teacher"):
                cfg.distill.teacher_dtype = a.phase.split("_")[2]
            recipe = DistillRun(cfg)
        recipe.setup()
        data = recipe.data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=total)
        batches = list(data)
        held = _nbytes(batches)
        # Timer.timeit runs warm-up blocks of its own: cycle through the batches (and the cache)
        stream = itertools.cycle(batches)
        if a.phase == "offline_kd":  # the cache read and digest check are part of offline KD's cost
            def scored():
                while True:
                    yield from recipe.offline.attach(iter(batches), 0, env.rank, env.world_size)
            stream = scored()
        recipe.model.train()
        pipeline = recipe.pipeline
        _reset_peak()
        times = _time_steps(lambda: pipeline.progress(stream), a.steps, a.repeats, a.warmup)
        peak, standing = _status_gib("VmHWM"), _trimmed_rss_gib()  # standing: between steps
        if a.phase == "online_kd":
            result["eval"] = _eval_speed(recipe, cfg, env, a)
            if a.profile:
                prof_rows = _profile(recipe, cfg, env)
    else:  # teacher_forward: the frozen, sharded teacher alone, pipelined as online KD runs it
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        from torchrec_kd.recipes.score_teacher import build_scorer

        model, data, _, _ = build_scorer(cfg, env)
        batches = list(data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=total))
        held = _nbytes(batches)
        it = itertools.cycle(batches)
        # the same pipeline as the KD and student steps: in eval mode TrainPipelineSparseDist
        # runs the forward only (no backward, no optimizer step) and overlaps the next batch's
        # input distribution with it, as it does for the teacher inside an online-KD step
        idle = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
        pipeline = TrainPipelineSparseDist(model, idle, env.device)
        model.eval()

        def step() -> None:
            with torch.no_grad():
                pipeline.progress(it)

        _reset_peak()
        times = _time_steps(step, a.steps, a.repeats, a.warmup)
        peak, standing = _status_gib("VmHWM"), _trimmed_rss_gib()  # standing: between steps
    median = sorted(times)[len(times) // 2]
    extra = result
    # the phase's footprint over all ranks: its peak resident set during the timed steps
    # (weights, optimizer state, activations, buffers) beyond the process's baseline,
    # pre-generated batches excluded
    rss = _sum(peak - base - held / 2**30)
    result = {"samples_per_s": a.steps * cfg.data.batch_size / median, "step_ms": median / a.steps * 1e3,
              "block_s": times, "rss_gib": rss, "world_size": env.world_size,
              # what stays resident between steps (weights, optimizer state, pipeline buffers)
              "standing_gib": _sum(standing - base - held / 2**30), **extra}
    if env.is_main:
        Path(a.result).write_text(json.dumps({"result": result, "profile": prof_rows}))


def _eval_speed(recipe, cfg, env, a) -> Dict[str, float]:
    """Evaluation samples/s of the distilled student: the whole model (teacher too) vs the student alone."""
    import torch

    model = recipe.pipeline.detach()
    model.eval()
    batches = list(recipe.data.batches("test", cfg.data.batch_size, env.rank, env.world_size, num_batches=10))
    out = {}
    for name, fn in (("with_teacher", lambda b: model(b)[1][1]), ("student_only", recipe.score)):
        with torch.no_grad():
            times = _time_steps(lambda it=itertools.cycle(batches), f=fn: f(next(it)), 10, a.repeats, 2)
        out[f"{name}_samples_per_s"] = 10 * cfg.data.batch_size / sorted(times)[len(times) // 2]
    model.train()
    return out


def _profile(recipe, cfg, env) -> List[Dict[str, Any]]:
    """Top operators (self CPU time) of 5 online-KD steps on rank 0."""
    from torch.autograd import profiler

    batches = iter(list(recipe.data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=8)))
    for _ in range(2):
        recipe.pipeline.progress(batches)
    # the legacy (non-kineto) profiler: kineto's CPU profiler aborts the process beside gloo here
    with profiler.profile(use_kineto=False, record_shapes=True) as prof:
        for _ in range(5):
            recipe.pipeline.progress(batches)
    rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "shapes": str(e.input_shapes)[:160], "self_cpu_ms_per_step": e.self_cpu_time_total / 5e3,
             "share": e.self_cpu_time_total / total, "calls_per_step": e.count / 5} for e in rows]


def _launch(a: argparse.Namespace, phase: str, out: Path) -> Dict[str, Any]:
    result = out / f"{phase}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
           __file__, "--worker", "--phase", phase, "--config", a.config, "--out", str(out), "--result", str(result),
           "--steps", str(a.steps), "--repeats", str(a.repeats), "--warmup", str(a.warmup),
           *(["--profile"] if a.profile else []), *a.overrides]
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(result.read_text())


def _cli(cmd: str, a: argparse.Namespace, out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
                    "-m", "torchrec_kd.cli", cmd, "--config", a.config, "--output-dir", str(out), *a.overrides,
                    *extra], cwd=REPO, check=True)


def run(a: argparse.Namespace) -> Dict[str, Any]:
    """Every phase, the ratios and the targets; returns the ``train`` / ``memory`` sections."""
    out = REPO / a.out
    needs_teacher = set(a.phases) - {"student", "teacher_train"}
    if needs_teacher and not (out / "teacher" / "meta.json").is_file():
        _cli("train-teacher", a, out, "train.teacher_steps=20")  # a teacher to distill from (quality not measured)
    # the cache must cover every step the offline phase runs
    scored = a.warmup + a.steps * a.repeats
    if "offline_kd" in a.phases:
        _cli("score-teacher", a, out, f"train.steps={scored}")
    a.overrides = [*a.overrides, f"train.steps={scored}"]
    phases: Dict[str, Dict[str, Any]] = {}
    profile = None
    for phase in a.phases:
        got = _launch(a, phase, out)
        phases[phase] = got["result"]
        profile = got["profile"] or profile
        print(f"{phase}: {phases[phase]['samples_per_s']:,.0f} samples/s, {phases[phase]['step_ms']:.1f} ms/step, "
              f"{phases[phase]['rss_gib']:.3f} GiB", flush=True)
    harness = {"steps": a.steps, "repeats": a.repeats, "warmup": a.warmup, "nproc": a.nproc, "phases": list(a.phases),
               "timer": "torch.utils.benchmark.Timer.timeit, median of repeats; every phase through "
                        "TrainPipelineSparseDist (teacher_forward in eval mode: forward only)"}
    if set(a.phases) != set(PHASES):  # a partial run: what was measured and the ratios it allows, nothing else
        return {"phases": phases, "targets": _ratios(phases), "harness": harness}
    train = {f"{p}_samples_per_s": phases[p]["samples_per_s"] for p in ("student", "online_kd", "offline_kd")}
    train["teacher_forward_samples_per_s"] = phases["teacher_forward"]["samples_per_s"]
    train["teacher_train_samples_per_s"] = phases["teacher_train"]["samples_per_s"]
    for dtype in ("fp16", "int8"):
        train[f"online_kd_{dtype}_teacher_samples_per_s"] = phases[f"online_kd_{dtype}_teacher"]["samples_per_s"]
    # evaluating the distilled student: the whole model (teacher too) vs the student alone
    train["eval"] = phases["online_kd"].get("eval")
    train["step_ms"] = {p: phases[p]["step_ms"] for p in PHASES}

    def teacher_share(phase: str, key: str = "rss_gib") -> float:
        return max(0.0, phases[phase][key] - phases["student"][key])

    teacher_in_distill, teacher_fp16 = teacher_share("online_kd"), teacher_share("online_kd_fp16_teacher")
    teacher_int8 = teacher_share("online_kd_int8_teacher")
    train_rss = phases["teacher_train"]["rss_gib"]
    memory = {"teacher_train_rss_gib": train_rss,
              "teacher_distill_rss_gib": teacher_in_distill,
              "teacher_distill_fp16_rss_gib": teacher_fp16,
              "teacher_distill_int8_rss_gib": teacher_int8,
              "teacher_offline_distill_rss_gib": teacher_share("offline_kd"),
              "teacher_train_standing_gib": phases["teacher_train"]["standing_gib"],
              "teacher_distill_standing_gib": teacher_share("online_kd", "standing_gib"),
              "teacher_distill_fp16_standing_gib": teacher_share("online_kd_fp16_teacher", "standing_gib"),
              "teacher_distill_int8_standing_gib": teacher_share("online_kd_int8_teacher", "standing_gib"),
              "phase_rss_gib": {p: phases[p]["rss_gib"] for p in PHASES},
              "phase_standing_gib": {p: phases[p]["standing_gib"] for p in PHASES}}
    targets = {
        **{k: (v["value"], v["met"]) for k, v in _ratios(phases).items()},
        "teacher RSS in online distillation / in training <= 1/3": (
            teacher_in_distill / train_rss, teacher_in_distill / train_rss <= 1 / 3),
        "same, teacher tables stored fp16 (distill.teacher_dtype=fp16) <= 1/3": (
            teacher_fp16 / train_rss, teacher_fp16 / train_rss <= 1 / 3),
        "same, teacher tables stored int8 (distill.teacher_dtype=int8) <= 1/3": (
            teacher_int8 / train_rss, teacher_int8 / train_rss <= 1 / 3),
        # between steps: what the teacher holds (tables) against what training holds
        # (tables, optimizer state, dense weights and their grads); peaks add batch activations
        "teacher standing memory in distillation / in training <= 1/3 (fp32 tables)": (
            memory["teacher_distill_standing_gib"] / memory["teacher_train_standing_gib"],
            memory["teacher_distill_standing_gib"] / memory["teacher_train_standing_gib"] <= 1 / 3),
        "same, fp16 tables": (
            memory["teacher_distill_fp16_standing_gib"] / memory["teacher_train_standing_gib"],
            memory["teacher_distill_fp16_standing_gib"] / memory["teacher_train_standing_gib"] <= 1 / 3),
        "same, int8 tables": (
            memory["teacher_distill_int8_standing_gib"] / memory["teacher_train_standing_gib"],
            memory["teacher_distill_int8_standing_gib"] / memory["teacher_train_standing_gib"] <= 1 / 3),
    }
    return {"train": train, "memory": memory, "profile_online_kd": profile,
            "targets": {k: {"value": round(v, 3), "met": ok} for k, (v, ok) in targets.items()},
            "harness": harness}


ONLINE_RATIO = "online KD step / (teacher forward + student step) <= 1.1"
OFFLINE_RATIO = "offline KD step / student step <= 1.1"


def _ratios(phases: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The step-time ratio targets the measured phases allow (all phases timed the same way)."""
    ms = {p: v["step_ms"] for p, v in phases.items()}
    out = {}
    if {"student", "teacher_forward", "online_kd"} <= ms.keys():
        r = ms["online_kd"] / (ms["teacher_forward"] + ms["student"])
        out[ONLINE_RATIO] = {"value": round(r, 3), "met": r <= 1.1}
    if {"student", "offline_kd"} <= ms.keys():
        r = ms["offline_kd"] / ms["student"]
        out[OFFLINE_RATIO] = {"value": round(r, 3), "met": r <= 1.1}
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/perf_criteo_shaped_synthetic.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="outputs/bench_training")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                   help="measure only these phases (e.g. student offline_kd); a partial run writes its "
                        "results to <out>/training.json, never to benchmarks/results")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*")
    return p


def main() -> None:
    a = parser().parse_args()
    if a.worker:
        _worker(a)
        return
    t0 = time.perf_counter()
    command = command_line()
    result = run(a)
    # what ran, when, and how long the whole command took (set-up and every launch included)
    result.update({"command": command, "date": date.today().isoformat(), "wall_s": round(time.perf_counter() - t0, 1)})
    full = set(a.phases) == set(PHASES)
    dest = RESULTS / "training.json" if full else REPO / a.out / "training.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["targets"], indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
