"""Quantization-aware embedding collections: sharded lookups, row-wise fake quantization, sum pooling.

fbgemm's fused TBE pools rows inside its kernel, so nothing between the stored row and
the pooled sum is visible (a forward hook sees only the pooled output, and row-wise
quantization does not commute with pooling). The route here keeps TorchRec's sharding,
fused optimizer and pipelining and moves pooling out of the kernel:

* each ``EmbeddingBagCollection`` of the model, wherever it sits, is swapped (by type, like
  TorchRec's own ``quantize_embeddings``) for a :class:`FakeQuantEmbeddingBagCollection`
  whose tables live in an ``EmbeddingCollection`` (TorchRec's *unpooled* lookup), sharded
  by the planner like any table, trained by the fused row-wise Adagrad;
* each looked-up row goes through :func:`~torchrec_kd.quant.fake_quant.fake_quantize_rows`
  (exactly the row fbgemm will store for the target dtype, straight-through gradient);
* the rows are sum-pooled per bag here into the ``KeyedTensor`` an ``EmbeddingBagCollection``
  returns, which is what the quantized collection computes at serving time.

The model's own code is untouched (it receives a ``KeyedTensor`` as before), so any model
built on ``EmbeddingBagCollection`` trains quantization-aware.
:func:`~torchrec_kd.core.table_keys.ebc_layout_key` maps the state-dict keys to the
``EmbeddingBagCollection`` layout, so a QAT checkpoint loads into the plain model for
quantization and export.

Example::

    model = build_model(cfg.student, tables, dense_in)        # on meta
    use_fake_quant(model, "int4")                             # before sharding
    logits = model(dense, kjt)                                # fake-quantized int4 rows
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_kd.quant.fake_quant import fake_quantize_rows


class FakeQuantSumPool(nn.Module):
    """Fake-quantize every looked-up row and sum-pool each bag into a ``KeyedTensor``.

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

    def forward(self, embedded: Dict[str, JaggedTensor]) -> KeyedTensor:
        """Pool the unpooled lookups.

        Args:
            embedded (Dict[str, JaggedTensor]): per feature, ``values`` [N_f, D] and ``lengths`` [B].

        Returns:
            KeyedTensor: per feature the [B, D] sum of its fake-quantized rows (zeros for empty bags).
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
        dim = rows.shape[1]
        return KeyedTensor(keys=self.feature_names, length_per_key=[dim] * num_features,
                           values=pooled.view(batch, num_features * dim), key_dim=1)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, start_step={self.start_step}, features={len(self.feature_names)}"


class FakeQuantEmbeddingBagCollection(nn.Module):
    """Drop-in for an ``EmbeddingBagCollection`` (sum pooling) whose rows are fake-quantized before pooling.

    Args:
        tables (Sequence[EmbeddingBagConfig]): the collection's tables (one embedding dim).
        dtype (str): storage format the model will be exported in.
        start_step (int): first training step with fake-quantized rows (see :class:`FakeQuantSumPool`).
        device (torch.device): where to build the tables (``meta`` to shard later).
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], dtype: str, start_step: int = 0,
                 device: torch.device = torch.device("meta")) -> None:
        super().__init__()
        dims = {t.embedding_dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"quantization-aware training needs one embedding dim per collection, got {sorted(dims)}")
        pooled = [t.name for t in tables if t.pooling != PoolingType.SUM]
        if pooled:
            raise ValueError(f"quantization-aware training sum-pools rows; tables {pooled} use another pooling")
        self._configs: List[EmbeddingBagConfig] = list(tables)
        self.qat_tables = EmbeddingCollection(
            tables=[EmbeddingConfig(name=t.name, embedding_dim=t.embedding_dim, num_embeddings=t.num_embeddings,
                                    feature_names=list(t.feature_names)) for t in tables],
            device=device)
        self.pool = FakeQuantSumPool([f for t in tables for f in t.feature_names], dtype, start_step)

    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        """The tables, as the ``EmbeddingBagCollection`` this replaced reports them."""
        return self._configs

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Look up, fake-quantize and pool.

        Args:
            features (KeyedJaggedTensor): the batch's sparse features (extra keys are ignored).

        Returns:
            KeyedTensor: as ``EmbeddingBagCollection.forward``.
        """
        return self.pool(self.qat_tables(features))


def use_fake_quant(model: nn.Module, dtype: str, start_step: int = 0) -> List[str]:
    """Swap every ``EmbeddingBagCollection`` in ``model`` for a :class:`FakeQuantEmbeddingBagCollection`.

    Call on the unsharded model (e.g. on ``meta``), before the fused optimizer is applied.

    Args:
        model (nn.Module): any model holding TorchRec embedding bag collections.
        dtype (str): ``int8``, ``int4``, ``int2`` or ``fp16``.
        start_step (int): first training step with fake-quantized rows.

    Returns:
        List[str]: the module paths swapped.

    Raises:
        ValueError: the model holds no ``EmbeddingBagCollection``.
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]
    if not found:
        raise ValueError(f"{type(model).__name__} holds no EmbeddingBagCollection to train quantization-aware")
    for name, ebc in found:
        device = next(iter(ebc.parameters())).device
        swap = FakeQuantEmbeddingBagCollection(ebc.embedding_bag_configs(), dtype, start_step, device)
        if device.type != "meta":  # a built model keeps its rows (on meta, init_weights fills them after sharding)
            with torch.no_grad():
                for table, bag in ebc.embedding_bags.items():
                    swap.qat_tables.embeddings[table].weight.copy_(bag.weight)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, swap)
    return [name for name, _ in found]


def set_fake_quant_step(model: nn.Module, step: int) -> None:
    """Set the step count of every fake-quantizing pool in ``model`` (a resumed run continues its QAT start)."""
    for m in model.modules():
        if isinstance(m, FakeQuantSumPool):
            m.step = step
