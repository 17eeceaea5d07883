"""Benchmark: how teacher training and distillation grow with total embedding rows and batch size.

For each total row count (default 1 M, 10 M, 50 M, split evenly over the 26 Criteo-shaped
features) a 2-rank ``torchrun`` trains the sharded teacher (dim 64) for a few timed steps,
then a second launch distills into the student (dim 16) with that teacher frozen in the
pipeline (randomly initialised: a 50 M-row checkpoint would only measure the disk). Step
times are medians of ``torch.utils.benchmark`` blocks; memory is the peak RSS summed over
ranks. At the largest size the student alone and distillation with fp16 teacher tables
(``distill.teacher_dtype=fp16``) also run, giving the teacher's share of distillation's
peak. A batch-size sweep runs at one row count. Results: ``benchmarks/results/scale.json``::

    python benchmarks/scale.py [--rows 1000000 10000000 50000000] [--batches 1024 4096 16384]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import _sum, _time_steps  # noqa: E402  (the shared harness)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FEATURES = 26


def _worker(a: argparse.Namespace) -> None:
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from torchrec_kd.config import load_config
    from torchrec_kd.distill.freeze import freeze_sharded, freeze_teacher_tables
    from torchrec_kd.distill.model import DistillationModel
    from torchrec_kd.distributed.env import init_distributed
    from torchrec_kd.distributed.init import init_weights
    from torchrec_kd.distributed.sharding import add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard
    from torchrec_kd.data import build_data
    from torchrec_kd.losses import build_loss
    from torchrec_kd.models.dlrm import build_dlrm, make_tables, tables_stored_as
    from torchrec_kd.recipes.train_model import TrainModelRecipe

    cfg = load_config(a.config, [f"data.synthetic.num_embeddings={a.total_rows // FEATURES}",
                                 f"data.batch_size={a.batch}", f"output_dir={a.out}", "train.eval_every=0"])
    env = init_distributed(cfg.distributed)
    total = a.warmup + a.steps * a.repeats
    if a.phase in ("teacher_train", "student"):
        recipe = TrainModelRecipe(cfg, "teacher" if a.phase == "teacher_train" else "student")
        recipe.setup()
        model, pipeline, data = recipe.model, recipe.pipeline, recipe.data
    else:
        data = build_data(cfg.data, cfg.seed)
        dense_in = len(data.dense_names)
        t_tables = make_tables(cfg.teacher, data.sparse_names, data.num_embeddings)
        if a.phase == "distill_fp16":  # distill.teacher_dtype=fp16
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
        pipeline = TrainPipelineSparseDist(model, build_optimizer(model, cfg.train, frozen_prefix="teachers."), env.device)
    # Timer.timeit adds warm-up blocks of its own: cycle through the pre-generated batches
    batches = itertools.cycle(list(data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=total)))
    model.train()
    times = _time_steps(lambda: pipeline.progress(batches), a.steps, a.repeats, a.warmup)
    median = sorted(times)[len(times) // 2]
    peak = _sum(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    if env.is_main:
        Path(a.result).write_text(json.dumps({"step_s": median / a.steps, "peak_rss_gib": peak,
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
    for rows in a.rows:
        t = _launch(a, "teacher_train", rows, a.batch)
        d = _launch(a, "distill", rows, a.batch)
        scale[str(rows)] = {"step_s": t["step_s"], "peak_rss_gib": t["peak_rss_gib"],
                            "distill_step_s": d["step_s"], "distill_peak_rss_gib": d["peak_rss_gib"]}
    # at the largest size: the teacher's share of distillation (fp32 and fp16 tables) against its training
    rows = max(a.rows)
    s, h = _launch(a, "student", rows, a.batch), _launch(a, "distill_fp16", rows, a.batch)
    big = scale[str(rows)]
    big.update({"student_peak_rss_gib": s["peak_rss_gib"], "distill_fp16_step_s": h["step_s"],
                "distill_fp16_peak_rss_gib": h["peak_rss_gib"]})
    for key, peak in (("teacher_distill_share", big["distill_peak_rss_gib"]), ("teacher_distill_fp16_share", h["peak_rss_gib"])):
        big[key] = (peak - s["peak_rss_gib"]) / big["peak_rss_gib"]  # teacher's part of the peak / teacher training peak
    sweep = {str(b): _launch(a, "teacher_train", a.sweep_rows, b) for b in a.batches}
    return {"scale": scale, "batch_sweep": {"total_rows": a.sweep_rows, **{b: {"step_s": v["step_s"],
            "samples_per_s": v["samples_per_s"], "peak_rss_gib": v["peak_rss_gib"]} for b, v in sweep.items()}},
            "harness": {"steps": a.steps, "repeats": a.repeats, "warmup": a.warmup, "nproc": a.nproc, "batch": a.batch}}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dlrm_teacher_synthetic.yaml")
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
    p.add_argument("--phase", choices=["teacher_train", "student", "distill", "distill_fp16"], help=argparse.SUPPRESS)
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
