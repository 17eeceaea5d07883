"""``report.png``: the run's comparison, read at a glance.

Up to three panels, one colour per model in all of them:

* test AUC against embedding bytes (log axis, KB/MB ticks), the Pareto front as a step
  line, points beaten by a smaller-or-equal model hollow, labels placed clear of each
  other and of the points (with a multi-seed summary: mean ± std over seeds);
* validation AUC against training step of every trained model, a star at the kept
  checkpoint (``best_step``); training loss instead for a metrics.json without
  validation curves;
* with a summary of ≥ 2 seeds: distilled − student alone test AUC with its 95% interval
  and the per-seed differences (teacher − student alone beside it, for scale).

A multi-task run also gets ``report_tasks.png`` (:func:`draw_task_report`): one panel per task,
each model's test metric of that task (AUC; MSE, lower is better, for a regression task) with
the seeds' spread, and the KD gain on that task in the panel's title.

The helpers ``finite``, ``pareto_front``, ``format_bytes``, ``place_labels`` and
``model_colours`` are pure (no matplotlib), so they are tested on hand-made inputs.

Example::

    draw_report(metrics, ["teacher", "student", "distilled"], Path("report.png"), summary=summary)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torchrec_kd.reporting.summary import signed

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels (y up)

FIGSIZE = (14.0, 5.0)
DPI = 110
LABEL_FONT = 8.5
RC = {"font.size": 9.5, "axes.titlesize": 10.5, "axes.labelsize": 9.5, "xtick.labelsize": 9,
      "ytick.labelsize": 9, "legend.fontsize": 8.5, "figure.titlesize": 12}
BASE_COLOURS = {"teacher": "#6a3d9a", "student": "#e66101", "distilled": "#1b9e77", "distilled_qat": "#1f78b4"}
# a quantized model is a shade of the model it came from: <0 darker, >0 lighter
SUFFIX_SHADE = {"fp16": -0.2, "int8": -0.45, "int4": 0.4, "int2": 0.65}
OTHER_COLOURS = ("#d62728", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GAIN_COLOUR, GAP_COLOUR = BASE_COLOURS["distilled"], "#888888"
# label candidates: 8 directions around the point, at growing distances (pixels)
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))
GAPS = (7.0, 16.0, 28.0, 44.0, 64.0, 90.0, 120.0)
LEADER_MIN_PX = 14.0  # labels farther than this from their point get a thin leader line


# ---------------------------------------------------------------- pure helpers


def finite(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite real number, else None (None, NaN, inf, strings, bools).

    Args:
        value (Any): a metrics.json value.

    Returns:
        Optional[float]: the number, or None.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pareto_front(points: Mapping[str, Tuple[Any, Any]]) -> List[str]:
    """The models not beaten by a smaller-or-equal model with a higher AUC, smallest first.

    Points with missing, non-finite or non-positive bytes, or a missing/NaN AUC, are ignored.
    Two models of equal bytes and AUC are both on the front.

    Args:
        points (Mapping[str, Tuple[bytes, auc]]): each model's embedding bytes and AUC.

    Returns:
        List[str]: the front's names, by increasing bytes.
    """
    valid = {n: (finite(b), finite(a)) for n, (b, a) in points.items()}
    valid = {n: (b, a) for n, (b, a) in valid.items() if b is not None and b > 0 and a is not None}
    front = [n for n, (b, a) in valid.items() if not any(b2 <= b and a2 > a for b2, a2 in valid.values())]
    return sorted(front, key=lambda n: (valid[n][0], -valid[n][1], n))


def format_bytes(n: float) -> str:
    """A byte count as ``"512 B"``, ``"125 KB"``, ``"2.66 MB"``.

    Decimal units (1 KB = 1000 bytes), so a log axis' 1-2-5 ticks read as round numbers.

    Args:
        n (float): bytes.

    Returns:
        str: at most three significant digits and a unit.
    """
    value = finite(n)
    if value is None:
        return "?"
    units = ("B", "KB", "MB", "GB", "TB")
    for i, unit in enumerate(units):
        text = f"{value / 1000 ** i:.3g}"
        if abs(float(text)) < 1000 or i == len(units) - 1:
            return f"{text} {unit}"
    return f"{value:.3g} B"  # unreachable: the loop returns at the last unit


def _overlap(a: Box, b: Box) -> float:
    """Area shared by two boxes."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _candidate(anchor: Tuple[float, float], size: Tuple[float, float], direction: Tuple[int, int], gap: float) -> Box:
    """The label box ``gap`` pixels from ``anchor`` in ``direction`` (centred on the other axis)."""
    (ax, ay), (w, h), (dx, dy) = anchor, size, direction
    if dx and dy:  # diagonals: the corner, not the box centre, sits at the gap
        gap *= 0.7
    x0 = ax + gap if dx > 0 else ax - gap - w if dx < 0 else ax - w / 2
    y0 = ay + gap if dy > 0 else ay - gap - h if dy < 0 else ay - h / 2
    return (x0, y0, x0 + w, y0 + h)


def place_labels(anchors: Sequence[Tuple[float, float]], sizes: Sequence[Tuple[float, float]], bounds: Box,
                 obstacles: Sequence[Box] = ()) -> List[Box]:
    """Greedy label placement: each label at the nearest spot clear of the others, the obstacles and the edges.

    Labels are placed in the given order; each tries 8 directions at growing distances and takes
    the first box that overlaps nothing placed so far, no obstacle, and stays inside ``bounds``.
    When none is clear it takes the candidate with the least overlap (so it never fails).

    Args:
        anchors (Sequence[Tuple[float, float]]): each label's point, display pixels.
        sizes (Sequence[Tuple[float, float]]): each label's (width, height), pixels.
        bounds (Box): the area labels must stay in (the axes).
        obstacles (Sequence[Box]): boxes to keep clear of (the markers).

    Returns:
        List[Box]: one box per label, in input order.
    """
    placed: List[Box] = []
    for anchor, size in zip(anchors, sizes):
        best: Optional[Box] = None
        best_cost = math.inf
        for gap in GAPS:
            for direction in DIRECTIONS:
                box = _candidate(anchor, size, direction, gap)
                outside = size[0] * size[1] - _overlap(box, bounds)
                cost = outside * 4 + sum(_overlap(box, o) for o in list(obstacles) + placed)
                if cost < best_cost - 1e-9:
                    best, best_cost = box, cost
                if cost <= 1e-9:
                    break
            if best_cost <= 1e-9:
                break
        placed.append(best)  # type: ignore[arg-type]  # GAPS and DIRECTIONS are not empty
    return placed


def _shade(colour: str, amount: float) -> str:
    """``colour`` (``#rrggbb``) mixed toward white (amount > 0) or black (amount < 0)."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    target = 255 if amount > 0 else 0
    mixed = [round(c + (target - c) * abs(amount)) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in mixed)


def model_colours(names: Sequence[str]) -> Dict[str, str]:
    """One colour per model, the same in every panel and every run.

    Known models have fixed colours; a quantized variant (``distilled_int4``) is a shade of its
    source's; any other model takes the next colour of a fallback palette.

    Args:
        names (Sequence[str]): the models, in report order.

    Returns:
        Dict[str, str]: ``#rrggbb`` per name.
    """
    colours: Dict[str, str] = {}
    others = 0
    for name in names:
        base, _, suffix = name.rpartition("_")
        if name in BASE_COLOURS:
            colours[name] = BASE_COLOURS[name]
        elif base in BASE_COLOURS and suffix in SUFFIX_SHADE:
            colours[name] = _shade(BASE_COLOURS[base], SUFFIX_SHADE[suffix])
        else:
            colours[name] = OTHER_COLOURS[others % len(OTHER_COLOURS)]
            others += 1
    return colours


def _multi_seed(summary: Optional[Mapping[str, Any]]) -> bool:
    return bool(summary) and len(summary.get("seeds") or []) >= 2  # type: ignore[union-attr]


def size_points(metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str],
                summary: Optional[Mapping[str, Any]] = None) -> Dict[str, Tuple[float, float, Optional[float]]]:
    """Each plottable model's (embedding bytes, AUC, AUC std or None), in ``names`` order.

    With a multi-seed summary the AUC is the mean over seeds and the std their spread (a model
    missing from the summary keeps this run's AUC); models without finite bytes > 0 and AUC are left out.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json`` (gives the bytes).
        names (Sequence[str]): the models to consider, in order.
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content.

    Returns:
        Dict[str, Tuple[float, float, Optional[float]]]: the points.
    """
    means = ((summary or {}).get("models") or {}) if _multi_seed(summary) else {}
    points = {}
    for name in names:
        entry = metrics.get(name) or {}
        size = finite(entry.get("embedding_bytes"))
        auc, std = finite(entry.get("auc")), None
        if name in means:
            auc, std = finite(means[name].get("auc_mean")), finite(means[name].get("auc_std"))
        if size is not None and size > 0 and auc is not None:
            points[name] = (size, auc, std)
    return points


def curve(entry: Mapping[str, Any], key: str = "val_curve") -> List[Tuple[float, float]]:
    """A model's finite (step, value) pairs: validation AUC from ``val_curve``, or ``loss_curve`` pairs.

    Args:
        entry (Mapping[str, Any]): one model's metrics.
        key (str): ``"val_curve"`` (dicts with ``step`` and ``auc``) or ``"loss_curve"`` ([step, loss]).

    Returns:
        List[Tuple[float, float]]: sorted by step; empty when there is none.
    """
    pairs = []
    for point in entry.get(key) or []:
        if key == "val_curve" and isinstance(point, Mapping):
            step, value = finite(point.get("step")), finite(point.get("auc"))
        elif key != "val_curve" and isinstance(point, (list, tuple)) and len(point) >= 2:
            step, value = finite(point[0]), finite(point[1])
        else:
            continue
        if step is not None and value is not None:
            pairs.append((step, value))
    return sorted(pairs)


# ---------------------------------------------------------------- drawing


@dataclass
class _Label:
    """A point label waiting for the final layout before it is placed."""

    ax: Any
    x: float
    y: float
    text: str
    colour: str
    std: Optional[float] = None  # its error bar is an obstacle too


def _message(ax: Any, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9.5, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _bytes_axis(ax: Any, lo: float, hi: float) -> None:
    """Log x axis from ``lo`` to ``hi`` bytes with KB/MB labels, few enough ticks not to collide."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    decades = math.log10(hi / lo)
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=9))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _draw_size_panel(ax: Any, points: Dict[str, Tuple[float, float, Optional[float]]], colours: Dict[str, str],
                     n_seeds: int) -> Tuple[List[_Label], List[Tuple[float, float]]]:
    """AUC against bytes, the Pareto front, hollow dominated points; returns the labels to place and the
    front's step line (its corners, data coordinates), which labels keep clear of."""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_title("test AUC against embedding size" + (f" (mean ± std, {n_seeds} seeds)" if n_seeds > 1 else "")
                 + "\ngrey line: Pareto front · hollow: beaten by a model no larger")
    ax.set_xlabel("embedding bytes (log scale)")
    ax.set_ylabel("test AUC")
    ax.grid(True, which="major", alpha=0.3)
    if not points:
        _message(ax, "no model with both test AUC and embedding bytes yet")
        return [], []
    front = pareto_front({n: (b, a) for n, (b, a, _) in points.items()})
    sizes = [b for b, _, _ in points.values()]
    lows = [a - (s or 0) for _, a, s in points.values()]
    highs = [a + (s or 0) for _, a, s in points.values()]
    lo, hi = min(sizes) / 2.2, max(sizes) * 2.2  # room for labels left and right of the extremes
    _bytes_axis(ax, lo, hi)
    span = max(max(highs) - min(lows), 0.004)
    ax.set_ylim(min(lows) - 0.22 * span, max(highs) + 0.22 * span)
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.4f" if span < 0.006 else "%.3f"))
    xs = [points[n][0] for n in front] + [hi]
    ys = [points[n][1] for n in front] + [points[front[-1]][1]]
    ax.step(xs, ys, where="post", color="0.6", lw=1.6, zorder=1)
    labels = []
    for name, (size, auc, std) in points.items():
        colour = colours[name]
        on_front = name in front
        if std:
            ax.errorbar(size, auc, yerr=std, color=colour, lw=1.2, capsize=3, zorder=2)
        ax.scatter([size], [auc], s=64, marker="D" if "_" in name else "o", zorder=3, linewidths=1.8,
                   facecolors=colour if on_front else "white", edgecolors=colour)
        labels.append(_Label(ax, size, auc, f"{name}  {auc:.4f}", colour, std))
    corners = [c for x0, y0, x1 in zip(xs, ys, xs[1:]) for c in ((x0, y0), (x1, y0))] + [(xs[-1], ys[-1])]
    return labels, corners


def _line_boxes(ax: Any, corners: Sequence[Tuple[float, float]], width: float) -> List[Box]:
    """Thin pixel boxes covering a polyline of axis-parallel segments (the Pareto step line)."""
    pixels = [tuple(ax.transData.transform(c)) for c in corners]
    return [(min(x0, x1) - width, min(y0, y1) - width, max(x0, x1) + width, max(y0, y1) + width)
            for (x0, y0), (x1, y1) in zip(pixels, pixels[1:])]


def _place_point_labels(fig: Any, labels: List[_Label], corners: Sequence[Tuple[float, float]] = ()) -> None:
    """Put each label where it overlaps no other label, no marker, error bar or the front's line (the layout is
    final by now)."""
    if not labels:
        return
    renderer = fig.canvas.get_renderer()
    pad_pt = 0.2 * LABEL_FONT  # the label's white box padding (boxstyle pad is in font sizes)
    pad_px = pad_pt * fig.dpi / 72
    anchors, text_sizes = [], []
    for label in labels:
        probe = label.ax.text(label.x, label.y, label.text, fontsize=LABEL_FONT)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        text_sizes.append((extent.width, extent.height))
        anchors.append(tuple(label.ax.transData.transform((label.x, label.y))))
    marker_r = 7.0 * fig.dpi / 72  # a little more than the marker's radius
    obstacles = [(x - marker_r, y - marker_r, x + marker_r, y + marker_r) for x, y in anchors]
    cap = 4.0 * fig.dpi / 72
    for label, (x, _) in zip(labels, anchors):
        if label.std:
            low, high = (label.ax.transData.transform((label.x, label.y + d))[1] for d in (-label.std, label.std))
            obstacles.append((x - cap, low, x + cap, high))
    obstacles += _line_boxes(labels[0].ax, corners, 1.5 * fig.dpi / 72)
    frame = labels[0].ax.get_window_extent(renderer)
    bounds = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    boxes = place_labels(anchors, [(w + 2 * pad_px, h + 2 * pad_px) for w, h in text_sizes], bounds, obstacles)
    for label, (ax_px, ay_px), box in zip(labels, anchors, boxes):
        nearest_x = min(max(ax_px, box[0]), box[2])
        nearest_y = min(max(ay_px, box[1]), box[3])
        far = math.hypot(nearest_x - ax_px, nearest_y - ay_px) > LEADER_MIN_PX
        to_pt = 72 / fig.dpi
        label.ax.annotate(
            label.text, (label.x, label.y), xytext=((box[0] + pad_px - ax_px) * to_pt, (box[1] + pad_px - ay_px) * to_pt),
            textcoords="offset points", ha="left", va="bottom", fontsize=LABEL_FONT, color="0.1", zorder=4,
            bbox={"boxstyle": f"round,pad={pad_pt / LABEL_FONT:.2f}", "fc": "white", "ec": label.colour, "lw": 0.8,
                  "alpha": 0.9},
            arrowprops={"arrowstyle": "-", "color": label.colour, "lw": 0.8, "shrinkA": 0, "shrinkB": 4} if far else None)


def _best_point(points: List[Tuple[float, float]], best_step: Any) -> Optional[Tuple[float, float]]:
    """The curve point of ``best_step`` (the nearest step when it was not recorded), or None."""
    step = finite(best_step)
    if step is None or not points:
        return None
    return min(points, key=lambda p: abs(p[0] - step))


def _draw_curves_panel(ax: Any, metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str],
                       colours: Dict[str, str], label: Optional[str]) -> None:
    """Validation AUC per trained model with a star at the kept step; training loss when no model has one."""
    from matplotlib.lines import Line2D

    suffix = f" ({label})" if label else ""
    curves = {n: curve(metrics.get(n) or {}) for n in names}
    curves = {n: c for n, c in curves.items() if c}
    ax.set_xlabel("training step")
    ax.grid(True, alpha=0.3)
    if not curves:  # an older metrics.json: training loss is all there is
        losses = {n: curve(metrics.get(n) or {}, "loss_curve") for n in names}
        losses = {n: c for n, c in losses.items() if c}
        if not losses:
            ax.set_title("validation AUC during training" + suffix)
            _message(ax, "no validation or training curves in metrics.json")
            return
        ax.set_title("training loss (no validation curves recorded)" + suffix
                     + "\nthe distilled loss includes its KD terms")
        for name, points in losses.items():
            ax.plot(*zip(*points), color=colours[name], lw=1.8, marker="o", ms=3, label=name)
        ax.set_ylabel("training loss")
        ax.legend(loc="upper right", framealpha=0.9)
        return
    ax.set_title("validation AUC during training" + suffix + "\n★ = kept checkpoint (best validation step)")
    ax.set_ylabel("validation AUC")
    handles = []
    for name, points in curves.items():
        colour = colours[name]
        (line,) = ax.plot(*zip(*points), color=colour, lw=1.8, marker="o", ms=3, label=name)
        handles.append(line)
        best = _best_point(points, (metrics.get(name) or {}).get("best_step"))
        if best:
            ax.plot([best[0]], [best[1]], marker="*", ms=15, color=colour, mec="black", mew=0.8, ls="none", zorder=5)
    handles.append(Line2D([], [], marker="*", ms=12, color="0.5", mec="black", mew=0.8, ls="none",
                          label="kept checkpoint"))
    ax.margins(x=0.05)  # a star at the last step is drawn whole, not cut by the frame
    ax.legend(handles=handles, loc="best", framealpha=0.9)  # where it hides the fewest curve points


def _decimals(ticks: Sequence[float]) -> int:
    """The decimals that show each of evenly spaced ``ticks`` exactly (their spacing's)."""
    ticks = sorted(ticks)
    step = min((b - a for a, b in zip(ticks, ticks[1:]) if b > a), default=1.0)
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _draw_gain_panel(ax: Any, summary: Mapping[str, Any]) -> None:
    """Distilled − student alone test AUC: mean, 95% interval, per-seed dots; teacher − student beside it."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    n = len(summary.get("seeds") or [])
    gain = summary.get("kd_gain")
    if not gain or finite(gain.get("auc_mean")) is None:
        ax.set_title(f"KD gain ({n} seeds)")
        _message(ax, "no comparison:\nthe student alone and the\ndistilled student are needed,\ntrained alike")
        return
    verdict = "significant" if gain.get("significant") else "not significant"
    ax.set_title(f"KD gain: {verdict}\nmean, 95% CI ({n} seeds)\ndots: each seed")
    items = [("distilled −\nstudent alone", gain, GAIN_COLOUR)]
    if summary.get("teacher_gap") and finite(summary["teacher_gap"].get("auc_mean")) is not None:
        items.append(("teacher −\nstudent alone", summary["teacher_gap"], GAP_COLOUR))
    values = [0.0]
    for i, (_, diff, colour) in enumerate(items):
        mean = finite(diff["auc_mean"])
        ci = diff.get("auc_ci95")
        ci = [finite(v) for v in ci] if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None]
        yerr = [[mean - ci[0]], [ci[1] - mean]] if None not in ci else None
        ax.errorbar([i], [mean], yerr=yerr, fmt="o", color=colour, ms=8, capsize=7, lw=2, zorder=3)
        ax.annotate(signed(mean), (i, mean), xytext=(-9, 0), textcoords="offset points", ha="right",
                    va="center", fontsize=LABEL_FONT)
        seeds = [v for v in (finite(d) for d in diff.get("per_seed") or []) if v is not None]
        offsets = [0.22 + 0.05 * (j - (len(seeds) - 1) / 2) for j in range(len(seeds))]  # side by side, not stacked
        ax.scatter([i + o for o in offsets], seeds, s=22, color=colour, alpha=0.7, edgecolors="none", zorder=2)
        values += [mean] + seeds + [v for v in ci if v is not None]
    ax.axhline(0.0, color="0.3", ls="--", lw=1, zorder=1)
    span = max(max(values) - min(values), 1e-3)
    ax.set_ylim(min(values) - 0.12 * span, max(values) + 0.12 * span)
    ax.set_xlim(-0.75, len(items) - 0.35)
    ax.set_xticks(range(len(items)), [label for label, _, _ in items])
    # round steps (1, 2, 5 × 10^k) so three decimals show every tick exactly, and no "-0.000"
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: signed(v, max(3, _decimals(ax.get_yticks())))))
    ax.set_ylabel("test AUC difference")
    ax.grid(True, axis="y", alpha=0.3)


def build_figure(metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str],
                 summary: Optional[Mapping[str, Any]] = None, title: Optional[str] = None,
                 curves_label: Optional[str] = None, left_out: Sequence[str] = ()) -> Any:
    """The report figure: AUC against bytes, validation curves and (≥ 2 seeds) the KD gain panel.

    Call it inside ``matplotlib.rc_context(RC)`` (``draw_report`` does) for the report's font sizes.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json`` (bytes, curves; AUC without summary).
        names (Sequence[str]): the models in report order (it fixes colours and label order).
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content; with ≥ 2 seeds the AUCs
            are the seeds' means and the KD gain panel is drawn.
        title (Optional[str]): the figure's heading (the run name).
        curves_label (Optional[str]): which run the curves come from (e.g. ``"seed 0"``).
        left_out (Sequence[str]): models of another lineage, drawn nowhere and named under the panels.

    Returns:
        matplotlib.figure.Figure: laid out, labels placed, on an Agg canvas.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    multi = _multi_seed(summary)
    names = list(names) + [n for n in metrics if n not in names]
    colours = model_colours(names)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no display needed, no global figure state
    axes = fig.subplots(1, 3 if multi else 2, gridspec_kw={"width_ratios": [1.3, 1.25, 0.7] if multi else [1, 1]})
    n_seeds = len(summary["seeds"]) if multi else 1  # type: ignore[index]
    labels, corners = _draw_size_panel(axes[0], size_points(metrics, names, summary), colours, n_seeds)
    _draw_curves_panel(axes[1], metrics, names, colours, curves_label)
    if multi:
        _draw_gain_panel(axes[2], summary)  # type: ignore[arg-type]
    if title:
        fig.suptitle(title, fontweight="bold")
    if left_out:  # said in the picture too, so a copied PNG does not pass for the whole directory
        fig.supxlabel("not drawn (another lineage, see report.md): " + ", ".join(left_out), fontsize=LABEL_FONT,
                      color="0.35", x=0.01, ha="left")
    fig.canvas.draw()  # run the layout once, then freeze it: labels are placed in final pixels
    fig.set_layout_engine("none")
    _place_point_labels(fig, labels, corners)
    return fig


def draw_report(metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str], path: Path,
                summary: Optional[Mapping[str, Any]] = None, title: Optional[str] = None,
                curves_label: Optional[str] = None, left_out: Sequence[str] = ()) -> Path:
    """Write ``report.png`` (``build_figure``, at the report's font sizes and ``DPI``).

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.
        names (Sequence[str]): the models in report order.
        path (Path): the PNG to write.
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content, if any.
        title (Optional[str]): the figure's heading.
        curves_label (Optional[str]): which run the curves come from.
        left_out (Sequence[str]): models of another lineage (not drawn; named under the panels).

    Returns:
        Path: ``path``.
    """
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = build_figure(metrics, names, summary=summary, title=title, curves_label=curves_label, left_out=left_out)
        fig.savefig(path, dpi=DPI)
    return Path(path)


# ---------------------------------------------------------------- one panel per task


def task_points(metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str], task: str,
                summary: Optional[Mapping[str, Any]] = None) -> Tuple[str, Dict[str, Tuple[float, Optional[float]]]]:
    """One task's metric per model: ``("auc" | "mse", {model: (value, std or None)})`` in ``names`` order.

    With a multi-seed summary the value is the seeds' mean and the std their spread.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json``.
        names (Sequence[str]): the models, in report order.
        task (str): the task.
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content.

    Returns:
        Tuple[str, Dict[str, Tuple[float, Optional[float]]]]: the metric and the points.
    """
    per = {n: ((metrics.get(n) or {}).get("tasks") or {}).get(task) or {} for n in names}
    key = "mse" if any("mse" in p and "auc" not in p for p in per.values()) else "auc"
    means = ((((summary or {}).get("tasks") or {}).get(task) or {}).get("models") or {}) if _multi_seed(summary) else {}
    points: Dict[str, Tuple[float, Optional[float]]] = {}
    for name in names:
        value, std = finite(per[name].get(key)), None
        if name in means:
            value, std = finite(means[name].get(f"{key}_mean")), finite(means[name].get(f"{key}_std"))
        if value is not None:
            points[name] = (value, std)
    return key, points


def task_gain_text(metrics: Mapping[str, Mapping[str, Any]], task: str, key: str,
                   summary: Optional[Mapping[str, Any]] = None) -> str:
    """The panel's second title line: distilled − student alone on the task, with its interval when there is one."""
    gain = ((((summary or {}).get("tasks") or {}).get(task) or {}).get("kd_gain")) if _multi_seed(summary) else None
    if gain and finite(gain.get(f"{key}_mean")) is not None:
        ci = gain.get(f"{key}_ci95")
        verdict = "significant" if gain.get("significant") else "not significant"
        span = f", 95% CI [{signed(ci[0])}, {signed(ci[1])}]" if ci else ""
        return f"KD gain {signed(gain[f'{key}_mean'])}{span}: {verdict}"
    d, s = (((metrics.get(n) or {}).get("tasks") or {}).get(task) or {} for n in ("distilled", "student"))
    if finite(d.get(key)) is None or finite(s.get(key)) is None:
        return "no KD comparison (student alone and distilled needed)"
    return f"distilled − student alone {signed(d[key] - s[key])} (one seed: no interval)"


def _draw_task_panel(ax: Any, task: str, key: str, points: Dict[str, Tuple[float, Optional[float]]],
                     colours: Dict[str, str], gain: str, n_seeds: int) -> None:
    """One task: a dot (± std) per model on a shared horizontal axis, its value beside it, the KD gain in the title."""
    what = "test AUC" if key == "auc" else "test MSE (lower is better)"
    ax.set_title(f"{task}: {what}" + (f", mean ± std of {n_seeds} seeds" if n_seeds > 1 else "") + f"\n{gain}")
    if not points:
        _message(ax, f"no model reports {task} yet")
        return
    names = list(points)
    ys = list(range(len(names)))[::-1]  # the first model on top
    values = [points[n][0] for n in names]
    for y, name in zip(ys, names):
        value, std = points[name]
        ax.errorbar([value], [y], xerr=std if std else None, fmt="D" if "_" in name else "o", color=colours[name], ms=8,
                    capsize=4, lw=1.5)
        ax.annotate(f"{value:.4f}", (value, y), xytext=(0, 9), textcoords="offset points", ha="center",
                    fontsize=LABEL_FONT, color="0.15")
    lows = [v - (points[n][1] or 0) for n, v in zip(names, values)]
    highs = [v + (points[n][1] or 0) for n, v in zip(names, values)]
    span = max(max(highs) - min(lows), 0.004)
    ax.set_xlim(min(lows) - 0.15 * span, max(highs) + 0.15 * span)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_yticks(ys, names)
    ax.set_xlabel(what)
    ax.grid(True, axis="x", alpha=0.3)


def draw_task_report(metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str], path: Path,
                     summary: Optional[Mapping[str, Any]] = None, title: Optional[str] = None,
                     left_out: Sequence[str] = ()) -> Optional[Path]:
    """Write ``report_tasks.png``: one panel per task of a multi-task run.

    Args:
        metrics (Mapping[str, dict]): one run's ``metrics.json`` (entries with ``tasks``).
        names (Sequence[str]): the models in report order (fixes the colours, as in ``report.png``).
        path (Path): the PNG to write.
        summary (Optional[Mapping[str, Any]]): ``summary.json`` content; with ≥ 2 seeds: means, stds and intervals.
        title (Optional[str]): the figure's heading.
        left_out (Sequence[str]): models of another lineage (not drawn; named under the panels).

    Returns:
        Optional[Path]: ``path``, or None when no entry has tasks.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(names) + [n for n in metrics if n not in names]
    tasks: List[str] = []
    for name in names:
        tasks += [t for t in ((metrics.get(name) or {}).get("tasks") or {}) if t not in tasks]
    if not tasks:
        return None
    colours = model_colours(names)
    n_seeds = len(summary["seeds"]) if _multi_seed(summary) else 1  # type: ignore[index]
    cols = min(len(tasks), 3)
    rows = math.ceil(len(tasks) / cols)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(4.8 * cols, 0.6 + 3.2 * rows), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, task in zip(axes, tasks):
            key, points = task_points(metrics, names, task, summary)
            _draw_task_panel(ax, task, key, points, colours, task_gain_text(metrics, task, key, summary), n_seeds)
        for ax in axes[len(tasks):]:
            ax.set_visible(False)
        if title:
            fig.suptitle(f"{title}: each task", fontweight="bold")
        if left_out:
            fig.supxlabel("not drawn (another lineage, see report.md): " + ", ".join(left_out), fontsize=LABEL_FONT,
                          color="0.35", x=0.01, ha="left")
        fig.savefig(path, dpi=DPI)
    return Path(path)
