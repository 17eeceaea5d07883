"""Benchmark: the production student — AUC against embedding bytes for uniform dtypes, pruned and budgeted
students, and serving speed at batch 2048 on one thread.

For each seed, one distilled student of the default config (``experiment`` runs it first when
``<run>/seed_<s>`` holds none); every variant is a ``quantize`` step in its own directory next to it (the distilled
checkpoint linked in), so each export and metrics entry says what made it:

* uniform: fp16, int8, int4, int2 (every table alike);
* pruned: int4 and int2 with each table's most frequent rows kept (``quantize.prune.keep_fraction``);
* budgeted: a per-table plan from measured validation sensitivity at the int4 student's bytes,
  at 1/40 of the teacher's, and within 0.002 validation AUC of the int8 student.

The table gives mean test AUC over the seeds and the paired differences (against the fp32
distilled student and against uniform int4) with their 95% intervals, and marks the Pareto front.
Targets: a student >= 40x smaller than the teacher within 0.002 test AUC of the fp32 distilled one;
the plan at int4's bytes at least as good as int4; pruned+quantized not slower than int4 at batch
2048; int4 >= ``targets.INT4_SPEEDUP`` (8) x the teacher's samples/s. Writes ``benchmarks/results/production_student.{json,md}``::

    python benchmarks/production_student.py [--run outputs/bench_production] [--seeds 0 1 2] [--nproc 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import command_line, run_cli  # noqa: E402
from targets import INT4_SPEEDUP  # noqa: E402

from torchrec_kd.reporting.summary import signed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIG = "configs/dlrm_teacher_synthetic.yaml"
KEEP = (0.5, 0.25)
AUC_TOLERANCE = 0.002


def variants(teacher_bytes: int, int4_bytes: int) -> Dict[str, List[str]]:
    """Each variant's ``quantize`` overrides."""
    out = {"uniform": ["quantize.dtypes=[fp16,int8,int4,int2]"]}
    for keep in KEEP:
        out[f"pruned_{keep:g}"] = ["quantize.dtypes=[int4,int2]", f"quantize.prune.keep_fraction={keep}"]
    out["budget_int4_bytes"] = ["quantize.dtypes=[int4]", f"quantize.budget.bytes={int4_bytes}"]
    out["budget_teacher_over_40"] = ["quantize.dtypes=[int4]", f"quantize.budget.bytes={teacher_bytes // 40}"]
    out["budget_auc_0.002"] = ["quantize.dtypes=[int4]", f"quantize.budget.max_auc_loss={AUC_TOLERANCE}"]
    return out


def pareto(rows: List[Dict[str, Any]]) -> None:
    """Mark ``pareto`` on rows no other row beats in both bytes (fewer) and test AUC (higher)."""
    best = -1.0
    for r in sorted(rows, key=lambda r: (r["embedding_bytes"], -r["auc"])):
        r["pareto"] = r["auc"] > best
        best = max(best, r["auc"])


def speed(run: Path, exports: Dict[str, Path]) -> Dict[str, float]:
    """Samples/s at batch 2048 on one thread: the float teacher and each export (fresh timing per model)."""
    from torchrec_kd.config import load_config
    from torchrec_kd.data import build_data
    from torchrec_kd.models.build import io_from_meta
    from torchrec_kd.models.saved import load_float_model
    from torchrec_kd.reporting.latency import latency_ms
    from torchrec_kd.serving.served_model import load_model

    cfg = load_config(CONFIG)
    data = build_data(cfg.data, cfg.seed)
    batch = next(iter(data.batches("test", 2048, num_batches=1)))
    teacher, meta = load_float_model(run / "teacher")
    io = io_from_meta(meta)
    out = {}
    with torch.inference_mode():
        out["teacher_fp32"] = 2048 / (latency_ms(lambda b: io.logits(teacher, b), batch, (2048,), 2.0)["latency_ms_b2048"] / 1e3)
    for name, path in exports.items():
        head = load_model(path).head
        assert head is not None
        with torch.inference_mode():
            ms = latency_ms(lambda b, head=head: head(b.dense_features, b.sparse_features)["logit"], batch, (2048,), 2.0)
        out[name] = 2048 / (ms["latency_ms_b2048"] / 1e3)
    return out


def one_seed(run: Path, seed: int, nproc: int, retime: bool) -> Tuple[List[Dict[str, Any]], Dict[str, Path], Dict[str, Any]]:
    """One seed's distilled student and every variant of it: (rows, their exports, the run's metrics)."""
    seeded = [f"seed={seed}"]
    if not (run / "distilled").is_dir():
        run_cli("experiment", CONFIG, run, nproc, ["quantize.dtypes=[int4]", *seeded])
    base = json.loads((run / "metrics.json").read_text())
    teacher_bytes, int4_bytes = base["teacher"]["embedding_bytes"], base["distilled_int4"]["embedding_bytes"]
    rows: List[Dict[str, Any]] = [{"student": "distilled_fp32", "auc": base["distilled"]["auc"],
                                   "embedding_bytes": base["distilled"]["embedding_bytes"]}]
    exports: Dict[str, Path] = {}
    for variant, overrides in variants(teacher_bytes, int4_bytes).items():
        out = run / "variants" / variant
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "distilled").exists():
            (out / "distilled").symlink_to(run / "distilled")
        if not (retime and (out / "metrics.json").is_file()):
            run_cli("quantize", CONFIG, out, nproc, [*overrides, *seeded], ["--source", "distilled"])
        for name, entry in json.loads((out / "metrics.json").read_text()).items():
            # each variant contributes what it is about: uniform dtypes, pruned exports, the budgeted plan
            if variant == "uniform" and name.startswith("distilled_"):
                label = name
            elif variant.startswith("pruned") and name.endswith("_pruned"):
                label = f"{name}@{variant.removeprefix('pruned_')}"
            elif variant.startswith("budget") and name == "distilled_budgeted":
                label = f"{name}[{variant.removeprefix('budget_')}]"
            else:
                continue
            rows.append({"student": label, "auc": entry["auc"], "embedding_bytes": entry["embedding_bytes"]})
            exports[label] = Path(entry["export"])
    return rows, exports, base


def _interval(diffs: List[float]) -> Dict[str, Any]:
    from torchrec_kd.reporting.summary import paired_interval

    mean, ci = paired_interval(diffs)
    return {"mean": mean, "ci95": list(ci) if ci else None, "per_seed": diffs,
            "significant": bool(ci and (ci[0] > 0 or ci[1] < 0))}


def _fmt(d: Dict[str, Any]) -> str:
    ci = d["ci95"]
    text = signed(d['mean']) + (f" ({signed(ci[0])}, {signed(ci[1])})" if ci else "")
    return text + ("" if d["significant"] else ", not significant")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="outputs/bench_production", help="runs of the default config, one per seed "
                                                                     "(<run>/seed_<s>, made if missing)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--retime", action="store_true", help="keep the variants' exports (made by an earlier run of this "
                                                          "script on the same --run) and only time them again")
    a = p.parse_args()
    per_seed: Dict[int, Dict[str, Dict[str, Any]]] = {}
    first_exports: Dict[str, Path] = {}
    bases = {}
    for seed in a.seeds:
        rows, exports, bases[seed] = one_seed(REPO / a.run / f"seed_{seed}", seed, a.nproc, a.retime)
        per_seed[seed] = {r["student"]: r for r in rows}
        first_exports = first_exports or exports
    base = bases[a.seeds[0]]
    teacher_bytes = base["teacher"]["embedding_bytes"]
    labels = [lab for lab in per_seed[a.seeds[0]] if all(lab in per_seed[s] for s in a.seeds)]
    rows = []
    for lab in labels:
        entries = [per_seed[s][lab] for s in a.seeds]
        rows.append({"student": lab, "auc": sum(e["auc"] for e in entries) / len(entries),
                     "embedding_bytes": max(e["embedding_bytes"] for e in entries),
                     "vs_fp32_distilled": _interval([per_seed[s][lab]["auc"] - per_seed[s]["distilled_fp32"]["auc"]
                                                     for s in a.seeds]),
                     "vs_int4": _interval([per_seed[s][lab]["auc"] - per_seed[s]["distilled_int4"]["auc"]
                                           for s in a.seeds])})
    for r in rows:
        r["x_smaller_than_teacher"] = teacher_bytes / r["embedding_bytes"]
    pareto(rows)
    run0 = REPO / a.run / f"seed_{a.seeds[0]}"
    sps = speed(run0, {k: v for k, v in first_exports.items() if k == "distilled_int4" or k.startswith("distilled_int4_pruned")
                       or k.startswith("distilled_budgeted")})
    # "within 0.002": the mean loss against fp32 is at most 0.002 (its interval is printed beside it)
    within = [r for r in rows if r["vs_fp32_distilled"]["mean"] >= -AUC_TOLERANCE]
    smallest = min(within, key=lambda r: r["embedding_bytes"])
    at_int4 = next(r for r in rows if r["student"].endswith("[int4_bytes]"))
    pruned_sps = min(v for k, v in sps.items() if "_pruned" in k)
    targets = {
        "smallest_within_0.002_auc": {"student": smallest["student"], "x_smaller": smallest["x_smaller_than_teacher"],
                                      "met_40x": smallest["x_smaller_than_teacher"] >= 40},
        "budget_at_int4_bytes_vs_int4": {**at_int4["vs_int4"], "met": at_int4["vs_int4"]["mean"] >= 0},
        "pruned_int4_vs_int4_speed": {"ratio": pruned_sps / sps["distilled_int4"], "met": pruned_sps >= sps["distilled_int4"]},
        "int4_vs_teacher_speed": {"ratio": sps["distilled_int4"] / sps["teacher_fp32"], "target": INT4_SPEEDUP,
                                  "met": sps["distilled_int4"] >= INT4_SPEEDUP * sps["teacher_fp32"]},
    }
    command = command_line()  # as run: --retime (only timed again) and every other flag included
    result = {"date": date.today().isoformat(), "config": CONFIG, "seeds": a.seeds, "teacher_embedding_bytes": teacher_bytes,
              "per_seed": {str(s): {"teacher_auc": bases[s]["teacher"]["auc"], "rows": list(per_seed[s].values())}
                           for s in a.seeds},
              "rows": rows, "samples_per_s_b2048_1thread": sps, "targets": targets, "command": command}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "production_student.json").write_text(json.dumps(result, indent=2))
    fp32 = next(r for r in rows if r["student"] == "distilled_fp32")["auc"]
    teacher = sum(bases[s]["teacher"]["auc"] for s in a.seeds) / len(a.seeds)
    lines = [f"# Production student ({result['date']}, `{command}`)", "",
             f"Default config, seeds {a.seeds}: one distilled student per seed and its variants (mean test AUC: fp32 "
             f"distilled {fp32:.4f}, teacher {teacher:.4f}, {teacher_bytes:,} embedding bytes). Differences are paired by "
             "seed, with their 95% interval. `*`: on the Pareto front of the means.", "",
             "| student | test AUC | vs fp32 distilled (95% CI) | vs int4 (95% CI) | embedding bytes | × smaller than teacher |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["embedding_bytes"]):
        lines.append(f"| {r['student']}{' *' if r['pareto'] else ''} | {r['auc']:.4f} | {_fmt(r['vs_fp32_distilled'])} | "
                     f"{_fmt(r['vs_int4'])} | {r['embedding_bytes']:,} | {r['x_smaller_than_teacher']:.1f} |")
    lines += ["", f"Samples/s at batch 2048, one thread (seed {a.seeds[0]}): "
              + ", ".join(f"{k} {v:,.0f}" for k, v in sps.items()), "",
              "Targets: " + "; ".join(f"{k}: {json.dumps(v)}" for k, v in targets.items())]
    (RESULTS / "production_student.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
