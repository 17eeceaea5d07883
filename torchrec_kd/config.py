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


@dataclass
class DataConfig:
    """Which data feeds the run and how it is batched."""

    source: Literal["synthetic"] = "synthetic"
    # Global batch size, split evenly across ranks.
    batch_size: int = 2048
    val_rows: int = 65_536
    test_rows: int = 131_072
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


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
class TrainConfig:
    """Optimisation budget and schedule."""

    # Steps of the student (alone and distilled): the budget both get.
    steps: int = 600
    # Steps of the teacher (null: ``steps``); production teachers see far more data.
    teacher_steps: Optional[int] = None
    embedding_lr: float = 0.05
    dense_lr: float = 0.02
    eps: float = 1e-8
    log_every: int = 100
    # Validation every N steps (0: only at the end).
    eval_every: int = 0


@dataclass
class LossTermConfig:
    """One weighted term of the distillation objective (names from ``torchrec_kd.losses``)."""

    name: str = "soft_bce"
    weight: float = 1.0
    # Softening temperature for soft-label terms (soft_bce, kl); ignored by others.
    temperature: float = 1.0


@dataclass
class DistillConfig:
    """What the student learns from: the teacher checkpoint and the loss mix."""

    # Teacher checkpoint directory; null: <output_dir>/teacher (from train-teacher).
    teacher_checkpoint: Optional[str] = None
    losses: List[LossTermConfig] = field(default_factory=lambda: [
        LossTermConfig(name="hard_bce", weight=0.5), LossTermConfig(name="soft_bce", weight=0.5, temperature=1.0)])


@dataclass
class QuantizeConfig:
    """Post-training quantization of the student's embedding tables."""

    # Dtypes to export and evaluate; each gives a metrics.json entry distilled_<dtype>.
    dtypes: List[Literal["int8", "int4", "int2", "fp16"]] = field(default_factory=lambda: ["int8", "int4"])
    # Per-table override: {table_name: dtype}; tables not named use each run's dtype.
    tables: Dict[str, Literal["int8", "int4", "int2", "fp16"]] = field(default_factory=dict)


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
                errors.append(str(e))
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
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
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
                      ("data.synthetic.block_rows", syn.block_rows)]:
        if val <= 0:
            raise ConfigError(f"{where}: {name} must be positive, got {val}")
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
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.steps=100)")
        key, text = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(text))
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
