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
import glob
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml

from torchrec_kd.config.data_sources import (
    USER_HISTORY,
    CriteoDataConfig,
    DataConfig,
    DriftConfig,
    MovieLensDataConfig,
    RetrievalDataConfig,
    SparseColumnConfig,
    SyntheticRetrievalConfig,
    SyntheticTasksConfig,
    TableDataConfig,
    WindowsConfig,
    duration_seconds,
)
from torchrec_kd.config.schema import DLRM_FAMILY, ModelConfig, RunConfig
from torchrec_kd.errors import ConfigError


class _RangeError(ConfigError):
    """A number outside its key's accepted range (kept through ``Union`` coercion)."""


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
        sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:  # an optional section: its own error, not "not a X or null"
            return _coerce(value, sections[0], where)
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
        if tp is float and not math.isfinite(value):  # .inf / .nan: no key means them
            raise _RangeError(f"{where} must be a finite number, got {value}")
        _check_range(where, value)
        return value
    return value


def _build(cls: Any, raw: Dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {sorted(f.name for f in dataclasses.fields(cls))}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            # the top level has no dotted prefix to name: say which level it is
            raise ConfigError(f"{where}: unknown key '{key}'{hint}" if where else f"unknown top-level key '{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def build_section(cls: Any, raw: Dict[str, Any], where: str) -> Any:
    """Check a mapping against a dataclass's fields and types, as the config loader does.

    What plugins' model builders and loss terms use for their ``args``: unknown keys get the
    same "did you mean" message, wrong types the same one-line error.

    Args:
        cls (type): a dataclass.
        raw (Dict[str, Any]): the mapping (e.g. ``student.args``).
        where (str): its dotted key, for messages.

    Returns:
        Any: the dataclass instance.

    Raises:
        ConfigError: ``<where>.<key>: …`` naming what is wrong and what is accepted.
    """
    return _build(cls, raw, where)


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
    "data.windows.count": (2, 10**6), "data.windows.index": (0, 10**6), "data.windows.rare_below": (1, 10**9),
    "data.synthetic.drift.windows": (2, 10**5), "data.synthetic.drift.rows_per_window": (1, 10**10),
    "teacher.embedding_dim": (1, 4096), "student.embedding_dim": (1, 4096),
    "teacher.dense_arch_layer_sizes[]": (1, 1 << 16), "student.dense_arch_layer_sizes[]": (1, 1 << 16),
    "teacher.over_arch_layer_sizes[]": (1, 1 << 16), "student.over_arch_layer_sizes[]": (1, 1 << 16),
    "teacher.dcn_num_layers": (1, 64), "student.dcn_num_layers": (1, 64),
    "teacher.dcn_low_rank_dim": (1, 4096), "student.dcn_low_rank_dim": (1, 4096),
    "train.steps": (1, 10**8), "train.teacher_steps": (1, 10**8), "train.epochs": (1, 10**5),
    "train.teacher_epochs": (1, 10**5), "continual.warm_epochs": (1, 10**5),
    "train.embedding_lr": (1e-12, None), "train.dense_lr": (1e-12, None),
    "train.eps": (1e-30, 1.0), "train.log_every": (0, 10**8), "train.eval_every": (0, 10**8),
    "train.checkpoint_every": (0, 10**8), "train.keep_checkpoints": (1, 1000),
    "train.early_stopping.patience": (0, 10**6), "train.early_stopping.min_delta": (0.0, 1.0),
    "distill.losses[].weight": (0.0, 1e6), "distill.losses[].temperature": (1e-3, 1e3),
    "distill.losses[].weight_schedule.steps": (0, 10**8), "distill.losses[].weight_schedule.delay": (0, 10**8),
    "distill.losses[].temperature_schedule.steps": (0, 10**8),
    "distill.losses[].temperature_schedule.delay": (0, 10**8),
    "distill.teachers[].weight": (0.0, 1e6), "distill.qat_start": (0, 10**8),
    "experiment.seeds[]": (0, 2**32 - 1), "distributed.timeout_s": (1, 7 * 86400),
    "quantize.prune.min_count": (0, None), "quantize.prune.count_rows": (1, None),
    "quantize.budget.bytes": (1, None), "quantize.budget.max_auc_loss": (0.0, 1.0),
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
        if node.get(part) is None:  # a missing or null optional section (quantize.prune: null) is created
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def _check_semantics(cfg: RunConfig, where: str) -> None:
    """Cross-field rules that types alone cannot express."""
    _check_data_sections(cfg.data, where)
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
    if cfg.output_dir is not None and not cfg.output_dir.strip():
        raise ConfigError(f"{where}: output_dir (--output-dir) is empty; name a directory, or leave it out for "
                          f"outputs/{cfg.run_name}")
    _check_quantize(cfg, where)
    _check_windows(cfg, where)
    _check_tasks(cfg, where)
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
        if m.arch not in DLRM_FAMILY:  # other builders check their own args (torchrec_kd.models.registry)
            continue
        if m.over_arch_layer_sizes[-1:] != [1]:
            raise ConfigError(f"{where}: {role}.over_arch_layer_sizes must end with 1 (one logit), got {m.over_arch_layer_sizes}")
        if m.dense_arch_layer_sizes[-1:] != [m.embedding_dim]:
            raise ConfigError(
                f"{where}: {role}.dense_arch_layer_sizes must end with {role}.embedding_dim "
                f"({m.embedding_dim}) so dense and sparse features interact; got {m.dense_arch_layer_sizes}")
    # loss names are checked against the registry by torchrec_kd.losses.check_loss_names (the
    # registry sits a layer above the config, and plugins add to it)
    if not cfg.distill.losses:
        raise ConfigError(f"{where}: distill.losses is empty; list at least one term, e.g. {{name: soft_bce, weight: 1.0}}")
    if cfg.train.tower_losses and cfg.data.retrieval is None:
        raise ConfigError(f"{where}: train.tower_losses score users against candidate items and need data.retrieval "
                          "(user_features / item_features); set it or drop them")
    if cfg.teacher.table_prefix == cfg.student.table_prefix:
        raise ConfigError(f"{where}: teacher.table_prefix and student.table_prefix must differ "
                          f"(both '{cfg.student.table_prefix}'): "
                          "both models share one DistributedModelParallel")


def _check_data_sections(data: DataConfig, where: str) -> None:
    """Each ``data`` section's own values (every section, set or default, whichever source reads).

    Sets ``data.retrieval.ks`` in place to its sorted cutoffs with 20 added (always reported).
    Rules between sections and the source (windows on Criteo, drift features): ``_check_windows``.
    """
    if data.synthetic.drift is not None:
        _check_drift(data.synthetic.drift, where)
    if data.synthetic.tasks is not None:
        _check_synthetic_tasks(data.synthetic.tasks, where)
    _check_criteo(data.criteo, where)
    _check_movielens(data.movielens, where)
    _check_table(data.table, where)
    if data.windows is not None:
        _check_windows_keys(data.windows, where)
    if data.retrieval is not None:
        _check_synthetic_retrieval(data.retrieval.synthetic, where)
        _check_retrieval(data.retrieval, where)


def _check_drift(drift: DriftConfig, where: str) -> None:
    """``data.synthetic.drift``: shares in [0, 1), two windows or more, ids left for window 0."""
    for name in ("new_ids_per_window", "popularity_shift", "concept_shift"):
        v = getattr(drift, name)
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{where}: data.synthetic.drift.{name} must be in [0, 1), got {v}")
    if drift.windows < 2:
        raise ConfigError(f"{where}: data.synthetic.drift.windows must be >= 2 (a window to train on, one to test), "
                          f"got {drift.windows}")
    if drift.rows_per_window < 1:
        raise ConfigError(f"{where}: data.synthetic.drift.rows_per_window must be positive, got {drift.rows_per_window}")
    if drift.new_ids_per_window * (drift.windows - 1) >= 1.0:
        raise ConfigError(f"{where}: data.synthetic.drift.new_ids_per_window={drift.new_ids_per_window} over "
                          f"{drift.windows} windows leaves no ids for window 0; lower it below "
                          f"{1.0 / (drift.windows - 1):.4g}")


def _check_windows_keys(win: WindowsConfig, where: str) -> None:
    """``data.windows`` on its own: count or size, their companions, fractions and counts in range."""
    if (win.count is None) == (win.size is None):
        raise ConfigError(f"{where}: data.windows: set exactly one of count (equal-row windows) or size (a duration "
                          f"such as 90d), got count={win.count} and size={win.size}")
    if win.count is not None and win.count < 2:
        raise ConfigError(f"{where}: data.windows.count must be >= 2 (a window to train on, one to test), "
                          f"got {win.count}")
    if win.size is not None:
        if win.by != "time":
            raise ConfigError(f"{where}: data.windows.size={win.size!r} needs by: time (a duration cuts a time "
                              "column); with by: rows use data.windows.count")
        try:
            duration_seconds(win.size)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if win.min_rows < 0:
        raise ConfigError(f"{where}: data.windows.min_rows must be >= 0, got {win.min_rows}")
    if (win.start is not None or win.min_rows) and win.size is None:
        raise ConfigError(f"{where}: data.windows.start and min_rows need data.windows.size (count windows split the "
                          "rows evenly)")
    if not 0.0 < win.val_fraction < 1.0:
        raise ConfigError(f"{where}: data.windows.val_fraction must be in (0, 1), got {win.val_fraction}")
    if win.index is not None and win.index < 0:
        raise ConfigError(f"{where}: data.windows.index must be >= 0 or null, got {win.index}")
    if win.rare_below < 1:
        raise ConfigError(f"{where}: data.windows.rare_below must be >= 1, got {win.rare_below}")
    if len(set(win.entities)) != len(win.entities):
        raise ConfigError(f"{where}: data.windows.entities repeats a feature: {win.entities}")


def _check_synthetic_tasks(tasks: SyntheticTasksConfig, where: str) -> None:
    """``data.synthetic.tasks``: shares in [-1, 1], rates in (0, 1), a non-negative dwell noise."""
    for name in ("conversion_share", "like_share", "dwell_share"):
        if not -1.0 <= getattr(tasks, name) <= 1.0:
            raise ConfigError(f"{where}: data.synthetic.tasks.{name} must be in [-1, 1], got {getattr(tasks, name)}")
    for name in ("conversion_rate", "like_rate"):
        if not 0.0 < getattr(tasks, name) < 1.0:
            raise ConfigError(f"{where}: data.synthetic.tasks.{name} must be in (0, 1), got {getattr(tasks, name)}")
    if tasks.dwell_noise < 0:
        raise ConfigError(f"{where}: data.synthetic.tasks.dwell_noise must be >= 0, got {tasks.dwell_noise}")
    if tasks.interaction_density is not None and not 0.0 <= tasks.interaction_density <= 1.0:
        raise ConfigError(f"{where}: data.synthetic.tasks.interaction_density must be in [0, 1] or null, "
                          f"got {tasks.interaction_density}")


def _check_fraction_pair(where: str, section: str, val: float, test: float) -> None:
    """``val`` and ``test`` fractions of ``section`` must leave rows for training."""
    for name, v in (("val_fraction", val), ("test_fraction", test)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{where}: {section}.{name} must be in [0, 1), got {v}")
    if val + test >= 1.0:
        raise ConfigError(f"{where}: {section}.val_fraction + {section}.test_fraction must be < 1 (rows are left for "
                          f"train), got {val} + {test}")


def _check_criteo(criteo: CriteoDataConfig, where: str) -> None:
    """``data.criteo``: one table size or 26, all positive; a parse chunk of 1 KiB or more."""
    if isinstance(criteo.num_embeddings, list) and len(criteo.num_embeddings) != 26:
        raise ConfigError(f"{where}: data.criteo.num_embeddings lists {len(criteo.num_embeddings)} values; "
                          "Criteo has 26 categorical features (give one int or 26)")
    sizes = criteo.num_embeddings if isinstance(criteo.num_embeddings, list) else [criteo.num_embeddings]
    if min(sizes) <= 0:
        raise ConfigError(f"{where}: data.criteo.num_embeddings must be positive, got {criteo.num_embeddings}")
    if criteo.chunk_bytes < 1024:
        raise ConfigError(f"{where}: data.criteo.chunk_bytes must be at least 1024, got {criteo.chunk_bytes}")


def _check_movielens(ml: MovieLensDataConfig, where: str) -> None:
    """``data.movielens``: split fractions, zip prefix length, positive table sizes."""
    _check_fraction_pair(where, "data.movielens", ml.val_fraction, ml.test_fraction)
    if ml.zip_prefix_len < 1:
        raise ConfigError(f"{where}: data.movielens.zip_prefix_len must be >= 1, got {ml.zip_prefix_len}")
    for name, n in ml.num_embeddings.items():
        if n <= 0:
            raise ConfigError(f"{where}: data.movielens.num_embeddings.{name} must be positive, got {n}")


def _check_sparse_column(col: SparseColumnConfig, where: str) -> None:
    """One ``data.table.sparse`` entry: a column, a positive table size, a usable separator and length."""
    if not col.column:
        raise ConfigError(f"{where}: data.table.sparse: every entry needs a 'column'")
    if col.num_embeddings <= 0:
        raise ConfigError(f"{where}: data.table.sparse[{col.column}].num_embeddings must be positive, "
                          f"got {col.num_embeddings}")
    if col.separator == "":
        raise ConfigError(f"{where}: data.table.sparse[{col.column}].separator must be a non-empty string or null")
    if col.max_length is not None and col.max_length < 1:
        raise ConfigError(f"{where}: data.table.sparse[{col.column}].max_length must be >= 1 or null, "
                          f"got {col.max_length}")


def _check_table(table: TableDataConfig, where: str) -> None:
    """``data.table``: its sparse columns, split fractions, delimiter, unique features, disjoint label values."""
    for col in table.sparse:
        _check_sparse_column(col, where)
    _check_fraction_pair(where, "data.table", table.val_fraction, table.test_fraction)
    if len(table.delimiter) != 1:
        raise ConfigError(f"{where}: data.table.delimiter must be one character, got {table.delimiter!r}")
    names = [s.name or s.column for s in table.sparse]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: data.table.sparse: feature names must be unique, repeated: {dup} (set 'name')")
    if table.label_threshold is None and set(map(str, table.positive)) & set(map(str, table.negative)):
        raise ConfigError(f"{where}: data.table.positive {table.positive} and data.table.negative {table.negative} "
                          "overlap")


def _check_synthetic_retrieval(world: SyntheticRetrievalConfig, where: str) -> None:
    """``data.retrieval.synthetic``: sizes >= 1, enough items and tags, rates and weights in range."""
    key = "data.retrieval.synthetic"
    for name in ("num_users", "num_items", "impressions_per_user", "user_segments", "item_categories",
                 "latent_dim", "cross_dim", "num_tags", "tags_per_item"):
        if getattr(world, name) < 1:
            raise ConfigError(f"{where}: {key}.{name} must be >= 1, got {getattr(world, name)}")
    if world.impressions_per_user * 3 // 2 > world.num_items:
        raise ConfigError(f"{where}: {key}.impressions_per_user={world.impressions_per_user}: up to 3/2 of it "
                          f"distinct items per user, more than num_items={world.num_items}; lower it")
    if world.tags_per_item > world.num_tags:
        raise ConfigError(f"{where}: {key}.tags_per_item={world.tags_per_item} exceeds num_tags={world.num_tags}")
    if not 0.0 < world.positive_rate < 1.0:
        raise ConfigError(f"{where}: {key}.positive_rate must be in (0, 1), got {world.positive_rate}")
    if not 0.0 <= world.relevance_share <= 1.0:
        raise ConfigError(f"{where}: {key}.relevance_share must be in [0, 1], got {world.relevance_share}")
    for name in ("spread", "dot_weight", "cross_weight", "bias_weight", "num_dense"):
        if getattr(world, name) < 0:
            raise ConfigError(f"{where}: {key}.{name} must be >= 0, got {getattr(world, name)}")
    if world.dot_weight + world.cross_weight + world.bias_weight == 0 or world.logit_scale <= 0:
        raise ConfigError(f"{where}: {key}: the oracle needs a positive logit_scale and a term with a positive "
                          "weight (dot_weight, cross_weight, bias_weight)")


def _check_retrieval(r: RetrievalDataConfig, where: str) -> None:
    """``data.retrieval``: counts in range, cutoffs (sorted, 20 added, in place), a reported select_metric, roles."""
    if r.history_length < 0:
        raise ConfigError(f"{where}: data.retrieval.history_length must be >= 0, got {r.history_length}")
    if r.eval_users is not None and r.eval_users < 1:
        raise ConfigError(f"{where}: data.retrieval.eval_users must be >= 1 or null (all), got {r.eval_users}")
    if r.min_positives < 2:
        raise ConfigError(f"{where}: data.retrieval.min_positives must be >= 2 (a val and a test target), "
                          f"got {r.min_positives}")
    if not r.ks or min(r.ks) < 1:
        raise ConfigError(f"{where}: data.retrieval.ks must list cutoffs >= 1, got {r.ks}")
    r.ks = sorted(set(r.ks) | {20})  # recall@20 / ndcg@20 are always reported
    selectable = ["mrr"] + [f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in r.ks]
    if r.select_metric not in selectable:
        raise ConfigError(f"{where}: data.retrieval.select_metric '{r.select_metric}' is not reported; use one of "
                          f"{', '.join(selectable)} (a cutoff must be in data.retrieval.ks)")
    both = sorted(set(r.user_features) & set(r.item_features))
    if both:
        raise ConfigError(f"{where}: data.retrieval: {both} listed in both user_features and item_features; a "
                          "feature describes one side")
    if r.history_length == 0 and USER_HISTORY in r.user_features:
        raise ConfigError(f"{where}: data.retrieval.user_features lists {USER_HISTORY} but history_length is 0 (no "
                          "history feature); remove it or set a history_length")
    if USER_HISTORY in r.item_features:
        raise ConfigError(f"{where}: data.retrieval.item_features: {USER_HISTORY} is a user feature (the user's past "
                          "positive items)")
    if r.item_features and r.item_id not in r.item_features:
        raise ConfigError(f"{where}: data.retrieval.item_id={r.item_id!r} is not in data.retrieval.item_features "
                          f"{r.item_features}")
    if r.user_features and r.user_id not in r.user_features:
        raise ConfigError(f"{where}: data.retrieval.user_id={r.user_id!r} is not in data.retrieval.user_features "
                          f"{r.user_features}")


def _check_tasks(cfg: RunConfig, where: str) -> None:
    """``tasks``: unique names; spaces name another binary task; every reference to a task names one."""
    names = [t.name for t in cfg.tasks]

    def known(name: str, key: str) -> None:
        if name not in names:
            near = difflib.get_close_matches(str(name), names, n=1)
            hint = f"did you mean '{near[0]}'?" if near else (f"the tasks are: {', '.join(names)}" if names else
                                                              "this run lists no tasks (set tasks: [...])")
            raise ConfigError(f"{where}: {key}: no task named '{name}'; {hint}")

    for i, t in enumerate(cfg.tasks):
        key = f"tasks[{i}]"
        if t.name == "mean":
            raise ConfigError(f"{where}: {key}.name 'mean' is reserved (train.early_stopping.task: mean is the "
                              "weighted mean over tasks); name the task otherwise")
        if not t.name or names.count(t.name) > 1:
            raise ConfigError(f"{where}: {key}.name '{t.name}' is empty or repeated; give every task its own name")
        if t.type == "regression" and (t.at_least is not None or t.positive):
            raise ConfigError(f"{where}: {key} ({t.name}) is a regression task; at_least and positive make binary "
                              "labels: drop them or set type: binary")
        if t.at_least is not None and t.positive:
            raise ConfigError(f"{where}: {key} ({t.name}) sets both at_least and positive; keep one")
        if t.weight < 0:
            raise ConfigError(f"{where}: {key}.weight must be >= 0, got {t.weight}")
        if t.only_where is not None:
            known(t.only_where, f"{key}.only_where")
            other = cfg.tasks[names.index(t.only_where)]
            if other.name == t.name or other.type != "binary" or other.only_where is not None:
                raise ConfigError(f"{where}: {key}.only_where must name another binary task observed on every row "
                                  f"(e.g. conversion only where click), got '{t.only_where}'")
    stop_task = cfg.train.early_stopping.task
    if stop_task is not None and stop_task != "mean":
        known(stop_task, "train.early_stopping.task")
    chosen = cfg.tasks[names.index(stop_task)] if stop_task in names else (cfg.tasks[0] if cfg.tasks and
                                                                           stop_task is None else None)
    if chosen is not None and chosen.type != "binary":
        raise ConfigError(f"{where}: train.early_stopping.task: '{chosen.name}' is a regression task"
                          f"{'' if stop_task else ' (null means the first task)'}; the selection metric (auc, ne "
                          "or logloss) needs a binary task: name one, or mean")
    if stop_task == "mean" and cfg.tasks and not any(t.type == "binary" for t in cfg.tasks):
        raise ConfigError(f"{where}: train.early_stopping.task is mean but no task is binary; name a task")
    for i, term in enumerate(cfg.distill.losses):
        if term.task is not None:
            known(term.task, f"distill.losses[{i}].task")
        if term.in_space_weight < 0 or term.out_space_weight < 0:
            raise ConfigError(f"{where}: distill.losses[{i}]: in_space_weight and out_space_weight must be >= 0")
    for i, entry in enumerate(cfg.distill.teachers):
        for name in entry.tasks or []:
            known(name, f"distill.teachers[{i}].tasks")


def _check_windows(cfg: RunConfig, where: str) -> None:
    """``data.windows`` and ``data.synthetic.drift`` against the source (data-dependent rules: data/windows.py)."""
    data, win = cfg.data, cfg.data.windows
    drift = data.synthetic.drift if data.source == "synthetic" else None
    if drift is not None:
        names = [f"cat_{i}" for i in range(data.synthetic.num_sparse)]
        unknown = [f for f in drift.features if f not in names]
        if unknown:
            raise ConfigError(f"{where}: data.synthetic.drift.features names {unknown}, not sparse features of this "
                              f"world (cat_0 .. cat_{data.synthetic.num_sparse - 1})")
    if win is None:
        return
    if data.source in ("criteo_tsv", "criteo_npy"):
        _check_criteo_windows(cfg, where)
    if data.source == "synthetic":
        if drift is None:
            raise ConfigError(f"{where}: data.windows on the synthetic source needs data.synthetic.drift (the static "
                              "world has no time order); set data.synthetic.drift: {windows: 12}")
        if win.size is not None:
            raise ConfigError(f"{where}: data.windows.size={win.size!r}: the drifting synthetic world's time is its "
                              f"window number; use data.windows.count (e.g. {drift.windows})")
    if data.source == "table" and win.by == "time" and not data.table.time_column:
        raise ConfigError(f"{where}: data.windows.by: time needs data.table.time_column (or by: rows for the stored "
                          "order)")
    if win.count is not None and win.index is not None and win.index > win.count - 2:
        raise ConfigError(f"{where}: data.windows.index={win.index} is out of range: {win.count} windows, and window "
                          f"index + 1 is the test window, so index must be in 0..{win.count - 2}")


def _check_criteo_windows(cfg: RunConfig, where: str) -> None:
    """Criteo's windows are its day files (``data.criteo.days``); no entities, no ``size`` (data/timelines.py)."""
    win, days = cfg.data.windows, cfg.data.criteo.days
    if win.entities:
        raise ConfigError(f"{where}: data.windows.entities={win.entities} must be empty for data.source="
                          f"{cfg.data.source}: Criteo's categories are hashed values, not user / item ids, so there "
                          "is no id remap and no cold-start slice; remove it")
    if not days:
        raise ConfigError(f"{where}: data.windows on Criteo needs data.criteo.days, the day files in time order "
                          "(one window each), e.g. [day_0, day_1, day_2] or ['day_*']")
    if win.size is not None:
        raise ConfigError(f"{where}: data.windows.size={win.size!r}: Criteo's windows are its day files; use "
                          "data.windows.count (the number of day files in data.criteo.days)")
    # a glob's matches are only known once the folder is read (checked then); a row range is not a glob
    names = [re.sub(r"\[[^\[\]:]*:[^\[\]:]*\]\s*$", "", d.strip()) for d in days]
    if not any(glob.has_magic(n) for n in names) and win.count != len(days):
        raise ConfigError(f"{where}: data.windows.count={win.count} but data.criteo.days names {len(days)} day "
                          f"files (one window each); set data.windows.count={len(days)}")


def _check_quantize(cfg: RunConfig, where: str) -> None:
    """The pruning and budget sections' rules (fractions in (0, 1], one budget kind)."""
    prune, budget = cfg.quantize.prune, cfg.quantize.budget
    if prune is not None and prune.keep_fraction is not None and not 0.0 < prune.keep_fraction <= 1.0:
        raise ConfigError(f"{where}: quantize.prune.keep_fraction must be in (0, 1] or null, got {prune.keep_fraction}")
    if budget is None:
        return
    if budget.replay is None and (budget.bytes is None) == (budget.max_auc_loss is None):
        raise ConfigError(f"{where}: quantize.budget: set exactly one of bytes or max_auc_loss (or replay: <plan.json>)")
    if not budget.keep_fractions or any(not 0.0 < f <= 1.0 for f in budget.keep_fractions) or not budget.dtypes:
        raise ConfigError(f"{where}: quantize.budget: keep_fractions must be in (0, 1] and dtypes non-empty, "
                          f"got {budget.keep_fractions} / {budget.dtypes}")


def string_override(key: str, value: str) -> str:
    """A ``key=value`` override that sets ``key`` to the string ``value`` exactly.

    Override values are read as YAML, so a command-line flag such as ``--output-dir ''``
    (empty: YAML null) or ``--output-dir 2024`` (an int) would change meaning; those are quoted.

    Args:
        key (str): the dotted key, e.g. ``output_dir``.
        value (str): the string it must hold.

    Returns:
        str: ``key=value``, the value quoted only where YAML would read it as something else.
    """
    import json

    try:
        plain = yaml.safe_load(value) == value
    except yaml.YAMLError:
        plain = False
    return f"{key}={value}" if plain else f"{key}={json.dumps(value)}"  # a JSON string is a YAML string


def config_source(path: Optional[Union[str, Path]], overrides: Sequence[str] = ()) -> str:
    """How error messages name a config: its file and the overrides on top (``<defaults>`` without a file)."""
    where = str(path) if path is not None else "<defaults>"
    return where + (" (with overrides " + " ".join(overrides) + ")" if overrides else "")


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
    where = config_source(path, overrides)
    if path is not None:
        p = Path(path)
        if p.is_dir():
            found = sorted(q.name for q in p.glob("*.yaml"))
            raise ConfigError(f"config {p} is a directory, not a file; pass one YAML file to --config"
                              + (f", e.g. {p / found[0]}" if found else ""))
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
        if key.strip() == "output_dir" and not text.strip():
            value = text  # YAML would read it as null (the default directory): keep '' so the check refuses it
        _set_dotted(raw, key.strip(), value)
    try:
        cfg = _build(RunConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    _check_semantics(cfg, where)
    return cfg


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain-dict view of a config (for logging and saving beside checkpoints)."""
    return dataclasses.asdict(cfg)
