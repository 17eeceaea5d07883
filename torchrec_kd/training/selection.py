"""Model selection on the validation split: the best step so far and when to stop.

Each validation is offered to :class:`ModelSelector`; it says whether the model is the
best so far (the recipe then keeps a copy of it) and, after ``patience`` validations in a
row without an improvement of more than ``min_delta``, that training should stop. Its
state is plain data, saved with the training state, so a resumed run keeps its
best-so-far and its patience count.

Example::

    sel = ModelSelector(EarlyStoppingConfig(metric="auc", patience=3))
    if sel.observe(step, {"auc": 0.81, "ne": 0.8}):
        keep_copy_of_model(step)
    if sel.should_stop:
        break
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from torchrec_kd.config import EarlyStoppingConfig

HIGHER_IS_BETTER = {"auc": True, "ne": False, "logloss": False}


@dataclass
class SelectionState:
    """What model selection knows so far (JSON-serialisable).

    Attributes:
        best_step (Optional[int]): step of the best validation (None: none yet).
        best (Dict[str, float]): the validation metrics at ``best_step``.
        evals_since_best (int): validations since the best one.
        stopped_early (bool): training stopped before its budget.
    """

    best_step: Optional[int] = None
    best: Dict[str, float] = field(default_factory=dict)
    evals_since_best: int = 0
    stopped_early: bool = False


class ModelSelector:
    """Track the best validation step and decide early stopping.

    Args:
        cfg (EarlyStoppingConfig): metric, patience (0: never stop early), min delta.
        state (Optional[SelectionState | dict]): the state of a resumed run.
    """

    def __init__(self, cfg: EarlyStoppingConfig, state: Optional[Any] = None) -> None:
        self.cfg = cfg
        if isinstance(state, dict):
            state = SelectionState(**state)
        self.state = state or SelectionState()

    @property
    def metric(self) -> str:
        """The validation metric that selects."""
        return self.cfg.metric

    def improves(self, value: float) -> bool:
        """True when ``value`` beats the best so far by more than ``min_delta`` (a NaN/Inf value never does)."""
        if not math.isfinite(value):
            return False  # a model with NaN/Inf validation metrics is never the one kept
        best = self.state.best.get(self.metric)
        if best is None or not math.isfinite(best):  # a non-finite best: from a state saved before this rule
            return True
        gain = value - best if HIGHER_IS_BETTER[self.metric] else best - value
        return gain > self.cfg.min_delta

    def observe(self, step: int, metrics: Dict[str, float]) -> bool:
        """Record the validation at ``step``.

        Args:
            step (int): the training step validated.
            metrics (Dict[str, float]): its validation metrics (must hold ``metric``).

        Returns:
            bool: True when this step is the new best (keep a copy of the model); never when
            any of its metrics (auc, ne, logloss) is NaN/Inf: such a model is broken.
        """
        finite = all(math.isfinite(float(v)) for k, v in metrics.items() if k in HIGHER_IS_BETTER)
        if finite and self.improves(float(metrics[self.metric])):
            self.state.best_step = step
            self.state.best = {k: float(v) for k, v in metrics.items() if k in HIGHER_IS_BETTER}
            self.state.evals_since_best = 0
            return True
        self.state.evals_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        """``patience`` validations in a row brought no improvement."""
        return bool(self.cfg.patience) and self.state.evals_since_best >= self.cfg.patience

    def to_dict(self) -> Dict[str, Any]:
        """The state as plain data (for the training state and ``metrics.json``)."""
        return asdict(self.state)
