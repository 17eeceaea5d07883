"""The run config's shape: one dataclass per section, with defaults and field docs.

``torchrec_kd.config.load`` reads YAML and overrides into these classes; every field
here is a key users can set (``data.batch_size``, ``train.early_stopping.patience``, ...).
Values are checked where they enter, by the loader (ranges and cross-field rules), not
here: a dataclass built in code is taken as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

from torchrec_kd.config.data_sources import DataConfig

# The built-in architectures whose layer sizes are ModelConfig's own fields (the rest take ``args``).
DLRM_FAMILY = ("dlrm", "dlrm_dcn", "dlrm_projection", "shared_bottom", "mmoe")


@dataclass
class ModelConfig:
    """Which model a role builds: a registered architecture, its tables' dim and its layer sizes.

    ``arch`` names a model builder: ``dlrm``, ``dlrm_dcn``, ``dlrm_projection``, ``deepfm``
    (TorchRec's ``SimpleDeepFMNN``) or one a ``--plugin`` registers. The layer-size fields
    are the DLRM family's; other builders read their own keys from ``args``.
    """

    arch: str = "dlrm"
    embedding_dim: int = 64
    dense_arch_layer_sizes: List[int] = field(default_factory=lambda: [512, 256, 64])
    over_arch_layer_sizes: List[int] = field(default_factory=lambda: [512, 512, 256, 1])
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 64
    # Prefix of table names; teacher and student tables must differ to share one DMP.
    table_prefix: str = "t_"
    # The builder's own keys (checked against what it declares, e.g. deepfm: hidden_layer_size,
    # deep_fm_dimension; dlrm_projection: interaction_branch1_layer_sizes, …).
    args: Dict[str, Any] = field(default_factory=dict)


ShardingTypeName = Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise", "data_parallel"]


@dataclass
class ShardingConfig:
    """Planner constraints; tables not named are placed by TorchRec's planner."""

    # Sharding type for every table (null lets the planner choose among the model-parallel
    # types). row_wise and table_row_wise need CUDA in TorchRec 1.8.
    default: Optional[ShardingTypeName] = None
    # Per-table override: {table_name: sharding type}.
    tables: Dict[str, ShardingTypeName] = field(default_factory=dict)


@dataclass
class EarlyStoppingConfig:
    """Model selection on the validation split (every ``train.eval_every`` steps)."""

    # What picks the best checkpoint: auc (higher is better), ne or logloss (lower is better).
    metric: Literal["auc", "ne", "logloss"] = "auc"
    # Multi-task runs (``tasks`` of two or more): the task whose validation metric picks the
    # checkpoint (null: the first task), or "mean": the task-weighted mean over the binary tasks.
    task: Optional[str] = None
    # Stop after this many validations in a row without an improvement of more than
    # min_delta (0: never stop early; the best checkpoint is still the one kept).
    patience: int = 5
    min_delta: float = 0.0


# Validation cadence of ``eval_every: null`` on an endless train stream (no epoch to halve).
AUTO_EVAL_EVERY_STREAM = 100


@dataclass
class TrainConfig:
    """Optimisation budget, model selection and schedule.

    Every recipe validates every ``eval_every`` steps (and at its last step), keeps the
    best checkpoint by ``early_stopping.metric`` and stops after ``patience`` validations
    without improvement; test metrics, export and distillation use the kept checkpoint.
    Validation is on unless a config turns it off (``eval_every: 0``): left null, it runs
    every half epoch of finite train data (``torchrec_kd.core.budget.eval_interval``).
    """

    # Maximum steps of the student (alone and distilled): the budget both get.
    steps: int = 600
    # Maximum steps of the teacher (null: the student's budget).
    teacher_steps: Optional[int] = None
    # Finite train data: the maximum budget in epochs instead (steps = epochs x full batches
    # per epoch; wins over ``steps``). The teacher's teacher_epochs, else teacher_steps, else
    # the student's epochs / steps.
    epochs: Optional[int] = None
    teacher_epochs: Optional[int] = None
    embedding_lr: float = 0.05
    dense_lr: float = 0.02
    eps: float = 1e-8
    # Log the training loss every N steps (0: only at the last step).
    log_every: int = 100
    # Validation every N steps and at the last step. Null (the default): every half epoch of
    # finite train data, every AUTO_EVAL_EVERY_STREAM steps of an endless stream. 0: no
    # validation at all (the last step's model is kept, nothing is selected): say so explicitly.
    eval_every: Optional[int] = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Save the full training state every N steps (0: never) under <output_dir>/train_state/<step name>/;
    # a restarted run with the same command resumes from the newest complete one.
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    # A NaN/Inf loss: "stop" the run (no checkpoint of those weights) or "skip" the step.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # A saved model (a train-teacher / train-student / distill output, i.e. <run>/<role>) whose
    # weights initialise the model before step 0, tables matched by name; its digest enters the
    # step's fingerprint. Null: initialised from the seed. (``continual`` sets it per window.)
    warm_start: Optional[str] = None
    # A retrieval run's label objective for a model with towers, added to its binary
    # cross-entropy in every run that trains one: the student alone, the distilled student
    # (after distill.losses) and a two-tower teacher, so each trains on the same labels.
    # Label-only candidate terms, e.g. [{name: inbatch_softmax, weight: 1.0}] (the in-batch
    # softmax with the logQ correction). Rankers (DLRM, ...) ignore it.
    tower_losses: List["LossTermConfig"] = field(default_factory=list)


@dataclass
class ScheduleConfig:
    """How a loss term's weight or temperature moves from ``start`` to its configured value.

    With ``t = clamp((step - delay) / steps, 0, 1)``: constant: the value; linear:
    ``start + (value - start) * t``; cosine: ``value + (start - value) * (1 + cos(pi t)) / 2``;
    warmup: ``value * t`` (see ``torchrec_kd.losses.schedules``).
    """

    kind: Literal["constant", "linear", "cosine", "warmup"] = "constant"
    # Value at step 0 (linear, cosine); constant and warmup ignore it.
    start: float = 0.0
    # Steps over which the value moves (>= 1 unless constant); then it stays at the end value.
    steps: int = 0
    # Steps to hold the start value (0 for warmup) before moving.
    delay: int = 0


@dataclass
class LossTermConfig:
    """One weighted term of the distillation objective (names from ``torchrec_kd.losses``)."""

    name: str = "soft_bce"
    weight: float = 1.0
    # Softening temperature for soft-label terms (soft_bce, kl, rank_*); ignored by others.
    temperature: float = 1.0
    # The weight and temperature above are the values reached at the end of these schedules.
    weight_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    temperature_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # The term's own keys (checked against what it declares), e.g. hint_mse:
    # {student: inter_arch, teacher: over_arch.model.0}: the modules whose outputs it reads.
    args: Dict[str, Any] = field(default_factory=dict)
    # Multi-task runs: the task this term distils (null: every task, each in its own space).
    task: Optional[str] = None
    # The term's weight on rows inside / outside its task's space (the rows where the task's
    # only_where label holds; every row when it has none): e.g. conversion distilled on clicked
    # rows only (1 / 0, the default), or on every row with another weight (1 / 0.1).
    in_space_weight: float = 1.0
    out_space_weight: float = 0.0


@dataclass
class TaskConfig:
    """One prediction task of a multi-task run (``tasks``): a label column and its head."""

    name: str = "label"
    # binary: the head is a logit, the label 0/1 (AUC / NE); regression: the head is a value (MSE).
    type: Literal["binary", "regression"] = "binary"
    # The source's column holding the label (null: the source's usual label for the first task,
    # the task's name otherwise). Table sources read it by name; MovieLens names "rating";
    # the synthetic multi-task world names its own tasks.
    column: Optional[str] = None
    # A binary task from a numeric column: label = value >= at_least (e.g. like = rating >= 4).
    at_least: Optional[float] = None
    # A binary task from a text column: the values that are 1 (every other value is 0).
    positive: List[str] = field(default_factory=list)
    # The task is observed only where this other binary task's label is 1 (conversion only on
    # clicks): its loss, metrics and default distillation space are those rows.
    only_where: Optional[str] = None
    # Its weight in the training loss (and in early_stopping.task: mean).
    weight: float = 1.0


@dataclass
class TeacherEntryConfig:
    """One member of a teacher ensemble: a ``train-teacher`` checkpoint and its weight."""

    # Checkpoint directory; its meta.json says the architecture (dlrm or dlrm_dcn) and tables.
    checkpoint: str = ""
    # Relative weight of this teacher's logits in the ensemble (normalised to sum to 1).
    weight: float = 1.0
    # Multi-task runs: the tasks this teacher teaches (null: every task it has); a student task
    # is taught by the teachers naming it (by task name, whatever their column order).
    tasks: Optional[List[str]] = None


QuantDtypeName = Literal["int8", "int4", "int2", "fp16"]


@dataclass
class DistillConfig:
    """What the student learns from: the teacher(s), the loss mix and the training variant."""

    # Teacher checkpoint directory; null: <output_dir>/teacher (from train-teacher).
    teacher_checkpoint: Optional[str] = None
    # A teacher ensemble (overrides teacher_checkpoint): the weighted mean of their logits is
    # the soft target; hint/embedding terms read the first teacher. Table prefixes must differ.
    teachers: List[TeacherEntryConfig] = field(default_factory=list)
    losses: List[LossTermConfig] = field(default_factory=lambda: [
        LossTermConfig(name="hard_bce", weight=0.2), LossTermConfig(name="soft_bce", weight=0.8, temperature=1.0)])
    # Features (sparse or dense) only the teacher reads (e.g. not available at serving time): the student
    # (alone and distilled) is built without them.
    privileged_features: List[str] = field(default_factory=list)
    # Sparse feature whose first id groups rows (session / query / user) for the rank_* terms.
    group_feature: Optional[str] = None
    # Storage of the frozen teacher's tables while it scores (distill, score-teacher): fp16
    # halves the teacher's table memory (its fp32 checkpoint is rounded on load); int8
    # stores rows as fbgemm's row-wise int8 (d + 4 bytes: a quarter plus the fp16 scale and
    # bias): loaded as fp16, then quantized, scoring what `quantize` int8 of the fp16-rounded
    # teacher scores. Soft targets move by that rounding only.
    teacher_dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    # Quantization-aware distillation (`distill-qat`): the student's rows pass through this
    # format's fake quantization while it learns; null: `experiment` skips the QAT step.
    qat: Optional[QuantDtypeName] = "int4"
    # First training step whose rows are fake-quantized (0: all of them); before it the
    # student learns in fp32. Evaluation and export always see the quantized rows.
    qat_start: int = 0
    # Offline distillation: read teacher outputs stored by `score-teacher` instead of running
    # the teacher (no teacher in memory). The cache lives in teacher_scores
    # (null: <output_dir>/teacher_scores).
    offline: bool = False
    teacher_scores: Optional[str] = None
    # Stored precision of cached hint / embedding outputs (logits are always float32).
    score_feature_dtype: Literal["float32", "float16"] = "float16"


@dataclass
class PruneConfig:
    """Row pruning of the student's tables from how often the student's train rows look each row up."""

    # Keep at most this share of each table's rows (the most frequent); null: no cap.
    keep_fraction: Optional[float] = None
    # Drop rows looked up fewer times than this in the counted rows.
    min_count: int = 1
    # Only these tables (empty: every table).
    tables: List[str] = field(default_factory=list)
    # Rows of the student's train split counted (its first ones; an in-memory split is read whole).
    count_rows: int = 1_048_576


@dataclass
class BudgetConfig:
    """Per-table precision and pruning chosen from measured validation sensitivity, under a budget."""

    # Stored embedding bytes the plan may use (remappings included); or
    bytes: Optional[int] = None
    # the validation AUC the plan may lose against the int8 student (e.g. 0.002).
    max_auc_loss: Optional[float] = None
    # What each table may become: every dtype x keep fraction (1.0: not pruned).
    dtypes: List[Literal["fp16", "int8", "int4", "int2"]] = field(default_factory=lambda: ["int8", "int4", "int2"])
    keep_fractions: List[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    # Replay a stored plan (an export's plan.json) instead of measuring one.
    replay: Optional[str] = None


@dataclass
class QuantizeConfig:
    """Post-training quantization of the student's embedding tables."""

    # Dtypes to export and evaluate; each gives a metrics.json entry distilled_<dtype>.
    dtypes: List[Literal["int8", "int4", "int2", "fp16"]] = field(default_factory=lambda: ["int8", "int4"])
    # Per-table override: {table_name: dtype}; tables not named use each run's dtype.
    tables: Dict[str, Literal["int8", "int4", "int2", "fp16"]] = field(default_factory=dict)
    # Also export each dtype pruned (distilled_<dtype>_pruned); null: no pruning.
    prune: Optional[PruneConfig] = None
    # Also export a budgeted student (distilled_budgeted); null: none.
    budget: Optional[BudgetConfig] = None


@dataclass
class ExperimentConfig:
    """What ``experiment`` repeats: each seed is a whole replicate (teacher, student, distilled, quantized)."""

    # Run seeds (model initialisation and train order; the synthetic world stays
    # data.synthetic.world_seed). Empty: one run with ``seed``, in the output dir itself;
    # otherwise each seed in <output_dir>/seed_<s>/ and summary.json / summary.md across them.
    seeds: List[int] = field(default_factory=list)


@dataclass
class ContinualConfig:
    """What ``continual`` trains per window of ``data.windows`` (see ``workflows/continual.py``)."""

    # The teacher each window: retrain from scratch on the history so far, fine_tune its previous
    # version on the window (its own warm update, at train.teacher_epochs), or fixed: train it once
    # (on first_window's history) and keep it.
    teacher: Literal["retrain", "fine_tune", "fixed"] = "retrain"
    # Windows before this one are history only (trained on, never trained as a window of their own).
    first_window: int = 0
    # The last window trained by this launch (null: every window but the last, which is only scored):
    # a later launch with a larger value continues from here, as new windows of the log arrive.
    last_window: Optional[int] = None
    # Also train the costly reference: the student from scratch on all history, every window.
    scratch: bool = True
    # The maximum budget of a warm-started update, in epochs over the window, the same for the
    # student alone and the distilled student (null: train.epochs). The warm-up window, the
    # teacher and the from-scratch reference keep train.epochs / teacher_epochs.
    warm_epochs: Optional[int] = None
    # Dtypes exported per window; the delta against the previous window's export is the first one's.
    export: List[QuantDtypeName] = field(default_factory=lambda: ["int8"])


@dataclass
class DistributedConfig:
    """Process-group settings; the same code runs 1 process, N gloo ranks or N GPUs."""

    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: int = 600


@dataclass
class RunConfig:
    """A whole run: what to train on, what to build, how to train it, where to write."""

    run_name: str = "run"
    # Null: outputs/<run_name>.
    output_dir: Optional[str] = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    # The prediction tasks (empty: one binary task, the source's label, exactly as before). Two
    # or more make a multi-task run: labels [B, T], models with one head per task, per-task metrics.
    tasks: List[TaskConfig] = field(default_factory=list)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(
        embedding_dim=16, dense_arch_layer_sizes=[64, 16], over_arch_layer_sizes=[64, 1], table_prefix="s_"))
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def out_dir(self) -> Path:
        """Where this run writes its outputs."""
        return Path(self.output_dir or Path("outputs") / self.run_name)
