"""GroupLens MovieLens ratings as a click log (ml-100k, ml-1m and ml-latest folder layouts).

A rating is a row; ``label = rating >= positive_threshold`` (4 by default: "liked it").
With two or more ``tasks`` the labels are ``[n, T]``, each task from the rating: a binary task
is ``rating >= at_least`` (like: 4, love: 5; default ``positive_threshold``), a regression task
the rating itself (:mod:`torchrec_kd.data.task_labels`).
Features (all ranks load the whole data set, a few MB, in memory):

=============  ======================================================================
sparse         ``user_id``, ``item_id`` (the raw ids), ``genres`` (multi-hot: a bag of
               genre ids, possibly empty), ``gender``, ``age_bucket`` (the seven ml-1m
               buckets; ml-100k ages are bucketed the same way), ``occupation``,
               ``zip_prefix`` (first ``zip_prefix_len`` characters); ml-latest has no
               demographics: ``user_id``, ``item_id``, ``genres``, ``tags`` (multi-hot:
               the movie's tags applied up to the train split's last rating)
dense          ``release_year`` ((year - 1900) / 100, 0 when unknown), ``user_count`` and
               ``item_count`` (log(1 + ratings of the user / item in the *train* split),
               so val and test rows leak nothing)
=============  ======================================================================

Tables are sized from the data (largest id + 1, or the vocabulary) unless
``data.movielens.num_embeddings`` names a size; ids beyond a table are taken modulo it.
A rating whose user or item is missing from the metadata files gets empty bags for
that metadata (and 0 for its dense values). Layouts:

* ml-100k: ``u.data`` (user ``\\t`` item ``\\t`` rating ``\\t`` timestamp), ``u.user``
  (``id|age|gender|occupation|zip``), ``u.item`` (``id|title|release date|video date|url|``
  19 genre flags), optional ``u.genre`` / ``u.occupation`` vocabularies; pipe-separated, latin-1.
* ml-1m: ``ratings.dat`` (``user::item::rating::timestamp``), ``users.dat``
  (``id::gender::age::occupation::zip``), ``movies.dat`` (``id::title (year)::A|B``).
* ml-latest / ml-latest-small: ``ratings.csv``, ``movies.csv``, ``tags.csv`` with headers
  (half-star ratings; see :mod:`torchrec_kd.data.movielens_latest`).

The layout decides the features: ``sparse_names`` is the layout's own list, and no
table exists for a feature the layout cannot fill.

Example::

    log = MovieLensClickLog(MovieLensDataConfig(path="data/ml-100k"), seed=0)
    batch = next(iter(log.batches("train", batch_size=1024)))
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from torchrec_kd.config import MovieLensDataConfig
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.files import listing
from torchrec_kd.data.movielens_latest import LATEST_SPARSE_NAMES, RATINGS_HEADER, load_movies, load_tags, read_csv, tag_bags
from torchrec_kd.data.rows import SPLITS, InMemoryClickLog, Jagged, RowBlock, fraction_split
from torchrec_kd.data.task_labels import check_rating_specs, label_specs, one_column, rating_labels, read_tasks
from torchrec_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPARSE_NAMES = ["user_id", "item_id", "genres", "gender", "age_bucket", "occupation", "zip_prefix"]
DENSE_NAMES = ["release_year", "user_count", "item_count"]
# ml-1m's age codes; ml-100k ages fall into the same buckets
AGE_BUCKETS = [1, 18, 25, 35, 45, 50, 56]
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]
_YEAR = re.compile(r"\((\d{4})\)\s*$")
T = TypeVar("T")


@dataclass
class Layout:
    """File names and separators of one MovieLens release."""

    name: str
    ratings: str
    users: str
    items: str
    rating_sep: str
    meta_sep: str
    # the sparse features (KJT keys) this layout fills, in order
    sparse: List[str] = field(default_factory=lambda: list(SPARSE_NAMES))


LAYOUTS = [Layout("ml-100k", "u.data", "u.user", "u.item", "\t", "|"),
           Layout("ml-1m", "ratings.dat", "users.dat", "movies.dat", "::", "::"),
           Layout("ml-latest", "ratings.csv", "", "movies.csv", ",", ",", list(LATEST_SPARSE_NAMES))]


def detect_layout(root: Path) -> Layout:
    """The layout whose ratings file is in ``root`` (raises DataError naming what was expected)."""
    for layout in LAYOUTS:
        if (root / layout.ratings).is_file():
            return layout
    raise DataError(f"data.movielens.path={root}: no u.data (ml-100k) or ratings.dat (ml-1m) there, nor ratings.csv "
                    f"(ml-latest); {listing(root)}. Unpack ml-100k.zip, ml-1m.zip or ml-latest-small.zip from "
                    "grouplens.org and point at the folder")


def read_records(path: Path, sep: str, nfields: int, log: BadRowLog, ascii_only: bool = False,
                 parse: Optional[Callable[[List[str]], T]] = None) -> List[Tuple[int, T]]:
    """Lines of a separated text file as (1-based line, fields or ``parse(fields)``); bad lines go to ``log``.

    Lines are checked in file order, so the first bad line reported (or raised, with
    ``on_bad_row: error``) is the first in the file.

    Args:
        path (Path): the file (latin-1, as GroupLens ships it).
        sep (str): field separator.
        nfields (int): fields expected per line.
        log (BadRowLog): where bad lines are counted.
        ascii_only (bool): bytes >= 128 make a line bad (numeric files).
        parse (Optional[Callable]): converts the fields; a ValueError makes the line bad, its message the reason.

    Returns:
        List[Tuple[int, T]]: the good lines.
    """
    out = []
    for i, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue  # blank lines (e.g. the file's end) carry no row
        text = raw[:120].decode("latin-1")
        if ascii_only and not raw.isascii():
            log.add(str(path), i, "undecodable (non-ASCII) bytes", text)
            continue
        fields = raw.decode("latin-1").split(sep)
        if len(fields) != nfields:
            log.add(str(path), i, f"expected {nfields} fields separated by {sep!r}, found {len(fields)}", text)
            continue
        if parse is None:
            out.append((i, fields))
            continue
        try:
            out.append((i, parse(fields)))
        except ValueError as e:
            log.add(str(path), i, str(e), text)
    return out


def _user(f: List[str]) -> Tuple[int, int, str, str, str]:
    """(id, age, gender, occupation, zip) fields -> typed; ValueError names what is wrong."""
    try:
        return int(f[0]), int(f[1]), f[2], f[3], f[4]
    except ValueError:
        raise ValueError("user id and age must be integers") from None


def _item100k(f: List[str]) -> List[str]:
    if not f[0].strip().isdigit() or any(x.strip() not in ("0", "1") for x in f[5:]):
        raise ValueError("item id must be an integer and genre flags 0 or 1")
    return f


def _item1m(f: List[str]) -> List[str]:
    if not f[0].strip().isdigit():
        raise ValueError("item id must be an integer")
    return f


@dataclass
class Ratings:
    """Good rating rows: user, item, rating, timestamp."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray


@dataclass
class Meta:
    """Per-user and per-item metadata, as table rows (-1 = unknown) keyed by raw id."""

    gender: Dict[int, int] = field(default_factory=dict)
    age: Dict[int, int] = field(default_factory=dict)
    occupation: Dict[int, int] = field(default_factory=dict)
    zip_prefix: Dict[int, int] = field(default_factory=dict)
    year: Dict[int, float] = field(default_factory=dict)
    genres: Dict[int, List[int]] = field(default_factory=dict)
    tags: Dict[int, List[int]] = field(default_factory=dict)  # ml-latest: set once the split is known
    sizes: Dict[str, int] = field(default_factory=dict)


def _rating(fields: List[str]) -> Tuple[int, int, float, int]:
    try:
        user, item, rating, time = int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
    except ValueError:
        raise ValueError("user, item and timestamp must be integers and rating a number") from None
    if user < 0 or item < 0 or not np.isfinite(rating):
        raise ValueError("negative id or non-finite rating")
    return user, item, rating, time


def load_ratings(path: Path, sep: str, log: BadRowLog) -> Ratings:
    """Parse the ratings file; rows with non-numeric or negative ids, or a non-finite rating, are bad rows."""
    if sep == ",":  # ml-latest's ratings.csv: a header line, CSV quoting
        records = read_csv(path, RATINGS_HEADER, log, _rating)
    else:
        records = read_records(path, sep, 4, log, ascii_only=True, parse=_rating)
    cols = list(zip(*[r for _, r in records])) or [(), (), (), ()]
    return Ratings(np.asarray(cols[0], np.int64), np.asarray(cols[1], np.int64), np.asarray(cols[2], np.float64),
                   np.asarray(cols[3], np.int64))


def _vocab(values: List[str]) -> Dict[str, int]:
    return {v: i for i, v in enumerate(sorted(set(values)))}


def age_bucket(age: int) -> int:
    """Index (0..6) of the ml-1m age bucket holding ``age`` (ml-1m codes map to themselves)."""
    return int(np.searchsorted(AGE_BUCKETS, age, side="right")) - 1 if age >= AGE_BUCKETS[0] else 0


def load_meta(root: Path, layout: Layout, cfg: MovieLensDataConfig, log: BadRowLog) -> Meta:
    """Users and items metadata of any layout (a missing file leaves those features empty)."""
    meta = Meta()
    if layout.name == "ml-latest":
        return _latest_meta(root / layout.items, log)
    users_file, items_file = root / layout.users, root / layout.items
    occupations: List[str] = []
    zips: List[Tuple[int, str]] = []
    if users_file.is_file():
        # ml-100k: id|age|gender|occupation|zip; ml-1m: id::gender::age::occupation::zip
        order = (0, 1, 2, 3, 4) if layout.name == "ml-100k" else (0, 2, 1, 3, 4)
        for _, (u, age, gender, occ, zipc) in read_records(
                users_file, layout.meta_sep, 5, log, parse=lambda f: _user([f[k] for k in order])):
            meta.gender[u] = {"M": 0, "F": 1}.get(gender.strip().upper(), -1)
            meta.age[u] = age_bucket(age)
            occupations.append(occ.strip())
            meta.occupation[u] = len(occupations) - 1  # resolved to the vocabulary below
            zips.append((u, zipc.strip().upper()[: cfg.zip_prefix_len]))
    else:
        logger.warning("%s is missing: gender, age, occupation and zip features stay empty", users_file)
    occ_file = root / "u.occupation"
    if layout.name == "ml-100k" and occ_file.is_file():
        occ_vocab = {o: i for i, o in enumerate(l.strip() for l in occ_file.read_text("latin-1").splitlines() if l.strip())}
        for o in occupations:  # an occupation missing from u.occupation gets a new id
            occ_vocab.setdefault(o, len(occ_vocab))
    elif layout.name == "ml-1m":
        occ_vocab = {o: int(o) for o in set(occupations) if o.isdigit()}
        for o in sorted(set(occupations) - set(occ_vocab)):
            occ_vocab[o] = max(occ_vocab.values(), default=-1) + 1
    else:
        occ_vocab = _vocab(occupations)
    meta.occupation = {u: occ_vocab[occupations[k]] for u, k in meta.occupation.items()}
    zip_vocab = _vocab([z for _, z in zips if z])
    meta.zip_prefix = {u: zip_vocab[z] if z else -1 for u, z in zips}

    genre_names = list(ML100K_GENRES)
    genre_file = root / "u.genre"
    if layout.name == "ml-100k" and genre_file.is_file():
        pairs = [l.split("|") for l in genre_file.read_text("latin-1").splitlines() if l.strip()]
        genre_names = [name for name, _ in sorted(((p[0], int(p[1])) for p in pairs if len(p) == 2
                                                    and p[1].strip().isdigit()), key=lambda x: x[1])] or genre_names
    if items_file.is_file():
        if layout.name == "ml-100k":
            for _, f in read_records(items_file, "|", 5 + len(genre_names), log, parse=_item100k):
                i = int(f[0])
                year = f[2].strip()[-4:]
                m = _YEAR.search(f[1])
                meta.year[i] = float(year) if year.isdigit() else (float(m.group(1)) if m else np.nan)
                meta.genres[i] = [g for g, flag in enumerate(f[5:]) if flag.strip() == "1"]
        else:
            records = read_records(items_file, "::", 3, log, parse=_item1m)
            names = sorted({g for _, f in records for g in f[2].strip().split("|") if g})
            genre_names = names
            gid = {g: k for k, g in enumerate(names)}
            for _, f in records:
                i = int(f[0])
                m = _YEAR.search(f[1])
                meta.year[i] = float(m.group(1)) if m else np.nan
                meta.genres[i] = [gid[g] for g in f[2].strip().split("|") if g]
    else:
        logger.warning("%s is missing: genres and release_year stay empty", items_file)
    meta.sizes = {"genres": max(1, len(genre_names)), "gender": 2, "age_bucket": len(AGE_BUCKETS),
                  "occupation": max(1, max(occ_vocab.values(), default=-1) + 1), "zip_prefix": max(1, len(zip_vocab))}
    return meta


def _latest_meta(movies: Path, log: BadRowLog) -> Meta:
    """ml-latest: genres and years from movies.csv; no user metadata (tags come after the split)."""
    meta = Meta()
    if movies.is_file():
        meta.year, meta.genres, meta.sizes["genres"] = load_movies(movies, log)
    else:
        logger.warning("%s is missing: genres and release_year stay empty", movies)
        meta.sizes["genres"] = 1
    return meta


def _tag_meta(root: Path, meta: Meta, cutoff: float, log: BadRowLog, verbose: bool) -> None:
    """ml-latest: each movie's tag bag from tags.csv, only tags applied at or before ``cutoff``."""
    path = root / "tags.csv"
    if not path.is_file():
        logger.warning("%s is missing: the tags feature stays empty", path)
        meta.sizes["tags"] = 1
        return
    tags = load_tags(path, log)
    meta.tags, meta.sizes["tags"] = tag_bags(tags, cutoff)
    if verbose:
        logger.info("%s: %d of %d tag applications are at or before the train split's last rating (%d); "
                    "%d distinct tags on %d movies", path, int((tags.time <= cutoff).sum()), len(tags.time), cutoff,
                    meta.sizes["tags"] if meta.tags else 0, len(meta.tags))


def _lookup(table: Dict[int, int], keys: np.ndarray) -> np.ndarray:
    return np.asarray([table.get(int(k), -1) for k in keys], np.int64)


class MovieLensClickLog(InMemoryClickLog):
    """MovieLens ratings as click rows, split randomly or chronologically, batched like every source.

    Args:
        cfg (MovieLensDataConfig): folder, label threshold, split, table sizes.
        seed (int): run seed (train shuffling per epoch; the split uses ``cfg.split_seed``).
        on_bad_row (str): "skip" (count and drop malformed lines) or "error".
        verbose (bool): log the bad-row summary and the data shape (rank 0).
        tasks (Optional[Sequence[TaskConfig]]): ``cfg.tasks``; two or more: labels ``[n, T]``
            from the rating (column ``rating``), else the single label ``[n]``.

    Attributes:
        layout (Layout): the detected release layout; ``sparse_names`` is its feature list.
        split_rows (Dict[str, np.ndarray]): each split's rows of the ratings file (good rows, file order).
        times (Dict[str, np.ndarray]): each split's rating times (Unix seconds), row for row.
        tag_cutoff (Optional[int]): ml-latest: tags applied after this Unix time are in no bag
            (the train split's last rating); None for layouts without tags.
    """

    def __init__(self, cfg: MovieLensDataConfig, seed: int = 0, on_bad_row: str = "skip", verbose: bool = True,
                 tasks: Optional[Sequence[Any]] = None) -> None:
        tasks = read_tasks(tasks, "movielens")
        self.label_specs = label_specs(tasks, first_default="rating", default="rating") if tasks else None
        if self.label_specs is not None:
            check_rating_specs(self.label_specs)
        if not cfg.path:
            raise ConfigError("data.movielens.path is not set; point it at the unpacked ml-100k, ml-1m or ml-latest "
                              "folder")
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.movielens.path={cfg.path}: no such directory; it should hold u.data (ml-100k), "
                            "ratings.dat (ml-1m) or ratings.csv (ml-latest)")
        self.cfg, self.seed, self.root = cfg, seed, root
        self.shuffle, self.where = cfg.shuffle, f"data.movielens ({root}, {cfg.split} split)"
        self.layout = detect_layout(root)
        unknown = sorted(set(cfg.num_embeddings) - set(self.layout.sparse))
        if unknown:
            raise ConfigError(f"data.movielens.num_embeddings: unknown feature(s) {unknown}; the {self.layout.name} "
                              f"layout's features are {self.layout.sparse}")
        self.bad_rows = BadRowLog(on_bad_row, verbose=verbose)
        ratings = load_ratings(root / self.layout.ratings, self.layout.rating_sep, self.bad_rows)
        if len(ratings.user) == 0:
            raise DataError(f"{root / self.layout.ratings}: no usable ratings ({self.bad_rows.summary()})")
        meta = load_meta(root, self.layout, cfg, self.bad_rows)
        self.ratings, self.meta = ratings, meta  # kept for time windows (rows_for)
        self.dense_names = list(DENSE_NAMES)
        self.sparse_names = list(self.layout.sparse)

        self.split_rows = self._split_rows(ratings)
        train = self.split_rows["train"]
        self.times: Dict[str, np.ndarray] = {split: ratings.time[idx] for split, idx in self.split_rows.items()}
        self.tag_cutoff: Optional[int] = None
        if "tags" in self.sparse_names:
            # tags written after the train period would leak val / test into the features
            self.tag_cutoff = int(ratings.time[train].max()) if len(train) else -1
            _tag_meta(root, meta, self.tag_cutoff, self.bad_rows, verbose)
        sizes = {"user_id": int(max(ratings.user.max(), max(meta.gender, default=0))) + 1,
                 "item_id": int(max(ratings.item.max(), max(meta.genres, default=0))) + 1, **meta.sizes}
        sizes.update(cfg.num_embeddings)
        self.num_embeddings = [sizes[name] for name in self.sparse_names]
        # counts from the train split only: evaluation rows must not leak into features
        user_count = np.bincount(ratings.user[train], minlength=int(ratings.user.max()) + 1)
        item_count = np.bincount(ratings.item[train], minlength=int(ratings.item.max()) + 1)
        self.splits: Dict[str, RowBlock] = {
            split: self._rows(ratings, meta, idx, user_count, item_count) for split, idx in self.split_rows.items()}
        if verbose:
            if self.bad_rows.count:
                logger.warning("%s: %s", root, self.bad_rows.summary())
            logger.info("%s (%s): %s rows, %s split; tables %s", root, self.layout.name,
                        {s: len(b) for s, b in self.splits.items()}, cfg.split,
                        dict(zip(self.sparse_names, self.num_embeddings)))

    def _split_rows(self, ratings: Ratings) -> Dict[str, np.ndarray]:
        """Rows of the ratings file per split: ``data.movielens.split`` (a retrieval log cuts leave-last-out)."""
        cfg = self.cfg
        order = np.argsort(ratings.time, kind="stable") if cfg.split == "chronological" else None
        return fraction_split(len(ratings.user), cfg.val_fraction, cfg.test_fraction, cfg.split_seed, order)

    def rows_for(self, idx: np.ndarray, past: np.ndarray, tags: Optional[Dict[int, List[int]]] = None) -> RowBlock:
        """Ratings ``idx`` (file rows, in that order) as rows whose counts see only ratings ``past`` (time windows).

        Args:
            idx (np.ndarray): rows of the ratings file.
            past (np.ndarray): the ratings ``user_count`` / ``item_count`` may count.
            tags (Optional[Dict[int, List[int]]]): ml-latest: each movie's tag bag to use; None: the reader's own.

        Returns:
            RowBlock: the rows, ids taken into ``num_embeddings`` as in the splits.
        """
        r = self.ratings
        user_count = np.bincount(r.user[past], minlength=int(r.user.max()) + 1)
        item_count = np.bincount(r.item[past], minlength=int(r.item.max()) + 1)
        meta = self.meta if tags is None else replace(self.meta, tags=tags)
        return self._rows(r, meta, idx, user_count, item_count)

    def _rows(self, r: Ratings, meta: Meta, idx: np.ndarray, user_count: np.ndarray, item_count: np.ndarray) -> RowBlock:
        user, item = r.user[idx], r.item[idx]
        year = np.asarray([meta.year.get(int(i), np.nan) for i in item], np.float64)
        dense = np.stack([np.where(np.isfinite(year), (year - 1900.0) / 100.0, 0.0),
                          np.log1p(user_count[user]), np.log1p(item_count[item])], axis=1).astype(np.float32)
        if self.label_specs is None:
            labels = (r.rating[idx] >= self.cfg.positive_threshold).astype(np.float32)
        else:
            labels = one_column(rating_labels(r.rating[idx], self.label_specs, self.cfg.positive_threshold))
        tables = dict(zip(self.sparse_names, self.num_embeddings))
        per_item = {"genres": meta.genres, "tags": meta.tags}
        per_user = {"gender": meta.gender, "age_bucket": meta.age, "occupation": meta.occupation,
                    "zip_prefix": meta.zip_prefix}
        sparse = []
        for name in self.sparse_names:
            if name in per_item:  # a bag of the item's ids, possibly empty
                bags = [per_item[name].get(int(i), []) for i in item]
                sparse.append(Jagged.from_lengths(np.asarray([g for gs in bags for g in gs], np.int64) % tables[name],
                                                  np.asarray([len(gs) for gs in bags], np.int64)))
                continue
            ids = user if name == "user_id" else item if name == "item_id" else _lookup(per_user[name], user)
            ids = np.where(ids >= 0, ids % tables[name], -1)  # ids beyond a configured table wrap into it
            sparse.append(Jagged.from_ids(ids))
        return RowBlock(dense, labels, sparse)



__all__ = ["MovieLensClickLog", "SPARSE_NAMES", "LATEST_SPARSE_NAMES", "DENSE_NAMES", "SPLITS"]
