"""What made an artifact: the config sections and inputs it depends on, and a digest of them.

Every checkpoint, training state, export, ``metrics.json`` entry and teacher-score cache
records the fingerprint of its step. Resuming continues only a run whose fingerprint is the
same; ``experiment`` re-runs a step (and the steps after it) when the fingerprint it would
make differs from the one its artifact records; ``report`` compares only entries trained on
the same base. Keys that cannot change a result (logging, checkpoint cadence, where files
go, the process layout) are left out, so changing them reuses what exists.

Example::

    fp = step_fingerprint(cfg, "student")
    fp["digest"], describe_change(old["inputs"], fp["inputs"])  # ["student.embedding_dim: 8 -> 4"]
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from torchrec_kd.config import RunConfig
from torchrec_kd.config.schema import DLRM_FAMILY
from torchrec_kd.core.budget import budget_spec
from torchrec_kd.core.layout import META_FILE, PLAN_FILE
from torchrec_kd.core.plugins import loaded_plugins, plugin_digests

# train keys that cannot change what a run computes (warm_start is a path: its contents enter instead)
_TRAIN_IGNORED = ("log_every", "checkpoint_every", "keep_checkpoints", "resume", "warm_start")
# distill keys naming where inputs live (their contents are fingerprinted instead)
_DISTILL_PATHS = ("teacher_checkpoint", "teachers", "teacher_scores")


def digest(inputs: Mapping[str, Any]) -> str:
    """A short sha256 of the inputs' canonical JSON."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_identity(pattern: Optional[str]) -> List[List[Any]]:
    """(path, bytes, mtime) of the files a path, folder or glob names: a cheap data identity."""
    if not pattern:
        return []
    p = Path(pattern)
    paths = sorted(p.rglob("*")) if p.is_dir() else [Path(x) for x in sorted(glob.glob(pattern))]
    out = []
    for f in paths[:10_000]:
        if f.is_file():
            st = f.stat()
            out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def data_identity(cfg: RunConfig) -> Dict[str, Any]:
    """The data section plus, for file sources, the files it reads (names, sizes, modification times).

    A window of a growing log (``data.windows.rows_digest`` set, by the ``continual`` workflow) is
    identified by the digest of the rows it reads (windows 0..index+1; Criteo: those day files)
    instead of the files, and without the keys that only say how many windows follow
    (``data.windows.count``, ``data.synthetic.drift.windows``, ``data.criteo.days``): data that
    arrives later re-runs no window that does not read it. Other runs are identified as before. A
    multi-task run's identity holds its ``tasks`` (they make the labels).

    Args:
        cfg (RunConfig): the run config.

    Returns:
        Dict[str, Any]: the identity (JSON-able).
    """
    data = dataclasses.asdict(cfg.data)
    source = cfg.data.source
    keep = {"synthetic": "synthetic", "criteo_tsv": "criteo", "criteo_npy": "criteo", "movielens": "movielens",
            "table": "table"}[source]
    out = {k: v for k, v in data.items() if k not in ("synthetic", "criteo", "movielens", "table")}
    out[keep] = data[keep]
    if out.get("retrieval", 0) is None:
        out.pop("retrieval")  # not a retrieval run: the identity it always had
    if source == "synthetic" and out["synthetic"].get("tasks") is None:
        out["synthetic"].pop("tasks", None)  # a one-task world: the identity it always had
    if getattr(cfg, "tasks", None):  # the labels are the tasks' (columns, thresholds, spaces)
        out["tasks"] = [dataclasses.asdict(t) for t in cfg.tasks]
    if out.get("windows") is not None:
        rows = out["windows"].pop("rows_digest")  # absent when unset: manual windowed runs keep their fingerprints
        if rows is not None:
            out["windows"].pop("count")  # (the digest holds the cut of windows 0..index+1)
            out["windows"]["rows_digest"] = rows
            if source == "synthetic" and out["synthetic"]["drift"] is not None:
                out["synthetic"]["drift"].pop("windows")
            if keep == "criteo":
                out["criteo"].pop("days")
            return out
    if source == "table":
        out["files"] = _files_identity(cfg.data.table.path)
    elif source == "criteo_tsv":
        out["files"] = _files_identity(cfg.data.criteo.path)
    elif source == "criteo_npy":
        out["files"] = _files_identity(cfg.data.criteo.npy_path)
    elif source == "movielens":
        out["files"] = _files_identity(cfg.data.movielens.path)
    return out


def warm_start_digest(path: Optional[str]) -> Optional[str]:
    """What a step warm-started from the saved model at ``path`` records of it: the sha256 of its ``meta.json``.

    The meta records the model's own fingerprint and every shard file's sha256, so the digest
    changes whenever the checkpoint is remade (retrained, resumed into other weights, replaced),
    and not when it is only moved: the run directory may be renamed.

    Args:
        path (Optional[str]): the checkpoint directory (``train.warm_start``), or None.

    Returns:
        Optional[str]: the hex digest (16 characters), ``"missing"`` when there is no checkpoint there
        (the step stops with an error when it runs), None without a warm start.
    """
    if not path:
        return None
    meta = Path(path) / META_FILE
    return hashlib.sha256(meta.read_bytes()).hexdigest()[:16] if meta.is_file() else "missing"


# built-in rankers: never towers, so train.tower_losses cannot change what they train
RANKER_ARCHS = (*DLRM_FAMILY, "deepfm")
# distill.losses[] keys of multi-task runs, left out of a fingerprint at these defaults
TERM_TASK_DEFAULTS = {"task": None, "in_space_weight": 1.0, "out_space_weight": 0.0}


def _training(cfg: RunConfig, role: str) -> Dict[str, Any]:
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items()
             if k not in _TRAIN_IGNORED and k not in ("steps", "teacher_steps", "epochs", "teacher_epochs")}
    if train["early_stopping"].get("task") is None:
        train["early_stopping"].pop("task", None)  # a one-task run: the fingerprint it always had
    if not train.get("tower_losses") or (role == "teacher" and cfg.teacher.arch in RANKER_ARCHS):
        train.pop("tower_losses", None)  # no tower objective (a ranker ignores it): the fingerprint it always had
    out = {"seed": cfg.seed, "train": train, "budget": budget_spec(cfg.train, role)}
    if cfg.train.warm_start:  # recorded only when set: runs without one keep their fingerprints
        out["warm_started"] = True  # (which checkpoint is the step's own input, not part of the base)
    return out


def _warm_start(cfg: RunConfig) -> Dict[str, Any]:
    """The warm-start checkpoint's digest as a step input (nothing without a warm start)."""
    return {"warm_start": warm_start_digest(cfg.train.warm_start)} if cfg.train.warm_start else {}


def base_inputs(cfg: RunConfig) -> Dict[str, Any]:
    """What the student alone and the distilled student must share to be compared."""
    return {"data": data_identity(cfg), "student": dataclasses.asdict(cfg.student),
            "privileged_features": sorted(cfg.distill.privileged_features), **_training(cfg, "student")}


def step_fingerprint(cfg: RunConfig, step: str, upstream: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The fingerprint of one step's artifact.

    Args:
        cfg (RunConfig): the run config.
        step (str): ``teacher``, ``student``, ``distilled``, ``distilled_qat``, or
            ``<source>_<dtype>`` for an export of ``source``.
        upstream (Optional[Mapping[str, str]]): digests of the artifacts this step reads:
            ``teachers`` (comma-joined teacher digests) for distillation, ``source`` for an export.

    Returns:
        Dict[str, Any]: ``{"digest", "inputs", "base"}`` (``base``: the comparison base digest
        of students, None for a teacher).
    """
    upstream = dict(upstream or {})
    # the code of plugin models and terms is an input too (recorded only when plugins are loaded)
    plugins = {"plugins": plugin_digests()} if loaded_plugins() else {}
    if step == "teacher":
        inputs = {"step": "teacher", "data": data_identity(cfg), "teacher": dataclasses.asdict(cfg.teacher),
                  **_training(cfg, "teacher"), **_warm_start(cfg), **plugins}
        return {"digest": digest(inputs), "inputs": inputs, "base": None}
    base = base_inputs(cfg)
    if step == "student":
        inputs = {"step": "student", **base, **_warm_start(cfg), **plugins}
    elif step in ("distilled", "distilled_qat"):
        distill = {k: v for k, v in dataclasses.asdict(cfg.distill).items() if k not in _DISTILL_PATHS}
        distill["qat"] = cfg.distill.qat if step == "distilled_qat" else None
        if step == "distilled":
            distill.pop("qat_start")
        distill["teacher_weights"] = [t.weight for t in cfg.distill.teachers]
        for term in distill["losses"]:  # per-task keys at their defaults: the fingerprint a one-task term always had
            for key, default in TERM_TASK_DEFAULTS.items():
                if term.get(key) == default:
                    term.pop(key, None)
        if any(t.tasks is not None for t in cfg.distill.teachers):  # which teacher teaches which task
            distill["teacher_tasks"] = [t.tasks for t in cfg.distill.teachers]
        inputs = {"step": step, **base, "distill": distill, "teachers": upstream.get("teachers"), **_warm_start(cfg),
                  **plugins}
    else:
        kind = step.rpartition("_")[2]
        inputs = {"step": step, "source": upstream.get("source"),
                  "dtype": step.rsplit("_", 2)[-2] if kind == "pruned" else kind,
                  "tables": {k: v for k, v in cfg.quantize.tables.items()}}
        # pruned and budgeted students also depend on how rows were counted and the plan chosen
        if kind == "pruned" and cfg.quantize.prune is not None:
            inputs["prune"] = dataclasses.asdict(cfg.quantize.prune)
        if kind == "budgeted" and cfg.quantize.budget is not None:
            inputs["budget"] = dataclasses.asdict(cfg.quantize.budget)
            inputs["prune"] = dataclasses.asdict(cfg.quantize.prune) if cfg.quantize.prune else None
            if cfg.quantize.budget.replay:  # a replay depends on the plan's content, not on where it lies
                plan = Path(cfg.quantize.budget.replay)
                plan = plan / PLAN_FILE if plan.is_dir() else plan
                inputs["replayed_plan"] = hashlib.sha256(plan.read_bytes()).hexdigest() if plan.is_file() else None
    return {"digest": digest(inputs), "inputs": inputs, "base": digest(base)}


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a.b[1].c": value}``: mappings and lists of mappings opened key by key; other lists stay values."""
    if isinstance(tree, Mapping):
        out: Dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, (list, tuple)) and any(isinstance(v, Mapping) for v in tree):
        out = {}
        for i, v in enumerate(tree):  # distill.losses[1].temperature, not the whole list of losses
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def short_value(value: Any, width: int = 40) -> str:
    """A value for a one-line message: as written, cut to ``width`` characters (a list of files, a digest).

    Args:
        value (Any): a config value or a recorded input.
        width (int): the most characters to show.

    Returns:
        str: e.g. ``3.0``, ``[32, 16]``, ``[['/data/a.parquet', 120, 17…`` .
    """
    text = json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def more(items: List[str], limit: int) -> List[str]:
    """The first ``limit`` items, then ``and N more`` when there were more.

    Args:
        items (List[str]): what to name.
        limit (int): how many to name.

    Returns:
        List[str]: at most ``limit + 1`` strings.
    """
    return items[:limit] + ([f"and {len(items) - limit} more"] if len(items) > limit else [])


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> List[str]:
    """The keys whose values differ, as ``key: old -> new``.

    Lists of sections are opened (``distill.losses[1].temperature: 1.0 -> 3.0``) and long
    values cut, so the line names what changed rather than repeating whole sections.

    Args:
        old (Mapping[str, Any]): the recorded inputs.
        new (Mapping[str, Any]): the inputs this config gives.
        limit (int): how many keys to name; the rest are counted (``and 3 more``).

    Returns:
        List[str]: one string per key named, then ``and N more`` if any were left out.
    """
    a, b = _flatten(old), _flatten(new)
    names = {"teachers": "the teacher checkpoint(s) (retrained)",
             "warm_start": "train.warm_start (its checkpoint's digest)", "warm_started": "warm-started"}
    changed = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k) and (k in a) == (k in b):
            continue
        if k == "data.windows.rows_digest":  # one digest of many rows: say what it stands for
            changed.append(f"the rows this window reads (windows 0..index+1): {a.get(k)} -> {b.get(k)}")
            continue
        if k == "data.files":  # (path, bytes, mtime) of up to 10,000 files: say what kind of change
            changed.append(f"the data files (names, sizes or times): {len(a.get(k) or [])} -> {len(b.get(k) or [])} files")
            continue
        changed.append(f"{names.get(k, k.replace('train.train.', 'train.'))}: "
                       f"{short_value(a[k]) if k in a else '(none)'} -> {short_value(b[k]) if k in b else '(none)'}")
    return more(changed, limit)


def read_recorded(meta: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The fingerprint an artifact's meta recorded (None for artifacts made before fingerprints)."""
    fp = meta.get("fingerprint")
    return fp if isinstance(fp, dict) and "digest" in fp else None
