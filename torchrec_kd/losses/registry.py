"""Registry of knowledge-distillation loss terms and their weighted sum.

Terms register under a name (as in torchdistill's loss registry), so a YAML config
picks them by name::

    distill:
      losses:
        - {name: hard_bce, weight: 0.5}
        - {name: soft_bce, weight: 0.5, temperature: 2.0,
           weight_schedule: {kind: warmup, steps: 100}}
        - {name: hint_mse, weight: 0.05}

and ``build_loss(cfg.distill.losses, dims)`` returns one module computing the weighted sum.
Logit terms see ``(student, teacher, labels)``; feature terms (hint, embedding, ranking)
see a :class:`KDInputs` with the intermediate outputs they declare in ``requires``.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn

from torchrec_kd.config import LossTermConfig, ScheduleConfig, build_section
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses.schedules import check_schedule, schedule_value
from torchrec_kd.losses.taps import FeatureDims, Tap

# What a term may ask for besides logits, labels and its taps.
FEATURES = ("groups",)


@dataclass
class KDInputs:
    """Everything a term may read for one batch.

    Args:
        student (Tensor): student logits [B].
        teacher (Tensor): teacher logits [B] (an ensemble's weighted mean).
        labels (Tensor): [B] 0/1 labels.
        student_taps (Dict[str, Any]): the student's tapped outputs by :attr:`Tap.key` (``hint:inter_arch``).
        teacher_taps (Dict[str, Any]): the (first) teacher's, the same way.
        groups (Optional[Tensor]): [B] int64 group id of each row (rank_* terms).
    """

    student: Tensor
    teacher: Tensor
    labels: Tensor
    student_taps: Dict[str, Any] = field(default_factory=dict)
    teacher_taps: Dict[str, Any] = field(default_factory=dict)
    groups: Optional[Tensor] = None


class KDLoss(nn.Module):
    """Base class of one distillation term.

    Logit terms implement ``forward(student, teacher, labels)``. Terms reading models'
    intermediate outputs list them in ``self.taps`` (:class:`~torchrec_kd.losses.taps.Tap`)
    and override :meth:`compute`; terms needing group ids set ``requires = {"groups"}``.
    A term with keys of its own declares them as a dataclass in ``args`` (config:
    ``{name: x, args: {...}}``, checked with "did you mean"); terms with learned parts or
    args override :meth:`build`.

    Args:
        temperature (float): softening temperature; terms that do not soften ignore it.
    """

    requires: FrozenSet[str] = frozenset()
    args: Optional[type] = None

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.taps: List[Tap] = []

    @classmethod
    def build(cls, temperature: float, dims: Optional[FeatureDims], args: Any = None) -> "KDLoss":
        """Construct the term.

        Args:
            temperature (float): the configured temperature.
            dims (Optional[FeatureDims]): the models' tapped shapes (feature terms size projections from them).
            args (Any): an instance of ``cls.args`` filled from the config (None when it declares none).

        Returns:
            KDLoss: the term.
        """
        return cls(temperature=temperature)

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

    def compute(self, x: KDInputs) -> Tensor:
        """The term's value on a batch's :class:`KDInputs` (logit terms: ``forward`` on the logits)."""
        return self(x.student, x.teacher, x.labels)

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
    """Weighted sum of distillation terms, with per-term weight and temperature schedules.

    The schedules advance one step per training-mode ``forward`` (one optimizer step);
    ``step`` can be set when a run resumes.

    Args:
        terms (Sequence[Tuple[str, KDLoss, float]]): ``(key, term, weight)`` triples; keys
            name the terms in ``components`` and must be unique.
        weight_schedules (Optional[Sequence[ScheduleConfig]]): one per term (default constant).
        temperature_schedules (Optional[Sequence[ScheduleConfig]]): one per term (default constant).
    """

    def __init__(self, terms: Sequence[Tuple[str, KDLoss, float]],
                 weight_schedules: Optional[Sequence[ScheduleConfig]] = None,
                 temperature_schedules: Optional[Sequence[ScheduleConfig]] = None) -> None:
        super().__init__()
        self.names: List[str] = [key for key, _, _ in terms]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"WeightedKDLoss: term keys must be unique, got {self.names}")
        self.terms = nn.ModuleList(term for _, term, _ in terms)
        self.weights: List[float] = [float(w) for _, _, w in terms]
        self.temperatures: List[float] = [term.temperature for _, term, _ in terms]
        self.weight_schedules = list(weight_schedules or [ScheduleConfig() for _ in terms])
        self.temperature_schedules = list(temperature_schedules or [ScheduleConfig() for _ in terms])
        self.step = 0

    @property
    def requires(self) -> FrozenSet[str]:
        """Union of what the terms need besides logits, labels and taps (``groups``)."""
        return frozenset().union(*(t.requires for t in self.terms))

    @property
    def taps(self) -> List[Tap]:
        """Every model output the terms read, in order, without repeats."""
        return list(dict.fromkeys(tap for t in self.terms for tap in t.taps))

    def current(self) -> List[Tuple[float, float]]:
        """``(weight, temperature)`` of each term at the current step."""
        return [(schedule_value(ws, w, self.step), schedule_value(ts, t, self.step))
                for w, t, ws, ts in zip(self.weights, self.temperatures, self.weight_schedules, self.temperature_schedules)]

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor, **features: Any) -> Tensor:
        """Sum of ``weight * term`` at the current step of the schedules.

        Args:
            student (Tensor): student logits, [B] or [B, C].
            teacher (Tensor): teacher logits, same shape as ``student``.
            labels (Tensor): [B] labels.
            **features: the other :class:`KDInputs` fields (``student_taps``, ``teacher_taps``, ``groups``).

        Returns:
            Tensor: a scalar; it requires grad whenever ``student`` does.
        """
        x = KDInputs(student, teacher, labels, **features)
        parts = []
        for term, (w, t) in zip(self.terms, self.current()):
            # A zero weight skips a parameter-free term (weights are host floats: no sync);
            # a term with learned parts always runs, so DDP sees the same graph every step.
            if w == 0.0 and not any(True for _ in term.parameters()):
                continue
            term.temperature = t
            parts.append(w * term.compute(x))
        if self.training:
            self.step += 1
        if not parts:
            # Every weight is zero: still return a zero connected to the graph so backward() works.
            return student.sum() * 0.0
        return sum(parts[1:], parts[0])

    @torch.no_grad()
    def components(self, student: Tensor, teacher: Tensor, labels: Tensor, **features: Any) -> Dict[str, Tensor]:
        """Each term's unweighted value (zero-weight terms included), for logging.

        Args:
            student (Tensor): student logits, [B] or [B, C].
            teacher (Tensor): teacher logits, same shape as ``student``.
            labels (Tensor): [B] labels.
            **features (Optional[Tensor]): as in :meth:`forward`.

        Returns:
            Dict[str, Tensor]: detached scalars keyed by term name.
        """
        x = KDInputs(student, teacher, labels, **features)
        out = {}
        for key, term, (_, t) in zip(self.names, self.terms, self.current()):
            term.temperature = t
            out[key] = term.compute(x)
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={w:g}" for key, w in zip(self.names, self.weights))


def check_loss_names(terms: Sequence[LossTermConfig], where: str) -> None:
    """Refuse a term whose name is not registered (suggesting the nearest) or whose args it does not take.

    Args:
        terms (Sequence[LossTermConfig]): ``distill.losses``.
        where (str): the config's source, for the message (``config_source``).

    Raises:
        ConfigError: ``<where>: distill.losses[i].name: unknown loss 'x'; did you mean 'y'? registered: …``,
            or ``<where>: distill.losses[i].args: unknown key 'studnet'; did you mean 'student'?``.
    """
    for i, term in enumerate(terms):
        if term.name not in LOSSES:
            near = difflib.get_close_matches(term.name, list(LOSSES), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(f"{where}: distill.losses[{i}].name: unknown loss '{term.name}'; {hint}"
                              f"registered: {', '.join(sorted(LOSSES))}")
        try:
            term_args(term, f"distill.losses[{i}]")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def term_args(term: LossTermConfig, where: str) -> Any:
    """``term.args`` checked against the registered term's ``args`` dataclass (None if it declares none).

    Raises:
        ConfigError: args given to a term that takes none, an unknown key (nearest suggested), a wrong type.
    """
    cls = LOSSES[term.name]
    if cls.args is None:
        if term.args:
            raise ConfigError(f"{where}.args: loss '{term.name}' takes no args, got {sorted(term.args)}")
        return None
    return build_section(cls.args, dict(term.args), f"{where}.args")


def build_loss(terms: Sequence[LossTermConfig], dims: Optional[FeatureDims] = None) -> WeightedKDLoss:
    """Build the weighted distillation objective from config entries.

    A name used more than once (e.g. ``soft_bce`` at two temperatures) gets keys
    ``soft_bce``, ``soft_bce_2``, ... in ``components``.

    Args:
        terms (Sequence[LossTermConfig]): name, weight, temperature and schedules of each term.
        dims (Optional[FeatureDims]): the models' tapped shapes; needed by terms with
            projections (hint_*, embedding_*).

    Returns:
        WeightedKDLoss: the module computing ``sum(weight * term)``.

    Raises:
        ValueError: empty list, unknown name (nearest name suggested), temperature not
            finite and > 0, weight negative or not finite, a bad schedule, or a feature
            term built without ``dims``.
    """
    if not terms:
        raise ValueError(f"no loss terms given; list at least one of: {', '.join(sorted(LOSSES))}")
    check_loss_names(terms, "build_loss")  # names and args
    built: List[Tuple[str, KDLoss, float]] = []
    seen: Counter = Counter()
    for i, t in enumerate(terms):
        where = f"distill.losses[{i}]"
        if not (math.isfinite(t.temperature) and t.temperature > 0):
            raise ValueError(f"loss term '{t.name}' (losses[{i}]): temperature must be finite and > 0, got {t.temperature}")
        if not (math.isfinite(t.weight) and t.weight >= 0):
            raise ValueError(f"loss term '{t.name}' (losses[{i}]): weight must be finite and >= 0, got {t.weight}")
        check_schedule(t.weight_schedule, f"{where}.weight_schedule")
        check_schedule(t.temperature_schedule, f"{where}.temperature_schedule")
        if t.temperature_schedule.kind in ("linear", "cosine") and not t.temperature_schedule.start > 0:
            raise ValueError(f"{where}.temperature_schedule.start must be > 0 (temperatures divide logits), "
                             f"got {t.temperature_schedule.start}")
        if t.temperature_schedule.kind == "warmup":
            raise ValueError(f"{where}.temperature_schedule: 'warmup' starts at 0, which no temperature may be; "
                             "use linear or cosine with start > 0")
        seen[t.name] += 1
        key = t.name if seen[t.name] == 1 else f"{t.name}_{seen[t.name]}"
        try:
            args = term_args(t, where)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        built.append((key, LOSSES[t.name].build(t.temperature, dims, args), t.weight))
    return WeightedKDLoss(built, [t.weight_schedule for t in terms], [t.temperature_schedule for t in terms])
