"""Raw Criteo TSV lines -> arrays, vectorised over a block of lines with numpy (no per-row Python).

Layout of a line: ``label \\t I1..I13 \\t C1..C26`` (40 tab-separated fields, any field
but the label may be empty). The rules, shared by the TSV reader and ``preprocess`` so
both give the same rows:

* label: exactly ``0`` or ``1``;
* dense ``I1..I13``: a number (integers on the fast path; anything Python's ``float``
  reads on the slow path). Empty, NaN and +-inf count as missing and become 0, negatives
  are clamped to 0, then ``log(1 + x)`` as float32 (the DLRM convention);
* categorical ``C1..C26``: 1 to 16 hex digits, taken modulo the table size
  (TorchRec's convention); empty means missing, an empty bag;
* anything else makes the row *bad*: wrong field count, undecodable (non-ASCII) bytes, a
  label other than 0/1, a non-numeric dense value, a category that is not hex.

Example::

    rows = parse_block(b"1\\t5\\t\\t...\\t68fd1e64\\n", first_line=1, num_embeddings=np.full(26, 1000))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
# Longest dense integer parsed on the fast path; longer ones go through float().
_MAX_INT_DIGITS = 20
_MAX_HEX_DIGITS = 16

_HEX = np.full(256, -1, np.int8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DIGIT = np.full(256, -1, np.int8)
_DIGIT[48:58] = np.arange(10)
# zero bytes appended to a block so that reading past a field's end never leaves the buffer
_PAD = bytes(32)

_OK, _FIELDS, _BYTES, _LABEL, _DENSE, _CAT = range(6)


@dataclass
class ParsedBlock:
    """The good rows of a block of lines, and where and why the others are bad."""

    labels: np.ndarray  # float32 [n]
    dense: np.ndarray  # float32 [n, 13], already log(1 + max(x, 0))
    ids: np.ndarray  # int64 [n, 26], table rows; -1 = missing (empty bag)
    bad_lines: np.ndarray  # int64, 1-based line numbers
    bad_reasons: List[str] = field(default_factory=list)
    bad_text: List[str] = field(default_factory=list)
    # per dense feature, over the good rows: missing (empty or NaN), +-inf, negative values
    dense_missing: np.ndarray = field(default_factory=lambda: np.zeros(NUM_DENSE, np.int64))
    dense_inf: np.ndarray = field(default_factory=lambda: np.zeros(NUM_DENSE, np.int64))
    dense_negative: np.ndarray = field(default_factory=lambda: np.zeros(NUM_DENSE, np.int64))


def dlrm_dense(raw: np.ndarray) -> np.ndarray:
    """The DLRM dense transform: NaN / +-inf -> 0, negatives -> 0, then ``log(1 + x)``, float32."""
    x = np.where(np.isfinite(raw), raw, 0.0)
    return np.log1p(np.maximum(x, 0.0)).astype(np.float32)


def _parse_dense(buf: np.ndarray, s: np.ndarray, length: np.ndarray, block: bytes):
    """Dense fields [m, 13] -> (float64 values, NaN when empty; bad mask)."""
    value = np.zeros(s.shape, np.float64)
    neg = (length > 0) & (buf[s] == 45)
    s = s + neg
    ndig = length - neg
    slow = (length > _MAX_INT_DIGITS) | (neg & (ndig == 0))
    for w in range(int(min(ndig.max(initial=0), _MAX_INT_DIGITS))):
        inside = w < ndig
        digit = _DIGIT[buf[s + w]]
        slow |= inside & (digit < 0)
        use = inside & (digit >= 0)
        value[use] = value[use] * 10.0 + digit[use]
    value[neg] *= -1.0
    value[length == 0] = np.nan
    bad = np.zeros(s.shape, bool)
    for r, c in zip(*np.nonzero(slow)):  # rare: decimals, exponents, nan/inf, garbage
        a = s[r, c] - neg[r, c]
        try:
            value[r, c] = float(block[a:a + length[r, c]].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            bad[r, c] = True
    return value, bad


def _parse_hex(buf: np.ndarray, s: np.ndarray, length: np.ndarray):
    """Categorical fields [m, 26] -> (uint64 values, bad mask)."""
    bad = length > _MAX_HEX_DIGITS
    width = int(min(length.max(initial=0), _MAX_HEX_DIGITS))
    # up to 15 digits fit int64 arithmetic, which numpy does faster than uint64
    value = np.zeros(s.shape, np.int64 if width < 16 else np.uint64)
    sixteen = value.dtype.type(16)
    for w in range(width):
        inside = w < length
        nib = _HEX[buf[s + w]]
        bad |= inside & (nib < 0)
        value = np.where(inside, value * sixteen + np.maximum(nib, 0).astype(value.dtype), value)
    return value.astype(np.uint64, copy=False), bad


def parse_block(block: bytes, first_line: int, num_embeddings: np.ndarray) -> ParsedBlock:
    """Parse a block of whole Criteo lines.

    Args:
        block (bytes): lines, each ending in ``\\n`` (``\\r\\n`` is accepted).
        first_line (int): 1-based line number of the first line (for bad-row reports).
        num_embeddings (np.ndarray): the 26 table sizes; category values are taken modulo them.

    Returns:
        ParsedBlock: the good rows in order, and the bad ones' line numbers and reasons.
    """
    buf = np.frombuffer(block + _PAD, np.uint8)
    seps = np.flatnonzero((buf == 9) | (buf == 10))  # every field ends at one of these
    is_nl = buf[seps] == 10
    nl_at = np.flatnonzero(is_nl)  # index in seps of each line's newline
    n = len(nl_at)
    nfields = np.diff(nl_at, prepend=-1)
    ends_nl = seps[nl_at]
    starts = np.zeros(n, np.int64)
    starts[1:] = ends_nl[:-1] + 1
    reason = np.zeros(n, np.int8)
    reason[nfields != NUM_FIELDS] = _FIELDS
    high = np.flatnonzero(buf >= 128)
    if len(high):
        lines = np.unique(np.searchsorted(ends_nl, high))
        reason[lines[reason[lines] == _OK]] = _BYTES

    ok = reason == _OK
    fe = seps[nl_at[ok][:, None] + np.arange(1 - NUM_FIELDS, 1)]  # [m, 40] field ends
    fs = np.empty_like(fe)
    fs[:, 0] = starts[ok]
    fs[:, 1:] = fe[:, :-1] + 1
    cr = (fe[:, -1] > fs[:, -1]) & (buf[fe[:, -1] - 1] == 13)
    fe[cr, -1] -= 1  # \r\n line ends
    flen = fe - fs

    lab_char = buf[fs[:, 0]]
    label_bad = (flen[:, 0] != 1) | ((lab_char != 48) & (lab_char != 49))
    raw, dense_bad = _parse_dense(buf, fs[:, 1:1 + NUM_DENSE], flen[:, 1:1 + NUM_DENSE], block)
    hexv, cat_bad = _parse_hex(buf, fs[:, 1 + NUM_DENSE:], flen[:, 1 + NUM_DENSE:])

    sub = np.zeros(len(fs), np.int8)
    sub[cat_bad.any(1)] = _CAT
    sub[dense_bad.any(1)] = _DENSE
    sub[label_bad] = _LABEL
    reason[np.flatnonzero(ok)] = sub
    good = sub == _OK

    raw = raw[good]
    missing = np.isnan(raw)
    ids = (hexv[good] % num_embeddings.astype(np.uint64)[None, :]).astype(np.int64)
    ids[flen[good, 1 + NUM_DENSE:] == 0] = -1

    bad_idx = np.flatnonzero(reason != _OK)
    out = ParsedBlock(labels=(lab_char[good] == 49).astype(np.float32), dense=dlrm_dense(raw), ids=ids,
                      bad_lines=bad_idx + first_line,
                      dense_missing=missing.sum(0), dense_inf=np.isinf(raw).sum(0),
                      dense_negative=(raw < 0).sum(0))
    if len(bad_idx):
        row_of_ok = np.cumsum(ok) - 1  # line index -> row of fs (for lines that passed the field count)
        for i in bad_idx:
            out.bad_reasons.append(_describe(int(reason[i]), int(nfields[i]), int(row_of_ok[i]), dense_bad, cat_bad))
            text = block[starts[i]:ends_nl[i]][:120]
            out.bad_text.append(text.decode("latin-1"))
    return out


def _describe(code: int, nfields: int, row: int, dense_bad: np.ndarray, cat_bad: np.ndarray) -> str:
    if code == _FIELDS:
        return f"expected {NUM_FIELDS} tab-separated fields, found {nfields}"
    if code == _BYTES:
        return "undecodable (non-ASCII) bytes"
    if code == _LABEL:
        return "label is not 0 or 1"
    if code == _DENSE:
        return f"dense value I{int(np.argmax(dense_bad[row])) + 1} is not a number"
    return f"category C{int(np.argmax(cat_bad[row])) + 1} is not 1-{_MAX_HEX_DIGITS} hex digits"
