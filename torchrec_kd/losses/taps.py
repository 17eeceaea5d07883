"""What a feature term reads of a model: the output of one submodule, named by its path.

A :class:`Tap` is ``(role, path, kind)``: the ``student``'s or ``teacher``'s submodule at
``path`` (e.g. ``inter_arch``, ``over_arch.model.0``), read as a ``hint`` (flattened to
``[B, H]``) or as ``embeddings`` (pooled embeddings ``[B, F, D]``; a ``KeyedTensor`` of
uniform dims is reshaped so). :class:`FeatureDims` tells terms the tapped shapes, so their
projections are sized from the models themselves (the distill recipe measures them with
one forward of small copies of the models: ``torchrec_kd.distill.taps.probe_feature_dims``).

Example::

    dims = FeatureDims({Tap("student", "inter_arch", "hint"): TapInfo((367,)),
                        Tap("teacher", "inter_arch", "hint"): TapInfo((415,))},
                       defaults={"student": {"hint": "inter_arch"}, "teacher": {"hint": "inter_arch"}})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from torch import Tensor
from torchrec.distributed.types import LazyAwaitable
from torchrec.sparse.jagged_tensor import KeyedTensor

KINDS = ("hint", "embeddings")
ROLES = ("student", "teacher")


class Tap(NamedTuple):
    """One tapped output: whose (``student`` / ``teacher``), which submodule, read as what."""

    role: str
    path: str
    kind: str

    @property
    def key(self) -> str:
        """Its name in :class:`~torchrec_kd.losses.registry.KDInputs` and in the offline cache: ``kind:path``."""
        return f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class TapInfo:
    """The per-row shape of a tapped output as terms see it, and its features.

    Args:
        shape (Tuple[int, ...]): ``(H,)`` for a hint, ``(F, D)`` for embeddings.
        features (Optional[List[str]]): embeddings: the sparse feature of each of the ``F`` rows.
    """

    shape: Tuple[int, ...]
    features: Optional[List[str]] = None


def as_feature(output: Any, kind: str, where: str = "tap") -> Tensor:
    """A tapped module's output as the tensor a term reads.

    Args:
        output: what the module returned: a tensor, a ``KeyedTensor`` (or a sharded collection's
            awaitable of one), or a tuple/list whose first element is one of those.
        kind (str): ``hint`` -> ``[B, H]`` (flattened); ``embeddings`` -> ``[B, F, D]``.
        where (str): the tap, for messages.

    Returns:
        Tensor: the feature (already-converted tensors pass through unchanged).

    Raises:
        ValueError: an output that is not a tensor, or embeddings not of one dim.
    """
    if isinstance(output, LazyAwaitable):  # a sharded collection's output, waited for once (cached) by the model
        output = LazyAwaitable._wait_async(output)
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, KeyedTensor):
        dims = output.length_per_key()
        if kind == "embeddings":
            if len(set(dims)) != 1:
                raise ValueError(f"{where}: embeddings of different dims {sorted(set(dims))} cannot be compared "
                                 "per feature; tap a module whose output is [B, F, D]")
            values = output.values()
            return values.view(values.shape[0], len(dims), dims[0])
        output = output.values()
    if not isinstance(output, Tensor):
        raise ValueError(f"{where}: the module returned {type(output).__name__}, not a tensor; tap a module "
                         "whose output is a tensor (or a KeyedTensor)")
    if kind == "hint":
        return output.flatten(1) if output.dim() > 2 else output
    if output.dim() != 3:
        raise ValueError(f"{where}: embeddings must be [B, F, D], got shape {tuple(output.shape)}")
    return output


@dataclass
class FeatureDims:
    """The tapped shapes feature terms size their projections from.

    Args:
        taps (Dict[Tap, TapInfo]): known shapes.
        defaults (Dict[str, Dict[str, Optional[str]]]): per role, per kind, the module path
            a term reads unless its args name one (the model builder's defaults).
        probe (Optional[Callable[[Tap], TapInfo]]): measures a tap not in ``taps`` (one small forward).
    """

    taps: Dict[Tap, TapInfo] = field(default_factory=dict)
    defaults: Dict[str, Dict[str, Optional[str]]] = field(default_factory=dict)
    probe: Optional[Callable[[Tap], TapInfo]] = None

    def resolve(self, role: str, kind: str, path: Optional[str], where: str) -> Tap:
        """The tap a term reads: ``path`` if given, else the role's default for ``kind``.

        Raises:
            ValueError: no path given and the model declares no default.
        """
        path = path or self.defaults.get(role, {}).get(kind)
        if not path:
            raise ValueError(f"{where}: name the {role}'s module to read (args.{role}: a module path such as "
                             f"'inter_arch'); its model declares no default {kind} module")
        return Tap(role, path, kind)

    def info(self, tap: Tap, where: str) -> TapInfo:
        """The shape of ``tap`` (measured on first use when a probe is set).

        Raises:
            ValueError: unknown and nothing to measure it with.
        """
        if tap not in self.taps:
            if self.probe is None:
                raise ValueError(f"{where}: no shape known for the {tap.role}'s '{tap.path}' ({tap.kind})")
            self.taps[tap] = self.probe(tap)
        return self.taps[tap]


def tap_keys(taps: List[Tap], role: str) -> List[str]:
    """The keys of ``role``'s taps, in order, without repeats."""
    return list(dict.fromkeys(t.key for t in taps if t.role == role))
