"""Benchmark: ablation of the distillation methods on one config, each at its best.

Per seed, one teacher is trained to its best validation step (plus a DLRM_DCN teacher for
the ensemble row); every method then trains the same student — same data, same maximum
budget, same initial weights — early-stopped at its own best validation step, and is
quantized to int4 (post-training, or quantization-aware for the QAT rows). Each row reports
test AUC / NE, int4 AUC, the kept step, training samples/s and the peak RSS of rank 0; over
several seeds (each its own initialisation, data order and teacher; the synthetic world
stays fixed) also the mean difference from the student alone with its 95% interval.
Privileged-feature rows use the same data with ``--privileged`` sparse features (or, in
the ``privileged_dense`` rows, ``--privileged-dense`` dense features) hidden from the
student; they are compared with the student alone without them. Writes
``benchmarks/results/ablation.json`` (and a dated copy) and ``ablation.md``::

    python benchmarks/ablation.py [--config configs/dlrm_teacher_synthetic.yaml] [--nproc 2] [--only ROW ...]
    python benchmarks/ablation.py --only student_alone soft_kd logit_mse --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch import command_line  # noqa: E402
from launch import run_cli as _run  # noqa: E402

from torchrec_kd.reporting.summary import paired_interval, signed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

HARD_SOFT = "{name: hard_bce, weight: 0.2}, {name: soft_bce, weight: 0.8}"
SCHEDULED = ("distill.losses=[{name: hard_bce, weight: 0.2}, {name: soft_bce, weight: 0.8, temperature: 1.0, "
             "weight_schedule: {kind: warmup, steps: 256}, temperature_schedule: {kind: cosine, start: 3.0, steps: 1024}}]")
PRIVILEGED = ["cat_20", "cat_21", "cat_22", "cat_23", "cat_24", "cat_25"]
PRIVILEGED_DENSE = ["int_0", "int_1", "int_2", "int_3", "int_4", "int_5"]


def _losses(*extra: str) -> str:
    return "distill.losses=[" + ", ".join([HARD_SOFT, *extra]) + "]"


# row -> (command, overrides); every distill row reads the shared teacher
METHODS: Dict[str, Tuple[str, List[str]]] = {
    "student_alone": ("train-student", []),
    "soft_kd": ("distill", []),  # the default mix: 0.2 hard BCE + 0.8 soft BCE at T=1
    "soft_only": ("distill", ["distill.losses=[{name: soft_bce, weight: 1.0}]"]),
    "soft_kd_t2": ("distill", ["distill.losses=[{name: hard_bce, weight: 0.2}, {name: soft_bce, weight: 0.8, "
                               "temperature: 2.0}]"]),
    "soft_kd_half": ("distill", ["distill.losses=[{name: hard_bce, weight: 0.5}, {name: soft_bce, weight: 0.5}]"]),
    "logit_mse": ("distill", ["distill.losses=[{name: hard_bce, weight: 0.2}, {name: logit_mse, weight: 0.8}]"]),
    "kd_schedules": ("distill", [SCHEDULED]),
    "hint_mse": ("distill", [_losses("{name: hint_mse, weight: 0.1}")]),
    "embedding_cosine": ("distill", [_losses("{name: embedding_cosine, weight: 0.05}")]),
    "rank_pairwise": ("distill", [_losses("{name: rank_pairwise, weight: 0.2}")]),  # group feature added below
    "multi_teacher": ("distill", []),  # teachers filled in below
    "offline_kd": ("distill", ["distill.offline=true"]),
    "qat_int4": ("distill-qat", ["distill.qat=int4"]),
    "qat_int4_late": ("distill-qat", ["distill.qat=int4", "distill.qat_start=768"]),  # fp32 for 3 epochs first
    "qat_int2": ("distill-qat", ["distill.qat=int2"]),  # where post-training quantization does cost AUC
    "recommended": ("distill-qat", ["distill.qat=int4", "distill.offline=true"]),
    "privileged_student_alone": ("train-student", []),
    "privileged_kd": ("distill", []),
    "privileged_kd_schedules": ("distill", [SCHEDULED]),
    "privileged_kd_rank": ("distill", [_losses("{name: rank_pairwise, weight: 0.2}")]),
    "privileged_dense_student_alone": ("train-student", []),
    "privileged_dense_kd": ("distill", []),
    "privileged_dense_kd_schedules": ("distill", [SCHEDULED]),
}


def _entry(out: Path, name: str) -> dict:
    f = out / "metrics.json"
    return json.loads(f.read_text()).get(name, {}) if f.is_file() else {}


def targets(all_rows: Dict[str, dict]) -> Dict[str, Tuple[float, bool]]:
    """The issue's targets on the first seed's rows, each with its measured value and verdict."""
    out: Dict[str, Tuple[float, bool]] = {}
    first = min((k.split("@")[1] for k in all_rows if "@" in k), default="")
    rows = {k.split("@")[0]: v for k, v in all_rows.items() if k.endswith("@" + first)}
    for qat in ("qat_int4", "qat_int4_late"):
        if {qat, "soft_kd"} <= rows.keys():
            gap = rows["soft_kd"]["auc"] - rows[qat]["int4_auc"]
            out[f"fp32 distilled auc - {qat} int4 auc <= 0.002"] = (round(gap, 4), gap <= 0.002)
            diff = rows[qat]["int4_auc"] - rows["soft_kd"]["int4_auc"]
            out[f"{qat} int4 auc - PTQ int4 auc > 0"] = (round(diff, 5), diff > 0)
    if {"qat_int2", "soft_kd"} <= rows.keys() and rows["soft_kd"].get("int2_auc") is not None:
        diff = rows["qat_int2"]["int2_auc"] - rows["soft_kd"]["int2_auc"]
        out["QAT int2 auc - PTQ int2 auc > 0 (PTQ int2 loses AUC here)"] = (round(diff, 4), diff > 0)
    if {"offline_kd", "soft_kd"} <= rows.keys():
        gap = abs(rows["offline_kd"]["auc"] - rows["soft_kd"]["auc"])
        out["|offline auc - online auc| <= 0.0005"] = (round(gap, 5), gap <= 0.0005)
    if {"offline_kd", "student_alone"} <= rows.keys():
        ratio = rows["student_alone"]["samples_per_s"] / rows["offline_kd"]["samples_per_s"]
        out["offline KD step / student-alone step <= 1.1"] = (round(ratio, 3), ratio <= 1.1)
    for kind in ("privileged", "privileged_dense"):
        alone = rows.get(f"{kind}_student_alone")
        for name in (n for n in rows if n.startswith(f"{kind}_kd") and alone):
            gain = rows[name]["auc"] - alone["auc"]
            out[f"{name} auc - student alone (same features) >= 0.005 ({first})"] = (round(gain, 4), gain >= 0.005)
    return out


def table(rows: Dict[str, dict]) -> str:
    cols = ("auc", "ne", "int4_auc", "int2_auc", "best_step", "samples_per_s", "peak_rss_gib")
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("" if v is None else (f"{v:,.0f}" if c in ("samples_per_s", "best_step") else f"{v:.4f}"))
        lines.append(f"| {name}{' (reused)' if r.get('reused') else ''} | " + " | ".join(cells) + " |")
    lines += ["", "(reused): made by an earlier launch or another run, not timed by this one. peak_rss_gib: "
              "the training process's peak resident set on rank 0 as its run recorded it (a model trained "
              "inside `experiment` shares that process with the steps before it)."]
    summary = across_seeds(rows)
    if summary:
        lines += ["", "| method | seeds | mean test AUC | − student alone | 95% CI |", "|---|---|---|---|---|"]
        for name, m in summary.items():
            d = "" if m["vs_student_alone"] is None else signed(m['vs_student_alone'])
            ci = "" if m["ci95"] is None else (f"[{signed(m['ci95'][0])}, {signed(m['ci95'][1])}]"
                                               + ("" if m["significant"] else " n.s."))
            lines.append(f"| {name} | {len(m['seeds'])} | {m['auc_mean']:.4f} | {d} | {ci} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dlrm_teacher_synthetic.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="outputs/bench_ablation")
    p.add_argument("--only", nargs="*", help="rows to (re)run; default all")
    p.add_argument("--privileged", nargs="*", default=PRIVILEGED, help="sparse features hidden from the privileged rows' student")
    p.add_argument("--privileged-dense", nargs="*", default=PRIVILEGED_DENSE,
                   help="dense features hidden from the privileged_dense rows' student")
    p.add_argument("--group-feature", default="cat_8", help="the rank_pairwise row's group id feature")
    p.add_argument("--seeds", nargs="*", type=int, default=[0],
                   help="replicates (own teacher, initialisation and data order per seed; rows named ROW@seedN)")
    p.add_argument("--rerun", action="store_true", help="train rows again even when their outputs exist")
    p.add_argument("--reuse-from", help="an `experiment --seeds` output dir of the same config (e.g. "
                                        "outputs/bench_distillation/equal_data): its student alone and distilled "
                                        "student are the student_alone and soft_kd rows, its teachers the rows' teachers")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    base = REPO / a.out
    rows: Dict[str, dict] = {}
    results_file = RESULTS / "ablation.json"
    if a.only and results_file.is_file():  # re-running some rows keeps the others
        rows = json.loads(results_file.read_text()).get("rows", {})
    for seed in a.seeds:
        # each seed is a replicate: its own teachers, initialisation and data order, the same world
        suffix = f"@seed{seed}"
        ov = [*a.overrides, f"seed={seed}"]
        teacher = base / f"teacher_run{suffix}"
        if a.reuse_from:
            teacher = _reuse(a, seed, rows, suffix)
        teacher_wall: Optional[float] = None  # None: made by an earlier launch (its time is not this one's)
        if not (teacher / "teacher" / "meta.json").is_file():
            teacher_wall = _run("train-teacher", a.config, teacher, a.nproc, ov)
        dcn = base / f"teacher_dcn_run{suffix}"
        if (not a.only or "multi_teacher" in a.only) and not (dcn / "teacher" / "meta.json").is_file():
            _run("train-teacher", a.config, dcn, a.nproc, [*ov, "teacher.arch=dlrm_dcn", "teacher.table_prefix=t2_"])
        rows[f"teacher{suffix}"] = _row(_entry(teacher, "teacher"), {}, teacher_wall, "train-teacher",
                                        ["(reused)"] if teacher_wall is None else [])
        for name, (command, extra) in METHODS.items():
            if a.only and name not in a.only or (a.reuse_from and name in ("student_alone", "soft_kd")):
                continue
            rows[name + suffix] = _method(a, base, name, command, ov, extra, teacher, dcn, rows, suffix)
            _write(rows, a)
    md = _write(rows, a)
    print(md)


def _method(a: argparse.Namespace, base: Path, name: str, command: str, ov: List[str], extra: List[str],
            teacher: Path, dcn: Path, rows: Dict[str, dict], suffix: str) -> dict:
    """Train, quantize and evaluate one row; returns its table entry."""
    out = base / f"{name}{suffix}"
    source = {"train-student": "student", "distill": "distilled", "distill-qat": "distilled_qat"}[command]
    if not a.rerun and _entry(out, source).get("fingerprint") and _entry(out, f"{source}_int4"):
        # measured before with this row's config (its outputs record their fingerprint): reuse
        return _row(_entry(out, source), _entry(out, f"{source}_int4"), None, command, extra,
                    _entry(out, f"{source}_int2").get("auc"))
    teacher_ckpt = f"distill.teacher_checkpoint={teacher / 'teacher'}"
    overrides = [*ov, teacher_ckpt, *extra]
    if name == "multi_teacher":
        overrides.append(f"distill.teachers=[{{checkpoint: {teacher / 'teacher'}, weight: 1.0}}, "
                         f"{{checkpoint: {dcn / 'teacher'}, weight: 1.0}}]")
    if name.startswith("privileged"):
        hidden = a.privileged_dense if name.startswith("privileged_dense") else a.privileged
        overrides.append("distill.privileged_features=[" + ", ".join(hidden) + "]")
    if name.endswith("rank_pairwise") or name.endswith("_rank"):
        overrides.append(f"distill.group_feature={a.group_feature}")
    if "distill.offline=true" in extra:
        _run("score-teacher", a.config, out, a.nproc, overrides)
    wall = _run(command, a.config, out, a.nproc, overrides)
    # a QAT student is exported in the format it trained for (distill.qat); the others as int4
    _run("quantize", a.config, out, a.nproc, [*overrides, "quantize.dtypes=[int4]"], ["--source", source])
    e, q = _entry(out, source), _entry(out, f"{source}_int4")
    int2 = _entry(out, f"{source}_int2").get("auc")
    if name == "qat_int2":  # its own export is int2; compare with soft-label KD's post-training int2
        q = {}
        ptq = base / f"soft_kd{suffix}"
        if not _entry(ptq, "distilled_int2"):
            _run("quantize", a.config, ptq, a.nproc, [*ov, teacher_ckpt, "quantize.dtypes=[int2]"], ["--source", "distilled"])
        rows.setdefault(f"soft_kd{suffix}", {})["int2_auc"] = _entry(ptq, "distilled_int2").get("auc")
    return _row(e, q, wall, command, extra, int2)


SAME_RUN_SECTIONS = ("data", "teacher", "student", "train", "seed", "sharding")


def _reuse(a: argparse.Namespace, seed: int, rows: Dict[str, dict], suffix: str) -> Path:
    """Take the student_alone / soft_kd rows and the teacher from an experiment of the same config and seed."""
    from torchrec_kd.config import config_to_dict, load_config

    run = REPO / a.reuse_from / f"seed_{seed}"
    want = config_to_dict(load_config(REPO / a.config, [*a.overrides, f"seed={seed}"]))
    for model in ("teacher", "student", "distilled"):
        have = json.loads((run / model / "meta.json").read_text())["config"]
        diff = [k for k in SAME_RUN_SECTIONS if have.get(k) != want.get(k)]
        if diff or have["distill"]["losses"] != want["distill"]["losses"]:
            raise SystemExit(f"--reuse-from {run}: its {model} was trained with other {diff or ['distill.losses']}")
    rows[f"student_alone{suffix}"] = _row(_entry(run, "student"), {}, None, "train-student", ["(reused)"])
    rows[f"soft_kd{suffix}"] = _row(_entry(run, "distilled"), _entry(run, "distilled_int4"), None, "distill", ["(reused)"])
    return run


def _row(e: dict, q: dict, wall: Optional[float], command: str, extra: List[str], int2: Optional[float] = None) -> dict:
    """One table row from a model's metrics entry.

    Args:
        e (dict): the model's ``metrics.json`` entry.
        q (dict): its int4 export's entry.
        wall (Optional[float]): seconds this launch spent training it; None when it was made by an
            earlier launch or another run (``reused``: no time of this launch is its).
        command (str): the CLI command that trained it.
        extra (List[str]): its overrides.
        int2 (Optional[float]): its int2 export's test AUC.

    Returns:
        dict: the row. ``peak_rss_gib`` is the entry's: the training process's peak resident set
        (rank 0), as recorded by the run that trained it.
    """
    return {"auc": e.get("auc"), "ne": e.get("ne"), "int4_auc": q.get("auc"), "int2_auc": int2,
            "best_step": e.get("best_step"), "steps": e.get("steps"), "stopped_early": e.get("stopped_early"),
            "val_auc": (e.get("best_val") or {}).get("auc"),
            "samples_per_s": e.get("train_samples_per_s"), "peak_rss_gib": e.get("peak_rss_gib"),
            "wall_s": None if wall is None else round(wall, 1), "reused": wall is None,
            "command": command, "overrides": extra}


def baseline_of(name: str) -> str:
    """The student alone that a row is compared with (the same features)."""
    for kind in ("privileged_dense", "privileged"):
        if name.startswith(kind):
            return f"{kind}_student_alone"
    return "student_alone"


def across_seeds(rows: Dict[str, dict]) -> Dict[str, Dict[str, Any]]:
    """Per method: mean test AUC over its seeds and the paired difference from its student alone."""
    by_method: Dict[str, Dict[int, dict]] = {}
    for key, r in rows.items():
        if "@seed" in key and r.get("auc") is not None:
            name, seed = key.split("@seed")
            by_method.setdefault(name, {})[int(seed)] = r
    out: Dict[str, Dict[str, Any]] = {}
    for name, per_seed in by_method.items():
        seeds = sorted(per_seed)
        base = by_method.get(baseline_of(name), {})
        paired = [s for s in seeds if s in base]
        diffs = [per_seed[s]["auc"] - base[s]["auc"] for s in paired]
        mean_diff, ci = paired_interval(diffs) if diffs and name != baseline_of(name) else (None, None)
        out[name] = {"seeds": seeds, "auc_mean": sum(per_seed[s]["auc"] for s in seeds) / len(seeds),
                     "vs_student_alone": mean_diff, "ci95": list(ci) if ci else None,
                     "significant": bool(ci and (ci[0] > 0 or ci[1] < 0))}
    return out


def _write(rows: Dict[str, dict], a: argparse.Namespace) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"command": command_line(), "config": a.config, "nproc": a.nproc, "overrides": a.overrides, "rows": rows,
              "across_seeds": across_seeds(rows),
              "targets": {k: {"value": v, "met": ok} for k, (v, ok) in targets(rows).items()}}
    text = json.dumps(result, indent=2)
    (RESULTS / "ablation.json").write_text(text)
    (RESULTS / f"ablation-{date.today().isoformat()}.json").write_text(text)
    md = table(rows) + "\n\n" + "\n".join(f"- {k}: {v} — {'met' if ok else 'NOT met'}" for k, (v, ok) in targets(rows).items())
    (RESULTS / "ablation.md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    main()
