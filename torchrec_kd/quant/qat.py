"""Quantization-aware sparse arch: sharded lookups, row-wise fake quantization, sum pooling.

fbgemm's fused TBE pools rows inside its kernel, so nothing between the stored row and
the pooled sum is visible (a forward hook sees only the pooled output, and row-wise
quantization does not commute with pooling). The route here keeps TorchRec's sharding,
fused optimizer and pipelining and moves pooling out of the kernel:

* the student's tables live in an ``EmbeddingCollection`` (TorchRec's *unpooled*
  lookup), sharded by the planner like any table, trained by the fused row-wise Adagrad;
* each looked-up row goes through :func:`~torchrec_kd.quant.fake_quant.fake_quantize_rows`
  (exactly the row fbgemm will store for the target dtype, straight-through gradient);
* the rows are sum-pooled per bag here, which is what the quantized
  ``EmbeddingBagCollection`` computes at serving time.

Per-row quantization of a looked-up row equals the dequantized stored row, so the
forward pass is the exported model's, bit for bit up to summation order. The arch
returns ``[B, F, D]`` like TorchRec's ``SparseArch`` and drops into ``DLRM.sparse_arch``;
:func:`~torchrec_kd.core.table_keys.ebc_layout_key` maps its state-dict keys to the ``EmbeddingBagCollection`` layout,
so a QAT checkpoint loads into a plain DLRM for quantization and export.

Example::

    dlrm = build_dlrm(cfg.student, tables, dense_in)          # on meta
    use_fake_quant_sparse_arch(dlrm, tables, "int4")          # before sharding
    logits = dlrm(dense, kjt)                                 # fake-quantized int4 rows
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_kd.quant.fake_quant import fake_quantize_rows


class FakeQuantSumPool(nn.Module):
    """Fake-quantize every looked-up row and sum-pool each bag into ``[B, F, D]``.

    A module of its own (holding no sharded module) so TorchRec's pipeline tracer treats
    it as a leaf and never traces its data-dependent indexing.

    Training steps before ``start_step`` pool the rows unquantized (the student first
    learns in fp32, then adapts to the storage format); evaluation always sees quantized
    rows, as the export will. ``step`` counts training-mode calls (one per step); a
    resumed run sets it.

    Args:
        feature_names (Sequence[str]): features in output order.
        dtype (str): storage format to imitate (``int8``, ``int4``, ``int2``, ``fp16``).
        start_step (int): first training step with fake-quantized rows.
    """

    def __init__(self, feature_names: Sequence[str], dtype: str, start_step: int = 0) -> None:
        super().__init__()
        self.feature_names: List[str] = list(feature_names)
        self.dtype = dtype
        self.start_step = start_step
        self.step = 0

    def forward(self, embedded: Dict[str, JaggedTensor]) -> Tensor:
        """Pool the unpooled lookups.

        Args:
            embedded (Dict[str, JaggedTensor]): per feature, ``values`` [N_f, D] and ``lengths`` [B].

        Returns:
            Tensor: [B, F, D] sums of fake-quantized rows (zeros for empty bags).
        """
        jts = [embedded[name] for name in self.feature_names]
        num_features = len(jts)
        lengths = torch.stack([jt.lengths() for jt in jts], dim=1)  # [B, F]
        batch = lengths.shape[0]
        rows = torch.cat([jt.values() for jt in jts])
        if not self.training or self.step >= self.start_step:
            rows = fake_quantize_rows(rows, self.dtype)  # one call for all features
        if self.training:
            self.step += 1
        # bag index of each row: b * F + f, in the feature-major order of `rows`
        bags = torch.arange(batch * num_features, device=rows.device).view(batch, num_features).t().reshape(-1)
        seg = torch.repeat_interleave(bags, lengths.t().reshape(-1), output_size=rows.shape[0])
        pooled = rows.new_zeros(batch * num_features, rows.shape[1]).index_add(0, seg, rows)
        return pooled.view(batch, num_features, rows.shape[1])

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, start_step={self.start_step}, features={len(self.feature_names)}"


class FakeQuantSparseArch(nn.Module):
    """Drop-in for TorchRec's ``SparseArch`` whose rows are fake-quantized before pooling.

    Args:
        embedding_collection (EmbeddingCollection): the tables (one embedding dim), sharded later.
        dtype (str): storage format the model will be exported in.
        start_step (int): first training step with fake-quantized rows (see :class:`FakeQuantSumPool`).
    """

    def __init__(self, embedding_collection: EmbeddingCollection, dtype: str, start_step: int = 0) -> None:
        super().__init__()
        self.embedding_collection = embedding_collection
        configs = embedding_collection.embedding_configs()
        self.D: int = configs[0].embedding_dim
        self._sparse_feature_names: List[str] = [f for c in configs for f in c.feature_names]
        self.F: int = len(self._sparse_feature_names)
        self.pool = FakeQuantSumPool(self._sparse_feature_names, dtype, start_step)

    @property
    def sparse_feature_names(self) -> List[str]:
        """Features in the order of the output's ``F`` axis."""
        return self._sparse_feature_names

    def forward(self, features: KeyedJaggedTensor) -> Tensor:
        """Look up, fake-quantize and pool.

        Args:
            features (KeyedJaggedTensor): the batch's sparse features (extra keys are ignored).

        Returns:
            Tensor: [B, F, D].
        """
        return self.pool(self.embedding_collection(features))


def use_fake_quant_sparse_arch(dlrm: DLRM, tables: Sequence[EmbeddingBagConfig], dtype: str,
                               start_step: int = 0) -> DLRM:
    """Replace a DLRM's sparse arch by a :class:`FakeQuantSparseArch` over the same tables.

    Call on the unsharded model (e.g. on ``meta``), before the fused optimizer is applied.

    Args:
        dlrm (DLRM): a model from :func:`~torchrec_kd.models.dlrm.build_dlrm`.
        tables (Sequence[EmbeddingBagConfig]): its tables (same names, rows and dims).
        dtype (str): ``int8``, ``int4``, ``int2`` or ``fp16``.
        start_step (int): first training step with fake-quantized rows.

    Returns:
        DLRM: the same model, modified in place.
    """
    dims = {t.embedding_dim for t in tables}
    if len(dims) != 1:
        raise ValueError(f"quantization-aware training needs one embedding dim for all tables, got {sorted(dims)}")
    device = next(iter(dlrm.sparse_arch.embedding_bag_collection.parameters())).device
    ec = EmbeddingCollection(
        tables=[EmbeddingConfig(name=t.name, embedding_dim=t.embedding_dim, num_embeddings=t.num_embeddings,
                                feature_names=list(t.feature_names)) for t in tables],
        device=device)
    dlrm.sparse_arch = FakeQuantSparseArch(ec, dtype, start_step)
    return dlrm
