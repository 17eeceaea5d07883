"""Row pruning of quantized tables from id frequencies, with TorchRec's and fbgemm's own support.

Most rows of a Zipf-distributed table are seen a handful of times, yet their int4 rows cost
as much as the head's. Pruning keeps a table's frequent rows and maps every other id to one
*fallback row* (the count-weighted mean of the pruned rows: the best single row, in squared
error, for the traffic they get):

* the float table is reordered so the kept rows come first and the fallback row after them,
  and TorchRec is told the table's size after pruning
  (``torchrec.inference.modules.set_pruning_data`` -> ``num_embeddings_post_pruning``), so
  ``quantize_embeddings`` stores only those rows;
* fbgemm's TBE gets an index remapping (``set_index_remappings_array``): original id ->
  stored row, done inside the kernel (``pruned_array_lookup``); it is an int32 per original
  row, counted in the stored bytes (read from the TBE's own buffers), and saved with the weights.

Example::

    counts = id_counts(blocks, feature_tables)                       # {table: [rows] int64}
    kept = {t: keep_rows(c, keep_fraction=0.3) for t, c in counts.items()}
    qm = quantize_model(model, "int4", pruning=prune_plan(model, kept, counts))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torchrec.inference.modules import set_pruning_data
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

# fbgemm stores the remapping as int32: one per original row
REMAP_BYTES_PER_ROW = 4


@dataclass
class TablePruning:
    """One table's pruning: which original rows are kept (in stored order) and the table's original size.

    Attributes:
        kept (np.ndarray): int64 original row ids kept, sorted; stored rows ``0..k-1``, fallback at ``k``.
        num_embeddings (int): rows before pruning.
    """

    kept: np.ndarray
    num_embeddings: int

    @property
    def rows_post_pruning(self) -> int:
        """Stored rows: the kept ones plus the fallback row."""
        return len(self.kept) + 1

    def remapping(self) -> torch.Tensor:
        """int32 ``[num_embeddings]``: original id -> stored row (pruned ids -> the fallback row)."""
        mapping = torch.full((self.num_embeddings,), len(self.kept), dtype=torch.int32)
        mapping[torch.from_numpy(self.kept)] = torch.arange(len(self.kept), dtype=torch.int32)
        return mapping

    def to_json(self) -> Dict[str, int]:
        """What an export records (the remapping itself is saved with the weights)."""
        return {"num_embeddings": self.num_embeddings, "kept": int(len(self.kept))}


def feature_tables(model: nn.Module) -> Dict[str, str]:
    """``{feature name: table name}`` of every float ``EmbeddingBagCollection`` in ``model``."""
    return {f: t.name for m in model.modules() if isinstance(m, EmbeddingBagCollection)
            for t in m.embedding_bag_configs() for f in t.feature_names}


def table_configs(model: nn.Module) -> List[EmbeddingBagConfig]:
    """The configs of every float table in ``model``, in module order."""
    return [t for m in model.modules() if isinstance(m, EmbeddingBagCollection) for t in m.embedding_bag_configs()]


def table_sizes(model: nn.Module) -> Dict[str, int]:
    """``{table name: num_embeddings}`` of the float tables in ``model``."""
    return {t.name: t.num_embeddings for t in table_configs(model)}


def pruning_table(pruning: Dict[str, TablePruning]) -> str:
    """The pruning as a console table: rows kept of each table."""
    lines = [f"{'table':<16} {'rows':>9} {'kept':>9} {'kept %':>7}"]
    for t, p in pruning.items():
        lines.append(f"{t:<16} {p.num_embeddings:>9,} {len(p.kept):>9,} {100 * len(p.kept) / p.num_embeddings:>6.1f}%")
    return "\n".join(lines)


def id_counts(blocks: Iterable, sparse_names: Sequence[str], model: nn.Module) -> Dict[str, np.ndarray]:
    """How often each row of each table is looked up in ``blocks``.

    Args:
        blocks (Iterable[RowBlock]): rows (e.g. the student's train split).
        sparse_names (Sequence[str]): the blocks' sparse features, in order.
        model (nn.Module): the float model whose tables the features look up.

    Returns:
        Dict[str, np.ndarray]: ``{table: int64 [num_embeddings]}`` (features sharing a table add up).
    """
    tables, sizes = feature_tables(model), table_sizes(model)
    counts = {t: np.zeros(n, np.int64) for t, n in sizes.items()}
    for block in blocks:
        for name, jag in zip(sparse_names, block.sparse):
            if name in tables:
                t = tables[name]
                counts[t] += np.bincount(jag.values, minlength=sizes[t])[: sizes[t]]
    return counts


def keep_rows(counts: np.ndarray, keep_fraction: Optional[float] = None, min_count: int = 1) -> np.ndarray:
    """The rows to keep: seen at least ``min_count`` times, at most the ``keep_fraction`` most frequent.

    Args:
        counts (np.ndarray): lookups per row.
        keep_fraction (Optional[float]): keep at most this share of the rows (the most frequent; ties by id).
        min_count (int): drop rows seen fewer times.

    Returns:
        np.ndarray: sorted int64 row ids (at least one row is always kept).
    """
    order = np.lexsort((np.arange(len(counts)), -counts))  # most frequent first, ties by id
    n = len(counts) if keep_fraction is None else max(1, int(round(keep_fraction * len(counts))))
    chosen = order[:n]
    chosen = chosen[counts[chosen] >= min_count]
    if len(chosen) == 0:
        chosen = order[:1]
    return np.sort(chosen).astype(np.int64)


def prune_plan(model: nn.Module, kept: Dict[str, np.ndarray]) -> Dict[str, TablePruning]:
    """``{table: TablePruning}`` for the tables named in ``kept`` (a ValueError names an unknown table)."""
    sizes = table_sizes(model)
    unknown = sorted(set(kept) - set(sizes))
    if unknown:
        raise ValueError(f"pruning names tables {unknown} the model does not have; tables are {sorted(sizes)}")
    return {t: TablePruning(np.asarray(k, np.int64), sizes[t]) for t, k in kept.items()}


def reorder_for_pruning(model: nn.Module, pruning: Dict[str, TablePruning],
                        counts: Optional[Dict[str, np.ndarray]] = None) -> nn.Module:
    """A copy of ``model`` whose pruned tables hold kept rows first, then the fallback row; sizes told to TorchRec.

    Args:
        model (nn.Module): float model.
        pruning (Dict[str, TablePruning]): per table.
        counts (Optional[Dict[str, np.ndarray]]): lookups per row; weights the fallback row's mean
            (without them: the plain mean of the pruned rows).

    Returns:
        nn.Module: the copy, ready for ``quantize_embeddings`` (which keeps the first rows only).
    """
    model = copy.deepcopy(model)
    for ebc in (m for m in model.modules() if isinstance(m, EmbeddingBagCollection)):
        for name, bag in ebc.embedding_bags.items():
            if name not in pruning:
                continue
            p = pruning[name]
            w = bag.weight.data
            pruned = np.setdiff1d(np.arange(p.num_embeddings), p.kept)
            if len(pruned) == 0:
                fallback = torch.zeros(w.shape[1], dtype=w.dtype)
            else:
                weight = counts[name][pruned].astype(np.float64) if counts is not None else np.ones(len(pruned))
                weight = weight if weight.sum() > 0 else np.ones(len(pruned))
                coef = torch.from_numpy(weight / weight.sum()).to(w.dtype)
                fallback = coef @ w[torch.from_numpy(pruned)]
            head = torch.cat([w[torch.from_numpy(p.kept)], fallback[None]])
            w[: len(head)] = head
    set_pruning_data(model, {t: p.rows_post_pruning for t, p in pruning.items()})
    return model


def set_remappings(qmodel: nn.Module, pruning: Dict[str, TablePruning]) -> None:
    """Give every fbgemm TBE of ``qmodel`` the index remapping of its pruned tables (in place)."""
    for ebc in (m for m in qmodel.modules() if isinstance(m, QuantEmbeddingBagCollection)):
        for tbe in ebc._emb_modules:
            specs = [spec[0] for spec in tbe.embedding_specs]
            if any(t in pruning for t in specs):
                maps: List[Optional[torch.Tensor]] = [pruning[t].remapping() if t in pruning else None for t in specs]
                tbe.set_index_remappings_array(maps)  # type: ignore[arg-type]  (None: that table is not pruned)

