"""Every file and folder of a run's output directory, named in one place.

::

    <output_dir>/
      .lock                   held by the run writing here (core.run_lock)
      run.log                 third-party logs and known-harmless warnings of every command
      metrics.json            one entry per model: test metrics, sizes, fingerprint
      report.md, report.png   the comparison (report), summary.json/.md across seeds (experiment)
      tensorboard/            training curves
      <model>/                a trained float model: meta.json + model/ (DCP) — teacher, student, distilled…
      train_state/<model>/    resumable training state; best/ holds the best validated weights
      export/<model>/         a quantized export: quantized.json, weights.pt, model.ts
      teacher_scores/         offline distillation's teacher-score cache
      eval_<model>_<split>.json  what `evaluate` measured
      seed_<s>/               one replicate of an experiment (the same layout inside)

Example::

    layout = RunLayout(cfg.out_dir)
    layout.model_meta("teacher")       # outputs/<run>/teacher/meta.json
    layout.export("distilled_int4")    # outputs/<run>/export/distilled_int4
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Inside a saved float model's folder.
META_FILE = "meta.json"
MODEL_DIR = "model"
# Inside an export's folder.
EXPORT_META_FILE = "quantized.json"
EXPORT_WEIGHTS_FILE = "weights.pt"
TORCHSCRIPT_FILE = "model.ts"
# an export's input contract: raw columns in, features out (torchrec_kd.data.contract)
CONTRACT_FILE = "contract.json"
# a budgeted export's per-table plan (replayable with quantize.budget.replay)
PLAN_FILE = "plan.json"
# At the top of the output directory.
LOCK_FILE = ".lock"
LOG_FILE = "run.log"
METRICS_FILE = "metrics.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
TENSORBOARD_DIR = "tensorboard"
TRAIN_STATE_DIR = "train_state"
BEST_DIR = "best"
EXPORT_DIR = "export"
SCORES_DIR = "teacher_scores"


# The models of a run (their folder, metrics.json key and TensorBoard run).
TEACHER, STUDENT_ALONE, DISTILLED = "teacher", "student", "distilled"


def distilled_name(qat: Optional[str] = None) -> str:
    """The name of a distillation's result: ``distilled``, or ``distilled_qat`` when trained quantization-aware."""
    return DISTILLED if qat is None else f"{DISTILLED}_qat"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one output directory (nothing is created: readers and writers decide).

    Args:
        root (Path): the run's output directory (``cfg.out_dir``).
    """

    root: Path

    def model(self, name: str) -> Path:
        """A trained float model's folder (``teacher``, ``student``, ``distilled``…)."""
        return self.root / name

    def model_meta(self, name: str) -> Path:
        """A trained model's meta.json (config, tables, fingerprint, file checksums)."""
        return self.root / name / META_FILE

    def train_state(self, name: str) -> Path:
        """Where a model's resumable training state is kept."""
        return self.root / TRAIN_STATE_DIR / name

    def best(self, name: str) -> Path:
        """The best validated weights so far of a model being trained."""
        return self.train_state(name) / BEST_DIR

    def export(self, name: str) -> Path:
        """A quantized export's folder (``distilled_int4``…)."""
        return self.root / EXPORT_DIR / name

    def export_meta(self, name: str) -> Path:
        """An export's quantized.json."""
        return self.export(name) / EXPORT_META_FILE

    @property
    def exports(self) -> Path:
        """The folder holding every export."""
        return self.root / EXPORT_DIR

    @property
    def teacher_scores(self) -> Path:
        """The offline teacher-score cache."""
        return self.root / SCORES_DIR

    @property
    def metrics(self) -> Path:
        """metrics.json."""
        return self.root / METRICS_FILE

    @property
    def report_md(self) -> Path:
        """report.md."""
        return self.root / REPORT_MD

    @property
    def report_png(self) -> Path:
        """report.png."""
        return self.root / REPORT_PNG

    @property
    def summary_json(self) -> Path:
        """summary.json (experiment across seeds)."""
        return self.root / SUMMARY_JSON

    @property
    def summary_md(self) -> Path:
        """summary.md (experiment across seeds)."""
        return self.root / SUMMARY_MD

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files."""
        return self.root / TENSORBOARD_DIR

    @property
    def lock(self) -> Path:
        """The run lock."""
        return self.root / LOCK_FILE

    @property
    def log_file(self) -> Path:
        """The run's log file (what the console leaves out)."""
        return self.root / LOG_FILE

    def evaluation(self, source: str, split: str) -> Path:
        """What ``evaluate --source <source> --split <split>`` wrote."""
        return self.root / f"eval_{source}_{split}.json"

    def seed(self, seed: int) -> "RunLayout":
        """The layout of one seed's replicate inside an experiment."""
        return RunLayout(self.root / f"seed_{seed}")
