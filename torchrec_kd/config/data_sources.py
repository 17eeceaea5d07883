"""The ``data`` section: one dataclass per source, each read by its reader in ``torchrec_kd.data``.

``synthetic`` -> ``data/synthetic.py``, ``criteo`` -> ``data/criteo.py`` (and ``preprocess.py``),
``movielens`` -> ``data/movielens.py``, ``table`` -> ``data/table.py``. They sit in the config
layer so a config is checked whole before any reader (or torch) is imported. Their values are
checked where they enter, by the loader (``load.py``: ``_check_data_sections``), not here: a
dataclass built in code is taken as given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Union

from torchrec_kd.errors import ConfigError


@dataclass
class DriftConfig:
    """A drifting synthetic world cut into time windows (``data.synthetic.drift``; see ``data/drift.py``).

    Window ``w`` holds ``rows_per_window`` rows. Each window, on every feature in ``features``:
    ``new_ids_per_window`` of the table's ids appear for the first time (inserted at random places of
    the popularity ranking), the ranking rotates (its top ``popularity_shift`` share falls to the
    tail, every other id moves up), and on every feature ``concept_shift`` of the per-id biases of the
    oracle are redrawn. All of it is drawn from ``world_seed``: planted and reproducible.
    """

    windows: int = 12
    rows_per_window: int = 16_384
    # Fraction of each drifting table's ids that first appear in each window (window 0 holds the rest).
    new_ids_per_window: float = 0.02
    # Share of the Zipf ranking that rotates per window (the most popular ids fade to the tail).
    popularity_shift: float = 0.02
    # Fraction of the oracle's per-id biases redrawn per window (every feature).
    concept_shift: float = 0.05
    # Features with new ids and popularity drift (the "users / items"); the rest keep the static world's.
    features: List[str] = field(default_factory=lambda: ["cat_0", "cat_1"])


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str, where: str = "data.windows.size") -> float:
    """``"90d"``, ``"7d"``, ``"12h"``, ``"30m"``, ``"2w"``, ``"45s"`` -> seconds (ConfigError naming ``where``)."""
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{where}={text!r} is not a duration; write a positive number and a unit s, m, h, d or w "
                          "(e.g. 90d, 7d, 12h)")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


@dataclass
class WindowsConfig:
    """Consecutive time windows of a time-ordered source (``data.windows``; see ``data/windows.py``).

    A windowed run's splits: train = window ``index``'s rows minus its val slice (with ``history``:
    the train parts of windows 0..index); val = the last ``val_fraction`` of window ``index`` by
    time; test = all rows of window ``index + 1`` (scored before anything trained on them).
    """

    # time: the source's time column (MovieLens timestamp, data.table.time_column, the drifting
    # synthetic world's window number); rows: the stored order.
    by: Literal["time", "rows"] = "time"
    # Exactly one of: count (equal-row-count consecutive windows in time order) or size (a duration
    # such as "90d", "7d", "12h"; by: time on a source with real times).
    count: Optional[int] = None
    size: Optional[str] = None
    # With size: window 0 holds every row before this date or Unix time (a warm-up history) and
    # the windows of `size` follow from it; null: windows start at the first row's time.
    start: Optional[Union[str, int]] = None
    # With size: a window with fewer rows than this is merged into the next one (the last into the
    # one before), so a bursty log still gives windows worth training on; 0: no merging.
    min_rows: int = 0
    # The held-out slice of window `index` used for model selection (its last rows by time).
    val_fraction: float = 0.1
    # The window this run trains on; null: all windows but the last (history), the last is test.
    index: Optional[int] = None
    # true: train on the train parts of windows 0..index (teacher retrain, from-scratch reference).
    history: bool = False
    # Sparse features whose ids are users / items: remapped (new ids get their own rows, unseen
    # ids row 0) and used for the cold-start slices. Empty: the source's default (MovieLens
    # [user_id, item_id], drifting synthetic its drift.features; data.table must name them).
    entities: List[str] = field(default_factory=list)
    # An id seen fewer than this many times in the trained rows is "rare".
    rare_below: int = 5
    # Not for users: set by the `continual` workflow to the digest of the rows window `index`
    # reads (windows 0..index+1; Criteo: those days' files), so a window's fingerprint depends on
    # its rows only and data arriving later re-runs nothing already done. A run that reads other
    # rows than this digest stops (data/timelines.py: window_rows_digest). Null: not set.
    rows_digest: Optional[str] = None


@dataclass
class SyntheticTasksConfig:
    """The synthetic multi-task world (read when ``tasks`` lists two or more; see ``data/synthetic.py``).

    The world's tasks: ``click`` (the one-task world's label, row for row), ``conversion``
    (drawn only on clicked rows, 0 elsewhere), ``like`` (binary) and ``dwell`` (regression).
    Every task but click has its own oracle: per-id biases, dense terms and latent pair
    interactions over the same per-id codes as click but with its own pairs (so the tasks share
    embeddings and differ in what interacts: a narrow student must fit every task's pairs in one
    small embedding, a wide teacher holds them all). Its logit is ``share`` times click's
    (standardised) plus ``sqrt(1 - share^2)`` times its own: share > 0 shares the click signal,
    share < 0 partly conflicts with it.
    """

    # conversion: partly conflicting with click (clickbait converts less); P(conversion | click).
    conversion_share: float = -0.3
    conversion_rate: float = 0.3
    # like: shares most of the click signal; its positive rate over all rows.
    like_share: float = 0.6
    like_rate: float = 0.2
    # dwell (regression): unit-variance oracle value (share of click's) plus Gaussian noise of this std.
    dwell_share: float = 0.5
    dwell_noise: float = 0.5
    # Fraction of feature pairs interacting in each task's own oracle (null: interaction_density).
    interaction_density: Optional[float] = None


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
    # A drifting world in time windows (new ids, popularity and concept shifts); null: the static world.
    drift: Optional[DriftConfig] = None
    # The multi-task world's knobs (used when the run lists two or more tasks: click, conversion,
    # like, dwell); null: the defaults of SyntheticTasksConfig.
    tasks: Optional[SyntheticTasksConfig] = None


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
    # The day files cut into windows when data.windows is set (continual training): file specs as
    # above, each matched file one window, in the listed order (a glob's matches in natural order),
    # e.g. ["day_*"] or ["day_0", "day_1[0:1/2]"]. Window t's splits replace train / val / test:
    # train its first 1 - data.windows.val_fraction rows (history: those of windows 0..t), val the
    # rest, test all of window t + 1 (data/timelines.py: criteo_window_data).
    days: List[str] = field(default_factory=list)
    # Rows per table (one int for all 26, or one per feature); a category's 64-bit value is
    # taken modulo its table's size (TorchRec's convention).
    num_embeddings: Union[int, List[int]] = 100_000
    # Bytes parsed per step; memory stays a small multiple of this whatever the file size
    # (1 MiB, ~4,000 rows, measured fastest: the parser's arrays stay in cache).
    chunk_bytes: int = 1 << 20


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


@dataclass
class SyntheticRetrievalConfig:
    """The synthetic user-item world of a retrieval run (``data.retrieval.synthetic``; see ``data/synthetic_retrieval.py``).

    Users and items have latent codes around their segment / category centres. A user is shown
    ``impressions_per_user`` distinct items on average (``relevance_share`` of them picked by the
    user's affinity, the rest by popularity), in time order, and clicks with probability
    ``sigmoid(logit)``: a dot product ``<p_u, q_i>`` (what a two-tower represents), a
    non-dot-product cross ``(<a_u, b_i>^2 - 1) / sqrt(2)`` (a ranker's MLP over pairwise
    interactions learns it; a dot product of width w represents it only when w is at least
    ``cross_dim * (cross_dim + 1) / 2`` plus the dot part) and a per-item bias. All of it is
    drawn from ``data.synthetic.world_seed``.
    """

    num_users: int = 2000
    num_items: int = 2000
    # Mean impressions per user (each user: uniform in [mean / 2, 3 * mean / 2], distinct items).
    impressions_per_user: int = 40
    user_segments: int = 16
    item_categories: int = 32
    latent_dim: int = 16
    cross_dim: int = 6
    # Per-id deviation of a latent code from its segment's / category's centre (0: the centre itself).
    spread: float = 0.7
    # Relative weights of the oracle's terms (each about unit variance before weighting).
    dot_weight: float = 1.0
    cross_weight: float = 1.0
    bias_weight: float = 0.5
    logit_scale: float = 2.5
    positive_rate: float = 0.3
    # Share of a user's impressions chosen by the user's affinity (the oracle logit); the rest by popularity.
    relevance_share: float = 0.5
    # Zipf exponent of item popularity (impressions chosen by popularity).
    zipf_exponent: float = 0.8
    # User-side dense features (noisy projections of the user's code); the two-tower's user tower reads them.
    num_dense: int = 4
    # The item_tags bag: each item's `tags_per_item` nearest of `num_tags` tag prototypes.
    num_tags: int = 64
    tags_per_item: int = 3


# The multi-hot feature a retrieval source adds: the user's most recent positive items.
USER_HISTORY = "user_history"


@dataclass
class RetrievalDataConfig:
    """``data.retrieval``: the source's rows are (user, item) pairs; which features are whose, and the corpus."""

    # Sparse features that describe the user (the query side) and the item (the candidate side).
    user_features: List[str] = field(default_factory=list)
    item_features: List[str] = field(default_factory=list)
    # The item-id feature (one of item_features): the corpus has one row per id.
    item_id: str = "item_id"
    # The user's most recent positive items before the row, as a multi-hot user feature
    # ``user_history`` (0: none).
    history_length: int = 20
    # Test / validation users evaluated (null: all), leave-last-out by time.
    eval_users: Optional[int] = None
    # Cutoffs of recall@K / NDCG@K / HR@K (the loader sorts them and adds 20: always among them).
    ks: List[int] = field(default_factory=lambda: [10, 20, 50, 100])
    # The metric that selects a retrieval student's checkpoint.
    select_metric: str = "recall@20"
    # The user-id feature (one of user_features): rows are grouped into users by it.
    user_id: str = "user_id"
    # A user is evaluated (val and test) when they have at least this many positives (>= 3: one left to train on).
    min_positives: int = 3
    # The synthetic source's user-item world (data.source: synthetic).
    synthetic: SyntheticRetrievalConfig = field(default_factory=SyntheticRetrievalConfig)

    def user_keys(self) -> List[str]:
        """The user (query) side's sparse features: ``user_features``, ``user_history`` appended when kept and not listed."""
        keys = list(self.user_features)
        if self.history_length > 0 and USER_HISTORY not in keys:
            keys.append(USER_HISTORY)
        return keys

    def item_keys(self) -> List[str]:
        """The item (candidate) side's sparse features, in ``item_features`` order."""
        return list(self.item_features)


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
    # Consecutive time windows (continual training); null: the source's own splits.
    windows: Optional[WindowsConfig] = None
    # User / item roles of the features, the item corpus, leave-last-out users (retrieval runs).
    retrieval: Optional[RetrievalDataConfig] = None
