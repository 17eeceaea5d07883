"""Freezing a sharded teacher's embedding tables.

``requires_grad_(False)`` keeps dense teacher layers out of DDP and the optimizer,
but TorchRec's sharder builds new fused TBE weights for every table and gives each
an optimizer (with state, e.g. Adagrad's momentum) inside ``dmp.fused_optimizer``.
We fuse plain SGD into the teacher's tables before sharding (fbgemm's EXACT_SGD
keeps no optimizer state), run the teacher under ``no_grad`` so its backward never
happens, and leave its fused optimizer out of the one we step
(``build_optimizer(..., frozen_prefix="teachers.")``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from torchrec_kd.core.table_keys import is_table_key


def freeze_teacher_tables(teacher: nn.Module) -> None:
    """Give the teacher's tables a stateless fused optimizer with lr 0 (call before sharding).

    Args:
        teacher (nn.Module): the unsharded teacher (e.g. on ``meta``).
    """
    params = [p for n, p in teacher.named_parameters() if is_table_key(n)]
    # apply_optimizer_in_backward hooks the grad accumulator, which frozen params lack
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    apply_optimizer_in_backward(torch.optim.SGD, params, {"lr": 0.0})
    for p, flag in zip(params, flags):
        p.requires_grad_(flag)


def freeze_sharded(model: nn.Module, prefix: str) -> None:
    """Turn off ``requires_grad`` for every parameter under ``prefix`` after sharding.

    The sharder creates the teacher's table weights anew (with ``requires_grad=True``);
    nothing should ever compute gradients for them.

    Args:
        model (nn.Module): the sharded model.
        prefix (str): e.g. ``"teachers."``.
    """
    for name, param in list(model.named_parameters()):
        if not name.startswith(prefix):
            continue
        # fused tables expose per-table slices (views) of one TBE weight tensor, made
        # at sharding time with that tensor's flag; freezing the TBE weight is what counts
        base = getattr(param, "_original_tensor", param)
        if base.is_leaf:
            base.requires_grad_(False)
