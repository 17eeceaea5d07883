"""Listwise distillation for retrieval: the student's softmax over candidates against the teacher's.

Both terms read :class:`~torchrec_kd.losses.registry.CandidateScores` (``requires =
{"candidates"}``): each row's user scored against the same C candidates by the student's
towers (``score_matrix``) and by the teacher on the (user_i, item_j) pair rows
(:mod:`torchrec_kd.distill.candidates` builds them once per step). Columns ``0..B-1`` are the
batch rows' items (in-batch candidates: row i's own item is column i), then R random corpus
items when ``negatives: inbatch+random``.

* ``inbatch_kd`` — contrastive (InfoNCE) distillation with the teacher's soft targets::

      loss = T^2 * mean_i KL( softmax(t_i / T) || softmax((s_i - log q) / T) )

  ``s_i``, ``t_i`` are row i's [C] student / teacher logits; KL is the cross-entropy minus
  the teacher's entropy (same gradient, 0 at the optimum: ``s_i = t_i + const``).
  **Sampling-bias (logQ) correction** (Yi et al., RecSys 2019, "Sampling-bias-corrected
  neural modeling"): an in-batch candidate is a draw from the training stream, so popular
  items are negatives far more often than a full softmax would make them; subtracting
  ``log q_j`` from the student's logit of candidate j (only inside this loss; serving
  scores are untouched) corrects it. ``q_j`` is the expected number of times item j is
  among the candidates: ``B * p_j`` for in-batch (``p_j`` the item's frequency in the rows
  seen so far — a streaming count per item id, hashed into ``buckets`` counters, counting
  this batch too), ``R / N`` for a uniform random corpus item. Counts live with the term
  (per rank: its own stream; not checkpointed — a resumed run re-estimates them).
  **Anchors**: every row by default (``anchors: all``): the teacher's order over the
  candidates teaches the student whatever the row's label; ``anchors: positive`` keeps only
  rows with a positive label (the classic retrieval setting: the logged click's user).
* ``topk_rd`` — Ranking Distillation (Tang & Wang, KDD 2018): per anchor, the teacher's
  top-K among the candidates (its own item excluded: the labels teach that one) are extra
  positives, ``-sum_r w_r log sigmoid(s_{pi_r})`` with position weights
  ``w_r ∝ exp(-r / lam)`` (r = 1..K, normalised to sum 1). No temperature.

Example::

    distill:
      losses:
        - {name: hard_bce, weight: 1.0}
        - {name: inbatch_kd, weight: 1.0, temperature: 1.0,
           args: {negatives: inbatch+random, num_random: 64, logq_correction: true}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from torchrec_kd.errors import ConfigError
from torchrec_kd.losses.registry import CandidateScores, KDInputs, KDLoss, register_loss
from torchrec_kd.losses.taps import FeatureDims

NEGATIVES = ("inbatch", "inbatch+random")
ANCHORS = ("all", "positive")
# An odd 32-bit multiplier (Knuth's): spreads sequential ids over the buckets.
_HASH = 2654435761


@dataclass
class CandidateArgs:
    """Which candidates each user is scored against, and which rows are anchors."""

    # inbatch: the batch rows' items; inbatch+random: plus num_random uniform corpus items
    negatives: str = "inbatch"
    num_random: int = 0
    # rows whose softmax counts: all, or only rows with a positive label
    anchors: str = "all"

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {list(NEGATIVES)}, got {self.negatives!r}")
        if self.anchors not in ANCHORS:
            raise ConfigError(f"anchors must be one of {list(ANCHORS)}, got {self.anchors!r}")
        random = self.negatives == "inbatch+random"
        if random != (self.num_random > 0) or self.num_random < 0:
            raise ConfigError(f"num_random must be > 0 with negatives: inbatch+random and 0 with inbatch, got "
                              f"{self.num_random} with {self.negatives}")


@dataclass
class InBatchArgs(CandidateArgs):
    """``inbatch_kd``: candidates, anchors and the logQ correction."""

    logq_correction: bool = True
    # counters of the streaming item frequency (item ids are hashed into them)
    buckets: int = 1 << 18

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buckets < 1:
            raise ConfigError(f"buckets must be >= 1, got {self.buckets}")


@dataclass
class TopKArgs(CandidateArgs):
    """``topk_rd``: the teacher's top-k as positives, weights ``exp(-r / lam)``."""

    k: int = 5
    lam: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1 or not (math.isfinite(self.lam) and self.lam > 0):
            raise ConfigError(f"k must be >= 1 and lam > 0, got k={self.k}, lam={self.lam}")


class StreamingFrequency:
    """Each item id's frequency in the rows seen so far: hashed counters (a count-min row of one).

    Args:
        buckets (int): number of counters; distinct ids sharing one overestimate both (rarely, with enough).
    """

    def __init__(self, buckets: int = 1 << 18) -> None:
        self.buckets = int(buckets)
        self.counts: Optional[Tensor] = None
        self.total = 0

    def _slots(self, ids: Tensor) -> Tensor:
        return torch.remainder(ids.long() * _HASH, self.buckets)

    def update(self, ids: Tensor) -> None:
        """Count one occurrence of each id (a [B] int tensor)."""
        if self.counts is None or self.counts.device != ids.device:
            self.counts = torch.zeros(self.buckets, dtype=torch.float64, device=ids.device)
        self.counts.index_add_(0, self._slots(ids), torch.ones(ids.numel(), dtype=torch.float64, device=ids.device))
        self.total += ids.numel()

    def prob(self, ids: Tensor) -> Tensor:
        """[B] float64 frequency of each id among the rows counted (an id never seen counts as once)."""
        if self.counts is None or self.total == 0:
            return torch.ones(ids.numel(), dtype=torch.float64, device=ids.device)
        return self.counts.to(ids.device)[self._slots(ids)].clamp(min=1.0) / self.total


def log_q(c: CandidateScores, freq: StreamingFrequency) -> Tensor:
    """[C] log of each candidate's expected count among the candidates: ``log(B p_j)``, then ``log(R / N)``.

    Args:
        c (CandidateScores): the candidates (their in-batch item ids, R and N).
        freq (StreamingFrequency): the item frequencies of the stream.

    Returns:
        Tensor: [C] in the student logits' dtype.
    """
    b = c.item_ids.numel()
    parts = [torch.log(b * freq.prob(c.item_ids))]
    if c.num_random > 0:
        parts.append(torch.full((c.num_random,), math.log(c.num_random / max(c.corpus_size, 1)),
                                dtype=torch.float64, device=c.item_ids.device))
    return torch.cat(parts).to(c.student.dtype)


def anchor_mask(labels: Tensor, anchors: str, dtype: torch.dtype) -> Tensor:
    """[B] 1.0 for the rows whose candidate list counts (all, or rows with a positive first-task label)."""
    first = labels if labels.dim() == 1 else labels[:, 0]
    return torch.ones_like(first, dtype=dtype) if anchors == "all" else (first > 0).to(dtype)


def _candidates(x: KDInputs, term: str) -> CandidateScores:
    if x.candidates is None:
        raise ValueError(f"loss term '{term}' needs candidate scores; DistillationModel builds them when the run "
                         "has data.retrieval and a two-tower student")
    return x.candidates


class _CandidateTerm(KDLoss):
    """A term over the shared candidates; keeps its args (the model reads the candidate settings)."""

    requires = frozenset({"candidates"})
    per_task = False  # reads candidate scores, not a task's logits
    name = "candidates"

    def __init__(self, temperature: float = 1.0, args: Optional[CandidateArgs] = None) -> None:
        super().__init__(temperature)
        self.cand_args = args or self.args()  # type: ignore[misc]

    @classmethod
    def build(cls, temperature: float, dims: Optional[FeatureDims], args: Any = None) -> KDLoss:
        return cls(temperature, args)

    def extra_repr(self) -> str:
        return f"temperature={self._temperature}, {self.cand_args}"


@register_loss("inbatch_kd")
class InBatchKD(_CandidateTerm):
    """Contrastive distillation: KL of the student's candidate softmax (logQ-corrected) from the teacher's."""

    args = InBatchArgs
    name = "inbatch_kd"

    def __init__(self, temperature: float = 1.0, args: Optional[InBatchArgs] = None) -> None:
        super().__init__(temperature, args)
        self.freq = StreamingFrequency(self.cand_args.buckets)

    def student_logits(self, c: CandidateScores) -> Tensor:
        """[B, C] the student's logits inside the loss: minus ``log q`` with the correction (counts this batch first)."""
        if not self.cand_args.logq_correction:
            return c.student
        if c.student.requires_grad:  # a training forward; components() (no grad) must not count twice
            self.freq.update(c.item_ids)
        return c.student - log_q(c, self.freq).unsqueeze(0)

    def compute(self, x: KDInputs) -> Tensor:
        """``T^2 * mean over anchors of KL(softmax(t/T) || softmax((s - log q)/T))``."""
        c = _candidates(x, self.name)
        t = self.temperature
        log_student = F.log_softmax(self.student_logits(c) / t, dim=1)
        log_teacher = F.log_softmax(c.teacher.detach().to(log_student.dtype) / t, dim=1)
        kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=1)
        mask = anchor_mask(x.labels, self.cand_args.anchors, kl.dtype)
        return (kl * mask).sum() / mask.sum().clamp(min=1.0) * (t * t)


@register_loss("topk_rd")
class TopKRD(_CandidateTerm):
    """Ranking Distillation: the teacher's top-K candidates (own item excluded) as weighted extra positives."""

    args = TopKArgs
    name = "topk_rd"

    def weights(self, k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """[k] position weights ``exp(-r / lam)``, r = 1..k, summing to 1."""
        w = torch.exp(-torch.arange(1, k + 1, dtype=dtype, device=device) / self.cand_args.lam)
        return w / w.sum()

    def compute(self, x: KDInputs) -> Tensor:
        """``mean over anchors of -sum_r w_r log sigmoid(s[teacher's r-th best])``."""
        c = _candidates(x, self.name)
        b, n = c.teacher.shape
        k = min(self.cand_args.k, n - 1)
        if k < 1:  # one candidate: nothing besides the row's own item
            return c.student.sum() * 0.0
        own = F.one_hot(torch.arange(b, device=c.teacher.device), n).bool()
        top = c.teacher.detach().masked_fill(own, float("-inf")).topk(k, dim=1).indices
        w = self.weights(k, c.student.dtype, c.student.device)
        per_row = -(F.logsigmoid(c.student.gather(1, top)) * w).sum(dim=1)
        mask = anchor_mask(x.labels, self.cand_args.anchors, per_row.dtype)
        return (per_row * mask).sum() / mask.sum().clamp(min=1.0)
