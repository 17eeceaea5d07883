"""The built-in architectures: TorchRec's own ranking models, registered by name.

======================  ===========================================  ======  ==============  ==============
``arch``                TorchRec model                               output  hint tap        embeddings tap
======================  ===========================================  ======  ==============  ==============
``dlrm``                ``DLRM`` (flat upper-triangle interaction)   logit   ``inter_arch``  ``sparse_arch``
``dlrm_dcn``            ``DLRM_DCN`` (low-rank cross net)            logit   ``inter_arch``  ``sparse_arch``
``dlrm_projection``     ``DLRM_Projection`` (projected interaction)  logit   ``inter_arch``  ``sparse_arch``
``deepfm``              ``SimpleDeepFMNN`` (sigmoid head)            prob.   ``inter_arch``  ``sparse_arch``
``shared_bottom``       DLRM bottom + shared layers + a tower/task   logit   ``inter_arch``  ``sparse_arch``
``mmoe``                DLRM bottom + experts, a gate and a tower    logit   ``inter_arch``  ``sparse_arch``
                        per task (MMoE)
``two_tower``           user tower x item tower over one EBC         logit   —               ``ebc``
                        (retrieval; :mod:`torchrec_kd.models.two_tower`)
======================  ===========================================  ======  ==============  ==============

The DLRM family reads ``embedding_dim``, ``dense_arch_layer_sizes``, ``over_arch_layer_sizes``
(and ``dcn_*``) from the model section; ``dlrm_projection``, ``deepfm``, ``shared_bottom`` and
``mmoe`` take ``args``. In a run of several tasks the DLRM family's last over-arch layer has
one output per task (``[B, T]``); ``deepfm`` (one sigmoid head) is refused there.
``shared_bottom`` and ``mmoe`` (:mod:`torchrec_kd.models.multitask`) read the DLRM keys too:
``over_arch_layer_sizes`` without its final 1 are the shared layers (``shared_bottom``) or each
expert's layers (``mmoe``, unless ``args.expert_layer_sizes``); each task's head ends with 1.
``two_tower`` takes ``args`` (``user_layer_sizes``, ``item_layer_sizes``, ``score``, ``temperature``)
and the run's ``data.retrieval`` roles (``BuildInputs.roles``); see docs/retrieval.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List

from torch import nn
from torchrec.models.deepfm import SimpleDeepFMNN
from torchrec.models.dlrm import DLRM_Projection
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_kd.config import ModelConfig
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.dlrm import DenseColumnsArch, build_dlrm
from torchrec_kd.models.multitask import MMoE, SharedBottom
from torchrec_kd.models.registry import BuildInputs, register_model
from torchrec_kd.models.two_tower import build_two_tower  # noqa: F401  (registers two_tower)


def _per_task(inputs: BuildInputs) -> ModelConfig:
    """The model section with one over-arch output per task (itself for one task)."""
    cfg = inputs.cfg
    if inputs.num_tasks == 1:
        return cfg
    return dataclasses.replace(cfg, over_arch_layer_sizes=list(cfg.over_arch_layer_sizes[:-1]) + [inputs.num_tasks])


@register_model("dlrm", hint="inter_arch", embeddings="sparse_arch", privileged_dense=True)
def build_dlrm_model(inputs: BuildInputs) -> nn.Module:
    """TorchRec's ``DLRM`` (``forward(dense, kjt) -> logits [B, 1]``; ``[B, T]`` with T tasks)."""
    return build_dlrm(_per_task(inputs), inputs.tables, inputs.dense_in_features, inputs.device, inputs.dense_columns)


@register_model("dlrm_dcn", hint="inter_arch", embeddings="sparse_arch", privileged_dense=True)
def build_dlrm_dcn_model(inputs: BuildInputs) -> nn.Module:
    """TorchRec's ``DLRM_DCN``: ``dcn_num_layers`` low-rank (``dcn_low_rank_dim``) cross layers."""
    return build_dlrm(_per_task(inputs), inputs.tables, inputs.dense_in_features, inputs.device, inputs.dense_columns)


@dataclass
class ProjectionArgs:
    """``dlrm_projection``: the two interaction branches (each ends in a multiple of ``embedding_dim``)."""

    interaction_branch1_layer_sizes: List[int] = field(default_factory=lambda: [128, 64])
    interaction_branch2_layer_sizes: List[int] = field(default_factory=lambda: [128, 64])


@register_model("dlrm_projection", args=ProjectionArgs, hint="inter_arch", embeddings="sparse_arch",
                privileged_dense=True)
def build_dlrm_projection(inputs: BuildInputs) -> nn.Module:
    """TorchRec's ``DLRM_Projection``."""
    cfg, args = inputs.cfg, inputs.args
    for key in ("interaction_branch1_layer_sizes", "interaction_branch2_layer_sizes"):
        sizes = getattr(args, key)
        if not sizes or sizes[-1] % cfg.embedding_dim:
            raise ConfigError(f"args.{key} must end with a multiple of embedding_dim ({cfg.embedding_dim}), "
                              f"got {sizes}")
    dense_in = inputs.dense_in_features if inputs.dense_columns is None else len(inputs.dense_columns)
    model = DLRM_Projection(
        embedding_bag_collection=EmbeddingBagCollection(tables=inputs.tables, device=inputs.device),
        dense_in_features=dense_in, dense_arch_layer_sizes=list(cfg.dense_arch_layer_sizes),
        over_arch_layer_sizes=list(_per_task(inputs).over_arch_layer_sizes),
        interaction_branch1_layer_sizes=list(args.interaction_branch1_layer_sizes),
        interaction_branch2_layer_sizes=list(args.interaction_branch2_layer_sizes), dense_device=inputs.device)
    if inputs.dense_columns is not None:
        model.dense_arch = DenseColumnsArch(model.dense_arch, inputs.dense_columns)
    return model


@dataclass
class DeepFMArgs:
    """``deepfm``: the dense arch's hidden width and the deep part's output width."""

    hidden_layer_size: int = 64
    deep_fm_dimension: int = 16

    def __post_init__(self) -> None:
        for key in ("hidden_layer_size", "deep_fm_dimension"):
            if not 1 <= getattr(self, key) <= 1 << 16:
                raise ConfigError(f"args.{key} must be between 1 and 65536, got {getattr(self, key)}")


@register_model("deepfm", args=DeepFMArgs, output="probability", hint="inter_arch", embeddings="sparse_arch",
                privileged_dense=True, multitask=False)
def build_deepfm(inputs: BuildInputs) -> nn.Module:
    """TorchRec's ``SimpleDeepFMNN``; its head ends in a sigmoid (probabilities out)."""
    dense_in = inputs.dense_in_features if inputs.dense_columns is None else len(inputs.dense_columns)
    model = SimpleDeepFMNN(num_dense_features=dense_in,
                           embedding_bag_collection=EmbeddingBagCollection(tables=inputs.tables, device=inputs.device),
                           hidden_layer_size=inputs.args.hidden_layer_size,
                           deep_fm_dimension=inputs.args.deep_fm_dimension)
    if inputs.device.type != "cpu":  # SimpleDeepFMNN builds its dense layers on the default device
        for arch in (model.dense_arch, model.inter_arch, model.over_arch):
            if inputs.device.type == "meta":  # shapes only: DMP materialises them
                arch.to_empty(device=inputs.device)
            else:  # a real device keeps the initialised weights
                arch.to(inputs.device)
    if inputs.dense_columns is not None:
        model.dense_arch = DenseColumnsArch(model.dense_arch, inputs.dense_columns)
    return model


def _check_sizes(cfg: ModelConfig) -> None:
    """The DLRM keys a multi-task builder reads: the dense arch meets the tables, each head ends with 1."""
    if list(cfg.over_arch_layer_sizes[-1:]) != [1]:
        raise ConfigError(f"over_arch_layer_sizes must end with 1 (each task's head ends in one output), "
                          f"got {cfg.over_arch_layer_sizes}")
    if list(cfg.dense_arch_layer_sizes[-1:]) != [cfg.embedding_dim]:
        raise ConfigError(f"dense_arch_layer_sizes must end with embedding_dim ({cfg.embedding_dim}) so dense and "
                          f"sparse features interact; got {cfg.dense_arch_layer_sizes}")


def _check_layers(key: str, sizes: List[int]) -> None:
    if not sizes or any(not 1 <= s <= 1 << 16 for s in sizes):
        raise ConfigError(f"args.{key} must list at least one layer size, each between 1 and 65536, got {sizes}")


@dataclass
class SharedBottomArgs:
    """``shared_bottom``: each task's tower (hidden layers; a final 1 is added)."""

    tower_layer_sizes: List[int] = field(default_factory=lambda: [16])

    def __post_init__(self) -> None:
        _check_layers("tower_layer_sizes", self.tower_layer_sizes)


@register_model("shared_bottom", args=SharedBottomArgs, hint="inter_arch", embeddings="sparse_arch",
                privileged_dense=True)
def build_shared_bottom(inputs: BuildInputs) -> nn.Module:
    """DLRM bottom, the over-arch's hidden layers shared, one tower per task (``[B, T]``; ``[B]`` for one task)."""
    cfg = inputs.cfg
    _check_sizes(cfg)
    return SharedBottom(EmbeddingBagCollection(tables=inputs.tables, device=inputs.device), inputs.dense_in_features,
                        list(cfg.dense_arch_layer_sizes), list(cfg.over_arch_layer_sizes[:-1]),
                        list(inputs.args.tower_layer_sizes), inputs.num_tasks, inputs.dense_columns, inputs.device)


@dataclass
class MMoEArgs:
    """``mmoe``: experts (each ``expert_layer_sizes``; empty: the over-arch's hidden layers) and towers."""

    num_experts: int = 4
    expert_layer_sizes: List[int] = field(default_factory=list)
    tower_layer_sizes: List[int] = field(default_factory=lambda: [16])

    def __post_init__(self) -> None:
        if not 1 <= self.num_experts <= 64:
            raise ConfigError(f"args.num_experts must be between 1 and 64, got {self.num_experts}")
        if self.expert_layer_sizes:
            _check_layers("expert_layer_sizes", self.expert_layer_sizes)
        _check_layers("tower_layer_sizes", self.tower_layer_sizes)


@register_model("mmoe", args=MMoEArgs, hint="inter_arch", embeddings="sparse_arch", privileged_dense=True)
def build_mmoe(inputs: BuildInputs) -> nn.Module:
    """MMoE over the DLRM interaction: experts, a softmax gate and a tower per task (``[B, T]``)."""
    cfg, args = inputs.cfg, inputs.args
    _check_sizes(cfg)
    experts = list(args.expert_layer_sizes) or list(cfg.over_arch_layer_sizes[:-1])
    if not experts:
        raise ConfigError(f"args.expert_layer_sizes is empty and over_arch_layer_sizes {cfg.over_arch_layer_sizes} "
                          "has no hidden layer to use instead; give the experts' layers, e.g. [64, 32]")
    return MMoE(EmbeddingBagCollection(tables=inputs.tables, device=inputs.device), inputs.dense_in_features,
                list(cfg.dense_arch_layer_sizes), experts, args.num_experts, list(args.tower_layer_sizes),
                inputs.num_tasks, inputs.dense_columns, inputs.device)
