"""Typed run configuration: YAML file + ``key=value`` overrides, validated before any work.

A config is a tree of dataclasses. Loading walks the YAML mapping against the
dataclass fields, so an unknown key, a wrong type or a value outside an allowed
set stops the run with an error naming the file, the dotted key and what is
accepted (with the nearest valid key suggested for typos).

Example::

    cfg = load_config("configs/dlrm_teacher_synthetic.yaml", ["train.steps=10"])
    cfg.teacher.embedding_dim
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and what to do."""


class _RangeError(ConfigError):
    """A number outside its key's accepted range (kept through ``Union`` coercion)."""


@dataclass
class SyntheticDataConfig:
    """Shape and difficulty of the built-in planted click log (see ``data/synthetic.py``)."""

    num_dense: int = 13
    num_sparse: int = 26
    # Rows per table: one int for all tables, or one per sparse feature.
    num_embeddings: Union[int, List[int]] = 100_000
    # Maximum ids per bag (multi-hot); 1 means one id per feature as in Criteo.
    pooling: Union[int, List[int]] = 1
    zipf_exponent: float = 1.05
    latent_dim: int = 32
    num_clusters: int = 2048
    # Fraction of feature pairs whose latent interaction enters the oracle logit.
    interaction_density: float = 0.5
    # Features with more rows than this interact more weakly (latent scale
    # sqrt(interaction_vocab / rows)): their signal is mostly per-id memorisation.
    interaction_vocab: int = 5000
    # Relative weights of the oracle's terms (each has about unit variance before weighting).
    bias_weight: float = 0.5
    pair_weight: float = 1.0
    dense_weight: float = 0.4
    cross_weight: float = 0.3
    logit_scale: float = 2.5
    positive_rate: float = 0.25
    # Rows are generated in independently seeded blocks; batch sizes per rank must be
    # a multiple of this so that 1 and N ranks see the same global batches.
    block_rows: int = 256
    # Seed of the world (oracle, val and test rows, the finite train rows); the run's
    # ``seed`` picks the model initialisation and the train order, so replicates over
    # ``experiment.seeds`` compare models on one world. Null: the run's seed.
    world_seed: Optional[int] = 0
    # Rows of a finite train split (read by epochs, reshuffled each epoch by the run seed);
    # null: an endless stream, a fresh sample of the world for every step.
    train_rows: Optional[int] = None
    # The student (alone and distilled, and score-teacher's stream) trains on only the first
    # this-many rows of the train split, by epochs: the recent window of a teacher that
    # read the long stream. Null: the same train split as the teacher.
    student_train_rows: Optional[int] = None


def _check_fraction_pair(where: str, val: float, test: float) -> None:
    """``val`` and ``test`` fractions must leave rows for training."""
    for name, v in (("val_fraction", val), ("test_fraction", test)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{where}.{name} must be in [0, 1), got {v}")
    if val + test >= 1.0:
        raise ConfigError(f"{where}.val_fraction + {where}.test_fraction must be < 1 (rows are left for train), "
                          f"got {val} + {test}")


@dataclass
class CriteoDataConfig:
    """Criteo click logs: raw TSV (Kaggle ``train.txt``, Terabyte ``day_N``) or TorchRec's ``.npy`` layout.

    A split is a list of file specs: a name relative to ``path`` (globs allowed, matches in
    natural order: day_2 before day_10) with an optional row range as fractions of the file,
    e.g. ``train.txt[0:6/7]`` or ``day_23[1/2:1]``. For ``criteo_npy`` the same specs name
    the preprocessed stems (``train.txt`` -> ``train_{dense,sparse,labels}.npy``), so one
    config serves both sources.
    """

    # Directory of the raw TSV files (criteo_tsv, and the input of `preprocess`).
    path: Optional[str] = None
    # Directory of the preprocessed .npy files (criteo_npy, and the output of `preprocess`).
    npy_path: Optional[str] = None
    # Kaggle convention (TorchRec's 7 "days"): days 0-5 train, day 6 halved into val / test.
    train: List[str] = field(default_factory=lambda: ["train.txt[0:6/7]"])
    val: List[str] = field(default_factory=lambda: ["train.txt[6/7:13/14]"])
    test: List[str] = field(default_factory=lambda: ["train.txt[13/14:1]"])
    # Rows per table (one int for all 26, or one per feature); a category's 64-bit value is
    # taken modulo its table's size (TorchRec's convention).
    num_embeddings: Union[int, List[int]] = 100_000
    # Bytes parsed per step; memory stays a small multiple of this whatever the file size
    # (1 MiB, ~4,000 rows, measured fastest: the parser's arrays stay in cache).
    chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if isinstance(self.num_embeddings, list) and len(self.num_embeddings) != 26:
            raise ConfigError(f"data.criteo.num_embeddings lists {len(self.num_embeddings)} values; "
                              "Criteo has 26 categorical features (give one int or 26)")
        sizes = self.num_embeddings if isinstance(self.num_embeddings, list) else [self.num_embeddings]
        if min(sizes) <= 0:
            raise ConfigError(f"data.criteo.num_embeddings must be positive, got {self.num_embeddings}")
        if self.chunk_bytes < 1024:
            raise ConfigError(f"data.criteo.chunk_bytes must be at least 1024, got {self.chunk_bytes}")


@dataclass
class MovieLensDataConfig:
    """GroupLens MovieLens ratings as click data (ml-100k or ml-1m directory layout)."""

    # The unpacked ml-100k (u.data, u.user, u.item) or ml-1m (ratings.dat, users.dat, movies.dat) folder.
    path: Optional[str] = None
    # A rating >= this is a click (label 1).
    positive_threshold: float = 4.0
    # random: a seeded shuffle of all ratings; chronological: the latest ratings are val, then test.
    split: Literal["random", "chronological"] = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Seed of the random split; kept apart from the run seed so every model sees the same test set.
    split_seed: int = 0
    # Reshuffle the train rows each epoch (with the run seed and the epoch number).
    shuffle: bool = True
    # Characters of the zip code kept for the zip_prefix feature.
    zip_prefix_len: int = 3
    # Table rows per feature (user_id, item_id, genres, gender, age_bucket, occupation, zip_prefix);
    # features not named are sized from the data. Ids beyond a table are taken modulo its size.
    num_embeddings: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_fraction_pair("data.movielens", self.val_fraction, self.test_fraction)
        if self.zip_prefix_len < 1:
            raise ConfigError(f"data.movielens.zip_prefix_len must be >= 1, got {self.zip_prefix_len}")
        for name, n in self.num_embeddings.items():
            if n <= 0:
                raise ConfigError(f"data.movielens.num_embeddings.{name} must be positive, got {n}")


@dataclass
class SparseColumnConfig:
    """One categorical column of a table: one id per row, or several with a separator."""

    column: str = ""
    # Feature name (KJT key); default: the column name.
    name: Optional[str] = None
    # Rows of this feature's table; ids are taken into range by ``hashing``.
    num_embeddings: int = 100_000
    # Multi-valued column: split each cell on this string ("a|b|c" -> 3 ids); null: one id.
    separator: Optional[str] = None
    # Keep at most this many ids of a multi-valued cell (the first ones); null: all.
    max_length: Optional[int] = None
    # auto: integer ids modulo num_embeddings (negatives wrap), other values hashed;
    # hash: every value hashed as text (spreads sequential ids over the table).
    hashing: Literal["auto", "hash"] = "auto"

    def __post_init__(self) -> None:
        if not self.column:
            raise ConfigError("data.table.sparse: every entry needs a 'column'")
        if self.num_embeddings <= 0:
            raise ConfigError(f"data.table.sparse[{self.column}].num_embeddings must be positive, got {self.num_embeddings}")
        if self.separator == "":
            raise ConfigError(f"data.table.sparse[{self.column}].separator must be a non-empty string or null")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"data.table.sparse[{self.column}].max_length must be >= 1 or null, got {self.max_length}")


@dataclass
class TableDataConfig:
    """Any click log in a CSV or Parquet file, described by a schema (no code needed)."""

    # A .csv/.tsv/.txt/.parquet file, a directory of them, or a glob.
    path: Optional[str] = None
    format: Literal["auto", "csv", "parquet"] = "auto"
    # CSV only: field delimiter, text encoding, and whether the first line names the columns.
    delimiter: str = ","
    encoding: str = "utf-8"
    header: bool = True
    # CSV without a header: the column names, in order.
    columns: List[str] = field(default_factory=list)
    # The label column and which of its values are clicks (1) and non-clicks (0); any other
    # value is an error. With label_threshold set, label = (value >= threshold) instead.
    label: str = "label"
    positive: List[Union[bool, int, float, str]] = field(default_factory=lambda: [1])
    negative: List[Union[bool, int, float, str]] = field(default_factory=lambda: [0])
    label_threshold: Optional[float] = None
    # Numeric columns fed as dense features; empty, NaN and +-inf become dense_fill.
    dense: List[str] = field(default_factory=list)
    dense_fill: float = 0.0
    # log1p: log(1 + max(x, 0)) (the DLRM convention for counts); none: as is.
    dense_transform: Literal["none", "log1p"] = "none"
    sparse: List[SparseColumnConfig] = field(default_factory=list)
    # random: a seeded shuffle; ordered: file order (or time_column order), the last rows are val then test.
    split: Literal["random", "ordered"] = "random"
    time_column: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        _check_fraction_pair("data.table", self.val_fraction, self.test_fraction)
        if len(self.delimiter) != 1:
            raise ConfigError(f"data.table.delimiter must be one character, got {self.delimiter!r}")
        names = [s.name or s.column for s in self.sparse]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"data.table.sparse: feature names must be unique, repeated: {dup} (set 'name')")
        if self.label_threshold is None and set(map(str, self.positive)) & set(map(str, self.negative)):
            raise ConfigError(f"data.table.positive {self.positive} and data.table.negative {self.negative} overlap")


@dataclass
class DataConfig:
    """Which data feeds the run and how it is batched."""

    source: Literal["synthetic", "criteo_tsv", "criteo_npy", "movielens", "table"] = "synthetic"
    # Global batch size, split evenly across ranks.
    batch_size: int = 2048
    # Rows of the synthetic val / test splits (file sources split by their own section's keys).
    val_rows: int = 65_536
    test_rows: int = 131_072
    # Malformed input rows: skip them (counted, summarised with file:line) or stop at the first.
    on_bad_row: Literal["skip", "error"] = "skip"
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    criteo: CriteoDataConfig = field(default_factory=CriteoDataConfig)
    movielens: MovieLensDataConfig = field(default_factory=MovieLensDataConfig)
    table: TableDataConfig = field(default_factory=TableDataConfig)


@dataclass
class ModelConfig:
    """A DLRM built from TorchRec's arches (teacher and student share this shape)."""

    arch: Literal["dlrm", "dlrm_dcn"] = "dlrm"
    embedding_dim: int = 64
    dense_arch_layer_sizes: List[int] = field(default_factory=lambda: [512, 256, 64])
    over_arch_layer_sizes: List[int] = field(default_factory=lambda: [512, 512, 256, 1])
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 64
    # Prefix of table names; teacher and student tables must differ to share one DMP.
    table_prefix: str = "t_"


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
    # Stop after this many validations in a row without an improvement of more than
    # min_delta (0: never stop early; the best checkpoint is still the one kept).
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation budget, model selection and schedule.

    Every recipe validates every ``eval_every`` steps (and at its last step), keeps the
    best checkpoint by ``early_stopping.metric`` and stops after ``patience`` validations
    without improvement; test metrics, export and distillation use the kept checkpoint.
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
    # Validation every N steps and at the last step (0: none, the last step's model is kept).
    eval_every: int = 100
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Save the full training state every N steps (0: never) under <output_dir>/train_state/<step name>/;
    # a restarted run with the same command resumes from the newest complete one.
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    # A NaN/Inf loss: "stop" the run (no checkpoint of those weights) or "skip" the step.
    on_nonfinite: Literal["stop", "skip"] = "stop"


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


@dataclass
class TeacherEntryConfig:
    """One member of a teacher ensemble: a ``train-teacher`` checkpoint and its weight."""

    # Checkpoint directory; its meta.json says the architecture (dlrm or dlrm_dcn) and tables.
    checkpoint: str = ""
    # Relative weight of this teacher's logits in the ensemble (normalised to sum to 1).
    weight: float = 1.0


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
    # Sparse features only the teacher reads (e.g. not available at serving time): the student
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

    def __post_init__(self) -> None:
        if self.qat_start < 0:
            raise ConfigError(f"distill.qat_start must be >= 0 (the first fake-quantized step), got {self.qat_start}")


@dataclass
class QuantizeConfig:
    """Post-training quantization of the student's embedding tables."""

    # Dtypes to export and evaluate; each gives a metrics.json entry distilled_<dtype>.
    dtypes: List[Literal["int8", "int4", "int2", "fp16"]] = field(default_factory=lambda: ["int8", "int4"])
    # Per-table override: {table_name: dtype}; tables not named use each run's dtype.
    tables: Dict[str, Literal["int8", "int4", "int2", "fp16"]] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    """What ``experiment`` repeats: each seed is a whole replicate (teacher, student, distilled, quantized)."""

    # Run seeds (model initialisation and train order; the synthetic world stays
    # data.synthetic.world_seed). Empty: one run with ``seed``, in the output dir itself;
    # otherwise each seed in <output_dir>/seed_<s>/ and summary.json / summary.md across them.
    seeds: List[int] = field(default_factory=list)


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
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(
        embedding_dim=16, dense_arch_layer_sizes=[64, 16], over_arch_layer_sizes=[64, 1], table_prefix="s_"))
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def out_dir(self) -> Path:
        """Where this run writes its outputs."""
        return Path(self.output_dir or Path("outputs") / self.run_name)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Dict):
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` (building nested dataclasses); raise ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not accepted; use one of {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        for e in errors:  # the value had the right type but not an accepted size: say that
            if isinstance(e, _RangeError):
                raise e
        raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a {_type_name(tp)}, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a {_type_name(tp)}, got {value!r}")
        _, arg = typing.get_args(tp)
        return {str(k): _coerce(v, arg, f"{where}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        _check_range(where, value)
        return value
    return value


def _build(cls: Any, raw: Dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


# Accepted ranges of numeric keys (inclusive; None: unbounded); ``[]`` matches any list index.
# Step counts and sizes are capped where a larger value is a typo (10**12 steps), or past
# what the kernels index (2^31 rows per table) or a host can hold.
_MAX_ROWS = 2**31 - 1
RANGES: Dict[str, tuple] = {
    "seed": (0, 2**32 - 1),
    "data.batch_size": (1, 1 << 20), "data.val_rows": (1, 10**10), "data.test_rows": (1, 10**10),
    "data.synthetic.num_dense": (1, 4096), "data.synthetic.num_sparse": (1, 1024),
    "data.synthetic.num_embeddings": (1, _MAX_ROWS), "data.synthetic.num_embeddings[]": (1, _MAX_ROWS),
    "data.synthetic.pooling": (1, 1024), "data.synthetic.pooling[]": (1, 1024),
    "data.synthetic.zipf_exponent": (0.01, 10.0), "data.synthetic.latent_dim": (1, 4096),
    "data.synthetic.num_clusters": (1, 1 << 24), "data.synthetic.interaction_density": (0.0, 1.0),
    "data.synthetic.interaction_vocab": (1, _MAX_ROWS), "data.synthetic.bias_weight": (0.0, None),
    "data.synthetic.pair_weight": (0.0, None), "data.synthetic.dense_weight": (0.0, None),
    "data.synthetic.cross_weight": (0.0, None), "data.synthetic.logit_scale": (1e-6, 100.0),
    "data.synthetic.positive_rate": (1e-6, 1 - 1e-6), "data.synthetic.block_rows": (1, 1 << 16),
    "data.synthetic.world_seed": (0, 2**32 - 1), "data.synthetic.train_rows": (1, 10**12),
    "data.synthetic.student_train_rows": (1, 10**12),
    "data.criteo.num_embeddings": (1, _MAX_ROWS), "data.criteo.num_embeddings[]": (1, _MAX_ROWS),
    "data.criteo.chunk_bytes": (1024, 1 << 30), "data.movielens.split_seed": (0, 2**32 - 1),
    "data.movielens.zip_prefix_len": (1, 5), "data.table.split_seed": (0, 2**32 - 1),
    "data.table.sparse[].num_embeddings": (1, _MAX_ROWS), "data.table.sparse[].max_length": (1, 1 << 20),
    "teacher.embedding_dim": (1, 4096), "student.embedding_dim": (1, 4096),
    "teacher.dense_arch_layer_sizes[]": (1, 1 << 16), "student.dense_arch_layer_sizes[]": (1, 1 << 16),
    "teacher.over_arch_layer_sizes[]": (1, 1 << 16), "student.over_arch_layer_sizes[]": (1, 1 << 16),
    "teacher.dcn_num_layers": (1, 64), "student.dcn_num_layers": (1, 64),
    "teacher.dcn_low_rank_dim": (1, 4096), "student.dcn_low_rank_dim": (1, 4096),
    "train.steps": (1, 10**8), "train.teacher_steps": (1, 10**8), "train.epochs": (1, 10**5),
    "train.teacher_epochs": (1, 10**5), "train.embedding_lr": (1e-12, None), "train.dense_lr": (1e-12, None),
    "train.eps": (1e-30, 1.0), "train.log_every": (0, 10**8), "train.eval_every": (0, 10**8),
    "train.checkpoint_every": (0, 10**8), "train.keep_checkpoints": (1, 1000),
    "train.early_stopping.patience": (0, 10**6), "train.early_stopping.min_delta": (0.0, 1.0),
    "distill.losses[].weight": (0.0, 1e6), "distill.losses[].temperature": (1e-3, 1e3),
    "distill.losses[].weight_schedule.steps": (0, 10**8), "distill.losses[].weight_schedule.delay": (0, 10**8),
    "distill.losses[].temperature_schedule.steps": (0, 10**8),
    "distill.losses[].temperature_schedule.delay": (0, 10**8),
    "distill.teachers[].weight": (0.0, 1e6), "distill.qat_start": (0, 10**8),
    "experiment.seeds[]": (0, 2**32 - 1), "distributed.timeout_s": (1, 7 * 86400),
}


def _check_range(where: str, value: Any) -> None:
    """Refuse a number outside its key's accepted range (``RANGES``)."""
    import re

    key = re.sub(r"\[\d+\]", "[]", where)
    if key not in RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = RANGES[key]
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):  # NaN too
        accepted = (f"between {lo} and {hi}" if lo is not None and hi is not None
                    else f">= {lo}" if lo is not None else f"<= {hi}")
        raise _RangeError(f"{where} must be {accepted}, got {value}")


def _set_dotted(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def _check_semantics(cfg: RunConfig, where: str) -> None:
    """Cross-field rules that types alone cannot express."""
    syn = cfg.data.synthetic
    for name, val in [("data.batch_size", cfg.data.batch_size), ("train.steps", cfg.train.steps),
                      ("data.synthetic.block_rows", syn.block_rows), ("train.teacher_steps", cfg.train.teacher_steps),
                      ("train.epochs", cfg.train.epochs), ("train.teacher_epochs", cfg.train.teacher_epochs),
                      ("data.synthetic.train_rows", syn.train_rows),
                      ("data.synthetic.student_train_rows", syn.student_train_rows)]:
        if val is not None and val <= 0:
            raise ConfigError(f"{where}: {name} must be positive, got {val}")
    if abs(syn.zipf_exponent - 1.0) < 1e-6:
        raise ConfigError(f"{where}: data.synthetic.zipf_exponent must not be 1 (the id sampler divides by "
                          "1 - exponent); use e.g. 0.99 or 1.05")
    stop = cfg.train.early_stopping
    if stop.patience < 0 or stop.min_delta < 0:
        raise ConfigError(f"{where}: train.early_stopping.patience and min_delta must be >= 0, "
                          f"got {stop.patience} and {stop.min_delta}")
    if cfg.train.eval_every < 0:
        raise ConfigError(f"{where}: train.eval_every must be >= 0 (0: no validation), got {cfg.train.eval_every}")
    if len(set(cfg.experiment.seeds)) != len(cfg.experiment.seeds):
        raise ConfigError(f"{where}: experiment.seeds repeats a seed: {cfg.experiment.seeds}")
    if (syn.train_rows is not None and syn.student_train_rows is not None
            and syn.student_train_rows > syn.train_rows):
        raise ConfigError(f"{where}: data.synthetic.student_train_rows ({syn.student_train_rows}) is more than "
                          f"data.synthetic.train_rows ({syn.train_rows}); the student's window is part of the train split")
    for name, sizes in [("data.synthetic.num_embeddings", syn.num_embeddings), ("data.synthetic.pooling", syn.pooling)]:
        if isinstance(sizes, list) and len(sizes) != syn.num_sparse:
            raise ConfigError(f"{where}: {name} lists {len(sizes)} values but data.synthetic.num_sparse is {syn.num_sparse}")
    for role in ("teacher", "student"):
        m: ModelConfig = getattr(cfg, role)
        if m.over_arch_layer_sizes[-1:] != [1]:
            raise ConfigError(f"{where}: {role}.over_arch_layer_sizes must end with 1 (one logit), got {m.over_arch_layer_sizes}")
        if m.dense_arch_layer_sizes[-1:] != [m.embedding_dim]:
            raise ConfigError(
                f"{where}: {role}.dense_arch_layer_sizes must end with {role}.embedding_dim "
                f"({m.embedding_dim}) so dense and sparse features interact; got {m.dense_arch_layer_sizes}")
    from torchrec_kd.losses import LOSSES  # late: the registry imports this module

    for i, term in enumerate(cfg.distill.losses):
        if term.name not in LOSSES:
            near = difflib.get_close_matches(term.name, list(LOSSES), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(f"{where}: distill.losses[{i}].name: unknown loss '{term.name}'; {hint}"
                              f"registered: {', '.join(sorted(LOSSES))}")
    if not cfg.distill.losses:
        raise ConfigError(f"{where}: distill.losses is empty; list at least one term, e.g. {{name: soft_bce, weight: 1.0}}")
    if cfg.teacher.table_prefix == cfg.student.table_prefix:
        raise ConfigError(f"{where}: teacher.table_prefix and student.table_prefix must differ (both '{cfg.student.table_prefix}'): "
                          "both models share one DistributedModelParallel")


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load and validate a run config.

    Args:
        path (Optional[str | Path]): YAML file; None starts from the defaults.
        overrides (Sequence[str]): ``dotted.key=value`` strings, values parsed as YAML.

    Returns:
        RunConfig: the validated config.

    Raises:
        ConfigError: naming the file, key and accepted values.
    """
    raw: Dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass an existing YAML file to --config")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); save the config as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot be read ({e.strerror}); pass a readable YAML file to --config") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{p}: not valid YAML{at}: {problem}") from None
        if raw is None:
            raise ConfigError(f"{p}: the file is empty; a config needs at least run_name and its sections "
                              "(see configs/tiny_synthetic.yaml)")
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (run_name: …, data: …), "
                              f"got a {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.steps=100)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({e.problem}); quote it, "
                              "e.g. 'data.criteo.val=[\"day_1[0:1/2]\"]'") from None
        _set_dotted(raw, key.strip(), value)
    if overrides:
        where += " (with overrides " + " ".join(overrides) + ")"
    try:
        cfg = _build(RunConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    _check_semantics(cfg, where)
    return cfg


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain-dict view of a config (for logging and saving beside checkpoints)."""
    return dataclasses.asdict(cfg)
