"""Benchmark: how teacher training and distillation grow with total embedding rows and batch size.

For each total row count (default 1 M, 10 M, 50 M, split evenly over the 26 Criteo-shaped
features) a 2-rank ``torchrun`` trains the sharded teacher (dim 64) for a few timed steps,
then a second launch distills into the student (dim 16) with that teacher frozen in the
pipeline (randomly initialised: a 50 M-row checkpoint would only measure the disk). Step
times are medians of ``torch.utils.benchmark`` blocks; memory is the peak RSS summed over
ranks (``peak_rss_gib``: the whole run, set-up included; ``steps_peak_rss_gib``: the timed
steps). At the largest size the student alone and distillation with fp16 and int8 teacher
tables (``distill.teacher_dtype``) also run, giving the teacher's share of distillation's
peak (an int8 teacher is built and filled in fp16, then quantized: its set-up peak holds
both, its steps' peak is what it keeps). A batch-size sweep runs at one row count.
Results: ``benchmarks/results/scale.json``::

    python benchmarks/scale.py [--rows 1000000 10000000 50000000] [--batches 1024 4096 16384]
    python benchmarks/scale.py --largest-only      # re-measure the largest size only, keep the rest
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import _reset_peak, _status_gib, _sum, _time_steps  # noqa: E402  (the shared harness)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FEATURES = 26


def _worker(a: argparse.Namespace) -> None:
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from torchrec_kd.config import load_config
    from torchrec_kd.data import build_data
    from torchrec_kd.distill.freeze import freeze_sharded, freeze_teacher_tables
    from torchrec_kd.distill.model import DistillationModel
    from torchrec_kd.distributed.env import init_distributed
    from torchrec_kd.distributed.sharding import add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard
    from torchrec_kd.losses import build_loss
    from torchrec_kd.models.dlrm import build_dlrm, make_tables, tables_stored_as
    from torchrec_kd.models.init import init_weights
    from torchrec_kd.quant.int8_teacher import quantize_frozen_tables
    from torchrec_kd.training.model_run import TrainModelRun

    cfg = load_config(a.config, [f"data.synthetic.num_embeddings={a.total_rows // FEATURES}",
                                 f"data.batch_size={a.batch}", f"output_dir={a.out}", "train.eval_every=0"])
    env = init_distributed(cfg.distributed)
    total = a.warmup + a.steps * a.repeats
    if a.phase in ("teacher_train", "student"):
        recipe = TrainModelRun(cfg, "teacher" if a.phase == "teacher_train" else "student")
        recipe.setup()
        model, pipeline, data = recipe.model, recipe.pipeline, recipe.data
    else:
        data = build_data(cfg.data, cfg.seed)
        dense_in = len(data.dense_names)
        t_tables = make_tables(cfg.teacher, data.sparse_names, data.num_embeddings)
        if a.phase in ("distill_fp16", "distill_int8"):  # distill.teacher_dtype (int8: loaded fp16, then quantized)
            t_tables = tables_stored_as(t_tables, "fp16")
        s_tables = make_tables(cfg.student, data.sparse_names, data.num_embeddings)
        module = DistillationModel([build_dlrm(cfg.teacher, t_tables, dense_in)], build_dlrm(cfg.student, s_tables, dense_in),
                                   build_loss(cfg.distill.losses))
        freeze_teacher_tables(module.teachers[0])
        add_fused_embedding_optimizer(module.student, cfg.train)
        model = shard(module, env, cfg.data.batch_size // env.world_size,
                      planner_constraints(cfg.sharding, t_tables + s_tables, env.device.type))
        freeze_sharded(model, "teachers.")
        init_weights(model, cfg.seed, prefix="student.")
        if a.phase == "distill_int8":  # distill.teacher_dtype=int8
            quantize_frozen_tables(model, "teachers.")
        pipeline = TrainPipelineSparseDist(model, build_optimizer(model, cfg.train, frozen_prefix="teachers."), env.device)
    # Timer.timeit adds warm-up blocks of its own: cycle through the pre-generated batches
    batches = itertools.cycle(list(data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=total)))
    model.train()
    setup_peak = _status_gib("VmHWM")  # resetting the counter resets ru_maxrss too: read it first
    _reset_peak()
    times = _time_steps(lambda: pipeline.progress(batches), a.steps, a.repeats, a.warmup)
    median = sorted(times)[len(times) // 2]
    steps_peak = _status_gib("VmHWM")
    peak, steps_peak = _sum(max(setup_peak, steps_peak)), _sum(steps_peak)
    if env.is_main:
        Path(a.result).write_text(json.dumps({"step_s": median / a.steps, "peak_rss_gib": peak,
                                              "steps_peak_rss_gib": steps_peak,
                                              "samples_per_s": a.steps * a.batch / median, "blocks_s": times}))


def _launch(a: argparse.Namespace, phase: str, rows: int, batch: int) -> Dict[str, Any]:
    out = REPO / a.out / f"{phase}_{rows}_{batch}"
    out.mkdir(parents=True, exist_ok=True)
    result = out / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}", __file__,
           "--worker", "--phase", phase, "--total-rows", str(rows), "--batch", str(batch), "--config", a.config,
           "--out", str(out), "--result", str(result), "--steps", str(a.steps), "--repeats", str(a.repeats),
           "--warmup", str(a.warmup)]
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    got = json.loads(result.read_text())
    print(f"{phase} rows={rows:,} batch={batch}: {got['step_s'] * 1e3:.1f} ms/step, peak {got['peak_rss_gib']:.2f} GiB",
          flush=True)
    return got


def run(a: argparse.Namespace) -> Dict[str, Any]:
    """``scale.<total_rows>.{step_s, peak_rss_gib, distill_step_s, distill_peak_rss_gib}`` and the batch sweep."""
    scale: Dict[str, Any] = {}
    largest = max(a.rows)
    for rows in ([largest] if a.largest_only else a.rows):
        t = _launch(a, "teacher_train", rows, a.batch)
        d = _launch(a, "distill", rows, a.batch)
        scale[str(rows)] = {"step_s": t["step_s"], "peak_rss_gib": t["peak_rss_gib"],
                            "steps_peak_rss_gib": t["steps_peak_rss_gib"], "distill_step_s": d["step_s"],
                            "distill_peak_rss_gib": d["peak_rss_gib"], "distill_steps_peak_rss_gib": d["steps_peak_rss_gib"]}
    # at the largest size: the teacher's share of distillation (fp32, fp16, int8 tables) against its training
    s = _launch(a, "student", largest, a.batch)
    big = scale[str(largest)]
    big.update({"student_peak_rss_gib": s["peak_rss_gib"], "student_steps_peak_rss_gib": s["steps_peak_rss_gib"]})
    for dtype in ("fp16", "int8"):
        h = _launch(a, f"distill_{dtype}", largest, a.batch)
        big.update({f"distill_{dtype}_step_s": h["step_s"], f"distill_{dtype}_peak_rss_gib": h["peak_rss_gib"],
                    f"distill_{dtype}_steps_peak_rss_gib": h["steps_peak_rss_gib"]})
    # teacher's part of the peak / teacher training peak: over the whole run, and over the timed steps
    for key, phase in (("teacher_distill_share", "distill"), ("teacher_distill_fp16_share", "distill_fp16"),
                       ("teacher_distill_int8_share", "distill_int8")):
        big[key] = (big[f"{phase}_peak_rss_gib"] - s["peak_rss_gib"]) / big["peak_rss_gib"]
        big[key.replace("_share", "_steps_share")] = (
            (big[f"{phase}_steps_peak_rss_gib"] - s["steps_peak_rss_gib"]) / big["steps_peak_rss_gib"])
    result = {"scale": scale, "harness": {"steps": a.steps, "repeats": a.repeats, "warmup": a.warmup,
                                          "nproc": a.nproc, "batch": a.batch}}
    if a.largest_only and (RESULTS / "scale.json").is_file():  # keep the other sizes and the sweep
        old = json.loads((RESULTS / "scale.json").read_text())
        return {**old, "scale": {**old["scale"], **scale}, "harness": result["harness"]}
    sweep = {str(b): _launch(a, "teacher_train", a.sweep_rows, b) for b in a.batches}
    return {**result, "batch_sweep": {"total_rows": a.sweep_rows, **{b: {"step_s": v["step_s"],
            "samples_per_s": v["samples_per_s"], "peak_rss_gib": v["peak_rss_gib"]} for b, v in sweep.items()}}}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/perf_criteo_shaped_synthetic.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="outputs/bench_scale")
    p.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000, 50_000_000])
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--batches", type=int, nargs="*", default=[1024, 4096, 16384])
    p.add_argument("--sweep-rows", type=int, default=10_000_000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--largest-only", action="store_true",
                   help="measure only the largest --rows size and merge it into the last scale.json")
    p.add_argument("--phase", choices=["teacher_train", "student", "distill", "distill_fp16", "distill_int8"],
                   help=argparse.SUPPRESS)
    p.add_argument("--total-rows", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main() -> None:
    a = parser().parse_args()
    if a.worker:
        _worker(a)
        return
    result = run(a)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
