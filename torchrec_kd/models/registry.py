"""The registry of model builders: what ``teacher.arch`` / ``student.arch`` may name.

A builder turns a role's :class:`~torchrec_kd.config.ModelConfig` and the run's tables into
an ``nn.Module`` (on ``meta``, sharded later by ``DistributedModelParallel``). It declares
its own ``args`` (a dataclass: ``<role>.args`` is checked against it, typos get "did you
mean"), how the model is called and what it returns (:class:`~torchrec_kd.models.io.ModelIO`),
and the module paths feature terms read by default (``hint``: the representation before
the head; ``embeddings``: the pooled embeddings).

Built-ins (``torchrec_kd.models.builtin``): ``dlrm``, ``dlrm_dcn``, ``dlrm_projection``,
``deepfm``, and the multi-task ``shared_bottom`` and ``mmoe`` (``torchrec_kd.models.multitask``).
A builder learns the run's tasks from ``inputs.tasks``: with two or more, its model returns
``[B, T]`` in that order (or a dict ``{task: [B]}``). A plugin adds its own::

    from dataclasses import dataclass
    from torchrec_kd.models.registry import BuildInputs, register_model

    @dataclass
    class MLPArgs:
        hidden: int = 64

    @register_model("mlp_ranker", args=MLPArgs, hint="mlp.0")
    def build_mlp_ranker(inputs: BuildInputs) -> nn.Module:
        return MLPRanker(EmbeddingBagCollection(tables=inputs.tables, device=inputs.device),
                         inputs.dense_in_features, inputs.args.hidden, inputs.device)
"""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_kd.config import ModelConfig
from torchrec_kd.core.tasks import DEFAULT_TASK, Task
from torchrec_kd.models.io import OUTPUT_KINDS, ModelIO


@dataclass(frozen=True)
class FeatureRoles:
    """Which sparse features describe the user (query side) and which the item (candidate side).

    Args:
        user (Tuple[str, ...]): the user tower's features.
        item (Tuple[str, ...]): the item tower's features.
    """

    user: Tuple[str, ...]
    item: Tuple[str, ...]

    def to_json(self) -> Dict[str, List[str]]:
        """``{"user": [...], "item": [...]}`` (a model meta's ``roles``)."""
        return {"user": list(self.user), "item": list(self.item)}

    @staticmethod
    def from_json(d: Optional[Dict[str, Any]]) -> Optional["FeatureRoles"]:
        """The roles :meth:`to_json` wrote (None stays None)."""
        return None if not d else FeatureRoles(tuple(d["user"]), tuple(d["item"]))


def feature_roles(retrieval: Any) -> Optional[FeatureRoles]:
    """The roles a run's ``data.retrieval`` declares (``user_keys()``: ``user_history`` joins the user's when kept).

    Args:
        retrieval (Optional[RetrievalDataConfig]): ``cfg.data.retrieval``.

    Returns:
        Optional[FeatureRoles]: None when the run is not a retrieval run.
    """
    if retrieval is None:
        return None
    return FeatureRoles(tuple(retrieval.user_keys()), tuple(retrieval.item_keys()))


@dataclass(frozen=True)
class BuildInputs:
    """What a builder gets.

    Args:
        cfg (ModelConfig): the role's model section (``embedding_dim``, ``table_prefix``, the DLRM family's sizes).
        args (Any): the builder's ``args`` dataclass, filled from ``<role>.args`` (None if it declares none).
        tables (List[EmbeddingBagConfig]): one table per sparse feature the model reads, in KJT order.
        dense_in_features (int): width of the batch's dense input.
        dense_columns (Optional[List[int]]): the dense columns the model may read (None: all);
            the others are privileged (teacher only). Only builders registered with
            ``privileged_dense=True`` get a non-None value.
        device (torch.device): ``meta`` to shard later, or a real device.
        tasks (Tuple[Task, ...]): the run's tasks in output order; one (the default ``label``)
            for a single-task run, whose model returns ``[B]`` or ``[B, 1]`` as always.
        roles (Optional[FeatureRoles]): which sparse features describe the user and which the item
            (a retrieval run's ``data.retrieval``, :func:`feature_roles`); None in a ranking run.
            Rankers ignore it; a two-tower model needs it.
    """

    cfg: ModelConfig
    args: Any
    tables: List[EmbeddingBagConfig]
    dense_in_features: int
    dense_columns: Optional[List[int]] = None
    device: torch.device = torch.device("meta")
    tasks: Tuple[Task, ...] = (Task(DEFAULT_TASK),)
    roles: Optional["FeatureRoles"] = None

    @property
    def num_tasks(self) -> int:
        """T: the model's output columns (1: one logit per row)."""
        return len(self.tasks)


@dataclass(frozen=True)
class ModelBuilder:
    """One registered architecture.

    Args:
        name (str): what configs write in ``arch``.
        build (Callable[[BuildInputs], nn.Module]): the builder.
        args (Optional[type]): dataclass of its ``args`` (None: it takes none).
        io (ModelIO): how its models are called and what they return.
        hint (Optional[str]): module path whose output hint terms read by default.
        embeddings (Optional[str]): module path whose output (pooled embeddings, ``[B, F, D]``
            or a ``KeyedTensor``) embedding terms read by default.
        privileged_dense (bool): it honours ``dense_columns``.
        module (str): where it was registered (for messages).
        multitask (bool): its models can have several heads (``inputs.tasks``); False: one head
            only, refused in a run of several tasks.
    """

    name: str
    build: Callable[[BuildInputs], nn.Module]
    args: Optional[type] = None
    io: ModelIO = ModelIO()
    hint: Optional[str] = None
    embeddings: Optional[str] = None
    privileged_dense: bool = False
    module: str = ""
    multitask: bool = True

    def default_tap(self, kind: str) -> Optional[str]:
        """The module path a feature term of ``kind`` (``hint`` or ``embeddings``) reads unless told."""
        return {"hint": self.hint, "embeddings": self.embeddings}[kind]


MODELS: Dict[str, ModelBuilder] = {}


def register_model(name: str, *, args: Optional[type] = None, output: str = "logit",
                   call: Optional[Callable[[nn.Module, Any], torch.Tensor]] = None, hint: Optional[str] = None,
                   embeddings: Optional[str] = None, privileged_dense: bool = False,
                   multitask: bool = True) -> Callable:
    """Decorator registering a model builder under ``name`` (``teacher.arch: <name>``).

    Args:
        name (str): the architecture's name in configs.
        args (Optional[type]): a dataclass whose fields are the builder's ``args`` keys.
        output (str): ``logit`` or ``probability``: what the model's forward returns.
        call (Optional[Callable]): ``call(model, batch) -> [B] / [B, 1]`` when the forward is
            not ``model(dense, kjt)``.
        hint (Optional[str]): default module path of the hint terms.
        embeddings (Optional[str]): default module path of the embedding terms.
        privileged_dense (bool): the builder reads only ``inputs.dense_columns`` when given.
        multitask (bool): the builder honours ``inputs.tasks`` (False: a run of several tasks refuses it).

    Returns:
        Callable: the decorator; it returns the builder unchanged.

    Raises:
        ValueError: the name is taken by another builder, ``args`` is not a dataclass, or
            ``output`` is neither kind.
    """
    if args is not None and not is_dataclass(args):
        raise ValueError(f"register_model('{name}'): args must be a dataclass, got {args!r}")
    if output not in OUTPUT_KINDS:
        raise ValueError(f"register_model('{name}'): output must be one of {OUTPUT_KINDS}, got {output!r}")

    def wrap(fn: Callable[[BuildInputs], nn.Module]) -> Callable[[BuildInputs], nn.Module]:
        builder = ModelBuilder(name, fn, args, ModelIO(output, call), hint, embeddings, privileged_dense,
                               getattr(fn, "__module__", ""), multitask)
        old = MODELS.get(name)
        # a silent overwrite would make a config mean different things depending on import order
        if old is not None and (old.build is not fn):
            raise ValueError(f"model '{name}' is already registered by {old.module}.{old.build.__qualname__}")
        MODELS[name] = builder
        return fn

    return wrap
