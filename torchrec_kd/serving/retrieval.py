"""Top-K retrieval over an export's item index: exact (batched matmul) by default, FAISS as an option.

A two-tower export holds the item embeddings of the whole corpus
(:mod:`torchrec_kd.quant.item_index`). Serving runs the (quantized) user tower on the
users' rows and searches the index for the K highest logits ``u . v / temperature + bias``:

* ``exact`` (default): ``u @ V.T`` in blocks of users (a block's score matrix stays under
  ``max_scores`` floats), then ``topk``. Always the true top-K.
* ``ivf``: FAISS ``IndexIVFFlat`` (inner product): ``nlist`` k-means cells, ``nprobe`` searched.
* ``hnsw``: FAISS ``IndexHNSWFlat`` (inner product): ``m`` links per node, ``ef_search`` beam.

``dtype`` picks the stored rows searched: ``fp32`` or ``int8`` (row-wise, dequantized once on
first use). FAISS indexes are built on first use and kept. Items a user has already seen can be
excluded (``exclude``: corpus indices per user). FAISS runs on ``torch.get_num_threads()`` threads.

Example::

    opts = index_options({"type": "ivf", "nlist": 1024, "nprobe": 32})
    retriever = Retriever(read_item_index(export_dir), opts)
    idx, logits = retriever.search(user_vectors, k=100)        # corpus indices [U, k], logits [U, k]
    recall_vs_exact(idx, Retriever(index).search(user_vectors, 100)[0])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from torchrec_kd.config import build_section
from torchrec_kd.data.contract import RawRows
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.errors import ConfigError, DataError
from torchrec_kd.quant.item_index import ItemIndex

INDEX_TYPES = ("exact", "ivf", "hnsw")
INDEX_DTYPES = ("fp32", "int8")


@dataclass
class IndexOptions:
    """How ``retrieve`` searches the item index (``index: {type, nlist, nprobe, m, ...}``)."""

    # exact: batched matmul; ivf / hnsw: FAISS (faiss-cpu) approximate search
    type: str = "exact"
    # ivf: k-means cells (null: 4 * sqrt(N)) and cells searched per query
    nlist: Optional[int] = None
    nprobe: int = 32
    # hnsw: links per node, build and search beam widths
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    # which stored rows are searched: fp32, or int8 row-wise
    dtype: str = "fp32"
    # exact: users per block (the block's [users, N] scores also stay under max_scores floats)
    batch_users: int = 1024
    max_scores: int = 1 << 25

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ConfigError(f"index.type must be one of {list(INDEX_TYPES)}, got {self.type!r}")
        if self.dtype not in INDEX_DTYPES:
            raise ConfigError(f"index.dtype must be one of {list(INDEX_DTYPES)}, got {self.dtype!r}")
        for key in ("nprobe", "m", "ef_construction", "ef_search", "batch_users", "max_scores"):
            if getattr(self, key) < 1:
                raise ConfigError(f"index.{key} must be >= 1, got {getattr(self, key)}")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"index.nlist must be >= 1 (or null: 4 * sqrt(items)), got {self.nlist}")


def index_options(spec: Union[None, str, Dict[str, Any], IndexOptions] = None, where: str = "index") -> IndexOptions:
    """Options from a dict (unknown keys refused with the nearest one), a type name, or None (exact).

    Raises:
        ConfigError: ``index: unknown key 'nprob'; did you mean 'nprobe'?`` or a bad value.
    """
    if spec is None:
        return IndexOptions()
    if isinstance(spec, IndexOptions):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping like {{type: ivf, nprobe: 32}}, got {spec!r}")
    try:
        return build_section(IndexOptions, dict(spec), where)
    except ConfigError as e:  # the checks below name the keys "index.<key>": name them as the caller does
        msg = str(e)
        msg = where + msg[len("index"):] if msg.startswith("index.") else msg
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def faiss_module() -> Any:
    """``faiss`` (the ``faiss-cpu`` package).

    Raises:
        ConfigError: it is not installed (index.type ivf / hnsw need it).
    """
    try:
        import faiss
    except ImportError:
        raise ConfigError("index.type ivf / hnsw need faiss: pip install faiss-cpu (or use index.type=exact)") from None
    return faiss


def recall_vs_exact(approx: Tensor, exact: Tensor) -> float:
    """Mean share of the exact top-K an approximate search found: ``|approx ∩ exact| / K`` per user.

    Args:
        approx (Tensor): [U, K] corpus indices.
        exact (Tensor): [U, K] corpus indices (the true top-K).

    Returns:
        float: in [0, 1].
    """
    if exact.numel() == 0:
        return 1.0
    hits = (approx.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2).sum(dim=1).float()
    return float((hits / exact.shape[1]).mean())


class Retriever:
    """Searches one item index with one set of options.

    Args:
        index (ItemIndex): the export's item index.
        options (IndexOptions | dict | str | None): how to search (default exact, fp32).
    """

    def __init__(self, index: ItemIndex, options: Union[None, str, Dict[str, Any], IndexOptions] = None) -> None:
        self.index = index
        self.options = index_options(options)
        self._vectors: Optional[Tensor] = None
        self._faiss: Any = None

    @property
    def vectors(self) -> Tensor:
        """[N, d] float32 rows searched (the chosen dtype's)."""
        if self._vectors is None:
            self._vectors = self.index.vectors(self.options.dtype).contiguous()
        return self._vectors

    def build(self) -> "Retriever":
        """Build the FAISS index now (otherwise on the first search); a no-op for exact."""
        if self.options.type != "exact" and self._faiss is None:
            self._faiss = _build_faiss(self.vectors, self.options)
        return self

    def search(self, users: Tensor, k: int, exclude: Optional[Sequence[np.ndarray]] = None) -> Tuple[Tensor, Tensor]:
        """The K best items of each user.

        Args:
            users (Tensor): [U, d] user embeddings (the user tower's output).
            k (int): items per user (at most the corpus size).
            exclude (Optional[Sequence[np.ndarray]]): per user, corpus indices never returned (seen items).

        Returns:
            Tuple[Tensor, Tensor]: corpus indices [U, k] (int64, best first) and their logits [U, k].

        Raises:
            ConfigError: k < 1, or more than the corpus holds.
        """
        n = len(self.index)
        if not 1 <= k <= n:
            raise ConfigError(f"k must be between 1 and the corpus' {n} items, got {k}")
        if exclude is not None and len(exclude) != users.shape[0]:
            raise ValueError(f"exclude has {len(exclude)} entries for {users.shape[0]} users")
        users = users.float().contiguous()
        if self.options.type == "exact":
            idx, dots = _exact(users, self.vectors, k, exclude, self.options)
        else:
            idx, dots = _faiss_search(self.build()._faiss[0], users, k, exclude, self.options)
        return idx, dots / self.index.temperature + self.index.bias

    def ids(self, idx: Tensor) -> np.ndarray:
        """Raw item ids of corpus indices (``-1`` marks no item: fewer than k were left)."""
        arr = idx.numpy()
        out = self.index.ids[np.clip(arr, 0, None)]
        if (arr < 0).any():
            out = out.astype(object) if out.dtype == object else out.copy()
            out[arr < 0] = -1
        return out


def _exclude_mask(scores: Tensor, exclude: Sequence[np.ndarray], a: int) -> None:
    """Set the excluded items of users ``a..a+len(scores)`` to -inf, in place."""
    rows = [np.full(len(e), i, np.int64) for i, e in enumerate(exclude[a:a + scores.shape[0]]) if len(e)]
    if rows:
        cols = [np.asarray(e, np.int64) for e in exclude[a:a + scores.shape[0]] if len(e)]
        scores[torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))] = -math.inf


def _exact(users: Tensor, vectors: Tensor, k: int, exclude: Optional[Sequence[np.ndarray]],
           opts: IndexOptions) -> Tuple[Tensor, Tensor]:
    """True top-K by blocks of users: ``[block, N]`` scores, excluded items at -inf, ``topk``."""
    n = vectors.shape[0]
    block = max(1, min(opts.batch_users, opts.max_scores // max(n, 1)))
    idx, dots = [], []
    with torch.inference_mode():
        for a in range(0, users.shape[0], block):
            scores = users[a:a + block] @ vectors.T
            if exclude is not None:
                _exclude_mask(scores, exclude, a)
            top = torch.topk(scores, k, dim=1)
            idx.append(top.indices)
            dots.append(top.values)
    if not idx:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    out_idx, out_dots = torch.cat(idx), torch.cat(dots)
    return out_idx.masked_fill(torch.isinf(out_dots), -1), out_dots


def _build_faiss(vectors: Tensor, opts: IndexOptions) -> Any:
    """A FAISS inner-product index over ``vectors`` (IVF-Flat trained on them, or HNSW-Flat), and its
    coarse quantizer (the IVF index does not own it: whoever keeps the index keeps it too)."""
    faiss = faiss_module()
    faiss.omp_set_num_threads(torch.get_num_threads())
    x = np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
    n, d = x.shape
    if opts.type == "hnsw":
        index = faiss.IndexHNSWFlat(d, opts.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = opts.ef_construction
        index.add(x)
        return index, None
    nlist = max(1, min(opts.nlist or int(4 * math.sqrt(n)), n))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # k-means on a sample (FAISS wants >= 39 points per cell; more adds build time, not quality)
    sample = x if n <= 64 * nlist else x[np.random.default_rng(0).choice(n, 64 * nlist, replace=False)]
    index.cp.min_points_per_centroid = 1  # a small corpus: no warning, the cells are what they are
    index.train(sample)
    index.add(x)
    return index, quantizer


def _faiss_search(index: Any, users: Tensor, k: int, exclude: Optional[Sequence[np.ndarray]],
                  opts: IndexOptions) -> Tuple[Tensor, Tensor]:
    """FAISS top-K (k + the most any user excludes, then filtered)."""
    faiss = faiss_module()
    faiss.omp_set_num_threads(torch.get_num_threads())
    if opts.type == "hnsw":
        index.hnsw.efSearch = max(opts.ef_search, k)
    else:
        index.nprobe = min(opts.nprobe, index.nlist)
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    wanted = min(k + extra, index.ntotal)
    dots, idx = index.search(np.ascontiguousarray(users.numpy(), dtype=np.float32), wanted)
    idx_t, dots_t = torch.from_numpy(idx).long(), torch.from_numpy(dots).float()
    dots_t = dots_t.masked_fill(idx_t < 0, -math.inf)  # FAISS pads with -1 when a probe found too few
    if exclude is not None and extra:
        for i, e in enumerate(exclude):
            if len(e):
                seen = torch.from_numpy(np.isin(idx[i], np.asarray(e)))
                dots_t[i][seen] = -math.inf
    top = torch.topk(dots_t, k, dim=1)  # keeps FAISS's order, drops excluded / padded entries
    out_idx = torch.gather(idx_t, 1, top.indices)
    return out_idx.masked_fill(torch.isinf(top.values), -1), top.values


def with_options(options: IndexOptions, **changes: Any) -> IndexOptions:
    """A copy of ``options`` with some fields changed (checked again)."""
    return dataclasses.replace(options, **changes)


def user_block(rows: RawRows, user_features: Sequence[str], user_rows: Union[pd.DataFrame, RowBlock],
               keys: Optional[Sequence[str]] = None) -> Tuple[RowBlock, List[str]]:
    """Users' rows as model inputs: a DataFrame converted by the export's contract, a RowBlock as it is.

    A DataFrame needs the user columns (and the dense ones) only: absent item columns are
    read as empty (the item tower does not run). A RowBlock's sparse columns are ``keys``, else
    the contract's features when it has that many, else the user features.

    Args:
        rows (RawRows): the export's contract.
        user_features (Sequence[str]): the user tower's features (the export's meta ``roles.user``).
        user_rows (pd.DataFrame | RowBlock): the users.
        keys (Optional[Sequence[str]]): a RowBlock's sparse feature names.

    Returns:
        Tuple[RowBlock, List[str]]: the rows and their sparse feature names.

    Raises:
        DataError: a rejected row (named), a missing user column, or a RowBlock whose columns cannot be named.
    """
    if isinstance(user_rows, RowBlock):
        if keys is None:
            n = len(user_rows.sparse)
            keys = rows.sparse_names if n == len(rows.sparse_names) else (
                list(user_features) if n == len(user_features) else None)
        if keys is None or len(keys) != len(user_rows.sparse):
            raise DataError(f"user rows: {len(user_rows.sparse)} sparse columns; pass keys= naming them (the model's "
                            f"features are {rows.sparse_names}, its user features {list(user_features)})")
        return user_rows, list(keys)
    frame = pd.DataFrame(user_rows) if not isinstance(user_rows, pd.DataFrame) else user_rows
    feature_of = ({s.column: s.name or s.column for s in rows.table.sparse} if rows.table is not None
                  else {n: n for n in rows.sparse_names})
    users = set(user_features)
    absent = [c for c in rows.columns if c not in frame.columns and c in feature_of and feature_of[c] not in users]
    if absent:  # item columns: empty bags (only the user tower runs)
        frame = frame.assign(**{c: [None] * len(frame) for c in absent})
    converted = rows.convert(frame, where="user rows")
    if converted.bad:
        line, reason, _ = converted.bad[0]
        raise DataError(f"user row {line - 1}: {reason} ({len(converted.bad)} bad row(s))")
    return converted.rows, list(rows.sparse_names)
