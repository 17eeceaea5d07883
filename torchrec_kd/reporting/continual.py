"""What a continual run measured, per window: metrics from per-row scores, the gain, the table, the figure.

``continual.json`` (the contract) holds one entry per scored window: each model's AUC / NE /
rows overall and on the cold-start slices (test rows whose user or item is new, rare, or
neither), the wall seconds of each model's update, and the export's and delta's bytes. From
those, :func:`gain_and_cost` states the paired distilled − student-alone AUC difference over
the scored windows (and seeds) with its 95% interval, and the mean scratch / distilled update
time. :func:`continual_markdown` and :func:`write_continual_plot` draw the same numbers.

Example::

    entry = model_metrics(logits, labels, slices)          # {"auc", "ne", "rows", "slices": {...}}
    doc = {"windows": windows, **gain_and_cost(windows)}
    Path("continual.md").write_text(continual_markdown(doc))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from torchrec_kd.reporting.summary import paired_interval, signed

# The models of a window, in the order the report shows them.
MODELS = ("teacher", "distilled", "student", "scratch")
# window_slices' codes -> slice names
SLICES = {0: "new", 1: "rare", 2: "rest"}
LABELS = {"teacher": "teacher", "distilled": "distilled (warm)", "student": "student alone (warm)",
          "scratch": "student from scratch"}
COLOURS = {"teacher": "#444444", "distilled": "#d62728", "student": "#1f77b4", "scratch": "#2ca02c"}


def auc(scores: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """ROC AUC (ties count half); None when the rows hold one class only."""
    labels = labels.astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), np.float64)
    # average ranks over ties: each run of equal scores gets the mean of its positions
    bounds = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(s)]])
    for a, b in zip(starts, ends):
        ranks[a:b] = (a + b + 1) / 2.0
    r = np.empty(len(s), np.float64)
    r[order] = ranks
    return float((r[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def ne(logits: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Normalized entropy: log loss over the entropy of the rows' positive rate (None for one class)."""
    p = float(labels.mean()) if len(labels) else 0.0
    if not 0.0 < p < 1.0:
        return None
    x = logits.astype(np.float64)
    loss = np.mean(np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x))))
    return float(loss / -(p * math.log(p) + (1 - p) * math.log(1 - p)))


def model_metrics(logits: np.ndarray, labels: np.ndarray, slices: Optional[np.ndarray]) -> Dict[str, Any]:
    """One model's entry of a window: AUC, NE, rows overall and per cold-start slice.

    Args:
        logits (np.ndarray): per test row, stored order.
        labels (np.ndarray): 0/1 per test row.
        slices (Optional[np.ndarray]): per test row, 0 new / 1 rare / 2 rest (``data.windows.window_slices``);
            None for a source without entities (Criteo): ``"slices"`` is then None.

    Returns:
        Dict[str, Any]: ``{"auc", "ne", "rows", "slices": {"new" | "rare" | "rest": {"auc", "ne", "rows"}}}``
        (a slice with one class only has AUC and NE None).
    """
    out: Dict[str, Any] = {"auc": auc(logits, labels), "ne": ne(logits, labels), "rows": int(len(labels)), "slices": {}}
    if slices is None:
        out["slices"] = None
        return out
    for code, name in SLICES.items():
        m = slices == code
        out["slices"][name] = {"auc": auc(logits[m], labels[m]), "ne": ne(logits[m], labels[m]), "rows": int(m.sum())}
    return out


def gain_and_cost(windows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """``kd_gain`` (paired distilled − student AUC over the windows, and seeds) and ``cost_ratio``.

    Args:
        windows (Sequence[Mapping]): ``continual.json``'s window entries (any seeds).

    Returns:
        Dict[str, Any]: ``{"kd_gain": {"auc_mean", "auc_ci95", "significant", "pairs"}, "cost_ratio"}``;
        ``cost_ratio`` is the mean scratch update time over the mean distilled one, over the windows
        whose distilled student was warm-started (all windows if none was), None without scratch.
    """
    diffs = [w["models"]["distilled"]["auc"] - w["models"]["student"]["auc"] for w in windows
             if (w["models"].get("distilled") or {}).get("auc") is not None
             and (w["models"].get("student") or {}).get("auc") is not None]
    mean, ci = paired_interval(diffs) if diffs else (None, None)
    gain = {"auc_mean": mean, "auc_ci95": list(ci) if ci else None,
            "significant": bool(ci is not None and (ci[0] > 0 or ci[1] < 0)), "pairs": len(diffs)}
    warm = [w for w in windows if w.get("warm_started")] or list(windows)
    pairs = [(w["update_s"].get("scratch"), w["update_s"].get("distilled")) for w in warm]
    pairs = [(s, d) for s, d in pairs if s is not None and d]
    ratio = (sum(s for s, _ in pairs) / len(pairs)) / (sum(d for _, d in pairs) / len(pairs)) if pairs else None
    return {"kd_gain": gain, "cost_ratio": ratio}


def _f(value: Optional[float], digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mb(n: Optional[int]) -> str:
    return "–" if n is None else (f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB")


def continual_markdown(doc: Mapping[str, Any], title: str = "continual") -> str:
    """``continual.md``: per window the models' AUC, their cold-start slices, update times and delta size.

    Args:
        doc (Mapping[str, Any]): ``continual.json``'s content.
        title (str): the heading (the run name).

    Returns:
        str: the Markdown.
    """
    windows = doc.get("windows") or []
    seeds = sorted({w.get("seed") for w in windows}, key=str)
    several = len(seeds) > 1
    head = "| " + ("seed | " if several else "") + "window | " + " | ".join(f"{LABELS[m]} AUC" for m in MODELS)
    lines = [f"# {title}: continual distillation", "",
             "Each window's models are trained through the window before it and scored on it before anything "
             "trains on it (progressive validation).", "", "## AUC per scored window", "",
             head + " | update s (distilled / alone / scratch) | export | delta |",
             "|" + "---|" * (len(MODELS) + 4 + several)]
    for w in windows:
        models, up = w["models"], w.get("update_s") or {}
        cells = [_f((models.get(m) or {}).get("auc")) for m in MODELS]
        times = " / ".join(_f(up.get(m), 1) for m in ("distilled", "student", "scratch"))
        lines.append("| " + (f"{w.get('seed')} | " if several else "") + f"{w['window']} | " + " | ".join(cells)
                     + f" | {times} | {_mb(w.get('export_bytes'))} | {_mb(w.get('delta_bytes'))} |")
    lines += ["", "## Cold-start slices (AUC, rows)", ""]
    if not any((e or {}).get("slices") for w in windows for e in w["models"].values()):
        lines.append("None: this source has no user / item entities (Criteo's categories are hashed values).")
    else:
        lines += ["new: the test row's user or item was never in the trained rows; rare: seen fewer than "
                  "`data.windows.rare_below` times; rest: the others.", "",
                  "| " + ("seed | " if several else "") + "window | model | new | rare | rest |",
                  "|" + "---|" * (5 + several)]
    for w in windows:
        for m in MODELS:
            entry = w["models"].get(m)
            if not entry or not entry.get("slices"):  # no slices: a source without entities (Criteo)
                continue
            cells = [f"{_f(s.get('auc'))} ({s.get('rows', 0)})" for s in (entry["slices"].get(k, {}) for k in SLICES.values())]
            lines.append("| " + (f"{w.get('seed')} | " if several else "") + f"{w['window']} | {LABELS[m]} | "
                         + " | ".join(cells) + " |")
    gain, ratio = doc.get("kd_gain") or {}, doc.get("cost_ratio")
    lines += ["", "## Summary", ""]
    if gain.get("auc_mean") is None:
        lines.append("- distilled − student alone: no scored window holds both models yet.")
    else:
        ci = gain.get("auc_ci95")
        interval = (f", 95% interval [{signed(ci[0])}, {signed(ci[1])}]" if ci else " (one pair: no interval)")
        verdict = ("significant" if gain.get("significant") else "**not significant**")
        lines.append(f"- distilled − student alone, AUC: {signed(gain['auc_mean'])} over {gain.get('pairs')} "
                     f"paired window(s){interval}: {verdict}.")
    lines.append(f"- update cost, scratch / distilled: {'–' if ratio is None else f'×{ratio:.2f}'} "
                 "(mean wall seconds of training, warm-started windows).")
    return "\n".join(lines) + "\n"


def write_continual_plot(doc: Mapping[str, Any], path: Path, title: str = "continual") -> Optional[Path]:
    """``continual.png``: AUC over the scored windows per model (left), each update's seconds (right).

    Args:
        doc (Mapping[str, Any]): ``continual.json``'s content.
        path (Path): the file to write.
        title (str): the heading.

    Returns:
        Optional[Path]: the file, or None when no window is scored yet.
    """
    windows = doc.get("windows") or []
    if not windows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    xs = sorted({w["window"] for w in windows})

    def mean_over_seeds(model: str, get: Any) -> List[Optional[float]]:
        out: List[Optional[float]] = []
        for x in xs:
            vals = [get(w) for w in windows if w["window"] == x]
            vals = [v for v in vals if v is not None]
            out.append(sum(vals) / len(vals) if vals else None)
        return out

    for m in MODELS:
        ys = mean_over_seeds(m, lambda w, m=m: (w["models"].get(m) or {}).get("auc"))
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            left.plot(*zip(*pts), marker="o", color=COLOURS[m], label=LABELS[m], lw=2 if m == "distilled" else 1.5)
    left.set_xlabel("scored window (trained through the one before)")
    left.set_ylabel("test AUC")
    left.set_title("AUC over windows")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="best")
    width = 0.8 / 3
    for i, m in enumerate(("distilled", "student", "scratch")):
        ys = mean_over_seeds(m, lambda w, m=m: (w.get("update_s") or {}).get(m))
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            right.bar([x + (i - 1) * width for x, _ in pts], [y for _, y in pts], width=width, color=COLOURS[m],
                      label=LABELS[m])
    right.set_xlabel("scored window")
    right.set_ylabel("update time, wall s")
    ratio = doc.get("cost_ratio")
    right.set_title("update cost" + ("" if ratio is None else f" (scratch / distilled ×{ratio:.1f})"))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=8, loc="best")
    gain = doc.get("kd_gain") or {}
    sub = ""
    if gain.get("auc_mean") is not None:
        ci = gain.get("auc_ci95")
        sub = (f" — distilled − alone {signed(gain['auc_mean'])}"
               + (f" [{signed(ci[0])}, {signed(ci[1])}]" if ci else "")
               + ("" if gain.get("significant") else " (not significant)"))
    fig.suptitle(f"{title}{sub}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
