"""How a ranking model is called and what it returns: its own forward, logits out.

Every model of a run (teacher, student, a user's own) is called through its own
``forward``: by default ``model(batch.dense_features, batch.sparse_features)`` like
TorchRec's DLRM and DeepFM, or through a ``call`` adapter for other signatures. A model
declares whether that output is a logit or a probability; :meth:`ModelIO.logits` always
returns logits, so soft-label and KL targets are never probabilities taken for logits.

A model passed without a declaration (``ModelIO()``, the default everywhere) is resolved by
its type: TorchRec's sigmoid-headed models (``SimpleDeepFMNN`` and its subclasses) return
probabilities, TorchRec's DLRM family logits. Any other undeclared model is taken to return
logits; if it is frozen (a teacher: no parameter requires grad) and all its outputs on its first
batches lie in [0, 1], a warning (once per model class) says to declare ``ModelIO(output=...)``.
Trainable models are not watched: an untrained logit head often starts inside [0, 1].

Example::

    io = ModelIO(output="probability")
    logits = io.logits(deepfm, batch)                      # [B] logit(p)
    logits = ModelIO().logits(SimpleDeepFMNN(...), batch)  # the same: known by its type
    io = ModelIO(call=lambda m, b: m(b.sparse_features))   # a model that reads only the KJT
    io = model_io(cfg.student, run_tasks(cfg))             # two tasks: [B, T] (a dict {task: [B]} too)

Several tasks (``tasks`` lists two or more): the model returns ``[B, T]`` in the run's task
order, or a dict ``{task name: [B]}`` that :meth:`ModelIO.logits` stacks by the run's task
names; a probability head's binary columns become logits, its regression columns (values)
pass through. With one task every number is what it always was.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, fx, nn

from torchrec_kd.core.tasks import Task, task_names
from torchrec_kd.errors import ConfigError

logger = logging.getLogger(__name__)

OutputKind = Literal["logit", "probability"]
OUTPUT_KINDS = ("logit", "probability")

# Probabilities are clamped to [EPS, 1 - EPS] before the logit: a saturated sigmoid (0 or 1
# in float32) would otherwise give an infinite target.
PROBABILITY_EPS = 1e-7

# A frozen, undeclared model of unknown type is watched for this many forwards; it is warned
# about when every output so far lies in [0, 1] and at least WATCH_MIN_ROWS rows were seen (a
# two-row probe decides nothing).
WATCH_BATCHES = 3
WATCH_MIN_ROWS = 64


def probability_to_logit(p: Tensor) -> Tensor:
    """``log(p / (1 - p))`` of ``p`` clamped to ``[1e-7, 1 - 1e-7]``.

    Args:
        p (Tensor): probabilities.

    Returns:
        Tensor: logits (finite).
    """
    return torch.logit(p.float(), eps=PROBABILITY_EPS)


@functools.lru_cache(maxsize=None)
def _torchrec_kinds() -> Tuple[Tuple[type, ...], Tuple[type, ...]]:
    """TorchRec's ranking models by what their forward returns: (probability heads, logit heads)."""
    # imported here: this module stays importable without torchrec's (slow) import
    from torchrec.models.deepfm import SimpleDeepFMNN
    from torchrec.models.dlrm import DLRM

    # SimpleDeepFMNN's OverArch ends in nn.Sigmoid (its docstring says "logits"; it is not);
    # DLRM, DLRM_DCN, DLRM_Projection (subclasses) end in a plain linear layer
    return (SimpleDeepFMNN,), (DLRM,)


def known_output(model: nn.Module) -> Optional[str]:
    """What a TorchRec model returns, known from its type; None for any other model.

    Args:
        model (nn.Module): the model (sharded or not: DMP keeps the model's own class).

    Returns:
        Optional[str]: ``probability`` for ``SimpleDeepFMNN`` (and subclasses), ``logit`` for
        ``DLRM`` and its subclasses, None otherwise.
    """
    probability, logit = _torchrec_kinds()
    if isinstance(model, probability):
        return "probability"
    if isinstance(model, logit):
        return "logit"
    return None


class _OutputWatch:
    """Watches frozen, undeclared models of unknown type for probability-like outputs; warns once per class."""

    def __init__(self) -> None:
        # model -> [forwards seen, rows seen]; None once decided (an output outside [0, 1], or warned)
        self._state: "weakref.WeakKeyDictionary[nn.Module, Optional[list]]" = weakref.WeakKeyDictionary()
        self._warned: Set[str] = set()

    def observe(self, model: nn.Module, out: Tensor) -> None:
        """Look at one forward's raw outputs (cheap after the first few forwards of each model)."""
        if isinstance(out, fx.Proxy) or out.device.type == "meta" or out.numel() == 0:
            return  # TorchRec's pipeline traces the forward with fx; shapes-only probes say nothing
        try:
            state = self._state.get(model, False)
            if state is False:  # first sight: only frozen models (teachers) are watched
                frozen = not any(p.requires_grad for p in model.parameters())
                state = self._state[model] = [0, 0] if frozen else None
        except TypeError:  # not weak-referenceable: nothing to remember it by
            return
        if state is None:
            return
        with torch.no_grad():
            inside = bool(((out >= 0) & (out <= 1)).all())  # one host sync, first forwards only
        state[0] += 1
        state[1] += out.numel()
        if not inside:
            self._state[model] = None
            return
        if state[1] >= WATCH_MIN_ROWS:
            self._state[model] = None
            self._warn(model, state[1])
        elif state[0] >= WATCH_BATCHES:
            self._state[model] = None

    def _warn(self, model: nn.Module, rows: int) -> None:
        name = type(model).__qualname__
        if name in self._warned:
            return
        self._warned.add(name)
        logger.warning("%s: all of its outputs on its first %d rows lie in [0, 1], yet it is taken to return "
                       "logits; if it ends in a sigmoid, declare ModelIO(output='probability') (teacher_io / "
                       "student_io, or register_model(output='probability')), else declare "
                       "ModelIO(output='logit') to silence this", name, rows)

    def reset(self) -> None:
        """Forget every model and warning (tests)."""
        self._state = weakref.WeakKeyDictionary()
        self._warned = set()


OUTPUT_WATCH = _OutputWatch()


@dataclass(frozen=True)
class ModelIO:
    """A model's calling convention and output kind.

    Args:
        output (Optional[str]): ``logit`` or ``probability``: what the model's forward returns;
            None (undeclared): known TorchRec models by their type, any other model logits
            (a frozen one is watched: a warning if its first outputs all lie in [0, 1]).
        call (Optional[Callable[[nn.Module, Any], Tensor]]): ``call(model, batch) -> [B] or
            [B, 1]``; None: ``model(batch.dense_features, batch.sparse_features)``.
        tasks (Optional[Tuple[Task, ...]]): the run's tasks (:func:`~torchrec_kd.core.tasks.run_tasks`);
            None: one task. Two or more: outputs are ``[B, T]`` in this order.
    """

    output: Optional[OutputKind] = None
    call: Optional[Callable[[nn.Module, Any], Tensor]] = None
    tasks: Optional[Tuple[Task, ...]] = None

    def __post_init__(self) -> None:
        if self.output is not None and self.output not in OUTPUT_KINDS:
            raise ValueError(f"ModelIO output must be one of {OUTPUT_KINDS} (or None: by type), got {self.output!r}")

    def output_kind(self, model: nn.Module) -> str:
        """``logit`` or ``probability``: the declared kind, else the kind ``model``'s type says, else ``logit``."""
        if self.output is not None:
            return self.output
        return known_output(model) or "logit"

    def resolved(self, model: nn.Module) -> "ModelIO":
        """This convention with the output kind made explicit for ``model`` (for exports and serving)."""
        return replace(self, output=self.output_kind(model))

    def with_tasks(self, tasks: Optional[Sequence[Task]]) -> "ModelIO":
        """This convention for a run with ``tasks`` (None or one task: as it was)."""
        return replace(self, tasks=None if tasks is None else tuple(tasks))

    @property
    def num_tasks(self) -> int:
        """T: the columns of the output (1: a ``[B]`` output)."""
        return 1 if self.tasks is None else len(self.tasks)

    def _stack(self, out: Dict[str, Tensor]) -> Tensor:
        """A dict ``{task: [B] or [B, 1]}`` as ``[B, T]`` in task order (``[B]`` for one task)."""
        names = task_names(self.tasks) if self.tasks is not None else []
        if len(names) <= 1 and len(out) == 1:  # one task: whatever its key
            only = next(iter(out.values()))
            return only.reshape(only.size(0), -1).squeeze(1)
        for name in names:
            if name not in out:
                raise ConfigError(f"the model's output has no task '{name}' (it has {sorted(out)}); return a dict "
                                  f"with every task of the run: {', '.join(names)}")
        cols: List[Tensor] = [out[n].reshape(out[n].size(0)) for n in names]
        return torch.stack(cols, dim=1) if len(cols) > 1 else cols[0]

    def _check_columns(self, out: Tensor) -> None:
        """A ``[B, T]`` output, or one line saying what the model must return (not while fx traces it)."""
        if isinstance(out, fx.Proxy) or self.tasks is None:
            return
        if out.dim() != 2 or out.size(1) != len(self.tasks):
            names = ", ".join(task_names(self.tasks))
            raise ConfigError(f"{self.num_tasks} tasks ({names}) but the model returns shape {list(out.shape)}; a "
                              f"multi-task model returns [B, {self.num_tasks}] in that order or a dict "
                              f"{{task: [B]}} (builders get the tasks as BuildInputs.tasks)")

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        """The model's own output on ``batch`` (whatever kind it is)."""
        if self.call is not None:
            return self.call(model, batch)
        return model(batch.dense_features, batch.sparse_features)

    def logits(self, model: nn.Module, batch: Any) -> Tensor:
        """The model's logits [B] on ``batch`` (a probability head's output converted).

        Args:
            model (nn.Module): the model (sharded or not).
            batch (Batch): dense_features, sparse_features (and whatever ``call`` reads).

        Returns:
            Tensor: [B] logits; ``[B, T]`` in a multi-task run (regression columns: values).
        """
        out = self.forward(model, batch)
        if isinstance(out, dict):  # a plugin's {task: [B]}
            out = self._stack(out)
        if self.num_tasks > 1:
            return self._multitask_logits(model, out)
        # [B, 1] or [B] -> [B] without branching on shapes (TorchRec's pipeline fx-traces this)
        out = out.reshape(out.size(0), -1).squeeze(1)
        kind = self.output
        if kind is None:
            kind = known_output(model)
            if kind is None:  # undeclared and unknown: logits, unless its outputs say otherwise
                OUTPUT_WATCH.observe(model, out)
                kind = "logit"
        return probability_to_logit(out) if kind == "probability" else out

    def _multitask_logits(self, model: nn.Module, out: Tensor) -> Tensor:
        """``[B, T]``: a probability head's binary columns as logits, regression columns as they are."""
        self._check_columns(out)
        if self.output_kind(model) != "probability":
            return out
        assert self.tasks is not None
        if all(t.binary for t in self.tasks):
            return probability_to_logit(out)
        return torch.stack([probability_to_logit(out[:, i]) if t.binary else out[:, i].float()
                            for i, t in enumerate(self.tasks)], dim=1)


DEFAULT = ModelIO()
"""``model(dense, kjt)``, the output kind by the model's type (TorchRec's models) or logits."""

LOGIT = DEFAULT  # the name the callers use for the default convention
