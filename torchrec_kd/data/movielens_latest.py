"""GroupLens's ``ml-latest`` / ``ml-latest-small`` CSV layout, read for :mod:`torchrec_kd.data.movielens`.

Files (UTF-8, comma-separated, a header line, quoted fields where a title or tag holds a comma):

* ``ratings.csv``: ``userId,movieId,rating,timestamp`` (half stars 0.5-5, Unix seconds);
* ``movies.csv``: ``movieId,title,genres``; genres ``|``-separated (``(no genres listed)`` is
  an empty bag), the release year at the end of the title (``Heat (1995)``; a series'
  ``(1975-1979)`` or ``(2007-)`` gives its first year; none: unknown);
* ``tags.csv``: ``userId,movieId,tag,timestamp``, free text; ``links.csv`` is not read.

There are no demographics, so the layout's sparse features are ``user_id``, ``item_id``,
``genres`` and ``tags`` (:data:`LATEST_SPARSE_NAMES`). A movie's ``tags`` bag holds the ids
of the distinct tags (trimmed, lower-cased, inner spaces collapsed) applied to it **at or
before the train split's last rating** (:func:`tag_bags`); the tag vocabulary is built from
those tags only. In a chronological split that is the split boundary, so no val or test
row sees a tag written after the train period ended; in a random split the train period
covers nearly the whole log and so do the tags (as it does for the train-split counts).

Example::

    records = read_csv(root / "ratings.csv", RATINGS_HEADER, log, parse_row)
    years, genres, n_genres = load_movies(root / "movies.csv", log)
    bags, n_tags = tag_bags(load_tags(root / "tags.csv", log), cutoff=train_last_timestamp)
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple, TypeVar

import numpy as np

from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.errors import DataError

LATEST_SPARSE_NAMES = ["user_id", "item_id", "genres", "tags"]
RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
MOVIES_HEADER = ["movieId", "title", "genres"]
TAGS_HEADER = ["userId", "movieId", "tag", "timestamp"]
NO_GENRES = "(no genres listed)"
# "(1995)" at the end of a title; a series' "(1975-1979)" or "(2007-)" gives its first year
_YEAR = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")
T = TypeVar("T")


def read_csv(path: Path, header: List[str], log: BadRowLog, parse: Callable[[List[str]], T]) -> List[Tuple[int, T]]:
    """Records of a GroupLens CSV file as (1-based line, ``parse(fields)``); bad lines go to ``log``.

    Args:
        path (Path): the file (UTF-8; undecodable bytes become U+FFFD, so a bad byte spoils
            only its own line).
        header (List[str]): the column names the first line must hold.
        log (BadRowLog): where lines with the wrong field count or unparsable fields are counted.
        parse (Callable): fields -> record; a ValueError makes the line bad, its message the reason.

    Returns:
        List[Tuple[int, T]]: the good records, in file order.

    Raises:
        DataError: the first line is not ``header``.
    """
    out: List[Tuple[int, T]] = []
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None or [c.strip() for c in first] != header:
            found = ",".join(first)[:120] if first else "an empty file"
            raise DataError(f"{path}:1: expected the header {','.join(header)} (GroupLens's ml-latest layout), "
                            f"found {found!r}; check data.movielens.path")
        line = reader.line_num
        for fields in reader:
            start, line = line + 1, reader.line_num  # a quoted field may span lines: report where the row starts
            if not fields or not any(x.strip() for x in fields):
                continue  # blank lines carry no row
            text = ",".join(fields)[:120]
            if len(fields) != len(header):
                log.add(str(path), start, f"expected {len(header)} comma-separated fields, found {len(fields)}", text)
                continue
            try:
                out.append((start, parse(fields)))
            except ValueError as e:
                log.add(str(path), start, str(e), text)
    return out


def release_year(title: str) -> float:
    """The year at the end of a title, NaN when there is none."""
    m = _YEAR.search(title)
    return float(m.group(1)) if m else np.nan


def _movie(fields: List[str]) -> Tuple[int, str, List[str]]:
    if not fields[0].strip().isdigit():
        raise ValueError("movieId must be a non-negative integer")
    genres = [g.strip() for g in fields[2].split("|") if g.strip() and g.strip() != NO_GENRES]
    return int(fields[0]), fields[1].strip(), genres


def load_movies(path: Path, log: BadRowLog) -> Tuple[Dict[int, float], Dict[int, List[int]], int]:
    """``movies.csv``: each movie's release year and genre ids.

    Args:
        path (Path): the file.
        log (BadRowLog): bad lines.

    Returns:
        Tuple: ``(year, genres, n_genres)``: year by movie (NaN: unknown), genre ids by movie
        (sorted genre names -> 0..n-1), and the vocabulary size (at least 1).
    """
    records = [r for _, r in read_csv(path, MOVIES_HEADER, log, _movie)]
    names = sorted({g for _, _, gs in records for g in gs})
    gid = {g: k for k, g in enumerate(names)}
    year = {item: release_year(title) for item, title, _ in records}
    genres = {item: [gid[g] for g in gs] for item, _, gs in records}
    return year, genres, max(1, len(names))


def normalize_tag(tag: str) -> str:
    """One spelling per tag: trimmed, lower-cased, inner whitespace collapsed ("Sci-Fi  " -> "sci-fi")."""
    return " ".join(tag.split()).lower()


@dataclass
class Tags:
    """Tag applications: the movie, the normalized tag, the Unix time."""

    item: np.ndarray
    tag: List[str]
    time: np.ndarray


def _tag(fields: List[str]) -> Tuple[int, str, int]:
    try:
        item, time = int(fields[1]), int(fields[3])
    except ValueError:
        raise ValueError("movieId and timestamp must be integers") from None
    tag = normalize_tag(fields[2])
    if not tag:
        raise ValueError("empty tag")
    return item, tag, time


def load_tags(path: Path, log: BadRowLog) -> Tags:
    """``tags.csv`` as :class:`Tags` (the user who tagged is not a feature, so it is not kept)."""
    records = [r for _, r in read_csv(path, TAGS_HEADER, log, _tag)]
    return Tags(np.asarray([r[0] for r in records], np.int64), [r[1] for r in records],
                np.asarray([r[2] for r in records], np.int64))


def tag_bags(tags: Tags, cutoff: float) -> Tuple[Dict[int, List[int]], int]:
    """Each movie's bag of distinct tag ids, from the tags applied at or before ``cutoff``.

    Args:
        tags (Tags): every tag application.
        cutoff (float): the train split's last rating time; later tags are ignored, and do
            not enter the vocabulary either.

    Returns:
        Tuple[Dict[int, List[int]], int]: sorted tag ids by movie, and the vocabulary size
        (sorted tag texts -> 0..n-1; at least 1 so the table exists when no tag qualifies).
    """
    seen = [(int(i), t) for i, t, when in zip(tags.item, tags.tag, tags.time) if when <= cutoff]
    vocab = {t: k for k, t in enumerate(sorted({t for _, t in seen}))}
    bags: Dict[int, set] = {}
    for item, t in seen:
        bags.setdefault(item, set()).add(vocab[t])
    return {item: sorted(ids) for item, ids in bags.items()}, max(1, len(vocab))


__all__ = ["LATEST_SPARSE_NAMES", "RATINGS_HEADER", "Tags", "load_movies", "load_tags", "normalize_tag", "read_csv",
           "release_year", "tag_bags"]
