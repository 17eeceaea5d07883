"""Ranking distillation within groups (session / query / user): learn the teacher's order.

``pairwise_rank_distill`` is RankNet with the teacher's pairwise probabilities as soft
labels; ``listwise_rank_distill`` is ListNet (cross-entropy between the teacher's and the
student's softmax over each group). Both work on a whole local batch at once with
scatter ops and a [B, B] mask: no Python loop over groups, no host sync.

Example::

    groups = group_ids_from_jagged(kjt["session"].values(), kjt["session"].lengths())
    loss = pairwise_rank_distill(student_logits, teacher_logits, groups, temperature=1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_rank_distill(student: Tensor, teacher: Tensor, groups: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over ordered same-group pairs of BCE(sigmoid((s_i - s_j)/T), sigmoid((t_i - t_j)/T)), times T**2.

    Args:
        student (Tensor): [B] student logits.
        teacher (Tensor): [B] teacher logits (detached).
        groups (Tensor): [B] int64 group ids.
        temperature (float): T.

    Returns:
        Tensor: a scalar; a graph-connected zero when no group has two rows.
    """
    t = temperature
    same = groups.unsqueeze(0) == groups.unsqueeze(1)
    same.fill_diagonal_(False)
    s_diff = (student.unsqueeze(1) - student.unsqueeze(0)) / t
    target = torch.sigmoid((teacher.unsqueeze(1) - teacher.unsqueeze(0)).detach() / t)
    bce = F.binary_cross_entropy_with_logits(s_diff, target, reduction="none")
    count = same.sum().clamp(min=1)
    return (bce * same).sum() / count * (t * t)


def listwise_rank_distill(student: Tensor, teacher: Tensor, groups: Tensor, temperature: float = 1.0) -> Tensor:
    """ListNet: ``-sum_i p_i log q_i`` per group of >= 2 rows, averaged over those groups, times T**2.

    ``p = softmax(teacher / T)`` and ``q = softmax(student / T)`` within each group.

    Args:
        student (Tensor): [B] student logits.
        teacher (Tensor): [B] teacher logits (detached).
        groups (Tensor): [B] int64 group ids.
        temperature (float): T.

    Returns:
        Tensor: a scalar; a graph-connected zero when no group has two rows.
    """
    t = temperature
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    n = counts.numel()

    def log_softmax(x: Tensor) -> Tensor:
        # segment log-softmax; subtracting the group max keeps exp() finite
        peak = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device).scatter_reduce(
            0, inverse, x, reduce="amax", include_self=True)
        shifted = x - peak[inverse].detach()
        denom = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, inverse, shifted.exp())
        return shifted - denom.log()[inverse]

    log_q = log_softmax(student / t)
    p = log_softmax(teacher.detach() / t).exp()
    ce = torch.zeros(n, dtype=student.dtype, device=student.device).index_add(0, inverse, -p * log_q)
    multi = (counts >= 2).to(student.dtype)  # singletons carry no order
    return (ce * multi).sum() / multi.sum().clamp(min=1) * (t * t)


def group_ids_from_jagged(values: Tensor, lengths: Tensor) -> Tensor:
    """[B] group ids from one KJT feature: each row's first id; empty rows get unique negative ids.

    Args:
        values (Tensor): the feature's ids.
        lengths (Tensor): [B] ids per row.

    Returns:
        Tensor: [B] int64.
    """
    lengths = lengths.long()
    offsets = torch.cumsum(lengths, 0) - lengths
    first = values.long()[offsets.clamp(max=max(values.numel() - 1, 0))] if values.numel() else torch.zeros_like(lengths)
    empty = -1 - torch.arange(lengths.numel(), device=lengths.device)
    return torch.where(lengths > 0, first, empty)
