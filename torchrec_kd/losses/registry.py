"""Registry of knowledge-distillation loss terms and their weighted sum.

Terms register under a name (as in torchdistill's loss registry), so a YAML config
picks them by name::

    distill:
      losses:
        - {name: hard_bce, weight: 0.5}
        - {name: soft_bce, weight: 0.5, temperature: 2.0,
           weight_schedule: {kind: warmup, steps: 100}}
        - {name: hint_mse, weight: 0.05}

and ``build_loss(cfg.distill.losses, dims, tasks)`` returns one module computing the weighted
sum. Logit terms see ``(student, teacher, labels)``; feature terms (hint, embedding, ranking)
see a :class:`KDInputs` with the intermediate outputs they declare in ``requires``. In a
multi-task run a logit term reads one task's column, or each task's in turn, weighting rows
by the task's space (:mod:`torchrec_kd.losses.task_terms`).

The schedules' step comes from outside: the training loop passes it in
(:meth:`WeightedKDLoss.set_step`) and each term computes with the temperature scheduled for
that step (:attr:`KDLoss.temperature`); nothing is rewritten per forward. A caller that never
sets the step (an own loop) gets one step per training-mode forward.
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
from torchrec_kd.core.tasks import Task, column
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses.schedules import ScheduleClock, check_schedule, schedule_value
from torchrec_kd.losses.taps import FeatureDims, Tap
from torchrec_kd.losses.task_terms import TermTarget, single_binary, task_value, term_targets

# What a term may ask for besides logits, labels and its taps.
FEATURES = ("groups", "candidates")


@dataclass
class CandidateScores:
    """Each row's user scored against a shared candidate list (retrieval terms, ``requires = {"candidates"}``).

    Column ``j < B`` is row ``j``'s item (in-batch candidates: row ``i``'s own item is column ``i``),
    columns ``B..B+R-1`` random corpus items (:mod:`torchrec_kd.distill.candidates` builds them).

    Args:
        student (Tensor): [B, C] the student's logits (``score_matrix`` of its towers), with grad.
        teacher (Optional[Tensor]): [A, B + R_t] the teacher's logits of the same (user, item) pairs on its
            anchor rows (``anchor_rows``) and the columns its terms read (R_t: R or 0), no grad; None when no
            teacher term reads candidates (a model trained alone, or only label terms).
        item_ids (Tensor): [B] int64 item id of each row (the in-batch candidates' ids, for logQ).
        num_random (int): R, random corpus items after the in-batch columns.
        corpus_size (int): N, the corpus the random items are drawn from (uniformly; 0 without them).
        anchor_rows (Optional[Tensor]): [A] the rows ``teacher`` holds (its row a is batch row
            ``anchor_rows[a]``); None: every row, in order.
        random_ids (Optional[Tensor]): [R] item id of each random column (accidental hits are masked by it).
    """

    student: Tensor
    teacher: Optional[Tensor]
    item_ids: Tensor
    num_random: int = 0
    corpus_size: int = 0
    anchor_rows: Optional[Tensor] = None
    random_ids: Optional[Tensor] = None

    def taught(self, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The rows the teacher scored: student ``[A, C]``, teacher ``[A, C]``, labels ``[A]``, own column ``[A]``."""
        assert self.teacher is not None
        if self.anchor_rows is None:
            rows = torch.arange(self.student.shape[0], device=self.student.device)
            return self.student, self.teacher, labels, rows
        rows = self.anchor_rows
        return self.student[rows], self.teacher, labels[rows], rows


@dataclass
class KDInputs:
    """Everything a term may read for one batch.

    Args:
        student (Tensor): student logits [B] ([B, T] in a multi-task run).
        teacher (Tensor): teacher logits, the same shape (an ensemble's weighted mean).
        labels (Tensor): [B] 0/1 labels ([B, T]).
        student_taps (Dict[str, Any]): the student's tapped outputs by :attr:`Tap.key` (``hint:inter_arch``).
        teacher_taps (Dict[str, Any]): the (first) teacher's, the same way.
        groups (Optional[Tensor]): [B] int64 group id of each row (rank_* terms).
        candidates (Optional[CandidateScores]): both models' logits over shared candidates (retrieval terms).
    """

    student: Tensor
    teacher: Tensor
    labels: Tensor
    student_taps: Dict[str, Any] = field(default_factory=dict)
    teacher_taps: Dict[str, Any] = field(default_factory=dict)
    groups: Optional[Tensor] = None
    candidates: Optional[CandidateScores] = None

    def task_column(self, tasks: Sequence[Task], j: int) -> "KDInputs":
        """These inputs with logits and labels narrowed to task ``j``'s column ``[B]`` (taps and groups kept)."""
        return KDInputs(column(self.student, tasks, j), column(self.teacher, tasks, j), column(self.labels, tasks, j),
                        self.student_taps, self.teacher_taps, self.groups, self.candidates)


class KDLoss(nn.Module):
    """Base class of one distillation term.

    Logit terms implement ``forward(student, teacher, labels)``. Terms reading models'
    intermediate outputs list them in ``self.taps`` (:class:`~torchrec_kd.losses.taps.Tap`)
    and override :meth:`compute`; terms needing group ids set ``requires = {"groups"}``.
    A term with keys of its own declares them as a dataclass in ``args`` (config:
    ``{name: x, args: {...}}``, checked with "did you mean"); terms with learned parts or
    args override :meth:`build`.

    In a multi-task run a term with ``per_task`` (logit terms) reads one task column at a
    time; one that can give a value per row (:meth:`rows`) can be restricted to a task's
    space. ``binary_only`` terms refuse a regression task.

    Args:
        temperature (float): softening temperature; terms that do not soften ignore it.
    """

    requires: FrozenSet[str] = frozenset()
    args: Optional[type] = None
    per_task: bool = True
    binary_only: bool = False

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self._temperature = float(temperature)
        self._temperature_schedule: Optional[ScheduleConfig] = None
        self._clock: Optional[ScheduleClock] = None
        self.taps: List[Tap] = []

    @property
    def temperature(self) -> float:
        """The temperature at the current step of its schedule (the configured one without a schedule)."""
        if self._clock is None or self._temperature_schedule is None:
            return self._temperature
        return schedule_value(self._temperature_schedule, self._temperature, self._clock.step)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = float(value)

    def follow(self, schedule: ScheduleConfig, clock: ScheduleClock) -> None:
        """Take the temperature from ``schedule`` at ``clock``'s step (set once, when the sum is built).

        Args:
            schedule (ScheduleConfig): the temperature schedule (its end is the configured temperature).
            clock (ScheduleClock): the step the training loop passes in.
        """
        self._temperature_schedule = None if schedule.kind == "constant" else schedule
        self._clock = clock

    @property
    def has_rows(self) -> bool:
        """Whether :meth:`rows` gives per-row values (a term overriding it or :meth:`per_row`)."""
        return type(self).rows is not KDLoss.rows or type(self).per_row is not KDLoss.per_row

    def per_row(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """The term's value on each row [B], whose mean is :meth:`forward` (logit terms that can say so)."""
        raise NotImplementedError(f"{type(self).__qualname__} gives a batch value only")

    def rows(self, x: "KDInputs") -> Tensor:
        """Per-row values [B] on a batch's :class:`KDInputs` (multi-task space weighting reads them)."""
        return self.per_row(x.student, x.teacher, x.labels)

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
        return f"temperature={self._temperature}"


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

    The schedules read a :class:`ScheduleClock`: the training loop puts it at each step
    (:meth:`set_step`); left alone it advances one step per training-mode ``forward``.
    ``step`` can also be set when a run resumes.

    Args:
        terms (Sequence[Tuple[str, KDLoss, float]]): ``(key, term, weight)`` triples; keys
            name the terms in ``components`` and must be unique.
        weight_schedules (Optional[Sequence[ScheduleConfig]]): one per term (default constant).
        temperature_schedules (Optional[Sequence[ScheduleConfig]]): one per term (default constant).
        tasks (Optional[Sequence[Task]]): the run's tasks (None: one binary task, ``[B]`` logits).
        targets (Optional[Sequence[Optional[TermTarget]]]): per term, the task columns it reads
            and its row weights (multi-task runs; default: every task, each in its space).
    """

    def __init__(self, terms: Sequence[Tuple[str, KDLoss, float]],
                 weight_schedules: Optional[Sequence[ScheduleConfig]] = None,
                 temperature_schedules: Optional[Sequence[ScheduleConfig]] = None,
                 tasks: Optional[Sequence[Task]] = None,
                 targets: Optional[Sequence[Optional[TermTarget]]] = None) -> None:
        super().__init__()
        self.names: List[str] = [key for key, _, _ in terms]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"WeightedKDLoss: term keys must be unique, got {self.names}")
        self.terms = nn.ModuleList(term for _, term, _ in terms)
        self.weights: List[float] = [float(w) for _, _, w in terms]
        self.weight_schedules = list(weight_schedules or [ScheduleConfig() for _ in terms])
        self.temperature_schedules = list(temperature_schedules or [ScheduleConfig() for _ in terms])
        self.clock = ScheduleClock()
        for term, schedule in zip(self.terms, self.temperature_schedules):
            term.follow(schedule, self.clock)
        # one binary task: every term reads [B] logits exactly as it always did
        self.tasks: Optional[List[Task]] = None if single_binary(tasks) else list(tasks or [])
        self.targets: List[Optional[TermTarget]] = list(targets or [None] * len(self.names))
        if self.tasks is not None and targets is None:
            every = TermTarget(tuple(range(len(self.tasks))), task_weighted=True)
            self.targets = [every if term.per_task else None for term in self.terms]

    @property
    def step(self) -> int:
        """The optimizer step the schedules are at."""
        return self.clock.step

    @step.setter
    def step(self, value: int) -> None:
        self.clock.step = int(value)

    def set_step(self, step: int) -> None:
        """The training loop's step (0-based): weights and temperatures follow it from now on."""
        self.clock.set(step)

    @property
    def requires(self) -> FrozenSet[str]:
        """Union of what the terms need besides logits, labels and taps (``groups``, ``candidates``)."""
        return frozenset().union(*(t.requires for t in self.terms))

    @property
    def taps(self) -> List[Tap]:
        """Every model output the terms read, in order, without repeats."""
        return list(dict.fromkeys(tap for t in self.terms for tap in t.taps))

    def current(self) -> List[Tuple[float, float]]:
        """``(weight, temperature)`` of each term at the current step."""
        return [(schedule_value(ws, w, self.step), term.temperature)
                for w, ws, term in zip(self.weights, self.weight_schedules, self.terms)]

    def _value(self, i: int, term: KDLoss, x: KDInputs) -> Tensor:
        """Term ``i`` on the batch: as it always was, or per task column (multi-task runs)."""
        target = self.targets[i]
        if self.tasks is None or target is None:
            return term.compute(x)
        return task_value(term, target, x, self.tasks)

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor, **features: Any) -> Tensor:
        """Sum of ``weight * term`` at the current step of the schedules.

        Args:
            student (Tensor): student logits, [B] or [B, C] ([B, T] in a multi-task run).
            teacher (Tensor): teacher logits, same shape as ``student``.
            labels (Tensor): [B] labels ([B, T]).
            **features: the other :class:`KDInputs` fields (``student_taps``, ``teacher_taps``, ``groups``).

        Returns:
            Tensor: a scalar; it requires grad whenever ``student`` does.
        """
        x = KDInputs(student, teacher, labels, **features)
        parts = []
        for i, (term, w, ws) in enumerate(zip(self.terms, self.weights, self.weight_schedules)):
            w = schedule_value(ws, w, self.clock.step)
            # A zero weight skips a parameter-free term (weights are host floats: no sync);
            # a term with learned parts always runs, so DDP sees the same graph every step.
            if w == 0.0 and not any(True for _ in term.parameters()):
                continue
            parts.append(w * self._value(i, term, x))
        if self.training and not self.clock.driven:
            self.clock.step += 1
        if not parts:
            # Every weight is zero: still return a zero connected to the graph so backward() works.
            return student.sum() * 0.0
        return sum(parts[1:], parts[0])

    @torch.no_grad()
    def components(self, student: Tensor, teacher: Tensor, labels: Tensor, **features: Any) -> Dict[str, Tensor]:
        """Each term's unweighted value (zero-weight terms included), for logging.

        Args:
            student (Tensor): student logits, [B] or [B, C] ([B, T]).
            teacher (Tensor): teacher logits, same shape as ``student``.
            labels (Tensor): [B] labels ([B, T]).
            **features (Optional[Tensor]): as in :meth:`forward`.

        Returns:
            Dict[str, Tensor]: detached scalars keyed by term name.
        """
        x = KDInputs(student, teacher, labels, **features)
        return {key: self._value(i, term, x) for i, (key, term) in enumerate(zip(self.names, self.terms))}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={w:g}" for key, w in zip(self.names, self.weights))


def check_loss_names(terms: Sequence[LossTermConfig], where: str, key: str = "distill.losses") -> None:
    """Refuse a term whose name is not registered (suggesting the nearest) or whose args it does not take.

    Args:
        terms (Sequence[LossTermConfig]): ``distill.losses`` (or ``train.tower_losses``).
        where (str): the config's source, for the message (``config_source``).
        key (str): the config key the terms come from.

    Raises:
        ConfigError: ``<where>: distill.losses[i].name: unknown loss 'x'; did you mean 'y'? registered: …``,
            or ``<where>: distill.losses[i].args: unknown key 'studnet'; did you mean 'student'?``.
    """
    for i, term in enumerate(terms):
        if term.name not in LOSSES:
            near = difflib.get_close_matches(term.name, list(LOSSES), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(f"{where}: {key}[{i}].name: unknown loss '{term.name}'; {hint}"
                              f"registered: {', '.join(sorted(LOSSES))}")
        try:
            term_args(term, f"{key}[{i}]")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def check_tower_losses(terms: Sequence[LossTermConfig], where: str) -> None:
    """``train.tower_losses``: registered terms over candidates that read only labels (no teacher).

    Raises:
        ConfigError: an unknown name or args, or a term that is not a label-only candidate term.
    """
    check_loss_names(terms, where, "train.tower_losses")
    for i, term in enumerate(terms):
        cls = LOSSES[term.name]
        if "candidates" not in cls.requires or getattr(cls, "needs_teacher", True):
            label_terms = sorted(n for n, c in LOSSES.items()
                                 if "candidates" in c.requires and not getattr(c, "needs_teacher", True))
            raise ConfigError(f"{where}: train.tower_losses[{i}]: '{term.name}' is not a label-only retrieval term "
                              f"(a tower model's own objective, alone and distilled); use one of {label_terms}, and "
                              "teacher terms in distill.losses")


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


def build_loss(terms: Sequence[LossTermConfig], dims: Optional[FeatureDims] = None,
               tasks: Optional[Sequence[Task]] = None) -> WeightedKDLoss:
    """Build the weighted distillation objective from config entries.

    A name used more than once (e.g. ``soft_bce`` at two temperatures) gets keys
    ``soft_bce``, ``soft_bce_2``, ... in ``components``.

    Args:
        terms (Sequence[LossTermConfig]): name, weight, temperature and schedules of each term.
        dims (Optional[FeatureDims]): the models' tapped shapes; needed by terms with
            projections (hint_*, embedding_*).
        tasks (Optional[Sequence[Task]]): the run's tasks (``core.tasks.run_tasks``); None or
            one binary task: every term as it always was.

    Returns:
        WeightedKDLoss: the module computing ``sum(weight * term)``.

    Raises:
        ValueError: empty list, unknown name (nearest name suggested), temperature not
            finite and > 0, weight negative or not finite, a bad schedule, or a feature
            term built without ``dims``.
        ConfigError: a term's task is unknown, or a binary-only term meets a regression task
            (``distill.losses[i] (...)``: one line).
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
    targets = None if single_binary(tasks) else term_targets(terms, [b[1] for b in built], list(tasks or []))
    return WeightedKDLoss(built, [t.weight_schedule for t in terms], [t.temperature_schedule for t in terms],
                          tasks, targets)
