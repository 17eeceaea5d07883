"""Read submodules' outputs during a model's own forward (forward hooks), and measure their shapes.

Like torchdistill's forward-hook taps: :class:`FeatureTaps` registers a hook on each named
submodule and keeps what it returns while :meth:`FeatureTaps.collect` is open; the model
itself runs unchanged, through its own ``forward``. Hooks are registered on the model as
it is *after* ``DistributedModelParallel`` (which replaces embedding collections by their
sharded versions, so a hook registered before would be lost): ``DistillationModel``
attaches them on its first forward.

:func:`probe_feature_dims` measures the tapped shapes with one forward of small CPU
copies of the models (two-row tables: shapes do not depend on table sizes), so
projections are sized from the models themselves.

Example::

    taps = FeatureTaps(["inter_arch", "over_arch.model.0"])
    taps.attach(model, "student")
    with taps.collect() as out:
        logits = model(dense, kjt)
    out["inter_arch"]        # what model.inter_arch returned in that forward
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_kd.errors import ConfigError
from torchrec_kd.losses.taps import FeatureDims, Tap, TapInfo, as_feature
from torchrec_kd.models.io import LOGIT, ModelIO


def find_module(model: nn.Module, path: str, where: str) -> nn.Module:
    """``model.get_submodule(path)``, with the nearest paths suggested when there is none.

    Raises:
        ConfigError: ``<where>: no module 'x'; did you mean 'y'? …``.
    """
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(path, names, n=3)
    hint = f"did you mean {', '.join(repr(n) for n in near)}? " if near else ""
    top = sorted({n.split(".")[0] for n in names})
    raise ConfigError(f"{where}: no module '{path}' in the model; {hint}its top-level modules: {', '.join(top)}")


class FeatureTaps:
    """Forward hooks keeping the outputs of some submodules of one model.

    Args:
        paths (Sequence[str]): module paths relative to the model (``named_modules`` names).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths: List[str] = list(dict.fromkeys(paths))
        self.outputs: Dict[str, Any] = {}
        self._collecting = False
        self._handles: List[Any] = []

    @property
    def attached(self) -> bool:
        """Whether hooks are registered (always, once :meth:`attach` ran with paths)."""
        return bool(self._handles) or not self.paths

    def attach(self, model: nn.Module, where: str) -> None:
        """Register one forward hook per path on ``model`` (as it is now: after sharding).

        Args:
            model (nn.Module): the model whose submodules are tapped.
            where (str): what names it in messages (``student``, ``teacher``).

        Raises:
            ConfigError: a path that names no module (nearest suggested).
        """
        self.detach()
        for path in self.paths:
            self._handles.append(find_module(model, path, where).register_forward_hook(self._hook(path)))

    def _hook(self, path: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._collecting:  # evaluation and scoring forwards keep nothing
                self.outputs[path] = output

        return hook

    @contextlib.contextmanager
    def collect(self) -> Iterator[Dict[str, Any]]:
        """Within the block, each tapped module's latest output is in the yielded dict (by path)."""
        self.outputs = {}
        self._collecting = True
        try:
            yield self.outputs
        finally:
            self._collecting = False

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def probe_batch(sparse_features: Sequence[str], dense_in_features: int, batch_size: int = 2) -> Batch:
    """A tiny batch for shape probes: zeros for dense, id 0 once per sparse feature."""
    n = len(sparse_features) * batch_size
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(sparse_features), values=torch.zeros(n, dtype=torch.long),
                                              lengths=torch.ones(n, dtype=torch.long))
    return Batch(dense_features=torch.zeros(batch_size, dense_in_features), sparse_features=kjt,
                 labels=torch.zeros(batch_size))


def _embedding_features(model: nn.Module, module: nn.Module, output: Any, width: int) -> Optional[List[str]]:
    """The sparse feature of each row of a tapped ``[B, F, D]`` output."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, KeyedTensor):
        return list(output.keys())
    names = getattr(module, "sparse_feature_names", None)  # TorchRec's SparseArch
    if names is not None and len(names) == width:
        return list(names)
    for scope in (module, model):  # the embedding bag collection(s) feeding it, in order
        feats = [f for m in scope.modules() if isinstance(m, EmbeddingBagCollection)
                 for c in m.embedding_bag_configs() for f in c.feature_names]
        if len(feats) == width:
            return feats
    return None


@torch.no_grad()
def measure_taps(model: nn.Module, io: ModelIO, batch: Batch, taps: Sequence[Tap], where: str) -> Dict[Tap, TapInfo]:
    """Run ``model`` once on ``batch`` and read the shape (and features) of each tap.

    Args:
        model (nn.Module): an unsharded model on CPU (e.g. a small copy).
        io (ModelIO): how to call it.
        batch (Batch): e.g. :func:`probe_batch`.
        taps (Sequence[Tap]): what to measure.
        where (str): the role, for messages.

    Returns:
        Dict[Tap, TapInfo]: per tap, the per-row shape a term sees and (embeddings) the features.

    Raises:
        ConfigError: a path naming no module, a module that did not run, an output no term can read.
    """
    hooks = FeatureTaps([t.path for t in taps])
    hooks.attach(model, where)
    was_training = model.training
    model.eval()
    try:
        with hooks.collect() as out:
            io.logits(model, batch)
    finally:
        hooks.detach()
        model.train(was_training)
    infos: Dict[Tap, TapInfo] = {}
    for tap in taps:
        if tap.path not in out:
            raise ConfigError(f"{where}: module '{tap.path}' did not run in the model's forward; tap one that does")
        try:
            value = as_feature(out[tap.path], tap.kind, f"{where} '{tap.path}'")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        features = None
        if tap.kind == "embeddings":
            features = _embedding_features(model, model.get_submodule(tap.path), out[tap.path], value.shape[1])
        infos[tap] = TapInfo(tuple(value.shape[1:]), features)
    return infos


def probe_feature_dims(models: Dict[str, Callable[[], nn.Module]], batch: Batch,
                       ios: Optional[Dict[str, ModelIO]] = None,
                       defaults: Optional[Dict[str, Dict[str, Optional[str]]]] = None) -> FeatureDims:
    """A :class:`FeatureDims` that measures each tap on first use with small copies of the models.

    Args:
        models (Dict[str, Callable[[], nn.Module]]): per role (``student``, ``teacher``), builds a
            small unsharded CPU copy (same layers; tables may be tiny).
        batch (Batch): a batch both read (e.g. :func:`probe_batch`; ids must fit the copies' tables).
        ios (Optional[Dict[str, ModelIO]]): per role, how to call it (default ``model(dense, kjt)`` -> logits).
        defaults (Optional[Dict[str, Dict[str, Optional[str]]]]): per role, the module each kind
            (``hint``, ``embeddings``) reads unless a term's args name one.

    Returns:
        FeatureDims: the terms' view of the models' shapes.

    Example::

        dims = probe_feature_dims({"student": lambda: MyRanker(small_tables), "teacher": lambda: dlrm(small_tables)},
                                  probe_batch(features, 13))
        loss = build_loss([LossTermConfig("hint_mse", 0.1, args={"student": "mlp", "teacher": "inter_arch"})], dims)
    """
    ios = ios or {}
    built: Dict[str, nn.Module] = {}

    def probe(tap: Tap) -> TapInfo:
        if tap.role not in models:
            raise ConfigError(f"loss terms read the {tap.role}'s '{tap.path}', but this run has no {tap.role} model")
        # the copies' random init must not move the caller's generator (the terms' projections draw from it next)
        with torch.random.fork_rng(devices=[]):
            if tap.role not in built:
                built[tap.role] = models[tap.role]()
            return measure_taps(built[tap.role], ios.get(tap.role, LOGIT), batch, [tap], tap.role)[tap]

    return FeatureDims(defaults=defaults or {}, probe=probe)
