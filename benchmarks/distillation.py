"""Benchmark: is distillation worth it? Teacher / student alone / distilled / int8 / int4, each
model at its best validation step, over several seeds, in three scenarios:

* ``equal_data`` — the default synthetic config (what ``make demo`` runs): teacher and student
  read the same finite rows; the teacher is wider (more capacity);
* ``long_history`` — the teacher reads a long stream, the student (alone and distilled) a
  finite window of its first rows, by epochs;
* ``adult`` — the real UCI Adult census table (``../shared/data/adult/adult.csv``).

Each scenario is one ``experiment`` launch on ``--nproc`` ranks with ``experiment.seeds``;
its ``summary.json`` gives per-model means and the distilled − student-alone difference with
its 95% interval. ``experiment`` skips models already made with the same config: a launch that
reused any records ``wall_s: null`` and the models in ``reused`` (its partial time as ``launch_s``),
and its time target is not judged. Writes ``benchmarks/results/distillation.{json,md}`` (and a
dated copy) with the targets checked and the command as run::

    python benchmarks/distillation.py [--only equal_data adult] [--seeds 0 1 2] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import command_line, run_cli  # noqa: E402

from torchrec_kd.reporting.summary import signed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ADULT = REPO.parent / "shared" / "data" / "adult" / "adult.csv"

# scenario -> (config, overrides); QAT is left to the ablation (it is not what decides "is KD worth it")
SCENARIOS: Dict[str, Tuple[str, List[str]]] = {
    "equal_data": ("configs/dlrm_teacher_synthetic.yaml", []),
    "long_history": ("configs/dlrm_synthetic_long_history.yaml", []),
    "adult": ("configs/adult_census.yaml", [f"data.table.path={ADULT}"]),
}
COMMON = ["distill.qat=null", "quantize.dtypes=[int8,int4]"]


# what a step writes when it runs (timings differ on every run); `report` adds latency fields
# to every entry on each launch, so the whole entry would change even for a model it skipped
MADE_BY_STEP = ("fingerprint", "train_samples_per_s", "eval_samples_per_s", "loss_curve", "auc", "export")


def _entries(out: Path) -> Dict[str, str]:
    """Every model entry under an experiment's directory (``seed_<s>/metrics.json``): what its step wrote."""
    found = {}
    for f in sorted(out.glob("**/metrics.json")):
        for model, entry in json.loads(f.read_text()).items():
            found[f"{f.parent.relative_to(out)}/{model}"] = json.dumps({k: entry.get(k) for k in MADE_BY_STEP},
                                                                       sort_keys=True)
    return found


def reused_models(before: Dict[str, str], after: Dict[str, str]) -> List[str]:
    """Models ``experiment`` skipped: their entries were there before the launch and are unchanged."""
    return sorted(k for k, v in after.items() if before.get(k) == v)


def launch_experiment(config: str, out: Path, nproc: int, overrides: List[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """One ``experiment`` launch and what a results file records of it.

    ``experiment`` skips models already made with this config: a launch that reused any records
    ``wall_s: None`` (its partial time is ``launch_s``) and the models in ``reused``.

    Args:
        config (str): the config file.
        out (Path): the experiment's output directory.
        nproc (int): ranks.
        overrides (List[str]): ``key=value`` overrides (seeds included).

    Returns:
        Tuple[Dict[str, Any], Dict[str, Any]]: the record (config, overrides, nproc, wall_s, launch_s, reused,
        date, command, commit) and the launch's ``summary.json``.
    """
    before = _entries(out)
    launch = run_cli("experiment", config, out, nproc, overrides)
    summary = json.loads((out / "summary.json").read_text())
    reused = reused_models(before, _entries(out))
    return ({"config": config, "overrides": overrides, "nproc": nproc, "wall_s": None if reused else round(launch, 1),
             "launch_s": round(launch, 1), "reused": reused, "date": date.today().isoformat(),
             "command": command_line(), "commit": _commit()}, summary)


def _commit() -> Optional[str]:
    """The checkout's commit (short), so a results file says what code made it; None outside git."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def took(r: Dict[str, Any]) -> str:
    """A record's time for a heading: minutes, or what it reused and its partial launch time."""
    return (f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") is not None else
            f"reused {len(r.get('reused', []))} models made earlier, launch {r.get('launch_s', 0) / 60:.1f} min")


def targets(name: str, s: Dict[str, Any], wall_s: Optional[float]) -> Dict[str, Tuple[Any, Optional[bool]]]:
    """The honest-distillation targets of one scenario, each with its measured value and verdict.

    Args:
        name (str): the scenario.
        s (Dict[str, Any]): its ``summary.json``.
        wall_s (Optional[float]): the launch's wall seconds; None when it reused models made
            earlier (the time target is then not judged: it would time only what was left).

    Returns:
        Dict[str, Tuple[Any, Optional[bool]]]: target -> (value, met); met None: not judged.
    """
    out: Dict[str, Tuple[Any, Optional[bool]]] = {}
    gain, gap = s.get("kd_gain"), s.get("teacher_gap")
    models = s["models"]
    if name == "equal_data":
        if gap:
            out["teacher - student alone >= 0.005 test AUC"] = (round(gap["auc_mean"], 4), gap["auc_mean"] >= 0.005)
        if gain:
            lo = gain["auc_ci95"][0] if gain["auc_ci95"] else None
            out["distilled - student alone >= +0.002, 95% CI above 0"] = (
                [round(gain["auc_mean"], 4), None if lo is None else round(lo, 4)],
                gain["auc_mean"] >= 0.002 and lo is not None and lo > 0)
            if gain.get("gap_recovered") is not None:
                out["(stretch) recovers >= 50% of the teacher's lead"] = (round(gain["gap_recovered"], 2),
                                                                          gain["gap_recovered"] >= 0.5)
        out["3-seed benchmark <= 30 min on 2 ranks"] = ((None, None) if wall_s is None else
                                                       (round(wall_s / 60, 1), wall_s <= 1800))
    elif gain:
        verdict = "significant gain" if gain["significant"] and gain["auc_mean"] > 0 else (
            "significant loss" if gain["significant"] else "not significant")
        out["distilled >= student alone with CI above 0, or reported not significant"] = (verdict, True)
    for q in ("distilled_int8", "distilled_int4"):
        if q in models and "distilled" in models:
            worst = max(abs(a - b) for a, b in zip(models[q]["auc"], models["distilled"]["auc"]))
            out[f"|{q.split('_')[1]} - fp32 distilled| <= 0.001 AUC, every seed"] = (round(worst, 4), worst <= 0.001)
    return out


def scenario_table(s: Dict[str, Any]) -> str:
    """Per model: test AUC and NE mean ± std, best step per seed; then the gain line."""
    lines = ["| model | test AUC | NE | best step per seed |", "|---|---|---|---|"]
    for m, v in s["models"].items():
        pm = lambda mean, sd: f"{mean:.4f}" + ("" if sd is None else f" ± {sd:.4f}")  # noqa: E731
        lines.append(f"| {m} | {pm(v['auc_mean'], v['auc_std'])} | {pm(v['ne_mean'], v['ne_std'])} | "
                     + ", ".join(str(b) for b in v["best_step"]) + " |")
    for key, label in (("teacher_gap", "teacher − student alone"), ("kd_gain", "distilled − student alone")):
        g = s.get(key)
        if g:
            ci = "no interval" if g["auc_ci95"] is None else f"95% CI [{signed(g['auc_ci95'][0])}, {signed(g['auc_ci95'][1])}]"
            sig = "significant" if g["significant"] else "not significant"
            lines.append(f"\n{label}: {signed(g['auc_mean'])} AUC, {ci} ({sig}); per seed "
                         + ", ".join(signed(d) for d in g["per_seed"]))
    return "\n".join(lines)


def _verdict(met: Optional[bool]) -> str:
    return "not judged (models reused from an earlier launch)" if met is None else ("met" if met else "NOT met")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="outputs/bench_distillation")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every scenario")
    a = p.parse_args()
    previous = json.loads((RESULTS / "distillation.json").read_text()) if (RESULTS / "distillation.json").is_file() else {}
    results: Dict[str, Any] = dict(previous.get("scenarios", {})) if a.only else {}
    for name in a.only or list(SCENARIOS):
        config, extra = SCENARIOS[name]
        out = REPO / a.out / name
        seeds = "experiment.seeds=[" + ",".join(map(str, a.seeds)) + "]"
        overrides = [*COMMON, *extra, seeds, *a.overrides]
        record, summary = launch_experiment(config, out, a.nproc, overrides)
        results[name] = {**record, "summary": summary, "targets": {
            k: {"value": v, "met": ok} for k, (v, ok) in targets(name, summary, record["wall_s"]).items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"scenarios": results}, indent=2)
    (RESULTS / "distillation.json").write_text(text)
    (RESULTS / f"distillation-{date.today().isoformat()}.json").write_text(text)
    md = []
    for name, r in results.items():
        md += [f"## {name} (`{r['config']}`, seeds {r['summary']['seeds']}, {r['nproc']} ranks, {took(r)})", "",
               f"`{r['command']}`", "", scenario_table(r["summary"]), ""]
        md += [f"- {k}: {t['value']} — {_verdict(t['met'])}" for k, t in r["targets"].items()] + [""]
    (RESULTS / "distillation.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
