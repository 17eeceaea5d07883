"""Post-training quantization of a model's embedding tables with TorchRec / fbgemm.

Every float ``EmbeddingBagCollection`` in the model, wherever it sits, is swapped by
TorchRec's own module swap (``torchrec.inference.modules.quantize_embeddings``) for the
quantized one (``torchrec.quant.embedding_modules.EmbeddingBagCollection``), whose tables live in
fbgemm ``IntNBitTableBatchedEmbeddingBagsCodegen`` (TBE) storage. Dense layers stay
fp32. Rows are stored at row alignment 1, so each row takes the format's floor
(``d * bits / 8`` bytes of data plus a 4-byte fp16 scale and bias for intN) instead
of being padded to 16 bytes.

Example::

    qm = quantize_model(model, "int4", per_table={"s_cat_0": "int8"})
    logits = qm(dense, kjt)                   # [B, 1]
    embedding_storage_bytes(qm)               # bytes held by fbgemm
    dequantized_tables(qm)["s_cat_1"]         # fp32 rows the int4 bytes represent
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from torch import Tensor, nn
from torchrec.inference.modules import quantize_embeddings
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import (
    quant_prep_customize_row_alignment,
    quant_prep_enable_register_tbes,
)

from torchrec_kd.quant.pruning import TablePruning, reorder_for_pruning, set_remappings

# Our dtype names -> the torch dtypes TorchRec's QuantConfig understands
# (see torchrec.modules.embedding_configs.dtype_to_data_type).
QUANT_DTYPES: Dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "int8": torch.qint8,
    "int4": torch.quint4x2,
    "int2": torch.quint2x4,
}

# Bits per stored value for the integer formats (fbgemm's rowwise "SBHalf" layout).
_INT_BITS: Dict[str, int] = {"int8": 8, "int4": 4, "int2": 2}

# Every intN row carries one fp16 scale and one fp16 bias.
SCALE_BIAS_BYTES = 4


def _check_dtype(dtype: str, where: str) -> None:
    if dtype not in QUANT_DTYPES:
        raise ValueError(f"{where}: unknown embedding dtype {dtype!r}; use one of {sorted(QUANT_DTYPES)}")


def floor_bytes_per_row(dim: int, dtype: str) -> int:
    """Smallest row size a format allows: packed values plus fp16 scale/bias for intN.

    Args:
        dim (int): embedding dimension.
        dtype (str): one of ``fp32``, ``fp16``, ``int8``, ``int4``, ``int2``.

    Returns:
        int: bytes per row with no alignment padding.
    """
    _check_dtype(dtype, "floor_bytes_per_row")
    if dtype == "fp32":
        return 4 * dim
    if dtype == "fp16":
        return 2 * dim
    values_per_byte = 8 // _INT_BITS[dtype]
    return math.ceil(dim / values_per_byte) + SCALE_BIAS_BYTES


def float_tables(model: nn.Module) -> Dict[str, str]:
    """The tables of every float ``EmbeddingBagCollection`` in ``model``: ``{table: module path}``."""
    return {t.name: name for name, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)
            for t in m.embedding_bag_configs()}


def quantize_model(model: nn.Module, dtype: str, per_table: Optional[Dict[str, str]] = None,
                   row_alignment: int = 1, inplace: bool = False, pruning: Optional[Dict[str, TablePruning]] = None,
                   counts: Optional[Dict[str, np.ndarray]] = None) -> nn.Module:
    """Quantize a float model's embedding tables, wherever they sit; dense layers stay fp32.

    Args:
        model (nn.Module): float model on CPU holding TorchRec ``EmbeddingBagCollection`` s
            (a DLRM, DeepFM, a user's own model).
        dtype (str): default table dtype: ``int8``, ``int4``, ``int2``, ``fp16`` (or ``fp32``).
        per_table (Optional[Dict[str, str]]): ``{table_name: dtype}`` overrides.
        row_alignment (int): TBE row alignment in bytes; 1 stores rows at the format's
            floor (TorchRec's default is 16).
        inplace (bool): quantize ``model`` itself instead of a deep copy.
        pruning (Optional[Dict[str, TablePruning]]): rows kept per table (:mod:`torchrec_kd.quant.pruning`);
            other ids of those tables score as the table's fallback row.
        counts (Optional[Dict[str, np.ndarray]]): lookups per row, weighting each fallback row's mean.

    Returns:
        nn.Module: the model with quantized collections, called as the float model was.

    Raises:
        ValueError: on an unknown dtype, a model without float embedding bag collections,
            or a per-table override naming no table.
    """
    per_table = dict(per_table or {})
    _check_dtype(dtype, "quantize_model dtype")
    names = float_tables(model)
    if not names:
        raise ValueError(f"quantize_model: {type(model).__name__} holds no float EmbeddingBagCollection")
    for name, table_dtype in per_table.items():
        _check_dtype(table_dtype, f"quantize_model per_table[{name!r}]")
        if name not in names:
            raise ValueError(f"quantize_model per_table: no table named {name!r}; tables are {sorted(names)}")

    if pruning:  # a reordered copy: kept rows first, then the fallback row, sizes set for TorchRec
        qmodel = reorder_for_pruning(model, pruning, counts)
    else:
        qmodel = model if inplace else copy.deepcopy(model)
    # Both flags are read by QuantEmbeddingBagCollection.from_float: row alignment 1
    # drops the 16-byte row padding, and registering the TBEs as submodules makes
    # them visible to model.modules() (TorchRec's get_table_to_weights_from_tbe /
    # assign_weights_to_tbe, used when sharding a quantized model, rely on that).
    quant_prep_customize_row_alignment(qmodel, [EmbeddingBagCollection], row_alignment)
    quant_prep_enable_register_tbes(qmodel, [EmbeddingBagCollection])
    qmodel = quantize_embeddings(
        qmodel,
        dtype=QUANT_DTYPES[dtype],
        inplace=True,
        output_dtype=torch.float,
        per_table_weight_dtype={name: QUANT_DTYPES[d] for name, d in per_table.items()},
    )
    if pruning:
        set_remappings(qmodel, pruning)
    return qmodel


def quantized_ebcs(qmodel: nn.Module) -> List[QuantEmbeddingBagCollection]:
    """The quantized embedding bag collections inside ``qmodel``.

    Args:
        qmodel (nn.Module): a model returned by :func:`quantize_model`.

    Returns:
        List[QuantEmbeddingBagCollection]: in module order.

    Raises:
        ValueError: if the model holds none (e.g. it is still a float model).
    """
    ebcs = [m for m in qmodel.modules() if isinstance(m, QuantEmbeddingBagCollection)]
    if not ebcs:
        raise ValueError(f"{type(qmodel).__name__} holds no quantized EmbeddingBagCollection; run quantize_model first")
    return ebcs


def _tbes(qmodel: nn.Module) -> List[IntNBitTableBatchedEmbeddingBagsCodegen]:
    # _emb_modules lists the TBEs whether or not they were registered as submodules.
    return [tbe for ebc in quantized_ebcs(qmodel) for tbe in ebc._emb_modules]


def table_dtypes(qmodel: nn.Module) -> Dict[str, str]:
    """Storage dtype of every quantized table, as fbgemm records it.

    Args:
        qmodel (nn.Module): a model returned by :func:`quantize_model`.

    Returns:
        Dict[str, str]: ``{table_name: "int4" | "int8" | ...}``.
    """
    return {name: SparseType(ty).value for tbe in _tbes(qmodel) for name, _, _, ty, _ in tbe.embedding_specs}


def row_alignment(qmodel: nn.Module) -> int:
    """Row alignment (bytes) of the quantized tables; 1 means unpadded rows."""
    alignments = {tbe.row_alignment for tbe in _tbes(qmodel)}
    if len(alignments) != 1:
        raise ValueError(f"quantized tables use mixed row alignments {sorted(alignments)}")
    return alignments.pop()


def embedding_storage_bytes_per_table(qmodel: nn.Module) -> Dict[str, int]:
    """Bytes each table occupies in fbgemm's TBE storage (rows x padded row bytes, plus a pruned table's remapping).

    The TBE buffer itself also aligns each table's start to 128 bytes; that slack
    (< 128 bytes per table) is not a property of the table and is not counted.

    Args:
        qmodel (nn.Module): a model returned by :func:`quantize_model`.

    Returns:
        Dict[str, int]: ``{table_name: bytes}`` including scale/bias and row padding.
    """
    out: Dict[str, int] = {}
    for tbe in _tbes(qmodel):
        # Mode 0 returns each table's rows as stored: scale/bias and padding included.
        for spec, (rows, _, _) in zip(tbe.embedding_specs, tbe.split_embedding_weights_with_scale_bias(split_scale_bias_mode=0)):
            out[spec[0]] = rows.numel() * rows.element_size()
        remap, offsets = tbe.index_remappings_array, tbe.index_remappings_array_offsets
        if remap.numel():  # pruned tables: the int32 id -> row remapping is stored too
            for t, spec in enumerate(tbe.embedding_specs):
                out[spec[0]] += int(offsets[t + 1] - offsets[t]) * remap.element_size()
    return out


def embedding_storage_bytes(qmodel: nn.Module) -> int:
    """Total bytes of the quantized tables as stored by fbgemm.

    Args:
        qmodel (nn.Module): a model returned by :func:`quantize_model`.

    Returns:
        int: sum of :func:`embedding_storage_bytes_per_table`.
    """
    return sum(embedding_storage_bytes_per_table(qmodel).values())


def _unpack_bits(packed: Tensor, bits: int, dim: int) -> Tensor:
    """Unpack ``[R, nbytes]`` uint8 into ``[R, dim]`` integers, low bits first.

    fbgemm packs element ``j`` into byte ``j // (8 // bits)`` at bit offset
    ``(j % (8 // bits)) * bits``.
    """
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    values = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)[:, :dim]


def _dequantize_rows(weight: Tensor, scale: Optional[Tensor], bias: Optional[Tensor], dim: int, dtype: str) -> Tensor:
    """fp32 rows represented by one table's unpadded TBE bytes."""
    if dtype == "fp32":
        return weight.contiguous().view(torch.float32).clone()
    if dtype == "fp16":
        return weight.contiguous().view(torch.float16).float()
    assert scale is not None and bias is not None
    q = _unpack_bits(weight, _INT_BITS[dtype], dim)
    # Same arithmetic as fbgemm's kernels: fp32(scale) * q + fp32(bias).
    return q.float() * scale.float() + bias.float()


def dequantized_tables(qmodel: nn.Module) -> Dict[str, Tensor]:
    """The fp32 rows each quantized table represents.

    Rows come from fbgemm's TBE storage (split into data, fp16 scale and fp16 bias
    by fbgemm itself, which knows whether qparams lead or trail the row) and are
    dequantized as ``scale * q + bias``.

    Args:
        qmodel (nn.Module): a model returned by :func:`quantize_model`.

    Returns:
        Dict[str, Tensor]: ``{table_name: [num_embeddings, dim] float32}``.
    """
    out: Dict[str, Tensor] = {}
    for tbe in _tbes(qmodel):
        # Mode 2: (data without padding, scale fp16 [R, 1], bias fp16 [R, 1]).
        splits: List[Tuple[Tensor, Optional[Tensor], Optional[Tensor]]] = tbe.split_embedding_weights_with_scale_bias(
            split_scale_bias_mode=2)
        for (name, _, dim, ty, _), (weight, scale, bias) in zip(tbe.embedding_specs, splits):
            out[name] = _dequantize_rows(weight, scale, bias, dim, SparseType(ty).value)
    return out
