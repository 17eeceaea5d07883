"""Which models of a run directory belong to one lineage: the one this config makes.

A run directory can hold models of several lineages: a teacher retrained with another
config beside a student distilled from the old one, an int4 export of an earlier distilled
student, a ``distilled_qat`` from before. A report shows only the models whose recorded
fingerprint is the one this config gives them (``expected_fingerprints``; a distilled
student's includes its teacher's, an export's its source's), and names each other model
with the reason it is left out. No figure is ever computed from a left-out model.

Entries recorded before fingerprints existed cannot be checked and are kept.

Example::

    lineage = split_lineage(metrics, cfg, out_dir)
    lineage.current        # {"teacher": {...}, "student": {...}}
    lineage.left_out       # {"distilled": "distilled from another teacher (re-run distill, or experiment)"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping

from torchrec_kd.checkpoint.model_io import checkpoint_fingerprint, read_meta
from torchrec_kd.config import RunConfig
from torchrec_kd.core.fingerprint import describe_change, read_recorded, step_fingerprint
from torchrec_kd.core.layout import META_FILE, RunLayout

TRAINED = ("teacher", "student", "distilled", "distilled_qat")
EXPORT_DTYPES = ("int8", "int4", "int2", "fp16")


def teacher_digest(checkpoint: Path) -> str:
    """What a distilled student records of a teacher checkpoint (the same as ``distill.teachers.teacher_digest``).

    Args:
        checkpoint (Path): the teacher's folder.

    Returns:
        str: its recorded fingerprint digest (one from before fingerprints: its file digest).
    """
    recorded = read_recorded(read_meta(checkpoint))
    return recorded["digest"] if recorded else "sha256:" + checkpoint_fingerprint(checkpoint)[:16]


def expected_fingerprints(cfg: RunConfig) -> Dict[str, Dict[str, Any]]:
    """The fingerprint each step's artifact must record to belong to ``cfg``'s lineage.

    Computed from the config alone (and the recorded fingerprints of teachers this run does
    not train), so every stale step is known before anything runs.

    Args:
        cfg (RunConfig): the run config.

    Returns:
        Dict[str, dict]: per name (``teacher``, ``student``, ``distilled``, ``distilled_qat`` and
        their ``_int8`` / ``_int4`` / ``_int2`` / ``_fp16`` exports) what ``step_fingerprint`` gives.
    """
    exp = {"teacher": step_fingerprint(cfg, "teacher"), "student": step_fingerprint(cfg, "student")}
    external = [e.checkpoint for e in cfg.distill.teachers] or (
        [cfg.distill.teacher_checkpoint] if cfg.distill.teacher_checkpoint else [])
    teachers = exp["teacher"]["digest"]
    if external:  # not trained here: what distill records of them (missing: distill stops with an error)
        teachers = ",".join(teacher_digest(Path(p)) if (Path(p) / META_FILE).is_file() else "missing"
                            for p in external)
    for name in ("distilled", "distilled_qat"):
        exp[name] = step_fingerprint(cfg, name, {"teachers": teachers})
        for dtype in EXPORT_DTYPES:
            exp[f"{name}_{dtype}"] = step_fingerprint(cfg, f"{name}_{dtype}", {"source": exp[name]["digest"]})
    return exp


@dataclass
class Lineage:
    """A run directory's models split into this config's lineage and the rest.

    Attributes:
        current (Dict[str, dict]): the entries to report, in ``metrics.json`` order.
        left_out (Dict[str, str]): every other entry and why it is left out.
    """

    current: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    left_out: Dict[str, str] = field(default_factory=dict)


def _recorded_inputs(out_dir: Path, name: str) -> Mapping[str, Any]:
    """The fingerprint inputs a trained model's checkpoint recorded ({} when there is none to read)."""
    meta = RunLayout(out_dir).model_meta(name)
    try:
        return (json.loads(meta.read_text()).get("fingerprint") or {}).get("inputs") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def _trained_reason(out_dir: Path, name: str, expected: Mapping[str, Any]) -> str:
    """Why a trained model whose fingerprint differs from ``expected`` is not of this lineage."""
    old = _recorded_inputs(out_dir, name)
    changed = [k for k in set(old) | set(expected["inputs"]) if old.get(k) != expected["inputs"].get(k)]
    if old and changed == ["teachers"]:
        return "distilled from another teacher: re-run distill, or experiment"
    other_teacher = old and "teachers" in changed
    if other_teacher:  # the teacher digests say nothing to a reader: name the other changes
        old, new = {k: v for k, v in old.items() if k != "teachers"}, {k: v for k, v in expected["inputs"].items()
                                                                       if k != "teachers"}
    else:
        new = expected["inputs"]
    change = describe_change(old, new, limit=2) if old else []
    return (("distilled from another teacher and " if other_teacher else "") + "made by another config"
            + (f" (its -> this config's): {'; '.join(change)}" if change else " or from other inputs"))


def split_lineage(metrics: Mapping[str, Mapping[str, Any]], cfg: RunConfig, out_dir: Path) -> Lineage:
    """Split one run's ``metrics.json`` into the models of ``cfg``'s lineage and the others.

    A trained model belongs when its fingerprint is the one ``cfg`` gives it; an export when
    its source belongs, it was exported from that very source model, and with this config's
    quantize settings. Entries without a fingerprint (made before fingerprints) are kept.

    Args:
        metrics (Mapping[str, dict]): the run's ``metrics.json``.
        cfg (RunConfig): the config the report is made for.
        out_dir (Path): the run's directory (checkpoints' ``meta.json`` say what changed).

    Returns:
        Lineage: the current entries and the reasons for the rest.
    """
    expected = expected_fingerprints(cfg)
    lineage = Lineage()
    exports: List[str] = []
    for name, entry in metrics.items():
        if "source_fingerprint" in entry or "source" in entry:
            exports.append(name)  # judged after the models they come from
        elif not entry.get("fingerprint") or name not in expected or entry["fingerprint"] == expected[name]["digest"]:
            lineage.current[name] = dict(entry)
        else:
            lineage.left_out[name] = _trained_reason(out_dir, name, expected[name])
    for name in exports:
        entry = metrics[name]
        source = entry.get("source") or name.rpartition("_")[0]
        source_digest = expected[source]["digest"] if source in expected else (metrics.get(source) or {}).get("fingerprint")
        if not entry.get("fingerprint"):
            lineage.current[name] = dict(entry)
        elif source in lineage.left_out:
            lineage.left_out[name] = f"exported from the left-out {source}"
        elif entry.get("source_fingerprint") != source_digest:
            lineage.left_out[name] = f"exported from an earlier {source} model: re-run quantize --source {source}"
        elif entry["fingerprint"] != step_fingerprint(cfg, name, {"source": source_digest})["digest"]:
            lineage.left_out[name] = "exported with other quantize settings: re-run quantize"
        else:
            lineage.current[name] = dict(entry)
    order = list(metrics)
    lineage.current = {n: lineage.current[n] for n in order if n in lineage.current}
    lineage.left_out = {n: lineage.left_out[n] for n in order if n in lineage.left_out}
    return lineage
