"""The run's report: ``report.md`` (a table and what KD bought), ``report.png``, TensorBoard scalars.

Everything is read from ``metrics.json``, so a report can be rebuilt at any time::

    python -m torchrec_kd.cli report --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_PNG = "report.png"
TENSORBOARD_DIR = "tensorboard"
ORDER = ("teacher", "student", "distilled", "distilled_fp16", "distilled_int8", "distilled_int4", "distilled_int2",
         "student_int8", "student_int4")
COLUMNS = (("auc", "AUC"), ("ne", "NE"), ("logloss", "log loss"), ("embedding_bytes", "embedding bytes"),
           ("params", "params"), ("latency_ms_b1", "latency b=1 (ms)"), ("latency_ms_b1024", "latency b=1024 (ms)"),
           ("train_samples_per_s", "train samples/s"))


def _ordered(metrics: Dict[str, Dict[str, Any]]) -> List[str]:
    known = [m for m in ORDER if m in metrics]
    return known + sorted(m for m in metrics if m not in known)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key in ("auc", "ne", "logloss"):
        return f"{value:.4f}"
    if key.startswith("latency"):
        return f"{value:.3f}"
    return f"{value:,.0f}"


def kd_summary(metrics: Dict[str, Dict[str, Any]]) -> str:
    """What distillation and quantization bought, from the numbers, honestly qualified.

    The first sentence is the distilled − student-alone difference (on one run: no
    interval, said so); then which step each model was kept at, a warning when the
    teacher is not better than the student alone, and what quantization cost.
    """
    from torchrec_kd.summary import budget_warning, comparable, consistency_notes, gain_sentence, summarize, teacher_warning

    parts = []
    if {"student", "distilled"} <= metrics.keys():
        parts.append(gain_sentence(summarize({0: metrics})))
        s, d = metrics["student"], metrics["distilled"]
        if comparable(metrics):
            parts.append(f"Test AUC {s['auc']:.4f} alone ({_kept(s)}) and {d['auc']:.4f} distilled ({_kept(d)}), "
                         "with the same data and maximum budget.")
    parts += consistency_notes(metrics)
    for warning in (teacher_warning(metrics), budget_warning(metrics)):
        if warning:
            parts.append(warning)
    quant = [m for m in ("distilled_int4", "distilled_int8") if m in metrics]
    if quant and "teacher" in metrics and "distilled" in metrics:
        q = quant[0]
        ratio = metrics["teacher"]["embedding_bytes"] / max(1, metrics[q]["embedding_bytes"])
        parts.append(f"Its {q.split('_')[1]} tables hold {metrics[q]['embedding_bytes']:,} bytes, {ratio:.0f}x less than "
                     f"the teacher's, for {metrics[q]['auc'] - metrics['distilled']['auc']:+.4f} AUC against fp32.")
    return " ".join(parts) if parts else "Not enough models in metrics.json yet to compare."


def _kept(entry: Dict[str, Any]) -> str:
    """'best at step 1200 of 1500 trained, stopped early; max 3000' for a metrics entry."""
    best, steps, cap = entry.get("best_step"), entry.get("steps"), entry.get("max_steps")
    if best is None:
        return f"{steps} steps"
    return f"best at step {best} of {steps} trained{', stopped early' if entry.get('stopped_early') else ''}; max {cap}"


def write_markdown(metrics: Dict[str, Dict[str, Any]], out_dir: Path, title: str) -> Path:
    """``report.md``: the comparison table and the summary sentence.

    Args:
        metrics (Dict[str, dict]): ``metrics.json`` content.
        out_dir (Path): the run's output directory.
        title (str): heading (the run name).

    Returns:
        Path: the file written.
    """
    lines = [f"# {title}", "", kd_summary(metrics), "",
             "| model | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for name in _ordered(metrics):
        lines.append(f"| {name} | " + " | ".join(_cell(k, metrics[name].get(k)) for k, _ in COLUMNS) + " |")
    lines += ["", "AUC, NE (normalized entropy) and log loss on the test split (TorchRec RecMetrics); "
              "latency: median single-thread CPU forward of the unsharded model; embedding bytes: table storage "
              "(quantized: fbgemm rows incl. scale/bias).", "", f"![AUC against model bytes and training curves]({REPORT_PNG})", ""]
    path = Path(out_dir) / REPORT_MD
    path.write_text("\n".join(lines))
    return path


def write_plot(metrics: Dict[str, Dict[str, Any]], out_dir: Path) -> Optional[Path]:
    """``report.png``: AUC against embedding bytes, and the training loss curves.

    Args:
        metrics (Dict[str, dict]): ``metrics.json`` content.
        out_dir (Path): the run's output directory.

    Returns:
        Optional[Path]: the file written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training hosts
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in _ordered(metrics):
        m = metrics[name]
        if m.get("auc") is None or not m.get("embedding_bytes"):
            continue
        ax1.scatter(m["embedding_bytes"], m["auc"], s=40)
        ax1.annotate(name, (m["embedding_bytes"], m["auc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("embedding bytes (log)")
    ax1.set_ylabel("test AUC")
    ax1.set_title("AUC against model size")
    ax1.grid(True, alpha=0.3)
    for name in _ordered(metrics):
        curve = metrics[name].get("loss_curve")
        if curve:
            steps, losses = zip(*curve)
            ax2.plot(steps, losses, marker=".", label=name)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss")
    ax2.set_title("training curves (the distilled loss mixes KD terms)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / REPORT_PNG
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return root


def write_report(metrics: Dict[str, Dict[str, Any]], out_dir: Path, title: str) -> List[Path]:
    """Write report.md, report.png and TensorBoard events; return the paths."""
    paths = [write_markdown(metrics, out_dir, title)]
    plot = write_plot(metrics, out_dir)
    if plot:
        paths.append(plot)
    paths.append(write_tensorboard(metrics, out_dir))
    return paths
