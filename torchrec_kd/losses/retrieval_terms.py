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
* ``inbatch_softmax`` — the label-only retrieval objective, no teacher (the two-tower's own
  training, TorchRec's two-tower example's in-batch softmax): per positive row i, the
  cross-entropy of its own item among the candidates, ``-log softmax((s_i - log q) / T)[i]``,
  with the same logQ correction; another row's column holding the same item (an accidental
  hit) is left out of row i's softmax. ``train.tower_losses`` gives it to a model with towers
  trained alone *and* distilled, so both train on the same label objective.
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
from dataclasses import dataclass, replace
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
    # teacher terms: at most this many anchor rows a step (a random subset) are scored by the
    # teacher against every candidate, the step's main cost (anchors x candidates rows); 0: all
    max_anchors: int = 0

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {list(NEGATIVES)}, got {self.negatives!r}")
        if self.anchors not in ANCHORS:
            raise ConfigError(f"anchors must be one of {list(ANCHORS)}, got {self.anchors!r}")
        if self.max_anchors < 0:
            raise ConfigError(f"max_anchors must be >= 0 (0: every anchor), got {self.max_anchors}")
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
class SoftmaxArgs(InBatchArgs):
    """``inbatch_softmax``: as ``inbatch_kd``, anchored on positive rows by default (the label is the target)."""

    anchors: str = "positive"


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


def _candidates(x: KDInputs, term: str, teacher: bool = True) -> CandidateScores:
    if x.candidates is None:
        raise ValueError(f"loss term '{term}' needs candidate scores; DistillationModel builds them when the run "
                         "has data.retrieval and a two-tower student")
    if teacher and x.candidates.teacher is None:
        raise ValueError(f"loss term '{term}' reads the teacher's candidate scores; this step has no teacher")
    return x.candidates


def used_columns(c: CandidateScores, args: CandidateArgs) -> int:
    """How many leading candidate columns a term reads: the in-batch ones, or every one with random items."""
    return c.student.shape[0] + (c.num_random if args.negatives == "inbatch+random" else 0)


class _CandidateTerm(KDLoss):
    """A term over the shared candidates; keeps its args (the model reads the candidate settings)."""

    requires = frozenset({"candidates"})
    per_task = False  # reads candidate scores, not a task's logits
    name = "candidates"
    # reads the teacher's candidate scores (False: labels only, trains a model alone too)
    needs_teacher = True

    def __init__(self, temperature: float = 1.0, args: Optional[CandidateArgs] = None) -> None:
        super().__init__(temperature)
        self.cand_args = args or self.args()  # type: ignore[misc]

    @classmethod
    def build(cls, temperature: float, dims: Optional[FeatureDims], args: Any = None) -> KDLoss:
        return cls(temperature, args)

    def extra_repr(self) -> str:
        return f"temperature={self._temperature}, {self.cand_args}"


class _LogQTerm(_CandidateTerm):
    """A softmax term over candidates with the streaming logQ correction of the student's logits."""

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


@register_loss("inbatch_kd")
class InBatchKD(_LogQTerm):
    """Contrastive distillation: KL of the student's candidate softmax (logQ-corrected) from the teacher's."""

    args = InBatchArgs
    name = "inbatch_kd"

    def compute(self, x: KDInputs) -> Tensor:
        """``T^2 * mean over anchors of KL(softmax(t/T) || softmax((s - log q)/T))`` (the rows the teacher scored)."""
        c = _candidates(x, self.name)
        t = self.temperature
        n = used_columns(c, self.cand_args)
        corrected = self.student_logits(c)
        student, teacher, labels, _ = replace(c, student=corrected).taught(x.labels)
        log_student = F.log_softmax(student[:, :n] / t, dim=1)
        log_teacher = F.log_softmax(teacher[:, :n].detach().to(log_student.dtype) / t, dim=1)
        kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=1)
        mask = anchor_mask(labels, self.cand_args.anchors, kl.dtype)
        return (kl * mask).sum() / mask.sum().clamp(min=1.0) * (t * t)


@register_loss("inbatch_softmax")
class InBatchSoftmax(_LogQTerm):
    """The labels' in-batch softmax: each positive row's own item against the other candidates (logQ-corrected)."""

    args = SoftmaxArgs
    name = "inbatch_softmax"
    needs_teacher = False

    def compute(self, x: KDInputs) -> Tensor:
        """``mean over anchors of -log softmax((s_i - log q) / T)[i]``, accidental hits masked (a label: no T^2)."""
        c = _candidates(x, self.name, teacher=False)
        t = self.temperature
        logits = self.student_logits(c)[:, :used_columns(c, self.cand_args)] / t
        b = logits.shape[0]
        own = torch.arange(b, device=logits.device)
        ids = c.item_ids
        clash = ids.unsqueeze(0) == ids.unsqueeze(1)  # [B, B]: column j holds row i's item
        clash &= ~torch.eye(b, dtype=torch.bool, device=logits.device)
        clash &= (ids >= 0).unsqueeze(1)
        if logits.shape[1] > b:  # random corpus items are drawn from the whole corpus: the row's own may be one
            extra = logits.shape[1] - b
            drawn = c.random_ids[:extra] if c.random_ids is not None else ids.new_full((extra,), -1)
            clash = torch.cat([clash, (drawn.unsqueeze(0) == ids.unsqueeze(1)) & (ids >= 0).unsqueeze(1)], dim=1)
        nll = -F.log_softmax(logits.masked_fill(clash, float("-inf")), dim=1)[own, own]
        mask = anchor_mask(x.labels, self.cand_args.anchors, nll.dtype)
        return (nll * mask).sum() / mask.sum().clamp(min=1.0)


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
        student, teacher, labels, own_col = c.taught(x.labels)
        n = used_columns(c, self.cand_args)
        student, teacher = student[:, :n], teacher[:, :n]
        k = min(self.cand_args.k, n - 1)
        if k < 1:  # one candidate: nothing besides the row's own item
            return c.student.sum() * 0.0
        own = F.one_hot(own_col, n).bool()
        top = teacher.detach().masked_fill(own, float("-inf")).topk(k, dim=1).indices
        w = self.weights(k, student.dtype, student.device)
        per_row = -(F.logsigmoid(student.gather(1, top)) * w).sum(dim=1)
        mask = anchor_mask(labels, self.cand_args.anchors, per_row.dtype)
        return (per_row * mask).sum() / mask.sum().clamp(min=1.0)
