"""Which files (and which rows of them) make up a split, and reading text files as blocks of lines.

A split is a list of *file specs*: a name relative to a directory, globs allowed
(matches in natural order, so ``day_2`` comes before ``day_10``), with an optional row
range as fractions of the file: ``train.txt[0:6/7]``, ``day_23[1/2:1]``. A range
``[a:b]`` of a file with ``n`` rows keeps rows ``ceil(a*n) .. ceil(b*n)-1``, so the halves
``[0:1/2]`` and ``[1/2:1]`` of day 23 are exactly TorchRec's val / test halves.

Example::

    parse_spec("train.txt[6/7:13/14]")   # FileSpec('train.txt', Fraction(6, 7), Fraction(13, 14))
    for block, first_line in read_line_blocks("day_0", 8 << 20): ...
"""

from __future__ import annotations

import glob
import gzip
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from torchrec_kd.errors import ConfigError, DataError

_RANGE = re.compile(r"^(?P<name>.+?)\[(?P<a>[^\[\]:]*):(?P<b>[^\[\]:]*)\]$")
# Extensions dropped to name a raw file's preprocessed stem (train.txt -> train_dense.npy).
RAW_SUFFIXES = (".gz", ".txt", ".tsv", ".csv")
# A line longer than this is skipped as a bad row (a binary or corrupt file has no newlines).
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """A file name or glob and the fraction range ``[lo, hi)`` of its rows."""

    name: str
    lo: Fraction = Fraction(0)
    hi: Fraction = Fraction(1)

    @property
    def whole(self) -> bool:
        """True when the spec keeps every row."""
        return self.lo == 0 and self.hi == 1

    def rows(self, n: int) -> Tuple[int, int]:
        """Row range ``[start, stop)`` of a file with ``n`` rows."""
        return math.ceil(self.lo * n), math.ceil(self.hi * n)


def _fraction(text: str, default: int, key: str, spec: str) -> Fraction:
    text = text.strip()
    if not text:
        return Fraction(default)
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{key}: '{spec}': range bound {text!r} is not a number or fraction like 6/7") from None


def parse_spec(spec: str, key: str = "data.criteo") -> FileSpec:
    """Parse ``name`` or ``name[a:b]``.

    Args:
        spec (str): the spec text.
        key (str): config key, for errors.

    Returns:
        FileSpec: name and fraction range.

    Raises:
        ConfigError: a range outside ``0 <= a < b <= 1``.
    """
    m = _RANGE.match(spec.strip())
    if not m:
        return FileSpec(spec.strip())
    lo, hi = _fraction(m["a"], 0, key, spec), _fraction(m["b"], 1, key, spec)
    if not 0 <= lo < hi <= 1:
        raise ConfigError(f"{key}: '{spec}': the row range must satisfy 0 <= start < end <= 1, got [{lo}:{hi}]")
    return FileSpec(m["name"].strip(), lo, hi)


def natural_key(path: str) -> List[object]:
    """Sort key that orders embedded numbers by value (day_2 < day_10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def raw_stem(name: str) -> str:
    """``train.txt`` -> ``train``, ``day_0.gz`` -> ``day_0``: the preprocessed files' prefix."""
    for suffix in RAW_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def listing(directory: Path, limit: int = 12) -> str:
    """A short listing of a directory for error messages."""
    if not directory.is_dir():
        return f"{directory} is not a directory"
    names = sorted(p.name for p in directory.iterdir())
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return "files there: " + (", ".join(names[:limit]) + more if names else "none")


def resolve(directory: Path, pattern: str, key: str, suffix: str = "") -> List[Path]:
    """Files named by ``pattern`` (+ ``suffix``) in ``directory``, natural order.

    Raises:
        DataError: nothing matches; names the key, the pattern and what the folder holds.
    """
    full = str(directory / (pattern + suffix))
    found = _matches(full)
    if not found and not suffix:
        found = _matches(full + ".gz")  # day_0 also finds day_0.gz
    if not found:
        raise DataError(f"{key}: no file matches '{pattern + suffix}' in {directory}; {listing(directory)}")
    return [Path(f) for f in found]


def _matches(full: str) -> List[str]:
    if glob.has_magic(full):
        return sorted(glob.glob(full), key=natural_key)
    return [full] if os.path.isfile(full) else []


def open_binary(path: Path) -> BinaryIO:
    """Open a file for reading bytes, gunzipping ``*.gz``."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")  # type: ignore[return-value]


_LINE_COUNTS: Dict[Tuple[str, int, float], int] = {}


def count_lines(path: Path, chunk_bytes: int = 16 << 20) -> int:
    """Lines in a text file (a last line without newline counts); cached per (path, size, mtime)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime)
    if key not in _LINE_COUNTS:
        n, last = 0, b"\n"
        with open_binary(path) as f:
            while data := f.read(chunk_bytes):
                n += data.count(b"\n")
                last = data[-1:]
        _LINE_COUNTS[key] = n + (last != b"\n")
    return _LINE_COUNTS[key]


def read_line_blocks(path: Path, chunk_bytes: int, first: int = 0, stop: Optional[int] = None,
                     on_overlong: Optional[Callable[[int], None]] = None) -> Iterator[Tuple[bytes, int]]:
    """Stream a text file as blocks of whole lines, in constant memory.

    Args:
        path (Path): the file (``*.gz`` is decompressed on the fly).
        chunk_bytes (int): bytes read per step.
        first (int): 0-based index of the first line to yield.
        stop (Optional[int]): index one past the last line to yield (None: to the end).
        on_overlong (Optional[Callable[[int], None]]): called with the 1-based number of each
            line longer than ``MAX_LINE_BYTES``; such lines are skipped.

    Returns:
        Iterator[Tuple[bytes, int]]: (lines, each ending in ``\\n``; 1-based number of the first).
    """
    max_line = max(MAX_LINE_BYTES, chunk_bytes)
    line = 0  # 0-based index of the next line to start
    carry = b""
    skipping = False  # inside an overlong line: drop bytes up to its newline
    with open_binary(path) as f:
        while stop is None or line < stop:
            data = f.read(chunk_bytes)
            if not data:
                if carry and not skipping:
                    block, carry = carry + b"\n", b""
                    yield from _clip(block, line, first, stop)
                elif skipping and on_overlong and line >= first:
                    on_overlong(line + 1)
                return
            if skipping:
                nl = data.find(b"\n")
                if nl < 0:
                    continue
                if on_overlong and line >= first:
                    on_overlong(line + 1)
                line += 1
                skipping = False
                data = data[nl + 1:]
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                if len(carry) > max_line:
                    carry, skipping = b"", True
                continue
            block, carry = data[:cut], data[cut:]
            n = block.count(b"\n")
            yield from _clip(block, line, first, stop)
            line += n
            if len(carry) > max_line:
                carry, skipping = b"", True


def _clip(block: bytes, line: int, first: int, stop: Optional[int]) -> Iterator[Tuple[bytes, int]]:
    """The part of ``block`` (lines ``line..``) inside ``[first, stop)``."""
    n = block.count(b"\n")
    end = line + n if stop is None else min(line + n, stop)
    if end <= first or line >= end:
        return
    if line >= first and end == line + n:
        yield block, line + 1
        return
    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
    k, m = max(0, first - line), end - line
    a = int(ends[k - 1]) + 1 if k else 0
    yield block[a:int(ends[m - 1]) + 1], line + k + 1
