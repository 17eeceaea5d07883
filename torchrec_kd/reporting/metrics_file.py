"""``metrics.json`` (one entry per model) and a table a person can read (and one per task of a multi-task run)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

from torchrec_kd.core.layout import METRICS_FILE
from torchrec_kd.errors import CheckpointError

FIELDS = ("auc", "ne", "logloss", "params", "embedding_bytes", "train_samples_per_s")
# a multi-task entry's ``tasks``: the columns of a binary and of a regression task's table
TASK_FIELDS = {"binary": ("auc", "ne", "logloss", "calibration", "rows"), "regression": ("mse", "rows")}


def read_metrics(path: Path) -> Dict[str, Dict[str, Any]]:
    """A ``metrics.json``'s content ({} when the file does not exist).

    Args:
        path (Path): the file.

    Returns:
        Dict[str, dict]: one entry per model.

    Raises:
        CheckpointError: the file is damaged (not JSON, e.g. truncated, or not a mapping of entries).
    """
    path = Path(path)
    if not path.is_file():
        return {}
    fix = "restore it from a copy, or delete it and run experiment again (its steps re-run)"
    try:
        data = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is damaged (not valid JSON: {e}); {fix}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CheckpointError(f"{path} is damaged (not a mapping of model entries); {fix}")
    return data


def update_metrics(out_dir: Path, model_name: str, entry: Dict[str, Any]) -> Dict[str, Any]:
    """Merge ``entry`` under ``model_name`` into ``out_dir/metrics.json`` atomically.

    Args:
        out_dir (Path): the run's output directory.
        model_name (str): top-level key (``teacher``, ``student``, ``distilled``…).
        entry (Dict[str, Any]): its numbers.

    Returns:
        Dict[str, Any]: the whole file's content after the merge.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    f = out_dir / METRICS_FILE
    data = read_metrics(f)
    data[model_name] = entry
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".metrics.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, f)
    return data


def read_entry(out_dir: Path, model_name: str) -> Dict[str, Any]:
    """One model's entry of ``metrics.json`` (empty when the file or the entry is missing).

    Args:
        out_dir (Path): the run's output directory.
        model_name (str): e.g. ``distilled``.

    Returns:
        Dict[str, Any]: the entry.
    """
    return read_metrics(Path(out_dir) / METRICS_FILE).get(model_name, {})


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def _table(data: Dict[str, Dict[str, Any]], fields: Tuple[str, ...]) -> List[str]:
    head = "| model | " + " | ".join(fields) + " |"
    sep = "|---" * (len(fields) + 1) + "|"
    return [head, sep, *(f"| {name} | " + " | ".join(_fmt(e.get(k)) for k in fields) + " |" for name, e in data.items())]


def metrics_table(data: Dict[str, Dict[str, Any]]) -> str:
    """A markdown table: one row per model, the standard fields as columns; a multi-task run's entries
    add a table per task (its AUC / NE / log loss / calibration / rows, or MSE / rows), headed by the task."""
    lines = _table(data, FIELDS)
    tasks: List[str] = []
    for entry in data.values():
        tasks += [t for t in (entry.get("tasks") or {}) if t not in tasks]
    for task in tasks:
        per = {name: e["tasks"][task] for name, e in data.items() if task in (e.get("tasks") or {})}
        kind = "regression" if any("mse" in m and "auc" not in m for m in per.values()) else "binary"
        lines += ["", f"task {task} ({kind}{': lower MSE is better' if kind == 'regression' else ''}):",
                  *_table(per, TASK_FIELDS[kind])]
    return "\n".join(lines)
