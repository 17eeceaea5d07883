"""Across seeds: each model's mean and spread, and what distillation bought with its 95% interval.

A gain counts only as the paired difference of distilled and student-alone test AUC over
seeds (each seed one replicate: the same world and budget, its own initialisation and
data order), with a Student-t interval; it is *significant* when the interval excludes 0.
One seed has no interval and is never called significant.

A multi-task run's entries carry ``"tasks": {name: {...}}``; the summary then adds the same
per task (``"tasks": {name: {"models", "kd_gain", "teacher_gap", "teacher_note", ...}}``): AUC
for a binary task, MSE (lower is better) for a regression task. The top level stays the
selection task's, as in ``metrics.json``.

Example::

    s = summarize({0: metrics_seed0, 1: metrics_seed1, 2: metrics_seed2})
    s["kd_gain"]  # {"auc_mean": 0.0031, "auc_ci95": [0.0012, 0.0050], "significant": True, ...}
    s["tasks"]["conversion"]["kd_gain"]  # the same for one task of a multi-task run
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

# two-sided 95% quantiles of Student's t, by degrees of freedom 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
SUMMARY_MODELS = ("teacher", "student", "distilled", "distilled_int8", "distilled_int4")


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (normal beyond the table)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960 + 2.4 / df


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired_interval(diffs: Sequence[float]) -> Tuple[float, Optional[Tuple[float, float]]]:
    """Mean of paired differences and its 95% Student-t confidence interval (None for one pair).

    Args:
        diffs (Sequence[float]): per-seed differences (e.g. distilled − student alone AUC).

    Returns:
        Tuple[float, Optional[Tuple[float, float]]]: the mean and (low, high).
    """
    mean, std = mean_std(diffs)
    if std is None:
        return mean, None
    half = t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs))
    return mean, (mean - half, mean + half)


# One seed: a teacher − student alone difference smaller than this is a tie. The benchmarks'
# per-seed spread of one model's test AUC is 0.002-0.004 (docs/benchmarks.md), so the
# difference of two models varies by about √2 times that from seed to seed.
TIE_AUC = 0.005


def signed(value: float, digits: int = 4) -> str:
    """``value`` with its sign, never a negative zero: ``+0.0031``, ``-0.0120``, ``+0.0000``.

    Args:
        value (float): a difference.
        digits (int): decimals.

    Returns:
        str: the formatted number.
    """
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if text.startswith("-") and float(text) == 0 else text


def validated(entry: Mapping[str, Any]) -> bool:
    """True when the model was kept at its best validation step (False: its last step, never validated)."""
    return bool(entry.get("best_val"))


def _teacher_student_auc(metrics: Mapping[str, Mapping[str, Any]]) -> Optional[Tuple[float, float, str]]:
    """The teacher's and the student alone's AUC and on what: best validation, else test (no validation)."""
    t, s = metrics["teacher"], metrics["student"]
    if validated(t) and validated(s) and t["best_val"].get("auc") is not None and s["best_val"].get("auc") is not None:
        return t["best_val"]["auc"], s["best_val"]["auc"], "validation AUC"
    if t.get("auc") is not None and s.get("auc") is not None:
        return t["auc"], s["auc"], "test AUC (no validation)"
    return None


def teacher_warning(metrics: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The warning to print when the teacher does not score above the student alone (one run).

    On the best validation AUCs, or the test AUCs when either model had no validation. One
    seed cannot tell a small difference from noise: the teacher is called *below* only when
    it trails by more than ``TIE_AUC``, else the two are *tied*. Neither claims distillation
    cannot help: soft labels can help a student even from an equal teacher.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json`` (needs ``teacher`` and ``student``).

    Returns:
        Optional[str]: the sentence, or None when the teacher scores above the student alone
        (or a model or its AUC is missing).
    """
    if not {"teacher", "student"} <= metrics.keys():
        return None
    found = _teacher_student_auc(metrics)
    if found is None or found[0] > found[1]:
        return None
    t, s, what = found
    if s - t > TIE_AUC:
        return (f"This teacher scores below the student alone ({what} {t:.4f} against {s:.4f} on one seed, a gap "
                f"larger than the {TIE_AUC} that seeds alone can make): distillation from it may gain little; "
                "train a better teacher first.")
    return (f"The teacher and the student alone are tied ({what} {t:.4f} against {s:.4f} on one seed, within the "
            f"{TIE_AUC} that seeds alone can make): soft labels can still help the student, but a better teacher "
            "usually helps more.")


def teacher_retrieval_warning(metrics: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """A retrieval run's warning when the teacher does not retrieve more than the student alone (test recall@20, one run).

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.

    Returns:
        Optional[str]: the sentence, or None (the teacher retrieves more, or either has no ``retrieval``).
    """
    teacher = metrics.get("teacher", {}).get("retrieval") or {}
    t = teacher.get(HEADLINE_RETRIEVAL) if teacher.get("scored") == "pairs" else None  # the whole corpus, as the towers
    s = (metrics.get("student", {}).get("retrieval") or {}).get(HEADLINE_RETRIEVAL)
    if t is None or s is None or t > s:
        return None
    return (f"The teacher retrieves no more than the student alone (test {HEADLINE_RETRIEVAL} {t:.4f} against {s:.4f} "
            "over the whole corpus, on one seed): distilling its order over candidates may gain little; its AUC "
            "on logged rows does not say how well it retrieves.")


_ANNOUNCED: Set[str] = set()


def announce_once(text: str) -> bool:
    """True the first time this process is asked to print ``text``, False after.

    One ``experiment`` meets the same teacher warning in ``distill``, ``distill-qat`` and the
    report: the report states it, and the steps before print nothing.

    Args:
        text (str): the warning.

    Returns:
        bool: whether to print it now.
    """
    if text in _ANNOUNCED:
        return False
    _ANNOUNCED.add(text)
    return True


def base_rate_notes(metrics: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """A sentence for each model whose test NE is above 1: worse than predicting the base rate.

    NE (normalized entropy) is the log loss divided by that of always predicting the
    training click rate, so above 1 the model's scores are worse than that constant.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.

    Returns:
        List[str]: one sentence per such model.
    """
    worse = [f"{n} (NE {e['ne']:.4f})" for n, e in metrics.items() if isinstance(e.get("ne"), (int, float)) and e["ne"] > 1]
    if not worse:
        return []
    return [f"Worse than predicting the base rate (test NE above 1): {', '.join(worse)}."]


def budget_warning(metrics: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """A warning naming the compared students whose best validation was the last step of their budget.

    Such a model may still have been improving, so a comparison with it may be against a
    model not at its best (raise ``train.steps`` / ``train.epochs``). A teacher capped by its
    budget (a long stream's history) is a weaker teacher, not an unfair comparison.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.

    Returns:
        Optional[str]: the sentence, or None.
    """
    capped = [m for m in ("student", "distilled", "distilled_qat") if m in metrics
              and metrics[m].get("best_val") and metrics[m].get("best_step") == metrics[m].get("max_steps")
              and not metrics[m].get("stopped_early")]
    if not capped:
        return None
    return (f"{', '.join(capped)} reached the maximum budget at its best validation step and may still have been "
            "improving: raise train.steps / train.epochs so both students stop at their best.")


def consistency_notes(metrics: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """What in one run's ``metrics.json`` must not be compared or reported as current.

    The student alone and the distilled student are compared only when they record the same
    base (data, student architecture, seed, budget, training settings); an export is current
    only while it records the fingerprint of the model it was quantized from.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.

    Returns:
        List[str]: one sentence per problem (empty: consistent).
    """
    notes = []
    s, d = metrics.get("student", {}), metrics.get("distilled", {})
    if s.get("base") and d.get("base") and s["base"] != d["base"]:
        notes.append("The student alone and the distilled student were trained with different data, student, seed or "
                     "budget (their fingerprints differ), so they are not compared: re-run the older one.")
    for name, source in stale_exports(metrics).items():
        notes.append(f"{name} was exported from an earlier {source} model: re-run quantize (--source {source}).")
    return notes


def stale_exports(metrics: Mapping[str, Mapping[str, Any]]) -> Dict[str, str]:
    """The exports in ``metrics`` made from an earlier version of their source model, with that source.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.

    Returns:
        Dict[str, str]: export name -> source name.
    """
    stale = {}
    for name, e in metrics.items():
        source = e.get("source") or name.rpartition("_")[0]  # exports record their source (older ones: by name)
        if e.get("source_fingerprint") and source in metrics and \
                metrics[source].get("fingerprint") != e["source_fingerprint"]:
            stale[name] = source
    return stale


def comparable(metrics: Mapping[str, Mapping[str, Any]]) -> bool:
    """False when the student alone and the distilled student record different bases."""
    s, d = metrics.get("student", {}), metrics.get("distilled", {})
    return not (s.get("base") and d.get("base") and s["base"] != d["base"])


def summarize(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]],
              left_out: Optional[Mapping[int, Mapping[str, str]]] = None) -> Dict[str, Any]:
    """``summary.json`` of a multi-seed experiment.

    Args:
        per_seed (Mapping[int, dict]): each seed's ``metrics.json`` — only the models of the
            config's lineage (``reporting.lineage.split_lineage``).
        left_out (Optional[Mapping[int, Mapping[str, str]]]): per seed, the models left out and why.

    Returns:
        Dict[str, Any]: ``seeds``; ``models``: per model present in every seed ``auc_mean``,
        ``auc_std``, ``ne_mean``, ``ne_std``, ``auc`` (per seed), ``best_step`` (per seed); with
        entries carrying ``retrieval`` (retrieval runs), ``retrieval`` (:func:`summarize_retrieval`);
        ``kd_gain``: distilled − student alone test AUC, ``auc_mean``, ``auc_ci95`` (None for
        one seed), ``significant``, ``per_seed``, and NE likewise; ``teacher_gap``: teacher −
        student alone the same way; ``teacher_not_better``: seeds whose teacher did not score
        above the student alone (``teacher_warning``); ``teacher_note``: the warning for the
        whole experiment, if any; ``unvalidated``: seeds where a compared model had no
        validation; ``left_out``: per seed, the models not of this lineage and why; with a multi-task
        run's entries, ``tasks``: the same per task (:func:`summarize_task`).
    """
    seeds = sorted(per_seed)
    runs = [per_seed[s] for s in seeds]
    common = [m for m in runs[0] if all(m in r and r[m].get("auc") is not None for r in runs)]
    order = [m for m in SUMMARY_MODELS if m in common] + sorted(m for m in common if m not in SUMMARY_MODELS)
    models: Dict[str, Any] = {}
    for m in order:
        auc, ne = [r[m]["auc"] for r in runs], [r[m]["ne"] for r in runs]
        (am, asd), (nm, nsd) = mean_std(auc), mean_std(ne)
        models[m] = {"auc_mean": am, "auc_std": asd, "ne_mean": nm, "ne_std": nsd, "auc": auc,
                     "best_step": [r[m].get("best_step") for r in runs]}
    out: Dict[str, Any] = {"seeds": seeds, "models": models}
    out["not_comparable"] = [s for s, r in zip(seeds, runs) if not comparable(r)]
    if {"student", "distilled"} <= models.keys() and not out["not_comparable"]:
        out["kd_gain"] = _difference(runs, "distilled", "student")
    if {"student", "teacher"} <= models.keys():
        out["teacher_gap"] = _difference(runs, "teacher", "student")
        if "kd_gain" in out and out["teacher_gap"]["auc_mean"] > 0:
            out["kd_gain"]["gap_recovered"] = out["kd_gain"]["auc_mean"] / out["teacher_gap"]["auc_mean"]
    out["teacher_not_better"] = [s for s, r in zip(seeds, runs) if teacher_warning(r)]
    out["teacher_note"] = teacher_warning(runs[0]) if len(runs) == 1 else _teacher_gap_warning(out)
    out["budget_reached"] = [s for s, r in zip(seeds, runs) if budget_warning(r)]
    out["unvalidated"] = [s for s, r in zip(seeds, runs)
                          if any(m in r and not validated(r[m]) for m in ("student", "distilled"))]
    out["left_out"] = {s: dict(v) for s, v in (left_out or {}).items() if v}
    names = entry_tasks(runs)
    if names:
        out["tasks"] = {t: summarize_task(seeds, [task_view(r, t) for r in runs]) for t in names}
        out["selection_task"] = next((e["selection_task"] for r in runs for e in r.values()
                                      if isinstance(e, Mapping) and e.get("selection_task")), None)
    retrieval = summarize_retrieval(runs, out["not_comparable"])
    if retrieval:
        out["retrieval"] = retrieval
    return out


# ---------------------------------------------------------------- per task (multi-task runs)

# what a per-task view keeps of a model's entry beside its task metrics (selection, fingerprints)
_ENTRY_KEYS = ("best_step", "steps", "max_steps", "stopped_early", "base", "fingerprint", "source",
               "source_fingerprint", "embedding_bytes", "params")
_TASK_METRICS = ("auc", "ne", "logloss", "calibration", "mse")


def entry_tasks(runs: Sequence[Mapping[str, Mapping[str, Any]]]) -> List[str]:
    """The task names of a multi-task run's entries, in their order (empty: single-task entries).

    Args:
        runs (Sequence[Mapping[str, dict]]): ``metrics.json`` contents (one per seed).

    Returns:
        List[str]: every task some entry reports.
    """
    names: List[str] = []
    for run in runs:
        for entry in run.values():
            for name in (entry.get("tasks") or {}) if isinstance(entry, Mapping) else ():
                if name not in names:
                    names.append(name)
    return names


def _task_best_val(entry: Mapping[str, Any], task: str) -> Optional[Dict[str, Any]]:
    """The task's validation metrics at the kept step (from ``val_curve``); None when never validated."""
    if not validated(entry):
        return None
    for point in entry.get("val_curve") or []:
        if isinstance(point, Mapping) and point.get("step") == entry.get("best_step"):
            per = (point.get("tasks") or {}).get(task)
            if per:
                return {k: per[k] for k in _TASK_METRICS if k in per}
    return {"step": entry.get("best_step")}  # validated, but not this task's numbers: comparisons use test


def task_view(metrics: Mapping[str, Mapping[str, Any]], task: str) -> Dict[str, Dict[str, Any]]:
    """One run's ``metrics.json`` seen through one task: each model's entry with that task's metrics on top.

    ``best_val`` becomes the task's validation metrics at the kept step, so every single-task
    helper (``teacher_warning``, ``summarize``…) reads the view as it reads a single-task run.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.
        task (str): a task name.

    Returns:
        Dict[str, dict]: the models that report this task.
    """
    view: Dict[str, Dict[str, Any]] = {}
    for name, entry in metrics.items():
        per = (entry.get("tasks") or {}).get(task)
        if per is None:
            continue
        view[name] = {**{k: entry[k] for k in _ENTRY_KEYS if k in entry}, **per,
                      "best_val": _task_best_val(entry, task)}
    return view


def is_regression(view: Mapping[str, Mapping[str, Any]]) -> bool:
    """A regression task's view (its metrics are MSE, not AUC)."""
    return any("mse" in e and "auc" not in e for e in view.values())


def regression_teacher_warning(view: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The warning when the teacher's MSE is not below the student alone's (one run, a regression task).

    Args:
        view (Mapping[str, dict]): a regression task's :func:`task_view`.

    Returns:
        Optional[str]: the sentence, or None (teacher better, or a model missing).
    """
    if not {"teacher", "student"} <= view.keys():
        return None
    t, s = view["teacher"], view["student"]
    tv, sv = (t.get("best_val") or {}).get("mse"), (s.get("best_val") or {}).get("mse")
    what = "validation MSE"
    if tv is None or sv is None:
        tv, sv, what = t.get("mse"), s.get("mse"), "test MSE (no validation)"
    if tv is None or sv is None or tv < sv:
        return None
    return (f"This teacher's {what} {tv:.4f} is not below the student alone's {sv:.4f} (lower is better, one seed): "
            "distillation from it may gain little; train a better teacher first.")


def _mse_difference(views: List[Mapping[str, Mapping[str, Any]]], a: str, b: str) -> Dict[str, Any]:
    """``a`` − ``b`` test MSE over seeds (negative: ``a`` is better); ``auc_*`` kept as None for readers of the contract."""
    diffs = [v[a]["mse"] - v[b]["mse"] for v in views]
    mean, ci = paired_interval(diffs)
    return {"metric": "mse", "lower_is_better": True, "mse_mean": mean, "mse_ci95": list(ci) if ci else None,
            "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)), "per_seed": diffs,
            "auc_mean": None, "auc_ci95": None}


def summarize_task(seeds: Sequence[int], views: List[Mapping[str, Mapping[str, Any]]]) -> Dict[str, Any]:
    """One task's part of ``summary.json`` from its :func:`task_view` per seed.

    Args:
        seeds (Sequence[int]): the seeds, in the order of ``views``.
        views (List[Mapping[str, dict]]): each seed's view of the task.

    Returns:
        Dict[str, Any]: ``type`` (binary / regression), ``models`` (as the top level's: AUC and NE means and
        stds; a regression task: ``mse_mean``, ``mse_std``, ``mse``), ``kd_gain`` (``auc_mean``, ``auc_ci95``,
        ``significant``, …; a regression task: ``mse_mean``, ``mse_ci95``, ``lower_is_better``), ``teacher_gap``,
        ``teacher_not_better``, ``teacher_note``, ``not_comparable``, ``unvalidated``, ``seeds``.
    """
    if not is_regression(views[0]):
        full = summarize(dict(zip(seeds, views)))
        keep = ("seeds", "models", "kd_gain", "teacher_gap", "teacher_not_better", "teacher_note", "not_comparable",
                "unvalidated")
        return {"type": "binary", **{k: full[k] for k in keep if k in full}}
    common = [m for m in views[0] if all(m in v and v[m].get("mse") is not None for v in views)]
    order = [m for m in SUMMARY_MODELS if m in common] + sorted(m for m in common if m not in SUMMARY_MODELS)
    models: Dict[str, Any] = {}
    for m in order:
        mse = [v[m]["mse"] for v in views]
        mean, std = mean_std(mse)
        models[m] = {"mse_mean": mean, "mse_std": std, "mse": mse, "best_step": [v[m].get("best_step") for v in views]}
    out: Dict[str, Any] = {"type": "regression", "seeds": list(seeds), "models": models,
                           "not_comparable": [s for s, v in zip(seeds, views) if not comparable(v)]}
    if {"student", "distilled"} <= models.keys() and not out["not_comparable"]:
        out["kd_gain"] = _mse_difference(views, "distilled", "student")
    if {"student", "teacher"} <= models.keys():
        out["teacher_gap"] = _mse_difference(views, "teacher", "student")
    out["teacher_not_better"] = [s for s, v in zip(seeds, views) if regression_teacher_warning(v)]
    gap = out.get("teacher_gap")
    note = regression_teacher_warning(views[0]) if len(views) == 1 else None
    if gap and gap["mse_ci95"] is not None and gap["mse_ci95"][0] >= 0:
        lo, hi = gap["mse_ci95"]
        note = (f"The teacher is not shown to have a lower MSE than the student alone (teacher − student alone "
                f"{signed(gap['mse_mean'])} test MSE, 95% CI {signed(lo)} to {signed(hi)}, {len(seeds)} seeds; "
                "lower is better): distillation from it may gain little.")
    out["teacher_note"] = note
    out["unvalidated"] = [s for s, v in zip(seeds, views)
                          if any(m in v and not validated(v[m]) for m in ("student", "distilled"))]
    return out


def task_gain_sentence(task: str, summary: Mapping[str, Any]) -> str:
    """The per-task sentence: distilled − student alone with its interval (AUC; MSE, lower is better, for regression).

    Args:
        task (str): the task's name.
        summary (Mapping[str, Any]): its :func:`summarize_task`.

    Returns:
        str: one or two sentences, starting with the task's name.
    """
    if summary.get("type") != "regression":
        return f"{task}: {gain_sentence(summary)}"
    gain = summary.get("kd_gain")
    if summary.get("not_comparable"):
        return f"{task}: no comparison: the student alone and the distilled student were trained with different configs."
    if gain is None:
        return f"{task}: no comparison yet: the student alone and the distilled student are both needed."
    head = f"{task}: distilled − student alone: {signed(gain['mse_mean'])} test MSE (lower is better"
    if gain["mse_ci95"] is None:
        return head + "), one seed: no interval, so this alone is not a result to act on."
    lo, hi = gain["mse_ci95"]
    verdict = ("significant" if gain["significant"] else "not significant (the interval includes 0)")
    return head + f"; 95% CI {signed(lo)} to {signed(hi)}, {len(summary['seeds'])} seeds): {verdict}."


def task_markdown(tasks: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """The per-task sections of ``summary.md``: per task its sentence, teacher warning and table."""
    lines: List[str] = []
    sd = lambda x: "–" if x is None else f"{x:.4f}"  # noqa: E731
    for task, ts in tasks.items():
        regression = ts.get("type") == "regression"
        lines += [f"## Task {task} ({'regression: MSE, lower is better' if regression else 'binary: AUC'})", "",
                  task_gain_sentence(task, ts), ""]
        if ts.get("teacher_note"):
            lines += [f"Warning ({task}): {ts['teacher_note']}", ""]
        if regression:
            lines += ["| model | test MSE mean | std | best step per seed |", "|---|---|---|---|"]
            lines += [f"| {m} | {v['mse_mean']:.4f} | {sd(v['mse_std'])} | {', '.join(str(s) for s in v['best_step'])} |"
                      for m, v in ts["models"].items()]
        else:
            lines += ["| model | test AUC mean | std | NE mean | std | best step per seed |", "|---|---|---|---|---|---|"]
            lines += [f"| {m} | {v['auc_mean']:.4f} | {sd(v['auc_std'])} | {v['ne_mean']:.4f} | {sd(v['ne_std'])} | "
                      f"{', '.join(str(s) for s in v['best_step'])} |" for m, v in ts["models"].items()]
        lines.append("")
    return lines


def _teacher_gap_warning(summary: Mapping[str, Any]) -> Optional[str]:
    """Across seeds: a warning when the paired interval of teacher − student alone does not lie above 0."""
    gap = summary.get("teacher_gap")
    if not gap or gap["auc_ci95"] is None:
        return None
    lo, hi = gap["auc_ci95"]
    span = (f"teacher − student alone {signed(gap['auc_mean'])} test AUC, 95% CI {signed(lo)} to {signed(hi)}, "
            f"{len(summary['seeds'])} seeds")
    if hi < 0:
        return (f"The teacher scores below the student alone ({span}): distillation from it may gain little; "
                "train a better teacher first.")
    if lo <= 0:
        return (f"The teacher is not shown to score above the student alone ({span}, the interval includes 0): "
                "soft labels can still help the student, but a better teacher usually helps more.")
    return None


def _difference(runs: List[Mapping[str, Mapping[str, Any]]], a: str, b: str) -> Dict[str, Any]:
    d_auc = [r[a]["auc"] - r[b]["auc"] for r in runs]
    d_ne = [r[a]["ne"] - r[b]["ne"] for r in runs]
    auc_mean, auc_ci = paired_interval(d_auc)
    ne_mean, ne_ci = paired_interval(d_ne)
    return {"auc_mean": auc_mean, "auc_ci95": list(auc_ci) if auc_ci else None,
            "significant": bool(auc_ci and (auc_ci[0] > 0 or auc_ci[1] < 0)), "per_seed": d_auc,
            "ne_mean": ne_mean, "ne_ci95": list(ne_ci) if ne_ci else None}


def gain_sentence(summary: Mapping[str, Any]) -> str:
    """The report's first sentence(s): distilled − student alone with its interval, and whether it is significant.

    A comparison where the student alone or the distilled student had no validation says so
    first: each such model is its last step, not its best.
    """
    gain = summary.get("kd_gain")
    if summary.get("not_comparable"):
        return (f"No comparison: on seed(s) {summary['not_comparable']} the student alone and the distilled student "
                "were trained with different configs.")
    if gain is None:
        return "No comparison yet: the student alone and the distilled student are both needed."
    n = len(summary["seeds"])
    unvalidated = summary.get("unvalidated") or []
    kept = "each model at its best validation step"
    caveat = ""
    if unvalidated:
        where = "" if n == 1 else f" on seed(s) {unvalidated}"
        caveat = (f"No validation{where}: the student alone or the distilled student is its last training step, not "
                  "its best, so this comparison may reflect the budget rather than distillation (set "
                  "train.eval_every). ")
        kept = "models at their last step where not validated"
    ranked = (summary.get("retrieval") or {}).get(HEADLINE_RETRIEVAL, {}).get("kd_gain")
    if ranked is not None:  # a retrieval run is judged by what it retrieves; AUC of the logged rows follows
        return _retrieval_sentence(ranked, gain, caveat, kept, n)
    if gain["auc_ci95"] is None:
        return (f"{caveat}Distilled − student alone: {signed(gain['auc_mean'])} test AUC on one seed, {kept} — one "
                "seed has no interval, so this alone is not a result to act on (experiment.seeds=[0,1,2] gives one).")
    lo, hi = gain["auc_ci95"]
    verdict = ("significant" if gain["significant"] else "not significant (the interval includes 0)")
    text = (f"{caveat}Distilled − student alone: {signed(gain['auc_mean'])} test AUC (95% CI {signed(lo)} to "
            f"{signed(hi)}, {n} seeds, {kept}): {verdict}.")
    if gain.get("gap_recovered") is not None and gain["significant"] and gain["auc_mean"] > 0:
        text += f" It recovers {gain['gap_recovered']:.0%} of the teacher's lead of {signed(summary['teacher_gap']['auc_mean'])}."
    return text


# the retrieval metric a retrieval run's first sentence is about (always reported: 20 is always among the ks)
HEADLINE_RETRIEVAL = "recall@20"


def _retrieval_sentence(ranked: Mapping[str, Any], gain: Mapping[str, Any], caveat: str, kept: str, n: int) -> str:
    """A retrieval run's first sentence: distilled − alone on test recall@20 over the whole corpus, then AUC."""
    auc = f" On the logged (user, item) rows: {signed(gain['auc_mean'])} test AUC."
    if ranked["ci95"] is None:
        return (f"{caveat}Distilled − student alone: {signed(ranked['mean'])} test {HEADLINE_RETRIEVAL} (the whole "
                f"corpus) on one seed, {kept} — one seed has no interval, so this alone is not a result to act on "
                f"(experiment.seeds=[0,1,2] gives one).{auc}")
    lo, hi = ranked["ci95"]
    verdict = "significant" if ranked["significant"] else "not significant (the interval includes 0)"
    return (f"{caveat}Distilled − student alone: {signed(ranked['mean'])} test {HEADLINE_RETRIEVAL} (the whole corpus; "
            f"95% CI {signed(lo)} to {signed(hi)}, {n} seeds, {kept}): {verdict}.{auc}")


def summary_markdown(summary: Mapping[str, Any], title: str) -> str:
    """``summary.md`` / the multi-seed ``report.md``: what is left out, the sentence, warnings, and the table."""
    lines = [f"# {title}", ""]
    for seed, why in (summary.get("left_out") or {}).items():
        lines += [f"Left out on seed {seed}, as not of this config's lineage: "
                  + "; ".join(f"{n} ({r})" for n, r in why.items()) + ".", ""]
    lines += [gain_sentence(summary), ""]
    if summary.get("teacher_note"):
        lines += [f"Warning: {summary['teacher_note']}", ""]
    if summary.get("budget_reached"):
        lines += [f"Warning: on seed(s) {summary['budget_reached']} a model's best validation was the last step of its "
                  "maximum budget: it may not be at its best (see that seed's report.md).", ""]
    worse = {m: v["ne_mean"] for m, v in summary["models"].items() if v.get("ne_mean") is not None and v["ne_mean"] > 1}
    if worse:
        lines += [f"Warning: {', '.join(f'{m} (mean NE {ne:.4f})' for m, ne in worse.items())}: worse than predicting "
                  "the base rate (test NE above 1).", ""]
    lines += ["| model | test AUC mean | std | NE mean | std | best step per seed |", "|---|---|---|---|---|---|"]
    for m, v in summary["models"].items():
        sd = lambda x: "–" if x is None else f"{x:.4f}"  # noqa: E731
        lines.append(f"| {m} | {v['auc_mean']:.4f} | {sd(v['auc_std'])} | {v['ne_mean']:.4f} | {sd(v['ne_std'])} | "
                     + ", ".join(str(s) for s in v["best_step"]) + " |")
    for key, label in (("kd_gain", "distilled − student alone"), ("teacher_gap", "teacher − student alone")):
        if key in summary:
            g = summary[key]
            ci = "–" if g["auc_ci95"] is None else f"[{signed(g['auc_ci95'][0])}, {signed(g['auc_ci95'][1])}]"
            lines.append("")
            lines.append(f"{label}: AUC {signed(g['auc_mean'])}, 95% CI {ci}; per seed "
                         + ", ".join(signed(d) for d in g["per_seed"]))
    if summary.get("tasks"):
        lines += ["", f"The table above is {selection_words(summary.get('selection_task'))}; each task's own follows.", ""]
        lines += task_markdown(summary["tasks"])
    if summary.get("retrieval"):
        lines += [""] + retrieval_markdown(summary["retrieval"])
    lines += ["", f"Seeds: {summary['seeds']}; each seed's own report is in seed_<s>/report.md."
              if len(summary["seeds"]) > 1 else ""]
    return "\n".join(lines).rstrip() + "\n"


def selection_words(chosen: Optional[str]) -> str:
    """What a multi-task run's top-level metrics are, in words (``train.early_stopping.task`` resolved).

    Args:
        chosen (Optional[str]): the recorded ``selection_task`` (a task name or "mean"; None: unrecorded).

    Returns:
        str: e.g. "the selection task's (click, train.early_stopping.task)".
    """
    if chosen == "mean":
        return "the task-weighted mean over the binary tasks (train.early_stopping.task: mean)"
    return f"the selection task's ({chosen or 'the first task'}, train.early_stopping.task)"


# ---------------------------------------------------------------- retrieval (entries carrying "retrieval")

# the retrieval metrics summary.md shows (summary.json holds every metric the entries share)
RETRIEVAL_TABLE = ("recall@20", "ndcg@20")
# what a "retrieval" entry holds beside metrics
_RETRIEVAL_COUNTS = ("users", "candidates", "scored")


def ranks_label(block: Mapping[str, Any]) -> str:
    """What a ``retrieval`` block ranked: the whole corpus by towers, pair by pair (a ranker), or N candidates."""
    if block.get("scored") == "pairs":
        return "the whole corpus, pair by pair"
    if block.get("candidates") is not None:
        return f"{block['candidates']} candidates"
    return "the whole corpus"


def _retrieval_order(name: str) -> Tuple[int, int, str]:
    """recall@K, ndcg@K, hr@K by K, then the others (mrr) by name."""
    kind, _, k = name.partition("@")
    rank = {"recall": 0, "ndcg": 1, "hr": 2}.get(kind, 3)
    return (rank, int(k) if k.isdigit() else 0, name)


def _paired_gain(a: Sequence[float], b: Sequence[float]) -> Dict[str, Any]:
    """``a`` − ``b`` per seed: ``mean``, ``ci95`` ([lo, hi]; None for one seed), ``significant``, ``per_seed``."""
    diffs = [x - y for x, y in zip(a, b)]
    mean, ci = paired_interval(diffs)
    return {"mean": mean, "ci95": list(ci) if ci else None, "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)),
            "per_seed": diffs}


def summarize_retrieval(runs: Sequence[Mapping[str, Mapping[str, Any]]],
                        not_comparable: Sequence[int] = ()) -> Optional[Dict[str, Any]]:
    """``summary.json``'s ``retrieval``: per retrieval metric each model's mean and spread, and what distillation bought.

    A model counts when its entry carries ``retrieval`` with the metric on every seed. The gain
    is the paired difference distilled − student alone over seeds with its Student-t interval
    (:func:`paired_interval`), as for AUC; it is left out when the two were trained with
    different bases on some seed (``not_comparable``). ``teacher_gap`` is teacher − student alone
    the same way (a ranker teacher ranks the whole corpus pair by pair: ``scored: "pairs"``), and
    ``cascade_gap`` the teacher re-ranking the student alone's top K − the student alone.

    Args:
        runs (Sequence[Mapping[str, dict]]): each seed's ``metrics.json`` (the config's lineage).
        not_comparable (Sequence[int]): seeds whose student alone and distilled student differ in base.

    Returns:
        Optional[Dict[str, Any]]: ``{metric: {"models": {model: {"mean", "std", "per_seed"[, "candidates", "scored"]}},
        "kd_gain": {"mean", "ci95", "significant", "per_seed"}, "teacher_gap": {...}, "cascade": {model: {...}},
        "cascade_gap": {...}}}`` (the cascade: the teacher re-ranking a tower model's top K) for every metric all
        of some model's entries share (always ``recall@20`` and ``ndcg@20`` when the runs record them); None
        when no entry carries ``retrieval``.
    """
    per_model: Dict[str, List[Mapping[str, Any]]] = {}
    for m in runs[0] if runs else ():
        blocks = [r.get(m, {}).get("retrieval") if isinstance(r.get(m), Mapping) else None for r in runs]
        if all(isinstance(b, Mapping) for b in blocks):
            per_model[m] = blocks  # type: ignore[assignment]
    if not per_model:
        return None
    order = [m for m in SUMMARY_MODELS if m in per_model] + sorted(m for m in per_model if m not in SUMMARY_MODELS)
    names = {k for blocks in per_model.values() for b in blocks for k, v in b.items()
             if k not in _RETRIEVAL_COUNTS and isinstance(v, (int, float))}
    out: Dict[str, Any] = {}
    for metric in sorted(names, key=_retrieval_order):
        models: Dict[str, Any] = {}
        for m in order:
            values = [b.get(metric) for b in per_model[m]]
            if any(not isinstance(v, (int, float)) for v in values):
                continue
            mean, std = mean_std(values)
            models[m] = {"mean": mean, "std": std, "per_seed": values}
            for key in ("candidates", "scored"):
                if per_model[m][0].get(key) is not None:
                    models[m][key] = per_model[m][0][key]
        entry: Dict[str, Any] = {"models": models}
        if {"student", "distilled"} <= models.keys() and not not_comparable:
            entry["kd_gain"] = _paired_gain(models["distilled"]["per_seed"], models["student"]["per_seed"])
        if {"student", "teacher"} <= models.keys():
            entry["teacher_gap"] = _paired_gain(models["teacher"]["per_seed"], models["student"]["per_seed"])
        cascade = _cascade_block(runs, metric)
        if cascade:
            entry["cascade"] = cascade
            if "student" in cascade and "student" in models:  # the teacher's order of the student's own candidates
                entry["cascade_gap"] = _paired_gain(cascade["student"]["per_seed"], models["student"]["per_seed"])
        out[metric] = entry
    return out


def _cascade_block(runs: Sequence[Mapping[str, Mapping[str, Any]]], metric: str) -> Dict[str, Any]:
    """Per tower model whose entries carry ``cascade`` on every seed: the metric's mean, std, per seed, depth."""
    out: Dict[str, Any] = {}
    for m in SUMMARY_MODELS:
        values = [((r.get(m) or {}).get("cascade") or {}).get(metric) for r in runs]
        if runs and all(isinstance(v, (int, float)) for v in values):
            mean, std = mean_std(values)
            out[m] = {"mean": mean, "std": std, "per_seed": values,
                      "candidates": runs[0][m]["cascade"].get("candidates"), "scored": "cascade"}
    return out


def retrieval_gain_line(metric: str, gain: Mapping[str, Any], label: str = "distilled − student alone") -> str:
    """``distilled − student alone: recall@20 +0.0300, 95% CI [+0.0052, +0.0548]: significant`` (one seed: no interval)."""
    head = f"{label}: {metric} {signed(gain['mean'])}"
    if gain.get("ci95") is None:
        return head + " on one seed: no interval, not a result to act on."
    lo, hi = gain["ci95"]
    verdict = "significant" if gain["significant"] else "not significant (the interval includes 0)"
    return head + f", 95% CI [{signed(lo)}, {signed(hi)}]: {verdict}."


def retrieval_markdown(retrieval: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """``summary.md``'s retrieval section: recall@20 / NDCG@20 per model (mean, std over seeds) and the gains."""
    shown = [m for m in RETRIEVAL_TABLE if m in retrieval] or list(retrieval)[:2]
    models: List[str] = []
    for metric in shown:
        models += [m for m in retrieval[metric]["models"] if m not in models]
    sd = lambda x: "–" if x is None else f"{x:.4f}"  # noqa: E731
    lines = ["## Retrieval", "",
             "| model | " + " | ".join(f"{m} mean | std" for m in shown) + " | ranks |",
             "|---" * (2 * len(shown) + 2) + "|"]
    for model in models:
        cells, ranks = [], "the whole corpus"
        for metric in shown:
            v = retrieval[metric]["models"].get(model)
            cells += [f"{v['mean']:.4f}", sd(v["std"])] if v else ["–", "–"]
            if v:
                ranks = ranks_label(v)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {ranks} |")
    for model in [m for m in SUMMARY_MODELS if any(m in retrieval[x].get("cascade", {}) for x in shown)]:
        cells = []
        for metric in shown:
            v = retrieval[metric].get("cascade", {}).get(model)
            cells += [f"{v['mean']:.4f}", sd(v["std"])] if v else ["–", "–"]
            depth = v["candidates"] if v else "?"
        lines.append(f"| {model} → teacher | " + " | ".join(cells) + f" | the {model}'s top {depth}, re-ranked by the "
                     "teacher |")
    lines.append("")
    for metric in shown:
        for key, label in (("kd_gain", "distilled − student alone"), ("teacher_gap", "teacher − student alone"),
                           ("cascade_gap", "teacher re-ranking the student's candidates − student alone")):
            if retrieval[metric].get(key):
                lines.append(retrieval_gain_line(metric, retrieval[metric][key], label))
    lines += ["", "Each test user's last interaction is its target; the whole corpus is ranked with the items the "
              "user saw in training excluded (a tower model by its towers, a ranker pair by pair)."]
    return lines
