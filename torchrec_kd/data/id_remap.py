"""Raw ids of entity features (users, items) -> embedding rows, growing with the trained windows.

TorchRec 1.8's managed-collision modules cannot be sharded on CPU (their sharder offers only
row_wise, which needs CUDA), so new ids are handled outside the sharded collection: each entity
feature keeps an :class:`IdRemap`, a table with headroom.

* Row 0 is the fallback row: an id never trained on (and an id refused because the table is
  full) reads row 0, so an unseen id scores through a defined row, never an old id's row.
* Rows 1, 2, … go to ids in order of their first appearance in the trained rows (ties by row
  order). :meth:`IdRemap.extend` only appends, so an old id keeps its row across windows and
  a new id never shares an embedding row with an old one.
* Capacity is the table size (``num_embeddings``): ids beyond ``capacity - 1`` are overflow,
  counted (distinct ids) and warned about once, and read row 0.

Saved as JSON (:func:`save_remaps` / :func:`load_remaps`; no pickle) in run dirs and exports,
so serving maps raw ids exactly as training did (:meth:`IdRemap.lookup`).

Example::

    remap = IdRemap("item_id", capacity=1000)
    remap.extend(np.array([42, 7, 42]))       # 42 -> row 1, 7 -> row 2
    remap.lookup(np.array([7, 42, 999]))      # array([2, 1, 0])
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Mapping, Union

import numpy as np

from torchrec_kd.errors import DataError

logger = logging.getLogger(__name__)

REMAP_FORMAT = "torchrec_kd.id_remap/1"
REMAP_FILE = "id_remap.json"
FALLBACK_ROW = 0


class IdRemap:
    """One entity feature's raw id -> row map (row 0: ids never trained on).

    Args:
        feature (str): the sparse feature (KJT key) it maps.
        capacity (int): rows of the feature's table (row 0 included), at least 1.
    """

    def __init__(self, feature: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"IdRemap({feature!r}): capacity must be >= 1, got {capacity}")
        self.feature, self.capacity = feature, int(capacity)
        self.ids = np.zeros(0, np.int64)  # ids[k] has row k + 1
        self.overflow = 0  # distinct ids refused because the table was full
        self._overflow_ids: set = set()
        self._warned = False
        self._sorted = self.ids
        self._sorted_rows = self.ids

    def __len__(self) -> int:
        """Ids with a row of their own."""
        return len(self.ids)

    def extend(self, raw: np.ndarray) -> int:
        """Give every id of ``raw`` not seen yet the next free row, in order of first appearance.

        Args:
            raw (np.ndarray): int64 raw ids in row order (a window's trained rows).

        Returns:
            int: how many ids got a new row.
        """
        raw = np.asarray(raw, np.int64)
        if len(raw) == 0:
            return 0
        uniq, first = np.unique(raw, return_index=True)
        unseen = ~np.isin(uniq, self.ids)
        new = uniq[unseen][np.argsort(first[unseen], kind="stable")]  # in order of first appearance
        free = self.capacity - 1 - len(self.ids)
        if len(new) > free:
            refused = new[max(free, 0):]
            self._overflow_ids.update(int(i) for i in refused)
            self.overflow = len(self._overflow_ids)
            if not self._warned:
                logger.warning("%s: the table (%d rows) is full; %d new id(s) read the fallback row 0 (raise the "
                               "feature's num_embeddings to give them rows)", self.feature, self.capacity,
                               self.overflow)
                self._warned = True
            new = new[:max(free, 0)]
        if len(new):
            self.ids = np.concatenate([self.ids, new])
            order = np.argsort(self.ids, kind="stable")
            self._sorted, self._sorted_rows = self.ids[order], order + 1
        return len(new)

    def lookup(self, raw: np.ndarray) -> np.ndarray:
        """Rows of raw ids: their own row, or 0 for ids never trained on (or refused when full).

        Args:
            raw (np.ndarray): int64 raw ids (any shape).

        Returns:
            np.ndarray: int64 rows, same shape.
        """
        raw = np.asarray(raw, np.int64)
        if len(self._sorted) == 0:
            return np.zeros(raw.shape, np.int64)
        pos = np.clip(np.searchsorted(self._sorted, raw), 0, len(self._sorted) - 1)
        hit = self._sorted[pos] == raw
        return np.where(hit, self._sorted_rows[pos], FALLBACK_ROW).astype(np.int64)

    def copy(self) -> "IdRemap":
        """An independent copy (extending it leaves this one as it is)."""
        out = IdRemap(self.feature, self.capacity)
        out.ids, out._sorted, out._sorted_rows = self.ids.copy(), self._sorted.copy(), self._sorted_rows.copy()
        out.overflow, out._overflow_ids, out._warned = self.overflow, set(self._overflow_ids), self._warned
        return out

    def to_dict(self) -> Dict[str, object]:
        """JSON-able form: feature, capacity, overflow, ids in row order (row k + 1 = ids[k])."""
        return {"feature": self.feature, "capacity": self.capacity, "overflow": self.overflow,
                "ids": [int(i) for i in self.ids]}

    @staticmethod
    def from_dict(d: Mapping[str, object], where: str = "id remap") -> "IdRemap":
        """The inverse of :meth:`to_dict` (DataError naming ``where`` when malformed)."""
        try:
            out = IdRemap(str(d["feature"]), int(d["capacity"]))  # type: ignore[arg-type]
            ids = np.asarray(d["ids"], np.int64)
            out.overflow = int(d.get("overflow", 0))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: not an id remap ({e}); it should be written by save_remaps") from None
        if ids.ndim != 1 or len(np.unique(ids)) != len(ids) or len(ids) > out.capacity - 1:
            raise DataError(f"{where}: feature {out.feature!r} lists repeated ids or more ids than its "
                            f"{out.capacity} rows allow; the file is damaged")
        if len(ids):
            out.extend(ids)
        return out


def save_remaps(remaps: Mapping[str, IdRemap], path: Union[str, Path]) -> Path:
    """Write entity remaps as JSON (``id_remap.json`` inside ``path`` when it is a directory).

    Args:
        remaps (Mapping[str, IdRemap]): by feature name.
        path (str | Path): a file, or a directory to write ``id_remap.json`` into.

    Returns:
        Path: the file written (bytes are a function of the remaps only: same remaps, same file).
    """
    p = Path(path)
    if p.is_dir():
        p = p / REMAP_FILE
    doc = {"format": REMAP_FORMAT, "fallback_row": FALLBACK_ROW,
           "features": {name: r.to_dict() for name, r in sorted(remaps.items())}}
    p.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return p


def load_remaps(path: Union[str, Path]) -> Dict[str, IdRemap]:
    """Read what :func:`save_remaps` wrote (a file, or a directory holding ``id_remap.json``).

    Raises:
        DataError: missing, not JSON, or not an id remap file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / REMAP_FILE
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: no id remap there (written by windowed runs and their exports)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable id remap ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != REMAP_FORMAT or not isinstance(doc.get("features"), dict):
        raise DataError(f"{p}: not an id remap file (expected format {REMAP_FORMAT!r})")
    return {name: IdRemap.from_dict(d, f"{p} [{name}]") for name, d in doc["features"].items()}


def apply_remaps(remaps: Mapping[str, IdRemap], sparse_names: list, sparse: list) -> list:
    """Map the entity features of a block's sparse columns (``Jagged`` list) through their remaps.

    Args:
        remaps (Mapping[str, IdRemap]): by feature name; other features pass unchanged.
        sparse_names (list): the feature name of each column.
        sparse (list): one ``Jagged`` per feature, holding raw ids for the entity features.

    Returns:
        list: the columns, entity ids replaced by rows.
    """
    from torchrec_kd.data.rows import Jagged

    return [Jagged(remaps[name].lookup(j.values), j.offsets) if name in remaps else j
            for name, j in zip(sparse_names, sparse)]


__all__ = ["FALLBACK_ROW", "IdRemap", "REMAP_FILE", "REMAP_FORMAT", "apply_remaps", "load_remaps", "save_remaps"]
