"""The item index of a two-tower export: every corpus item's embedding, fp32 and int8 row-wise, with its id.

``quantize`` (and anything else that exports a two-tower) runs the item tower of the
*quantized* model over the item corpus once and stores the result beside the model, so
serving never runs the item tower:

* ``item_index.pt``: plain tensors (loads with ``weights_only=True``): ``fp32`` ``[N, d]``,
  ``int8`` ``[N, d]`` with ``int8_scale`` ``[N]`` (symmetric per row: ``v ~= scale * q``,
  ``|q| <= 127``, so ``u . v ~= scale * (u . q)``), and ``ids`` ``[N]`` when the raw ids are integers;
* ``item_index.json``: the format, ``N``, ``d``, the model's ``score`` / ``temperature`` / logit
  ``bias`` (``logit = u . v / temperature + bias``), the bytes of each precision, and the raw ids
  when they are not integers.

Both files are export extras: sealed with the export, checked on every load.

Example::

    index = compute_item_index(qm, corpus.block, corpus.sparse_names, corpus.ids)
    extras.update(item_index_files(index))            # save_quantized(..., extras=extras)
    index = read_item_index(export_dir)               # None when the export has no index
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from torchrec_kd.data.rows import RowBlock
from torchrec_kd.errors import CheckpointError
from torchrec_kd.models.two_tower import is_two_tower

logger = logging.getLogger(__name__)

ITEM_INDEX_FILE = "item_index.pt"
ITEM_INDEX_META = "item_index.json"
ITEM_INDEX_FORMAT = "torchrec_kd.item_index/1"
INT8_MAX = 127


@dataclass
class ItemIndex:
    """Every corpus item's embedding (row order = corpus index) and how logits are made from it.

    Attributes:
        ids (np.ndarray): [N] raw item ids.
        fp32 (Tensor): [N, d] float32 item embeddings.
        int8 (Tensor): [N, d] int8, row-wise symmetric.
        int8_scale (Tensor): [N] float32: ``fp32 ~= int8 * scale``.
        score (str): ``dot`` or ``cosine`` (how the model scores; the rows are already normalised for cosine).
        temperature (float): logits are ``u . v / temperature + bias``.
        bias (float): the model's logit bias.
    """

    ids: np.ndarray
    fp32: Tensor
    int8: Tensor
    int8_scale: Tensor
    score: str = "dot"
    temperature: float = 1.0
    bias: float = 0.0

    def __len__(self) -> int:
        return int(self.fp32.shape[0])

    @property
    def dim(self) -> int:
        """d."""
        return int(self.fp32.shape[1])

    def vectors(self, dtype: str = "fp32") -> Tensor:
        """[N, d] float32 rows of ``dtype`` (``int8``: the dequantized rows ``scale * q``)."""
        if dtype == "fp32":
            return self.fp32
        if dtype == "int8":
            return self.int8.float() * self.int8_scale.unsqueeze(1)
        raise ValueError(f"item index dtype must be fp32 or int8, got {dtype!r}")

    def nbytes(self, dtype: str = "fp32") -> int:
        """Bytes of the stored rows (int8: values plus one fp32 scale per row)."""
        if dtype == "fp32":
            return self.fp32.numel() * 4
        return self.int8.numel() + self.int8_scale.numel() * 4


def quantize_rows_int8(rows: Tensor) -> "tuple[Tensor, Tensor]":
    """Row-wise symmetric int8: ``q = round(v / s)``, ``s = max|v| / 127`` (an all-zero row has s = 1).

    Args:
        rows (Tensor): [N, d] float.

    Returns:
        tuple[Tensor, Tensor]: int8 [N, d] and float32 scales [N].
    """
    amax = rows.abs().amax(dim=1) if rows.numel() else torch.zeros(rows.shape[0])
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax)).float()
    q = torch.clamp(torch.round(rows / scale.unsqueeze(1)), -INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def _scalar(x: Any, default: float) -> float:
    if x is None:
        return default
    return float(x.detach().reshape(-1)[0]) if isinstance(x, Tensor) else float(x)


@torch.no_grad()
def compute_item_index(model: nn.Module, block: RowBlock, keys: Sequence[str], ids: np.ndarray,
                       batch_size: int = 8192) -> ItemIndex:
    """Run ``model.item_embedding`` over every corpus item.

    Args:
        model (nn.Module): a two-tower model (float or quantized; its ``item_embedding`` is used).
        block (RowBlock): the corpus' item features, one row per item (``ItemCorpus.block``).
        keys (Sequence[str]): the block's sparse feature names in order (``ItemCorpus.sparse_names``).
        ids (np.ndarray): [N] raw item ids, row order = corpus index.
        batch_size (int): items per forward.

    Returns:
        ItemIndex: fp32 and int8 rows, the model's score settings.
    """
    if len(ids) != len(block):
        raise ValueError(f"compute_item_index: {len(ids)} ids for {len(block)} corpus rows")
    parts = []
    for a in range(0, len(block), batch_size):
        batch = block.slice(a, a + batch_size).to_batch(list(keys))
        parts.append(model.item_embedding(batch.sparse_features).float())
    fp32 = torch.cat(parts) if parts else torch.zeros(0, 0)
    q, scale = quantize_rows_int8(fp32)
    return ItemIndex(np.asarray(ids), fp32.contiguous(), q, scale, "cosine" if getattr(model, "cosine", False) else "dot",
                     _scalar(getattr(model, "temperature", None), 1.0), _scalar(getattr(model, "logit_bias", None), 0.0))


def _meta(index: ItemIndex) -> Dict[str, Any]:
    integer = np.issubdtype(index.ids.dtype, np.integer)
    return {"format": ITEM_INDEX_FORMAT, "items": len(index), "dim": index.dim, "score": index.score,
            "temperature": index.temperature, "bias": index.bias,
            "bytes": index_summary(index)["bytes"],
            "ids": None if integer else [str(i) for i in index.ids.tolist()]}


def item_index_files(index: ItemIndex) -> Dict[str, Callable[[Path], Any]]:
    """The index as export extras (``save_quantized(..., extras=...)``): ``{file name: writer}``."""
    tensors = {"fp32": index.fp32, "int8": index.int8, "int8_scale": index.int8_scale}
    if np.issubdtype(index.ids.dtype, np.integer):
        tensors["ids"] = torch.from_numpy(index.ids.astype(np.int64))
    text = json.dumps(_meta(index), indent=2)
    return {ITEM_INDEX_FILE: lambda f: torch.save(tensors, f), ITEM_INDEX_META: lambda f: f.write_text(text)}


def corpus_index(model: nn.Module, data: Any) -> Optional[ItemIndex]:
    """The item index of ``data``'s corpus; None for a model that is not a two-tower (or data without a corpus).

    Args:
        model (nn.Module): the model being exported (quantized).
        data: the run's data; a retrieval source has ``corpus()`` (``ids``, ``block``, ``sparse_names``).

    Returns:
        Optional[ItemIndex]: the index, or None.
    """
    if not is_two_tower(model):
        return None
    if not callable(getattr(data, "corpus", None)):
        logger.warning("a two-tower export without an item index: the data has no item corpus (set data.retrieval)")
        return None
    corpus = data.corpus()
    return compute_item_index(model, corpus.block, corpus.sparse_names, corpus.ids)


def index_summary(index: ItemIndex) -> Dict[str, Any]:
    """What a metrics entry says of an export's item index: items, width, bytes per precision."""
    return {"items": len(index), "dim": index.dim, "bytes": {"fp32": index.nbytes("fp32"), "int8": index.nbytes("int8")}}


def write_item_index(index: ItemIndex, path: Union[str, Path]) -> Path:
    """Write the two index files into the directory ``path`` (outside an export: tests, tools)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, write in item_index_files(index).items():
        write(path / name)
    return path


def read_item_index(path: Union[str, Path]) -> Optional[ItemIndex]:
    """The index stored in an export directory, or None when it has none (not a two-tower export).

    Raises:
        CheckpointError: the files are there but not an index this tool wrote.
    """
    path = Path(path)
    f, m = path / ITEM_INDEX_FILE, path / ITEM_INDEX_META
    if not f.is_file() and not m.is_file():
        return None
    try:
        meta = json.loads(m.read_text())
        if meta.get("format") != ITEM_INDEX_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        t = torch.load(f, weights_only=True)
        ids = t["ids"].numpy() if "ids" in t else np.asarray(meta["ids"], dtype=object)
        return ItemIndex(ids, t["fp32"], t["int8"], t["int8_scale"], meta["score"], float(meta["temperature"]),
                         float(meta["bias"]))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the item index is unreadable ({type(e).__name__}: {e}); re-run quantize") from None
