"""The run's report: ``report.md`` (a table and what KD bought), ``report.png``, TensorBoard scalars.

A multi-task run's report adds a section per task (what KD bought on it, its teacher warning,
its table) and ``report_tasks.png``, one panel per task; the main table is the selection task's.
Everything is read from ``metrics.json``, so a report can be rebuilt at any time::

    python -m torchrec_kd.cli report --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from torchrec_kd.core.layout import REPORT_MD, REPORT_PNG, TENSORBOARD_DIR
from torchrec_kd.reporting.summary import (
    base_rate_notes,
    budget_warning,
    comparable,
    consistency_notes,
    entry_tasks,
    gain_sentence,
    is_regression,
    ranks_label,
    regression_teacher_warning,
    selection_words,
    signed,
    stale_exports,
    summarize,
    summarize_task,
    task_gain_sentence,
    task_view,
    teacher_retrieval_warning,
    teacher_warning,
    validated,
)

logger = logging.getLogger(__name__)

ORDER = ("teacher", "student", "distilled", "distilled_fp16", "distilled_int8", "distilled_int4", "distilled_int2",
         "student_int8", "student_int4")
COLUMNS = (("auc", "AUC"), ("ne", "NE"), ("logloss", "log loss"), ("embedding_bytes", "embedding bytes"),
           ("params", "params"), ("latency_ms_b1", "latency b=1 (ms)"), ("latency_ms_b1024", "latency b=1024 (ms)"),
           ("train_samples_per_s", "train samples/s"))


# a multi-task run's picture of every task (report.png stays the selection task's)
TASKS_PNG = "report_tasks.png"
TASK_COLUMNS = {"binary": (("auc", "AUC"), ("ne", "NE"), ("logloss", "log loss"), ("calibration", "calibration"),
                           ("rows", "rows in its space")),
                "regression": (("mse", "MSE (lower is better)"), ("rows", "rows in its space"))}

NAMES = {"student": "student alone", "distilled": "distilled student"}
STEPS = {"student": "train-student", "distilled": "distill"}


def _ordered(metrics: Dict[str, Dict[str, Any]]) -> List[str]:
    known = [m for m in ORDER if m in metrics]
    return known + sorted(m for m in metrics if m not in known)


def _cell(key: str, value: Any, entry: Mapping[str, Any]) -> str:
    if key == "train_samples_per_s" and ("source" in entry or "source_fingerprint" in entry):
        return "–"  # a quantized export is not trained: its source's figure is not its own
    if value is None:
        return "–"
    if key == "ne" and value > 1:
        return f"{value:.4f} (> 1: worse than the base rate)"
    if key in ("auc", "ne", "logloss", "calibration", "mse"):
        return f"{value:.4f}"
    if key.startswith("latency"):
        return f"{value:.3f}"
    return f"{value:,.0f}"


def lineage_note(left_out: Optional[Mapping[str, str]]) -> Optional[str]:
    """The report's first sentence when models of another lineage are left out (None when none are).

    Args:
        left_out (Optional[Mapping[str, str]]): model -> why it is not of this config's lineage.

    Returns:
        Optional[str]: the sentence.
    """
    if not left_out:
        return None
    why = "; ".join(f"{name} ({reason})" for name, reason in left_out.items())
    return f"Left out of this report (its table, picture and every figure) as not of this config's lineage: {why}."


def kd_summary(metrics: Dict[str, Dict[str, Any]], left_out: Optional[Mapping[str, str]] = None) -> str:
    """What distillation and quantization bought, from the numbers, honestly qualified.

    The first sentence is the distilled − student-alone difference (on one run: no
    interval, said so; without validation: said first); then which step each model was
    kept at, models worse than the base rate, a warning when the teacher does not score
    above the student alone, and what quantization cost. ``metrics`` must hold only models
    of one lineage (``reporting.lineage``): every figure here is computed from them.

    Args:
        metrics (Dict[str, dict]): the ``metrics.json`` entries of one lineage.
        left_out (Optional[Mapping[str, str]]): the entries of other lineages and why.

    Returns:
        str: the sentences.
    """
    parts = []
    gone = [m for m in ("student", "distilled") if m in (left_out or {})]
    if gone:
        parts.append(f"No comparison: the {' and the '.join(NAMES[m] for m in gone)} in this directory "
                     f"{'is' if len(gone) == 1 else 'are'} not of this config's lineage (see above): run "
                     f"{' and '.join(STEPS[m] for m in gone)} with this config.")
    elif {"student", "distilled"} <= metrics.keys():
        parts.append(gain_sentence(summarize({0: metrics})))
        s, d = metrics["student"], metrics["distilled"]
        if comparable(metrics):
            parts.append(f"Test AUC {s['auc']:.4f} alone ({_kept(s)}) and {d['auc']:.4f} distilled ({_kept(d)}), "
                         "with the same data and maximum budget.")
    cascade = (metrics.get("student") or {}).get("cascade") or {}
    alone = (metrics.get("student") or {}).get("retrieval") or {}
    if "recall@20" in cascade and "recall@20" in alone:
        parts.append(f"The teacher re-ranking the student alone's top {cascade['candidates']} (the cascade): recall@20 "
                     f"{cascade['recall@20']:.4f} against {alone['recall@20']:.4f} in the student's own order.")
    parts += consistency_notes(metrics)
    parts += base_rate_notes(metrics)
    for warning in (teacher_warning(metrics), teacher_retrieval_warning(metrics), budget_warning(metrics)):
        if warning:
            parts.append(warning)
    stale = stale_exports(metrics)  # never a figure from a stale export (lineage-split metrics have none)
    quant = [m for m in ("distilled_int4", "distilled_int8") if m in metrics and m not in stale
             and metrics[m].get("source", "distilled") == "distilled"]
    if quant and "teacher" in metrics and "distilled" in metrics:
        q = quant[0]
        ratio = metrics["teacher"]["embedding_bytes"] / max(1, metrics[q]["embedding_bytes"])
        ranked = ""
        qr, dr = metrics[q].get("retrieval") or {}, metrics["distilled"].get("retrieval") or {}
        if "recall@20" in qr and "recall@20" in dr:
            ranked = f" and {signed(qr['recall@20'] - dr['recall@20'])} recall@20"
        parts.append(f"Its {q.split('_')[1]} tables hold {metrics[q]['embedding_bytes']:,} bytes, {ratio:.0f}x less than "
                     f"the teacher's, for {signed(metrics[q]['auc'] - metrics['distilled']['auc'])} AUC{ranked} "
                     "against fp32.")
    return " ".join(parts) if parts else "Not enough models in metrics.json yet to compare."


def _kept(entry: Dict[str, Any]) -> str:
    """'best at step 1200 of 1500 trained, stopped early; max 3000' for a metrics entry."""
    best, steps, cap = entry.get("best_step"), entry.get("steps"), entry.get("max_steps")
    if not validated(entry):
        return f"its last step, {steps if steps is not None else best}, never validated"
    return f"best at step {best} of {steps} trained{', stopped early' if entry.get('stopped_early') else ''}; max {cap}"


def write_markdown(metrics: Dict[str, Dict[str, Any]], out_dir: Path, title: str,
                   left_out: Optional[Mapping[str, str]] = None) -> Path:
    """``report.md``: what is left out (first), the summary sentences and the comparison table.

    Args:
        metrics (Dict[str, dict]): the ``metrics.json`` entries of one lineage.
        out_dir (Path): the run's output directory.
        title (str): heading (the run name).
        left_out (Optional[Mapping[str, str]]): the other entries and why they are left out.

    Returns:
        Path: the file written.
    """
    note = lineage_note(left_out)
    lines = [f"# {title}", ""] + ([note, ""] if note else []) + [
        kd_summary(metrics, left_out), "",
        "| model | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|"]
    for name in _ordered(metrics):
        lines.append(f"| {name} | " + " | ".join(_cell(k, metrics[name].get(k), metrics[name]) for k, _ in COLUMNS)
                     + " |")
    lines += ["", "AUC, NE (normalized entropy) and log loss on the test split (TorchRec RecMetrics); NE above 1 is "
              "worse than always predicting the base rate; latency: median single-thread CPU forward of the unsharded "
              "model; embedding bytes: table storage (quantized: fbgemm rows incl. scale/bias); train samples/s: "
              "training throughput (– for a quantized export, which is not trained).", "",
              f"![AUC against model bytes and validation curves]({REPORT_PNG})", ""]
    lines += task_sections(metrics)
    lines += retrieval_table(metrics)
    path = Path(out_dir) / REPORT_MD
    path.write_text("\n".join(lines))
    return path


def retrieval_table(metrics: Dict[str, Dict[str, Any]]) -> List[str]:
    """report.md's retrieval table: per model recall@K and NDCG@K for every K, MRR, users, what it ranked.

    Args:
        metrics (Dict[str, dict]): the ``metrics.json`` entries of one lineage.

    Returns:
        List[str]: markdown lines (none when no entry carries ``retrieval``).
    """
    have = [m for m in _ordered(metrics) if isinstance(metrics[m].get("retrieval"), Mapping)]
    if not have and not any(metrics[m].get("retrieval_skipped") for m in metrics):
        return []
    keys = {k for m in have for k in metrics[m]["retrieval"]}
    ks = sorted({int(k.partition("@")[2]) for k in keys if k.partition("@")[2].isdigit()})
    cols = [f"{kind}@{k}" for kind in ("recall", "ndcg") for k in ks if f"{kind}@{k}" in keys] + ["mrr"]
    lines = ["## Retrieval", "", "| model | " + " | ".join(cols) + " | users | ranks |", "|---" * (len(cols) + 3) + "|"]
    for m in have:
        r = metrics[m]["retrieval"]
        cells = ["–" if r.get(c) is None else f"{r[c]:.4f}" for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r.get('users', '–')} | {ranks_label(r)} |")
    for m in have:  # the cascade: the teacher re-ranking this tower model's own candidates
        c = metrics[m].get("cascade")
        if isinstance(c, Mapping):
            cells = ["–" if c.get(col) is None else f"{c[col]:.4f}" for col in cols]
            lines.append(f"| {m} → teacher | " + " | ".join(cells) + f" | {c.get('users', '–')} | {m}'s top "
                         f"{c.get('candidates')}, re-ranked by the teacher |")
    for m in have:
        idx = metrics[m].get("item_index")
        if idx:
            lines += ["", f"{m}'s item index: {idx['items']:,} items x {idx['dim']}: {idx['bytes']['fp32']:,} bytes as "
                      f"fp32, {idx['bytes']['int8']:,} as int8 (row-wise scales)."]
            if metrics[m].get("retrieval_int8_index") and "recall@20" in metrics[m]["retrieval"]:
                q = metrics[m]["retrieval_int8_index"]["recall@20"]
                lines[-1] += (f" Searched with the int8 rows: recall@20 {q:.4f} "
                              f"({signed(q - metrics[m]['retrieval']['recall@20'])} against the fp32 rows).")
    for m in _ordered(metrics):
        if metrics[m].get("retrieval_skipped"):
            lines += ["", f"{m}: no retrieval metrics — {metrics[m]['retrieval_skipped']}."]
    lines += ["", "Test users (leave-last-out), the items each saw in training excluded; recall@K, NDCG@K (binary "
              "gains), MRR over the full ranking. A tower model scores the corpus with its towers; a ranker scores "
              "every (user, item) pair as a row: the same users, targets and corpus.", ""]
    return lines


def task_sections(metrics: Dict[str, Dict[str, Any]]) -> List[str]:
    """A multi-task run's report.md sections: per task what KD bought, its teacher warning and its table.

    Args:
        metrics (Dict[str, dict]): the ``metrics.json`` entries of one lineage.

    Returns:
        List[str]: markdown lines (none for a single-task run).
    """
    names = entry_tasks([metrics])
    if not names:
        return []
    chosen = next((e["selection_task"] for e in metrics.values() if e.get("selection_task")), None) or names[0]
    lines = ["## Per task", "",
             f"The table above is {selection_words(chosen)}; each task's metrics are on the test rows of its own space "
             "(a task observed only where another is 1 counts those rows).", ""]
    for task in names:
        view = task_view(metrics, task)
        kind = "regression" if is_regression(view) else "binary"
        lines += [f"### {task} ({kind})", ""]
        if {"student", "distilled"} <= view.keys():
            lines += [task_gain_sentence(task, summarize_task([0], [view])), ""]
        warning = regression_teacher_warning(view) if kind == "regression" else teacher_warning(view)
        if warning:
            lines += [f"Warning ({task}): {warning}", ""]
        cols = TASK_COLUMNS[kind]
        lines += ["| model | " + " | ".join(label for _, label in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {m} | " + " | ".join(_cell(k, view[m].get(k), view[m]) for k, _ in cols) + " |"
                  for m in _ordered(view)]
        lines.append("")
    lines += [f"![each task's test metric per model]({TASKS_PNG})", ""]
    return lines


def write_task_plot(metrics: Dict[str, Dict[str, Any]], out_dir: Path, summary: Optional[Mapping[str, Any]] = None,
                    title: Optional[str] = None, left_out: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """``report_tasks.png`` of a multi-task run: one panel per task (None for a single-task run).

    Args:
        metrics (Dict[str, dict]): the ``metrics.json`` entries of one lineage.
        out_dir (Path): the output directory.
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content (≥ 2 seeds: means, stds, intervals).
        title (Optional[str]): the figure's heading.
        left_out (Optional[Mapping[str, str]]): models not drawn (another lineage).

    Returns:
        Optional[Path]: the file written.
    """
    if not entry_tasks([metrics]):
        return None
    from torchrec_kd.reporting.plot import draw_task_report

    return draw_task_report(metrics, _ordered(metrics), Path(out_dir) / TASKS_PNG, summary=summary, title=title,
                            left_out=sorted(left_out or {}))


def write_plot(metrics: Dict[str, Dict[str, Any]], out_dir: Path, summary: Optional[Mapping[str, Any]] = None,
               title: Optional[str] = None, curves_label: Optional[str] = None,
               left_out: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """``report.png``: AUC against embedding bytes with the Pareto front, validation curves, and the KD gain.

    The KD gain panel (distilled − student alone, 95% interval, per-seed dots) is drawn when
    ``summary`` has ≥ 2 seeds; the AUCs are then the seeds' means. See ``reporting.plot``.

    Args:
        metrics (Dict[str, dict]): the ``metrics.json`` entries of one lineage (one run or seed).
        out_dir (Path): the run's output directory.
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content (``summarize()``), if any.
        title (Optional[str]): the figure's heading (the run name).
        curves_label (Optional[str]): which run the curves come from (e.g. ``"seed 0"``).
        left_out (Optional[Mapping[str, str]]): models not drawn (another lineage), named under the figure.

    Returns:
        Optional[Path]: the file written.
    """
    from torchrec_kd.reporting.plot import draw_report  # matplotlib only when a picture is drawn

    return draw_report(metrics, _ordered(metrics), Path(out_dir) / REPORT_PNG, summary=summary, title=title,
                       curves_label=curves_label, left_out=sorted(left_out or {}))


def write_experiment_plot(summary: Mapping[str, Any], per_seed: Mapping[int, Dict[str, Dict[str, Any]]],
                          out_dir: Path, title: Optional[str] = None) -> Optional[Path]:
    """The top-level ``report.png`` of a multi-seed experiment: the summary, with its first seed's curves
    (and, for a multi-task run, ``report_tasks.png``: each task's means, spreads and interval).

    Args:
        summary (Mapping[str, Any]): ``summarize(per_seed)``.
        per_seed (Mapping[int, dict]): each seed's ``metrics.json`` (bytes and curves come from one).
        out_dir (Path): the experiment's output directory (``summary.json``'s).
        title (Optional[str]): the figure's heading (the run name).

    Returns:
        Optional[Path]: the file written, or None without seeds.
    """
    seeds = [s for s in summary.get("seeds") or [] if s in per_seed or str(s) in per_seed]
    if not seeds:
        return None
    seed = seeds[0]
    metrics = per_seed[seed] if seed in per_seed else per_seed[str(seed)]  # type: ignore[index]
    left_out = sorted({n for why in (summary.get("left_out") or {}).values() for n in why})
    write_task_plot(metrics, out_dir, summary=summary, title=title, left_out=dict.fromkeys(left_out, ""))
    return write_plot(metrics, out_dir, summary=summary, title=title, curves_label=f"seed {seed}",
                      left_out=dict.fromkeys(left_out, ""))


def write_tensorboard(metrics: Dict[str, Dict[str, Any]], out_dir: Path) -> Path:
    """TensorBoard: each model's test metrics and latencies, beside the curves its training streamed.

    Args:
        metrics (Dict[str, dict]): ``metrics.json`` content.
        out_dir (Path): the run's output directory.

    Returns:
        Path: the TensorBoard log directory (``tensorboard --logdir <it>``).
    """
    from torch.utils.tensorboard import SummaryWriter

    root = Path(out_dir) / TENSORBOARD_DIR
    for name, m in metrics.items():
        with SummaryWriter(log_dir=str(root / name)) as w:
            for key in ("auc", "ne", "logloss", "calibration", "latency_ms_b1", "latency_ms_b1024"):
                if m.get(key) is not None:
                    w.add_scalar(f"test/{key}", m[key], m.get("steps", 0))
            for task, per in (m.get("tasks") or {}).items():  # a multi-task run: each task's own
                for key in ("auc", "ne", "logloss", "calibration", "mse"):
                    if per.get(key) is not None:
                        w.add_scalar(f"test/{task}/{key}", per[key], m.get("steps", 0))
    return root


def write_report(metrics: Dict[str, Dict[str, Any]], out_dir: Path, title: str,
                 summary: Optional[Mapping[str, Any]] = None, left_out: Optional[Mapping[str, str]] = None) -> List[Path]:
    """Write report.md, report.png and TensorBoard events; return the paths.

    Args:
        metrics (Dict[str, dict]): the ``metrics.json`` entries of one lineage
            (``reporting.lineage.split_lineage``); every figure is computed from them alone.
        out_dir (Path): the run's output directory.
        title (str): heading (the run name).
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content: with ≥ 2 seeds the
            picture shows the mean AUCs and the KD gain with its interval.
        left_out (Optional[Mapping[str, str]]): the models of other lineages and why: named
            first in report.md and under the picture, drawn nowhere.

    Returns:
        List[Path]: report.md, report.png (and report_tasks.png: several tasks), the TensorBoard directory.
    """
    paths = [write_markdown(metrics, out_dir, title, left_out)]
    plot = write_plot(metrics, out_dir, summary=summary, title=title, left_out=left_out)
    if plot:
        paths.append(plot)
    tasks_plot = write_task_plot(metrics, out_dir, summary=summary, title=title, left_out=left_out)
    if tasks_plot:
        paths.append(tasks_plot)
    paths.append(write_tensorboard(metrics, out_dir))
    return paths
