"""Registry of knowledge-distillation loss terms and their weighted sum.

Terms register under a name (as in torchdistill's loss registry), so a YAML config
picks them by name::

    distill:
      losses:
        - {name: hard_bce, weight: 0.5}
        - {name: soft_bce, weight: 0.5, temperature: 2.0}

and ``build_loss(cfg.distill.losses)`` returns one module computing the weighted sum.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from typing import Callable, Dict, List, Sequence, Tuple, Type

import torch
from torch import Tensor, nn

from torchrec_kd.config import LossTermConfig


class KDLoss(nn.Module):
    """Base class of one distillation term; subclasses implement ``forward``.

    Args:
        temperature (float): softening temperature; terms that do not soften ignore it.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """The term's value, averaged over the batch.

        Args:
            student (Tensor): student logits, [B] (binary head) or [B, C] (multi-class head).
            teacher (Tensor): teacher logits, same shape as ``student``.
            labels (Tensor): [B], float 0/1 for binary heads or int class index for multi-class.

        Returns:
            Tensor: a scalar.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


LOSSES: Dict[str, Type[KDLoss]] = {}


def register_loss(name: str) -> Callable[[Type[KDLoss]], Type[KDLoss]]:
    """Class decorator adding a KDLoss subclass to ``LOSSES`` under ``name``.

    Args:
        name (str): the name configs use to pick the term.

    Returns:
        Callable: the decorator; it returns the class unchanged.
    """

    def wrap(cls: Type[KDLoss]) -> Type[KDLoss]:
        if not (isinstance(cls, type) and issubclass(cls, KDLoss)):
            raise TypeError(f"register_loss('{name}'): {cls!r} is not a KDLoss subclass")
        # A silent overwrite would make a config mean different things depending on import order.
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss '{name}' is already registered by {LOSSES[name].__qualname__}")
        LOSSES[name] = cls
        return cls

    return wrap


class WeightedKDLoss(nn.Module):
    """Weighted sum of distillation terms.

    Args:
        terms (Sequence[Tuple[str, KDLoss, float]]): ``(key, term, weight)`` triples; keys
            name the terms in ``components`` and must be unique.
    """

    def __init__(self, terms: Sequence[Tuple[str, KDLoss, float]]) -> None:
        super().__init__()
        self.names: List[str] = [key for key, _, _ in terms]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"WeightedKDLoss: term keys must be unique, got {self.names}")
        self.terms = nn.ModuleList(term for _, term, _ in terms)
        self.weights: List[float] = [float(w) for _, _, w in terms]

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Sum of ``weight * term`` over the terms whose weight is not zero.

        Args:
            student (Tensor): student logits, [B] or [B, C].
            teacher (Tensor): teacher logits, same shape as ``student``.
            labels (Tensor): [B] labels.

        Returns:
            Tensor: a scalar; it requires grad whenever ``student`` does.
        """
        # Weights are Python floats fixed at build time, so skipping zero terms needs no host sync.
        parts = [w * term(student, teacher, labels) for term, w in zip(self.terms, self.weights) if w != 0.0]
        if not parts:
            # Every weight is zero: still return a zero connected to the graph so backward() works.
            return student.sum() * 0.0
        return sum(parts[1:], parts[0])

    @torch.no_grad()
    def components(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """Each term's unweighted value (zero-weight terms included), for logging.

        Args:
            student (Tensor): student logits, [B] or [B, C].
            teacher (Tensor): teacher logits, same shape as ``student``.
            labels (Tensor): [B] labels.

        Returns:
            Dict[str, Tensor]: detached scalars keyed by term name.
        """
        return {key: term(student, teacher, labels) for key, term in zip(self.names, self.terms)}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={w:g}" for key, w in zip(self.names, self.weights))


def build_loss(terms: Sequence[LossTermConfig]) -> WeightedKDLoss:
    """Build the weighted distillation objective from config entries.

    A name used more than once (e.g. ``soft_bce`` at two temperatures) gets keys
    ``soft_bce``, ``soft_bce_2``, ... in ``components``.

    Args:
        terms (Sequence[LossTermConfig]): name, weight and temperature of each term.

    Returns:
        WeightedKDLoss: the module computing ``sum(weight * term)``.

    Raises:
        ValueError: empty list, unknown name (nearest name suggested), temperature not
            finite and > 0, or weight negative or not finite.
    """
    if not terms:
        raise ValueError(f"no loss terms given; list at least one of: {', '.join(sorted(LOSSES))}")
    built: List[Tuple[str, KDLoss, float]] = []
    seen: Counter = Counter()
    for i, t in enumerate(terms):
        if t.name not in LOSSES:
            near = difflib.get_close_matches(t.name, list(LOSSES), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"unknown loss term '{t.name}' (losses[{i}]); registered: {', '.join(sorted(LOSSES))}{hint}")
        if not (math.isfinite(t.temperature) and t.temperature > 0):
            raise ValueError(f"loss term '{t.name}' (losses[{i}]): temperature must be finite and > 0, got {t.temperature}")
        if not (math.isfinite(t.weight) and t.weight >= 0):
            raise ValueError(f"loss term '{t.name}' (losses[{i}]): weight must be finite and >= 0, got {t.weight}")
        seen[t.name] += 1
        key = t.name if seen[t.name] == 1 else f"{t.name}_{seen[t.name]}"
        built.append((key, LOSSES[t.name](temperature=t.temperature), t.weight))
    return WeightedKDLoss(built)
