"""A frozen, sharded teacher whose tables are stored row-wise int8 (fbgemm's inference TBE).

The teacher only runs forward, so its tables need neither a training kernel nor
float rows. TorchRec's training sharder cannot hold int8 rows (its state dict gives
every shard ``[rows, d]`` metadata and refuses ``[rows, d + 8]`` bytes), and its
inference sharder works on one process with several devices, not on ranks. So the
teacher is sharded and loaded as usual with fp16 tables (half the fp32 transient), then
each of this rank's fused lookup kernels (``BatchedFusedEmbeddingBag``, one per group of
local table shards) is replaced by :class:`Int8FrozenBag`: fbgemm's
``IntNBitTableBatchedEmbeddingBagsCodegen`` over the same local shards, quantized one
table at a time the way :func:`~torchrec_kd.quant.embeddings.quantize_model` quantizes (fp16
scale and bias per row, rows at the 4-byte floor). Input and output distribution,
pipelining and the pooled layout stay TorchRec's.

The fp16 rows are then released in place (their storage is resized to zero), so
whatever still refers to them (the module's sharded-tensor views, TorchRec's fused
optimizer entry) holds no memory. The quantized teacher has no state dict: it is never
saved (its checkpoint is the float one it was loaded from), and a resumed run's
training state, which leaves it out, loads around it.

Example::

    model = shard(DistillationModel([teacher], student, loss), env, local_batch)
    load_module(model, teacher_ckpt, model_prefix="teachers.0.", ckpt_prefix="model.")
    quantize_frozen_tables(model, "teachers.")     # before the pipeline is made
"""

from __future__ import annotations

import logging
import types
from typing import Any, Dict, Iterator, List, Tuple

import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys
from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbeddingBag
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

logger = logging.getLogger(__name__)

# fp16 scale + fp16 bias at the end of every quantized row
_SCALE_BIAS_BYTES = 4


class Int8FrozenBag(nn.Module):
    """Forward-only, row-wise int8 replacement of one fused TBE lookup kernel.

    Args:
        bag (BatchedFusedEmbeddingBag): the float kernel (its local table shards are read).
    """

    def __init__(self, bag: BatchedFusedEmbeddingBag) -> None:
        super().__init__()
        tbe = bag.emb_module
        rows: List[Tensor] = bag.split_embedding_weights()
        device = rows[0].device if rows else torch.device("cpu")
        location = EmbeddingLocation.DEVICE if device.type == "cuda" else EmbeddingLocation.HOST
        qtbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(f"shard_{i}", w.shape[0], w.shape[1], SparseType.INT8, location)
                             for i, w in enumerate(rows)],
            pooling_mode=tbe.pooling_mode, device=device, output_dtype=SparseType.FP32, row_alignment=1)
        qtbe.initialize_weights()
        self.int8_bytes = 0
        # one table at a time, straight into the kernel's rows: the transient is one table's bytes
        for w, (data, scale_bias) in zip(rows, qtbe.split_embedding_weights(split_scale_shifts=True)):
            packed = torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(w.detach(), 8)
            data.copy_(packed[:, :-_SCALE_BIAS_BYTES])
            scale_bias.copy_(packed[:, -_SCALE_BIAS_BYTES:])
            self.int8_bytes += packed.numel()
            del packed
        # held outside the module tree: nothing of it belongs in a state dict or an optimizer
        self._tbe: List[IntNBitTableBatchedEmbeddingBagsCodegen] = [qtbe]
        self.float_bytes = sum(w.numel() * w.element_size() for w in rows)

    @property
    def tbe(self) -> IntNBitTableBatchedEmbeddingBagsCodegen:
        """The int8 inference kernel."""
        return self._tbe[0]

    def forward(self, features: KeyedJaggedTensor) -> Tensor:
        """Pooled lookups of this kernel's features.

        Args:
            features (KeyedJaggedTensor): the features of this group's local shards.

        Returns:
            Tensor: [B, sum of local dims], fp32 (as the float kernel returns).
        """
        weights = features.weights_or_none()
        return self.tbe(indices=features.values().int(), offsets=features.offsets().int(),
                        per_sample_weights=weights if weights is not None and weights.is_floating_point() else None)

    def flush(self) -> None:
        """No cache to write back (TorchRec's lookup calls ``flush`` on its kernels)."""

    def purge(self) -> None:
        """No cache to drop."""


def _no_state_dict(self: nn.Module, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Dict[str, Any]:
    return {} if destination is None else destination


def _no_load_state_dict(self: nn.Module, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
    # a resumed run's training state holds no teacher rows: the teacher comes from its checkpoint
    return _IncompatibleKeys([], [])


def _release(bag: BatchedFusedEmbeddingBag) -> None:
    """Free the float kernel's weight storage in place (a frozen teacher's SGD keeps no optimizer state)."""
    tbe = bag.emb_module
    for name in ("weights_host", "weights_dev", "weights_uvm"):
        t = getattr(tbe, name, None)
        if isinstance(t, Tensor) and t.numel():
            t.untyped_storage().resize_(0)


def _sharded_ebcs(model: nn.Module, prefix: str) -> Iterator[Tuple[str, ShardedEmbeddingBagCollection]]:
    for name, module in model.named_modules():
        if isinstance(module, ShardedEmbeddingBagCollection) and prefix in f"{name}.":
            yield name, module


def int8_bags(model: nn.Module, prefix: str) -> List[Int8FrozenBag]:
    """This rank's int8 lookup kernels under ``prefix``.

    (TorchRec keeps a sharded collection's lookups in a plain list, out of ``modules()``.)

    Args:
        model (nn.Module): the sharded model.
        prefix (str): e.g. ``"teachers."``.

    Returns:
        List[Int8FrozenBag]: the kernels :func:`quantize_frozen_tables` put in.
    """
    return [bag for _, module in _sharded_ebcs(model, prefix) for lookup in module._lookups
            for bag in getattr(lookup, "_emb_modules", []) if isinstance(bag, Int8FrozenBag)]


def quantize_frozen_tables(model: nn.Module, prefix: str) -> Dict[str, int]:
    """Store every sharded table under ``prefix`` as row-wise int8 on this rank; free the float rows.

    Call after the checkpoint is loaded and before the train pipeline wraps the model;
    the tables must be frozen (forward only, under ``no_grad``).

    Args:
        model (nn.Module): the sharded model (e.g. a ``DistributedModelParallel``).
        prefix (str): module prefix of the frozen teacher(s), e.g. ``"teachers."``.

    Returns:
        Dict[str, int]: ``kernels`` replaced, this rank's ``float_bytes`` freed and ``int8_bytes`` held.

    Raises:
        ValueError: no sharded embedding bag collection under ``prefix``.
    """
    stats = {"kernels": 0, "float_bytes": 0, "int8_bytes": 0}
    found = 0
    for name, module in _sharded_ebcs(model, prefix):
        found += 1
        for lookup in module._lookups:
            kernels = getattr(lookup, "_emb_modules", None)
            if kernels is None:
                raise ValueError(f"{name}: int8 teacher tables need TorchRec's grouped pooled lookup, "
                                 f"got {type(lookup).__name__} (use table-wise or column-wise sharding)")
            for i, bag in enumerate(kernels):
                if not isinstance(bag, BatchedFusedEmbeddingBag):
                    raise ValueError(f"{name}: int8 teacher tables need fused kernels, got {type(bag).__name__}")
                frozen = Int8FrozenBag(bag)
                _release(bag)
                kernels[i] = frozen
                stats["kernels"] += 1
                stats["float_bytes"] += frozen.float_bytes
                stats["int8_bytes"] += frozen.int8_bytes
        # its sharded tensors now view freed storage: never build (or load) its state dict
        module.state_dict = types.MethodType(_no_state_dict, module)
        module.load_state_dict = types.MethodType(_no_load_state_dict, module)
    if not found:
        raise ValueError(f"no sharded EmbeddingBagCollection under {prefix!r}")
    logger.info("teacher tables as int8: %d kernels, %.1f MiB float freed, %.1f MiB int8 held on this rank",
                stats["kernels"], stats["float_bytes"] / 2**20, stats["int8_bytes"] / 2**20)
    return stats
