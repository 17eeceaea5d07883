"""Benchmark: does a continually distilled student beat the student alone, window after window?

For each data set — the drifting synthetic log (``configs/continual_synthetic.yaml``) and GroupLens's
ml-latest-small (``configs/continual_ml_latest_small.yaml``, skipped with its reason when
``<data-root>/ml-latest-small`` is missing) — one ``continual`` launch on ``--nproc`` ranks with
``experiment.seeds`` (one whole continual run per seed). From its ``continual.json`` (the contract of
docs/continual.md), over each seed's last ``--last`` scored windows (default 6, every one warm-started):

* the paired difference warm-started distilled − warm-started student alone (windows × seeds), its 95%
  interval (``reporting.summary.paired_interval``), significant or not;
* the update cost: mean scratch / mean distilled update seconds, and distilled − scratch AUC;
* the cold slice (test rows whose user or item is new): AUC per model, distilled − alone paired;
* the delta: bytes over the full export's, judged on windows where ≤ 10% of the rows changed;
* the launch's wall time (not judged when it reused windows made by an earlier launch).

``continual`` skips every step already made with the same config: a launch that reused any window
records ``wall_s: null`` and the reused windows, and its time target is not judged. Writes
``benchmarks/results/continual.{json,md}`` with the targets checked and the command as run::

    python benchmarks/continual.py [--only synthetic ml_latest_small] [--seeds 0 1 2] [--nproc 2] [--last 6]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import command_line, run_cli  # noqa: E402

from torchrec_kd.reporting.summary import paired_interval, signed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA_ROOT = REPO.parent / "shared" / "data"
ML_LATEST = "ml-latest-small"

# data set -> config (ml_latest_small also gets data.movielens.path from --data-root)
DATASETS: Dict[str, str] = {
    "synthetic": "configs/continual_synthetic.yaml",
    "ml_latest_small": "configs/continual_ml_latest_small.yaml",
}
MODELS = ("teacher", "distilled", "student", "scratch")

# The targets, in one place (issue 24, "Targets")
LAST_WINDOWS = 6            # judged over each seed's last >= 6 scored windows
COST_RATIO = 5.0            # a warm-started update costs <= 1/5 of the from-scratch retrain's time
SCRATCH_AUC_TOL = 0.002     # ... with AUC within 0.002 of it on average
DELTA_ROWS_CHANGED = 0.10   # when <= 10% of the rows changed ...
DELTA_BYTES = 0.20          # ... delta bytes <= 20% of the full export
WALL_S = 1800.0             # the continual benchmark on one data set <= 30 minutes
BENCH_SEEDS = 3             # ... with 3 seeds

Target = Tuple[Any, Optional[bool], str]  # (measured value, met (None: not judged), why not judged)


def _records(out: Path) -> Dict[str, str]:
    """Every window record under a continual run's directory (``**/continual_window.json``): its text."""
    return {str(f.relative_to(out)): f.read_text() for f in sorted(out.glob("**/continual_window.json"))}


def reused_windows(before: Mapping[str, str], after: Mapping[str, str]) -> List[str]:
    """Windows ``continual`` skipped: their record was there before the launch and is unchanged."""
    return sorted(k for k, v in after.items() if before.get(k) == v)


def last_windows(windows: Sequence[Mapping[str, Any]], last: int) -> List[Mapping[str, Any]]:
    """Each seed's last ``last`` scored windows (by window number), seeds in order."""
    chosen: List[Mapping[str, Any]] = []
    for seed in sorted({w.get("seed") for w in windows}, key=str):
        mine = sorted((w for w in windows if w.get("seed") == seed), key=lambda w: w["window"])
        chosen += mine[-last:]
    return chosen


def _auc(w: Mapping[str, Any], model: str, part: Optional[str] = None) -> Optional[float]:
    entry = (w.get("models") or {}).get(model) or {}
    if part is not None:
        entry = (entry.get("slices") or {}).get(part) or {}
    return entry.get("auc")


def paired(windows: Sequence[Mapping[str, Any]], a: str, b: str, part: Optional[str] = None) -> Dict[str, Any]:
    """``a`` − ``b`` AUC paired over the windows (× seeds), overall or on one slice, with its 95% interval.

    Args:
        windows (Sequence[Mapping]): ``continual.json`` window entries.
        a, b (str): models.
        part (Optional[str]): a cold-start slice (``new`` / ``rare`` / ``rest``), or None for all rows.

    Returns:
        Dict[str, Any]: ``{"auc_mean", "auc_ci95", "significant", "pairs"}`` (mean None without pairs;
        a window where either AUC is undefined — one class in the slice — is left out).
    """
    diffs = [x - y for x, y in ((_auc(w, a, part), _auc(w, b, part)) for w in windows)
             if x is not None and y is not None]
    if not diffs:
        return {"auc_mean": None, "auc_ci95": None, "significant": False, "pairs": 0}
    mean, ci = paired_interval(diffs)
    return {"auc_mean": mean, "auc_ci95": list(ci) if ci else None,
            "significant": bool(ci is not None and (ci[0] > 0 or ci[1] < 0)), "pairs": len(diffs)}


def verdict(g: Mapping[str, Any]) -> str:
    """``significant gain`` / ``significant loss`` / ``not significant`` (or ``no pairs``)."""
    if g["auc_mean"] is None:
        return "no pairs"
    if not g["significant"]:
        return "not significant"
    return "significant gain" if g["auc_mean"] > 0 else "significant loss"


def _gain_value(g: Mapping[str, Any]) -> str:
    if g["auc_mean"] is None:
        return "no pairs"
    ci = "no interval" if g["auc_ci95"] is None else \
        f"95% CI [{signed(g['auc_ci95'][0])}, {signed(g['auc_ci95'][1])}]"
    return f"{signed(g['auc_mean'])} AUC over {g['pairs']} pairs, {ci}: {verdict(g)}"


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def cost(windows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Mean scratch / mean distilled update seconds over the warm-started windows where both were timed."""
    pairs = [((w.get("update_s") or {}).get("scratch"), (w.get("update_s") or {}).get("distilled")) for w in windows
             if w.get("warm_started")]
    pairs = [(s, d) for s, d in pairs if s is not None and d]
    # the teacher's update is not the served model's, but it is paid every window too (reported beside)
    teacher = _mean([(w.get("update_s") or {}).get("teacher") for w in windows if w.get("warm_started")])
    if not pairs:
        return {"cost_ratio": None, "scratch_s": None, "distilled_s": None, "teacher_s": teacher, "windows": 0}
    s, d = _mean([p[0] for p in pairs]), _mean([p[1] for p in pairs])
    return {"cost_ratio": s / d, "scratch_s": s, "distilled_s": d, "teacher_s": teacher, "windows": len(pairs)}


def delta_ratios(windows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per window with a delta: rows changed / rows, delta bytes / export bytes."""
    out = []
    for w in windows:
        d = w.get("delta") or {}
        if w.get("delta_bytes") and w.get("export_bytes") and d.get("rows_total"):
            out.append({"seed": w.get("seed"), "window": w["window"], "rows_changed": d["rows_changed"] / d["rows_total"],
                        "bytes": w["delta_bytes"] / w["export_bytes"]})
    return out


def targets(doc: Mapping[str, Any], chosen: Sequence[Mapping[str, Any]], last: int, seeds: Sequence[int],
            wall_s: Optional[float]) -> Dict[str, Target]:
    """The issue's targets on one data set, each with its measured value and verdict.

    Args:
        doc (Mapping): the launch's ``continual.json``.
        chosen (Sequence[Mapping]): each seed's last ``last`` scored windows.
        last (int): how many windows per seed were asked for.
        seeds (Sequence[int]): the seeds launched.
        wall_s (Optional[float]): the launch's wall seconds; None when it reused windows made earlier.

    Returns:
        Dict[str, Target]: target -> (value, met, why not judged); met None: not judged.
    """
    out: Dict[str, Target] = {}
    per_seed = {s: sum(1 for w in chosen if w.get("seed") == s) for s in seeds}
    cold_start = [w["window"] for w in chosen if not w.get("warm_started")]
    enough = last >= LAST_WINDOWS and all(n >= LAST_WINDOWS for n in per_seed.values())
    why = "" if enough else f"fewer than {LAST_WINDOWS} scored windows per seed ({per_seed})"
    if cold_start:
        why = (why + "; " if why else "") + f"windows {sorted(set(cold_start))} not warm-started"
    gain = paired(chosen, "distilled", "student")
    ok = None if why else not (gain["significant"] and gain["auc_mean"] < 0)
    out["distilled - student alone (both warm-started) > 0 with 95% CI above 0, or reported not significant"] = (
        _gain_value(gain), ok, why)
    gap = paired(chosen, "teacher", "student")
    # not a target: a teacher that does not lead the student alone leaves distillation nothing to pass on
    out["(context) teacher - student alone"] = (_gain_value(gap), None, "information, not a target")
    c = cost(chosen)
    ratio = None if c["cost_ratio"] is None else round(c["cost_ratio"], 2)
    teacher_s = "–" if c["teacher_s"] is None else f"{c['teacher_s']:.1f} s"
    out[f"scratch / distilled update seconds >= {COST_RATIO:g} (an update <= 1/{COST_RATIO:g} of the retrain)"] = (
        "no timed pairs" if ratio is None else f"x{ratio} ({c['scratch_s']:.1f} s / {c['distilled_s']:.1f} s, "
                                               f"{c['windows']} windows; the teacher's own update {teacher_s})",
        None if ratio is None else ratio >= COST_RATIO, "" if ratio is not None else "no scratch times")
    vs = paired(chosen, "distilled", "scratch")
    out[f"distilled AUC within {SCRATCH_AUC_TOL} of scratch on average (distilled - scratch >= -{SCRATCH_AUC_TOL})"] = (
        _gain_value(vs), None if vs["auc_mean"] is None else vs["auc_mean"] >= -SCRATCH_AUC_TOL,
        "" if vs["auc_mean"] is not None else "no scratch AUC")
    missing = [f"{w.get('seed')}/{w['window']}/{m}" for w in chosen for m in MODELS
               if "new" not in (((w.get("models") or {}).get(m) or {}).get("slices") or {})]
    out["cold (new-id) slice AUC reported for every model"] = (
        "every model, every window" if not missing else f"missing: {', '.join(missing[:6])}", not missing, "")
    cold = paired(chosen, "distilled", "student", "new")
    out["cold slice: distilled >= student alone, or not significant"] = (
        _gain_value(cold), None if cold["auc_mean"] is None else not (cold["significant"] and cold["auc_mean"] < 0),
        "" if cold["auc_mean"] is not None else "no window with both classes in the new slice")
    ratios = delta_ratios(doc.get("windows") or [])
    small = [r for r in ratios if r["rows_changed"] <= DELTA_ROWS_CHANGED]
    label = f"delta bytes <= {DELTA_BYTES:.0%} of the export when <= {DELTA_ROWS_CHANGED:.0%} of rows changed"
    if small:
        worst = max(r["bytes"] for r in small)
        out[label] = (f"worst {worst:.1%} over {len(small)} windows", worst <= DELTA_BYTES, "")
    elif ratios:
        out[label] = (f"delta/export {min(r['bytes'] for r in ratios):.1%}-{max(r['bytes'] for r in ratios):.1%} "
                      f"with {min(r['rows_changed'] for r in ratios):.0%}-{max(r['rows_changed'] for r in ratios):.0%} "
                      f"of rows changed", None,
                      f"no window had <= {DELTA_ROWS_CHANGED:.0%} of its rows changed")
    else:
        out[label] = ("no delta", None, "no delta was written")
    wall_why = ("windows reused from an earlier launch" if wall_s is None else
                "" if len(seeds) == BENCH_SEEDS else f"{len(seeds)} seed(s) launched, the target is the "
                                                     f"{BENCH_SEEDS}-seed benchmark")
    out[f"continual benchmark on one data set <= {WALL_S / 60:.0f} min ({BENCH_SEEDS} seeds)"] = (
        "–" if wall_s is None else f"{wall_s / 60:.1f} min", None if wall_why else wall_s <= WALL_S, wall_why)
    return out


def window_table(windows: Sequence[Mapping[str, Any]]) -> str:
    """Per scored window (mean over seeds): the models' AUC, their new-slice AUC, update seconds, bytes."""
    by_window: Dict[int, List[Mapping[str, Any]]] = {}
    for w in windows:
        by_window.setdefault(int(w["window"]), []).append(w)
    f = lambda x, d=4: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
    kib = lambda x: "–" if x is None else f"{x / 1024:.1f}"  # noqa: E731
    lines = ["| window | teacher | distilled | alone | scratch | new: teacher / distilled / alone / scratch (rows) | "
             "update s: distilled / alone / scratch | export KiB | delta KiB | rows changed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t, ws in sorted(by_window.items()):
        aucs = [f(_mean([_auc(w, m) for w in ws])) for m in MODELS]
        new = " / ".join(f(_mean([_auc(w, m, "new") for w in ws])) for m in MODELS)
        rows = _mean([(((w["models"].get("distilled") or {}).get("slices") or {}).get("new") or {}).get("rows")
                      for w in ws])
        up = " / ".join(f(_mean([(w.get("update_s") or {}).get(m) for w in ws]), 1)
                        for m in ("distilled", "student", "scratch"))
        changed = _mean([(w["delta"]["rows_changed"] / w["delta"]["rows_total"]) if (w.get("delta") or {}).get(
            "rows_total") else None for w in ws])
        lines.append(f"| {t}{'' if ws[0].get('warm_started') else ' (cold start)'} | " + " | ".join(aucs)
                     + f" | {new} ({f(rows, 0)}) | {up} | {kib(_mean([w.get('export_bytes') for w in ws]))} | "
                     f"{kib(_mean([w.get('delta_bytes') for w in ws]))} | "
                     f"{'–' if changed is None else f'{changed:.0%}'} |")
    return "\n".join(lines)


def cold_table(chosen: Sequence[Mapping[str, Any]]) -> str:
    """Mean AUC per model and slice over the judged windows (× seeds)."""
    lines = ["| model | all rows | new | rare | rest |", "|---|---|---|---|---|"]
    for m in MODELS:
        cells = [_mean([_auc(w, m, p) for w in chosen]) for p in (None, "new", "rare", "rest")]
        lines.append(f"| {m} | " + " | ".join("–" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


def _verdict(met: Optional[bool], why: str) -> str:
    if met is None and why.startswith("information"):
        return why
    return f"not judged ({why})" if met is None else ("met" if met else "NOT met") + (f" ({why})" if why else "")


def markdown(results: Mapping[str, Any], skipped: Mapping[str, str]) -> str:
    """``continual.md``: per data set the command, the per-window table, the cold slices and the targets."""
    md = ["# Continual distillation (`benchmarks/continual.py`)", ""]
    for name, r in results.items():
        took = (f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") is not None else
                f"reused {len(r.get('reused', []))} windows made earlier, launch {r.get('launch_s', 0) / 60:.1f} min")
        md += [f"## {name} (`{r['config']}`, seeds {r['seeds']}, {r['nproc']} ranks, {took}, {r['date']})", "",
               f"`{r['command']}`", "",
               "AUC on window t, scored before anything trained on it (models trained through t − 1); "
               "mean over seeds. \"new\": test rows whose user or item was never in the trained rows.", "",
               window_table(r["continual"]["windows"]), "",
               f"Judged over each seed's last {r['last']} scored windows ({r['judged_windows']}); "
               "mean AUC per slice there:", "",
               cold_table(last_windows(r["continual"]["windows"], r["last"])), ""]
        md += [f"- {k}: {t['value']} — {_verdict(t['met'], t['why'])}" for k, t in r["targets"].items()] + [""]
    md += [f"## {name}: skipped — {why}\n" for name, why in skipped.items()]
    return "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(DATASETS), help="run only these data sets")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--last", type=int, default=LAST_WINDOWS, help="scored windows per seed judged (the last ones)")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help=f"holds {ML_LATEST}/")
    p.add_argument("--out", default="outputs/bench_continual")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every data set")
    a = p.parse_args()
    previous = json.loads((RESULTS / "continual.json").read_text()) if (RESULTS / "continual.json").is_file() else {}
    results: Dict[str, Any] = dict(previous.get("datasets", {})) if a.only else {}
    skipped: Dict[str, str] = dict(previous.get("skipped", {})) if a.only else {}
    for name in a.only or list(DATASETS):
        config, extra = DATASETS[name], []
        if name == "ml_latest_small":
            ml = (a.data_root / ML_LATEST).resolve()
            if not (ml / "ratings.csv").is_file():
                skipped[name] = f"{ml}/ratings.csv is missing (GroupLens's ml-latest-small; see its config)"
                results.pop(name, None)
                print(f"{name}: skipped — {skipped[name]}")
                continue
            extra = [f"data.movielens.path={ml}"]
        skipped.pop(name, None)
        out = REPO / a.out / name
        overrides = [*extra, "experiment.seeds=[" + ",".join(map(str, a.seeds)) + "]", *a.overrides]
        before = _records(out)
        launch = run_cli("continual", config, out, a.nproc, overrides)
        doc = json.loads((out / "continual.json").read_text())
        # continual skips windows already made with this config: their time is not in this launch
        reused = reused_windows(before, _records(out))
        wall = None if reused else round(launch, 1)
        chosen = last_windows(doc["windows"], a.last)
        results[name] = {
            "config": config, "overrides": overrides, "nproc": a.nproc, "seeds": a.seeds, "last": a.last,
            "wall_s": wall, "launch_s": round(launch, 1), "reused": reused, "date": date.today().isoformat(),
            "command": command_line(),
            "judged_windows": sorted({int(w["window"]) for w in chosen}),
            "kd_gain": paired(chosen, "distilled", "student"), "teacher_gap": paired(chosen, "teacher", "student"),
            "cold_gain": paired(chosen, "distilled", "student", "new"),
            "vs_scratch": paired(chosen, "distilled", "scratch"), "cost": cost(chosen),
            "delta": delta_ratios(doc["windows"]), "continual": doc,
            "targets": {k: {"value": v, "met": ok, "why": why}
                        for k, (v, ok, why) in targets(doc, chosen, a.last, a.seeds, wall).items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "continual.json").write_text(json.dumps({"datasets": results, "skipped": skipped}, indent=2))
    text = markdown(results, skipped)
    (RESULTS / "continual.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
