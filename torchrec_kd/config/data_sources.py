"""The ``data`` section: one dataclass per source, each read by its reader in ``torchrec_kd.data``.

``synthetic`` -> ``data/synthetic.py``, ``criteo`` -> ``data/criteo.py`` (and ``preprocess.py``),
``movielens`` -> ``data/movielens.py``, ``table`` -> ``data/table.py``. They sit in the config
layer so a config is checked whole before any reader (or torch) is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Union

from torchrec_kd.errors import ConfigError


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
