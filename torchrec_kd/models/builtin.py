"""The built-in architectures: TorchRec's own ranking models, registered by name.

======================  ===========================================  ======  ==============  ==============
``arch``                TorchRec model                               output  hint tap        embeddings tap
======================  ===========================================  ======  ==============  ==============
``dlrm``                ``DLRM`` (flat upper-triangle interaction)   logit   ``inter_arch``  ``sparse_arch``
``dlrm_dcn``            ``DLRM_DCN`` (low-rank cross net)            logit   ``inter_arch``  ``sparse_arch``
``dlrm_projection``     ``DLRM_Projection`` (projected interaction)  logit   ``inter_arch``  ``sparse_arch``
``deepfm``              ``SimpleDeepFMNN`` (sigmoid head)            prob.   ``inter_arch``  ``sparse_arch``
======================  ===========================================  ======  ==============  ==============

The DLRM family reads ``embedding_dim``, ``dense_arch_layer_sizes``, ``over_arch_layer_sizes``
(and ``dcn_*``) from the model section; ``dlrm_projection`` and ``deepfm`` take ``args``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from torch import nn
from torchrec.models.deepfm import SimpleDeepFMNN
from torchrec.models.dlrm import DLRM_Projection
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_kd.errors import ConfigError
from torchrec_kd.models.dlrm import DenseColumnsArch, build_dlrm
from torchrec_kd.models.registry import BuildInputs, register_model


@register_model("dlrm", hint="inter_arch", embeddings="sparse_arch", privileged_dense=True)
def build_dlrm_model(inputs: BuildInputs) -> nn.Module:
    """TorchRec's ``DLRM`` (``forward(dense, kjt) -> logits [B, 1]``)."""
    return build_dlrm(inputs.cfg, inputs.tables, inputs.dense_in_features, inputs.device, inputs.dense_columns)


@register_model("dlrm_dcn", hint="inter_arch", embeddings="sparse_arch", privileged_dense=True)
def build_dlrm_dcn_model(inputs: BuildInputs) -> nn.Module:
    """TorchRec's ``DLRM_DCN``: ``dcn_num_layers`` low-rank (``dcn_low_rank_dim``) cross layers."""
    return build_dlrm(inputs.cfg, inputs.tables, inputs.dense_in_features, inputs.device, inputs.dense_columns)


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
        over_arch_layer_sizes=list(cfg.over_arch_layer_sizes),
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
                privileged_dense=True)
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
