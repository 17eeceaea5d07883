"""Row-wise fake quantization that reproduces fbgemm's stored embedding rows exactly.

A quantization-aware student is only worth it if, after export, the int4 model scores
what the trained one did; that needs the training-time rounding to be *fbgemm's*
rounding, not an approximation. fbgemm's ``FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf``
(what TorchRec's ``quantize_state_dict`` calls for int8/int4/int2) stores per row an fp16
bias and scale and ``bits``-bit codes:

    bias  = fp16(min(row))
    scale = fp16((max(row) - bias) / (2**bits - 1)), or 1 where that is 0
    code  = clamp(round_half_even((x - bias) * (1 / scale)), 0, 2**bits - 1)
    value = code * scale + bias                       (what the TBE kernel reads back)

fp16 tables store ``fp16(x)``. Verified bit for bit against fbgemm (tests/test_fake_quant.py).
The straight-through estimator passes the gradient of the rounded row to the fp32 row.

Example::

    rows = table[ids]                          # [N, D] fp32, requires grad
    q = fake_quantize_rows(rows, "int4")       # forward: the int4 rows; backward: identity
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

INT_BITS: Dict[str, int] = {"int8": 8, "int4": 4, "int2": 2}
DTYPES = ("fp32", "fp16", *INT_BITS)


@torch.no_grad()
def quantize_dequantize_rows(rows: Tensor, dtype: str) -> Tensor:
    """The fp32 rows that fbgemm's ``dtype`` storage of ``rows`` dequantizes to.

    Args:
        rows (Tensor): [N, D] float rows.
        dtype (str): ``int8``, ``int4``, ``int2``, ``fp16`` or ``fp32`` (identity).

    Returns:
        Tensor: [N, D] float32.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown quantization dtype {dtype!r}; use one of {list(DTYPES)}")
    x = rows.float()
    if dtype == "fp32":
        return x.clone()
    if dtype == "fp16":
        return x.half().float()
    levels = (1 << INT_BITS[dtype]) - 1
    bias = x.amin(dim=1, keepdim=True).half().float()
    scale = ((x.amax(dim=1, keepdim=True) - bias) / levels).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # a constant row: any scale, fbgemm uses 1
    codes = torch.round((x - bias) * (1.0 / scale)).clamp_(0, levels)  # torch.round is half-to-even, like lrintf
    return codes * scale + bias


def fake_quantize_rows(rows: Tensor, dtype: str) -> Tensor:
    """Forward: :func:`quantize_dequantize_rows`; backward: the gradient passes straight through.

    Args:
        rows (Tensor): [N, D] float rows (usually requiring grad).
        dtype (str): as in :func:`quantize_dequantize_rows`.

    Returns:
        Tensor: [N, D] float32 connected to ``rows``' graph.
    """
    return rows + (quantize_dequantize_rows(rows.detach(), dtype) - rows).detach()
