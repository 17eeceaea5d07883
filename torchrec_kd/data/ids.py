"""Raw categorical values -> table rows in ``[0, num_embeddings)``.

The rule every reader follows, so that no id can index outside its table:

* integers (any size, negative too; also integer text such as "42" and integral floats)
  are taken modulo the table size with the result's sign that of the divisor
  (``-1 % 1000 == 999``), so ids already in range stay unchanged;
* anything else (strings, floats, integers with ``hashing="hash"``) is hashed with
  pandas' stable 64-bit hash of its text (the same on every machine and run), then
  taken modulo the table size.

Example::

    table_rows(np.array([5, -1, 10**15]), 1000)      # array([  5, 999,   0])
    hash_strings(np.array(["a", "b"], dtype=object), 1000)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Fixed key of the string hash: changing it would move every hashed id to a new row.
HASH_KEY = "torchrec_kd_ids0"


def table_rows(values: np.ndarray, num_embeddings: int) -> np.ndarray:
    """Integer ids (int64 or uint64, any range) -> rows ``[0, num_embeddings)`` as int64.

    Args:
        values (np.ndarray): integer ids.
        num_embeddings (int): table size.

    Returns:
        np.ndarray: int64 rows, ``values mod num_embeddings``.
    """
    if values.dtype == np.uint64:
        return (values % np.uint64(num_embeddings)).astype(np.int64)
    return np.mod(values.astype(np.int64, copy=False), np.int64(num_embeddings))


def hash_strings(values: np.ndarray, num_embeddings: int) -> np.ndarray:
    """Values hashed as text (stable across runs and machines) -> rows ``[0, num_embeddings)``.

    Args:
        values (np.ndarray): object array of strings (other objects are hashed as ``str(v)``).
        num_embeddings (int): table size.

    Returns:
        np.ndarray: int64 rows.
    """
    text = np.asarray([v if isinstance(v, str) else str(v) for v in values], dtype=object)
    if len(text) == 0:
        return np.zeros(0, np.int64)
    h = pd.util.hash_array(text, hash_key=HASH_KEY, categorize=True)
    return (h % np.uint64(num_embeddings)).astype(np.int64)


INT_PATTERN = r"[+-]?\d+"
# up to 18 digits always fit int64: converted vectorised; longer integers go through Python ints
_FAST_DIGITS = 18


def to_rows(values: np.ndarray, num_embeddings: int, hashing: str = "auto") -> np.ndarray:
    """Raw values (ints, integral floats or text) -> table rows, by the module's rule.

    Args:
        values (np.ndarray): raw values, no missing ones (drop them first).
        num_embeddings (int): table size.
        hashing (str): "auto" (integers of any size, integral floats and integer text modulo the
            size, the rest hashed as text) or "hash" (all hashed as text).

    Returns:
        np.ndarray: int64 rows in ``[0, num_embeddings)``.
    """
    values = np.asarray(values)
    if hashing == "auto" and values.dtype.kind in "iu":
        return table_rows(values, num_embeddings)
    if hashing == "auto" and values.dtype.kind == "f":
        integral = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 2.0**53)
        out = np.empty(len(values), np.int64)
        out[integral] = table_rows(values[integral].astype(np.int64), num_embeddings)
        out[~integral] = hash_strings(values[~integral].astype(str).astype(object), num_embeddings)
        return out
    text = pd.Series(values, dtype=object).astype(str).str.strip()
    if hashing == "hash":
        return hash_strings(text.to_numpy(dtype=object), num_embeddings)
    is_int = text.str.fullmatch(INT_PATTERN).to_numpy(dtype=bool)
    short = is_int & (text.str.lstrip("+-").str.len() <= _FAST_DIGITS).to_numpy(dtype=bool)
    out = np.empty(len(text), np.int64)
    out[short] = table_rows(text[short].astype(np.int64).to_numpy(), num_embeddings)
    long_ = is_int & ~short
    if long_.any():  # exact modulo of arbitrarily large integers
        out[long_] = [int(v) % num_embeddings for v in text[long_]]
    out[~is_int] = hash_strings(text[~is_int].to_numpy(dtype=object), num_embeddings)
    return out
