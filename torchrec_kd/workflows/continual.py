"""Workflow: continual distillation — follow the log window by window, each update warm-started.

For each window ``t`` of ``data.windows`` from ``continual.first_window`` to the last but one (or
``continual.last_window``), in
``<output_dir>/windows/<t>/`` (an ordinary run directory whose config selects window ``t``):

* ``teacher`` per ``continual.teacher``: ``retrain`` on the history 0..t; ``fine_tune`` on window
  t, warm-started from ``windows/<t-1>/teacher`` (its first window: on the history); ``fixed``: trained once at the first
  window and reused by path;
* ``student``: the student alone on window t, warm-started from ``windows/<t-1>/student``;
* ``distilled``: distilled from this window's teacher on window t, warm-started from
  ``windows/<t-1>/distilled``;
* ``scratch`` (``continual.scratch``): the costly reference, the student trained from scratch on
  the history 0..t, in ``windows/<t>/scratch/``;
* the distilled student exported (``continual.export``) and, from the second window on, the
  delta against the previous window's export (``quant.delta``).

At the first window there is no previous version: the student and the distilled student train
from scratch on the history 0..first_window (the warm-up). Every model is scored, per row, on
window t + 1 before anything trains on it (progressive validation): AUC / NE / rows overall and
on the cold-start slices. Each window's numbers go to ``windows/<t>/continual_window.json`` and
``<output_dir>/continual.json`` / ``continual.md`` / ``continual.png`` are rewritten after every
window. A step is skipped when its artifacts record the fingerprint this config gives them (a
warm start's fingerprint holds its checkpoint's digest), so a resumed run continues at the
window where it stopped, and a changed config re-runs from the first window it affects, saying
why. With several ``experiment.seeds`` each seed is a whole run in ``seed_<s>/``.

Example::

    python -m torchrec_kd.cli continual --config configs/continual_drift_synthetic.yaml
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch.distributed as dist

from torchrec_kd.config import RunConfig
from torchrec_kd.config.data_sources import WindowsConfig
from torchrec_kd.core.layout import RunLayout
from torchrec_kd.data import WindowedClickLog, build_data, window_slices
from torchrec_kd.data.timelines import window_rows_digest
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.errors import ConfigError
from torchrec_kd.recipes import quantize
from torchrec_kd.reporting.continual import (
    MODELS,
    continual_markdown,
    gain_and_cost,
    model_metrics,
    write_continual_plot,
)
from torchrec_kd.reporting.lineage import expected_fingerprints
from torchrec_kd.reporting.metrics_file import read_metrics
from torchrec_kd.training.distill_run import DistillRun
from torchrec_kd.training.model_run import TrainModelRun
from torchrec_kd.training.pipelined_run import PipelinedRun
from torchrec_kd.training.row_scores import split_logits
from torchrec_kd.workflows.experiment import _stale, seed_configs

logger = logging.getLogger(__name__)

CONTINUAL_JSON, CONTINUAL_MD, CONTINUAL_PNG = "continual.json", "continual.md", "continual.png"
WINDOW_JSON = "continual_window.json"
WINDOWS_DIR, SCRATCH_DIR, DELTA_DIR = "windows", "scratch", "delta"


# ----------------------------------------------------------------------------- configs
def windows_config(cfg: RunConfig) -> WindowsConfig:
    """The run's windows: ``data.windows``, or the drifting synthetic world's own windows.

    Raises:
        ConfigError: the data is not windowed.
    """
    if cfg.data.windows is not None:
        return cfg.data.windows
    drift = cfg.data.synthetic.drift if cfg.data.source == "synthetic" else None
    if drift is not None:
        return WindowsConfig(by="time", count=drift.windows)
    raise ConfigError("continual needs windows of the data: set data.windows (e.g. {by: time, count: 12}) or, on the "
                      "synthetic source, data.synthetic.drift")


def _data(cfg: RunConfig, t: int, history: bool, rows_digest: Optional[str] = None) -> Any:
    win = dataclasses.replace(windows_config(cfg), index=t, history=history, rows_digest=rows_digest)
    return dataclasses.replace(cfg.data, windows=win)


def _train(cfg: RunConfig, warm_start: Optional[Path], epochs: Optional[int] = None) -> Any:
    train = dataclasses.replace(cfg.train, warm_start=str(warm_start) if warm_start else None)
    return train if epochs is None else dataclasses.replace(train, epochs=epochs)


@dataclasses.dataclass
class WindowPlan:
    """Window ``t``'s configs (one per step) and where its models are.

    Attributes:
        t (int): the trained window (its models are scored on t + 1).
        root (Path): ``windows/<t>/``.
        teacher (Optional[RunConfig]): the teacher step's config (None: a fixed teacher trained earlier).
        teacher_path (Path): the teacher this window distils from.
        student, distilled (RunConfig): the student alone's and the distillation's configs.
        scratch (Optional[RunConfig]): the from-scratch reference's (None: ``continual.scratch`` off, or the
            first window, whose student is that model).
        warm (bool): the students are warm-started (every window after the first).
        log (Any): window t's data (the student's view), built once for the digest and the slices.
    """

    t: int
    root: Path
    teacher: Optional[RunConfig]
    teacher_path: Path
    student: RunConfig
    distilled: RunConfig
    scratch: Optional[RunConfig]
    warm: bool
    log: Any = None


def window_plan(cfg: RunConfig, t: int) -> WindowPlan:
    """The per-window configs of window ``t`` (``dataclasses.replace`` of the run's config).

    Window t's data is built here once: the digest of the rows it reads (windows 0..t+1) goes into
    every step's config as ``data.windows.rows_digest``, so its fingerprints depend on those rows
    only and data arriving later (a new day, appended rows, more drift windows) re-runs no window
    that does not read it.
    """
    cont = cfg.continual
    windows = cfg.out_dir / WINDOWS_DIR
    root, prev = windows / str(t), windows / str(t - 1)
    first = t == cont.first_window
    log = build_data(_data(cfg, t, history=False), cfg.seed, role="student", tasks=cfg.tasks)
    rows = window_rows_digest(_data(cfg, t, history=False), log, cfg.seed)
    base = dataclasses.replace(cfg, output_dir=str(root), data=_data(cfg, t, history=False, rows_digest=rows),
                               experiment=dataclasses.replace(cfg.experiment, seeds=[]))
    history = dataclasses.replace(base, data=_data(cfg, t, history=True, rows_digest=rows))
    if cont.teacher == "fixed":
        teacher = history if first else None
        teacher_path = windows / str(cont.first_window) / "teacher"
    else:
        fine = cont.teacher == "fine_tune" and not first
        # fine_tune: yesterday's teacher updated on today's window (the teacher's own warm update, at its
        # teacher_epochs budget); retrain: from scratch on the whole history
        teacher = (dataclasses.replace(base, train=_train(base, prev / "teacher")) if fine
                   else dataclasses.replace(history, train=_train(history, None)))
        teacher_path = root / "teacher"
    # the first window has no previous version: the students warm up on the history so far
    # a warm update: the same maximum budget (continual.warm_epochs) for the student alone and the distilled one
    warm_epochs = cont.warm_epochs
    student = history if first else dataclasses.replace(base, train=_train(base, prev / "student", warm_epochs))
    dist_base = history if first else dataclasses.replace(base, train=_train(base, prev / "distilled", warm_epochs))
    distilled = dataclasses.replace(dist_base, distill=dataclasses.replace(
        cfg.distill, teacher_checkpoint=str(teacher_path), teachers=[], qat=None, offline=False),
        quantize=dataclasses.replace(cfg.quantize, dtypes=list(cont.export), prune=None, budget=None))
    # (at the first window the student is that model already)
    scratch = dataclasses.replace(history, output_dir=str(root / SCRATCH_DIR)) if cont.scratch and not first else None
    return WindowPlan(t, root, teacher, teacher_path, student, distilled, scratch, warm=not first, log=log)


# ----------------------------------------------------------------------------- steps
@dataclasses.dataclass
class Outcome:
    """What one model's step gave: its per-row test scores and the seconds its training took."""

    logits: np.ndarray
    labels: np.ndarray
    update_s: Optional[float]


def _score(run: PipelinedRun) -> Tuple[np.ndarray, np.ndarray]:
    assert run.model is not None and run.env is not None
    run.model.eval()
    return split_logits(run.score, run.data, "test", run.cfg.data.batch_size, run.env)


def train_and_score(run: PipelinedRun) -> Outcome:
    """Set up, train (timed), evaluate, score every test row and save one model (a recipe's steps, timed)."""
    run.setup()
    t0 = time.perf_counter()
    run.train()
    seconds = time.perf_counter() - t0
    metrics = run.evaluate("test")
    logits, labels = _score(run)
    run.save(metrics)  # type: ignore[attr-defined]
    return Outcome(logits, labels, round(seconds, 3))


def score_saved(cfg: RunConfig, checkpoint: Path, role: str) -> Outcome:
    """Score a saved model on the test split without training it (rebuilt sharded, warm-started from itself)."""
    run = TrainModelRun(dataclasses.replace(cfg, train=_train(cfg, checkpoint)), role)
    run.setup()
    return Outcome(*_score(run), update_s=None)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged window record is rebuilt (the models themselves are checked by fingerprint)


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (every rank skips or runs the same steps)."""
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _decide(cfg: RunConfig, entries: List[str], expected: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """Rank 0's reason to run a step (None: done), the same on every rank."""
    read_metrics(RunLayout(cfg.out_dir).metrics)  # a damaged metrics.json stops every rank with one line
    return _from_rank0(_stale(cfg.out_dir, entries, expected) if dist.get_rank() == 0 else None)


class WindowRunner:
    """Run (or skip) every step of one window and gather its ``continual.json`` entry.

    Args:
        cfg (RunConfig): the seed's run config.
        plan (WindowPlan): the window's configs.
    """

    def __init__(self, cfg: RunConfig, plan: WindowPlan) -> None:
        self.cfg, self.plan = cfg, plan
        self.record_file = plan.root / WINDOW_JSON
        self.old = _read_json(self.record_file)
        self.models: Dict[str, Dict[str, Any]] = {}
        self.update_s: Dict[str, Optional[float]] = {}
        self.ran: List[str] = []

    def _model(self, name: str, cfg: RunConfig, role: str, checkpoint: Path, fingerprint: str,
               step: Optional[Callable[[], PipelinedRun]], reason: Optional[str]) -> None:
        """Train (``reason`` set) or reuse one model, then record its metrics on window t + 1."""
        old = (self.old.get("models") or {}).get(name) or {}
        if _from_rank0(reason is None and old.get("fingerprint") == fingerprint):  # done and scored: reuse
            self.models[name], self.update_s[name] = old, (self.old.get("update_s") or {}).get(name)
            return
        if reason is not None and step is not None:
            logger.info("continual: window %d, %s: %s", self.plan.t, name, reason)
            outcome = train_and_score(step())
            self.ran.append(name)
        else:  # done but not scored yet (stopped in between), or a fixed teacher trained at an earlier window
            outcome = score_saved(cfg, checkpoint, role)
        gc.collect()  # free this model's shards before the next one is built
        dist.barrier()
        if dist.get_rank() == 0:
            slices = None if self.slices is None else self.slices[:len(outcome.labels)]
            self.models[name] = {**model_metrics(outcome.logits, outcome.labels, slices),
                                 "fingerprint": fingerprint, "checkpoint": str(checkpoint)}
            self.update_s[name] = outcome.update_s if outcome.update_s is not None else \
                (self.old.get("update_s") or {}).get(name)

    def run(self) -> Dict[str, Any]:
        """Every step of the window; returns its entry (rank 0; {} elsewhere)."""
        plan, cfg = self.plan, self.cfg
        test_log = plan.log if plan.log is not None else build_data(plan.student.data, plan.student.seed,
                                                                    role="student", tasks=cfg.tasks)
        # Criteo's windows (its streaming reader) have no entities, hence no cold-start slices: "slices" is null
        self.slices = window_slices(test_log) if isinstance(test_log, WindowedClickLog) else None
        if plan.teacher is not None:
            exp = expected_fingerprints(plan.teacher)["teacher"]
            reason = _decide(plan.teacher, ["teacher"], {"teacher": exp})
            self._model("teacher", plan.teacher, "teacher", plan.teacher_path, exp["digest"],
                        lambda: TrainModelRun(plan.teacher, "teacher"), reason)
        else:
            fixed = _read_json(plan.teacher_path / "meta.json").get("fingerprint") or {}
            self._model("teacher", plan.student, "teacher", plan.teacher_path, str(fixed.get("digest")),
                        None, None)
        students = [("student", plan.student, "student", lambda: TrainModelRun(plan.student, "student")),
                    ("distilled", plan.distilled, "distilled", lambda: DistillRun(plan.distilled))]
        if plan.scratch is not None:
            students.append(("scratch", plan.scratch, "student", lambda: TrainModelRun(plan.scratch, "student")))
        for name, c, entry, step in students:
            exp = expected_fingerprints(c)[entry]
            reason = _decide(c, [entry], {entry: exp})
            self._model(name, c, "student", c.out_dir / entry, exp["digest"], step, reason)
        if cfg.continual.scratch and plan.scratch is None and "student" in self.models:
            # the first window's student already is the from-scratch model on the history: not trained twice
            self.models["scratch"] = {**self.models["student"], "same_as": "student"}
            self.update_s["scratch"] = self.update_s.get("student")
        export_bytes, delta = self._export()
        entry: Dict[str, Any] = {}
        if dist.get_rank() == 0:
            entry = {"window": plan.t + 1, "trained_through": plan.t, "seed": cfg.seed, "warm_started": plan.warm,
                     "models": {m: self.models[m] for m in MODELS if m in self.models},
                     "update_s": {m: self.update_s.get(m) for m in ("distilled", "student", "scratch", "teacher")},
                     "export_bytes": export_bytes, "delta_bytes": delta.get("delta_bytes"),
                     "delta": delta or None, "test_rows": (int(len(self.slices)) if self.slices is not None
                                                               else self.models["teacher"]["rows"]),
                     "new_ids": (test_log.window_info()[plan.t + 1].get("new_ids")
                                 if hasattr(test_log, "window_info") else None)}
            plan.root.mkdir(parents=True, exist_ok=True)
            self.record_file.write_text(json.dumps(entry, indent=2))
        dist.barrier()
        return entry

    def _export(self) -> Tuple[Optional[int], Dict[str, Any]]:
        """Quantize the distilled student (``continual.export``) and write the delta vs the previous window's."""
        plan = self.plan
        c = plan.distilled
        names = quantize.export_names(c, "distilled", c.quantize.dtypes)
        reason = _decide(c, names, expected_fingerprints(c))
        if reason is not None:
            logger.info("continual: window %d, export %s: %s", plan.t, ", ".join(names), reason)
            quantize.run(c, "distilled", c.quantize.dtypes)
            gc.collect()
        dist.barrier()
        if dist.get_rank() != 0:
            return None, {}
        layout = RunLayout(plan.root)
        new = layout.export(names[0])
        export_bytes = sum(f.stat().st_size for f in new.rglob("*") if f.is_file())
        prev = RunLayout(plan.root.parent / str(plan.t - 1)).export(names[0])
        if not plan.warm or not prev.is_dir():
            return export_bytes, {}
        old = self.old.get("delta") or {}
        target = plan.root / DELTA_DIR / names[0]
        if reason is None and old and target.is_dir():
            return export_bytes, old
        from torchrec_kd.quant.delta import write_delta

        info = write_delta(prev, new, target).to_json()
        info.pop("files", None)
        return export_bytes, {**info, "path": str(target), "of": names[0]}


# ----------------------------------------------------------------------------- the run
def window_count(cfg: RunConfig) -> int:
    """How many windows the data is cut into (the data layer's cut, for ``size`` windows too)."""
    win = windows_config(cfg)
    if win.count is not None:
        return int(win.count)
    return len(build_data(_data(cfg, 0, history=False), cfg.seed, role="student", tasks=cfg.tasks).windows)


def write_outputs(out: Path, doc: Dict[str, Any], title: str) -> None:
    """``continual.json`` (first, atomically), ``continual.md`` and ``continual.png``."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CONTINUAL_JSON + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out / CONTINUAL_JSON)
    (out / CONTINUAL_MD).write_text(continual_markdown(doc, title) + f"\n![AUC over windows, update cost]({CONTINUAL_PNG})\n")
    write_continual_plot(doc, out / CONTINUAL_PNG, title)


def run_one(cfg: RunConfig, count: int, done: List[Dict[str, Any]], top: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every window of one seed, its ``continual.*`` rewritten after each (and ``top``'s, with ``done``: other seeds')."""
    cont = cfg.continual
    entries: List[Dict[str, Any]] = []
    last = count - 2 if cont.last_window is None else cont.last_window
    for t in range(cont.first_window, last + 1):
        runner = WindowRunner(cfg, window_plan(cfg, t))
        entry = runner.run()
        if dist.get_rank() == 0:
            if runner.ran:
                logger.info("continual: window %d (seed %d) trained %s", t, cfg.seed, ", ".join(runner.ran))
            else:
                logger.info("continual: window %d (seed %d) already done (same config and inputs), skipping", t,
                            cfg.seed)
            entries.append(entry)
            windows = done + entries
            write_outputs(cfg.out_dir, {"windows": entries, **gain_and_cost(entries)}, cfg.run_name)
            if top is not None:  # several seeds: the top level holds every seed's windows so far
                write_outputs(top, {"windows": windows, **gain_and_cost(windows)}, cfg.run_name)
    return entries


def run(cfg: RunConfig) -> Dict[str, Any]:
    """Run every window (of every seed) that is not done yet; return ``continual.json``'s content.

    Args:
        cfg (RunConfig): the run config, with ``data.windows`` (or a drifting synthetic world) and ``continual``.

    Returns:
        Dict[str, Any]: ``{"windows": [...], "kd_gain": {...}, "cost_ratio": ...}`` (rank 0; {} elsewhere).

    Raises:
        ConfigError: the data is not windowed, or ``continual.first_window`` leaves no window to score.
    """
    env = init_distributed(cfg.distributed)
    count = window_count(cfg)
    first, last = cfg.continual.first_window, cfg.continual.last_window
    if not 0 <= first <= count - 2:
        raise ConfigError(f"continual.first_window={first} is out of range: the data has {count} windows and each "
                          f"window's models are scored on the next, so it must be in 0..{count - 2}")
    if last is not None and not first <= last <= count - 2:
        raise ConfigError(f"continual.last_window={last} is out of range: it must be in first_window..{count - 2} "
                          f"({count} windows; the last one is only scored), or null for all of them")
    everything: List[Dict[str, Any]] = []
    configs = seed_configs(cfg)
    top = cfg.out_dir if cfg.experiment.seeds else None
    for seed_cfg in configs.values():
        everything += run_one(seed_cfg, count, list(everything), top)
    doc: Dict[str, Any] = {}
    if env.is_main:
        doc = {"windows": everything, **gain_and_cost(everything), "seeds": sorted(configs),
               "teacher": cfg.continual.teacher, "windows_total": count}
        write_outputs(cfg.out_dir, doc, cfg.run_name)
        logger.info("continual: wrote %s\n%s", cfg.out_dir / CONTINUAL_JSON, continual_markdown(doc, cfg.run_name))
    dist.barrier()
    return doc
