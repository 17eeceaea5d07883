"""Benchmark: teacher / student alone / distilled / quantized students on one config.

Runs the CLI steps (equal steps and seeds for student alone, distilled and int4-aware
distilled) under torchrun, then writes ``benchmarks/results/distillation.json`` and a markdown table
with the targets of the distillation issue checked::

    python benchmarks/distillation.py [--config configs/dlrm_teacher_synthetic.yaml] [--nproc 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import run_cli as _run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ROWS = ("teacher", "student", "distilled", "distilled_fp16", "distilled_int8", "distilled_int4", "distilled_int2",
        "distilled_qat", "distilled_qat_int4")
COLS = ("auc", "ne", "logloss", "embedding_bytes", "params", "train_samples_per_s", "eval_samples_per_s")


def targets(m: dict) -> dict:
    """The distillation issue's targets, each with its measured value and verdict."""
    out = {}
    if {"student", "distilled"} <= m.keys():
        gain = m["distilled"]["auc"] - m["student"]["auc"]
        out["distilled_auc_minus_student_auc >= 0.005"] = (round(gain, 4), gain >= 0.005)
    if {"distilled", "distilled_int8"} <= m.keys():
        gap = abs(m["distilled_int8"]["auc"] - m["distilled"]["auc"])
        out["|int8 auc - fp32 auc| <= 0.001"] = (round(gap, 4), gap <= 0.001)
    if {"teacher", "distilled_int4"} <= m.keys():
        ratio = m["distilled_int4"]["embedding_bytes"] / m["teacher"]["embedding_bytes"]
        out["int4 embedding bytes / teacher's <= 1/16"] = (round(ratio, 5), ratio <= 1 / 16)
    return out


def table(m: dict) -> str:
    lines = ["| model | " + " | ".join(COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
    for name in ROWS:
        if name in m:
            cells = []
            for c in COLS:
                v = m[name].get(c)
                cells.append("" if v is None else (f"{v:.4f}" if isinstance(v, float) and v < 10 else f"{v:,.0f}"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dlrm_teacher_synthetic.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="outputs/bench_distillation")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    out = REPO / a.out
    wall = {}
    for command in ("train-teacher", "train-student", "distill", "distill-qat"):
        wall[command] = _run(command, a.config, out, a.nproc, [*a.overrides, "distill.qat=int4"])
    wall["quantize"] = _run("quantize", a.config, out, a.nproc, [*a.overrides, "quantize.dtypes=[fp16,int8,int4,int2]"])
    wall["quantize_qat"] = _run("quantize", a.config, out, a.nproc, [*a.overrides, "distill.qat=int4"],
                                ("--source", "distilled_qat"))
    metrics = json.loads((out / "metrics.json").read_text())
    result = {"config": a.config, "nproc": a.nproc, "overrides": a.overrides, "wall_s": wall,
              "metrics": {k: {c: v.get(c) for c in COLS} for k, v in metrics.items()},
              "targets": {k: {"value": v, "met": ok} for k, (v, ok) in targets(metrics).items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    (RESULTS / "distillation.json").write_text(text)
    (RESULTS / f"distillation-{date.today().isoformat()}.json").write_text(text)
    md = table(metrics) + "\n\n" + "\n".join(f"- {k}: {v} — {'met' if ok else 'NOT met'}" for k, (v, ok) in targets(metrics).items())
    (RESULTS / "distillation.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
