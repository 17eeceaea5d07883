"""Row-wise fake quantization equals what fbgemm stores; the straight-through gradient."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import ModelConfig
from torchrec_kd.models.dlrm import build_dlrm, make_tables
from torchrec_kd.quant.embeddings import dequantized_tables, quantize_model
from torchrec_kd.quant.fake_quant import fake_quantize_rows, quantize_dequantize_rows

FEATS = ["f0", "f1", "f2"]


def _model(dim):
    cfg = ModelConfig(embedding_dim=dim, dense_arch_layer_sizes=[dim], over_arch_layer_sizes=[8, 1])
    model = build_dlrm(cfg, make_tables(cfg, FEATS, [60, 300, 7]), 4, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(dim)
    with torch.no_grad():
        for i, (_name, bag) in enumerate(model.sparse_arch.embedding_bag_collection.embedding_bags.items()):
            w = bag.weight
            w.copy_(torch.randn(w.shape, generator=g) * torch.rand(w.shape[0], 1, generator=g) * (1 + 3 * i))
            w[0] = 0.25             # a constant row
            w[1, 0] = 1e4           # a row with a huge range
            w[2] = torch.linspace(-1, 1, w.shape[1])  # codes land on .5 boundaries
    return model.eval()


@pytest.mark.parametrize("dim", [8, 16, 64])
@pytest.mark.parametrize("dtype", ["int8", "int4", "int2", "fp16"])
def test_fake_quantized_rows_equal_fbgemms_dequantized_rows(dtype, dim):
    model = _model(dim)
    qm = quantize_model(model, dtype)
    stored = dequantized_tables(qm)
    for name, bag in model.sparse_arch.embedding_bag_collection.embedding_bags.items():
        assert torch.equal(quantize_dequantize_rows(bag.weight, dtype), stored[name]), name


@pytest.mark.parametrize("dtype", ["int8", "int4", "int2"])
def test_quantized_lookup_sums_fake_quantized_rows(dtype):
    model = _model(16)
    qm = quantize_model(model, dtype)
    ids = torch.tensor([3, 5, 0, 1, 2, 9, 4, 6])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATS, values=ids, lengths=torch.tensor([2, 1, 1, 2, 1, 1]))
    pooled = qm.sparse_arch.embedding_bag_collection(kjt).to_dict()
    bags = model.sparse_arch.embedding_bag_collection.embedding_bags
    rows = {f: quantize_dequantize_rows(bags[f"t_{f}"].weight, dtype) for f in FEATS}
    expected = {"f0": torch.stack([rows["f0"][3] + rows["f0"][5], rows["f0"][0]]),
                "f1": torch.stack([rows["f1"][1], rows["f1"][2] + rows["f1"][9]]),
                "f2": torch.stack([rows["f2"][4], rows["f2"][6]])}
    for f in FEATS:
        assert torch.allclose(pooled[f].float(), expected[f], atol=1e-5, rtol=1e-6), f


def test_straight_through_gradient_and_bad_dtype():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 8, generator=gen).requires_grad_()
    g = torch.randn(5, 8, generator=gen)
    q = fake_quantize_rows(w, "int4")
    # rows + (q - rows): the quantized values up to one float32 rounding of the add
    torch.testing.assert_close(q.detach(), quantize_dequantize_rows(w, "int4"), rtol=0, atol=1e-6)
    (q * g).sum().backward()
    assert torch.equal(w.grad, g)
    with pytest.raises(ValueError, match="int4"):
        quantize_dequantize_rows(w, "int3")


def test_qat_start_pools_fp32_rows_until_its_step_and_eval_always_quantizes():
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from torchrec_kd.quant.qat import FakeQuantSumPool

    rows = torch.randn(5, 8) * 3
    embedded = {"a": JaggedTensor(values=rows[:3], lengths=torch.tensor([2, 1])),
                "b": JaggedTensor(values=rows[3:], lengths=torch.tensor([0, 2]))}
    q = quantize_dequantize_rows(rows, "int4")
    fp32 = torch.stack([torch.stack([rows[0] + rows[1], torch.zeros(8)]), torch.stack([rows[2], rows[3] + rows[4]])])
    quant = torch.stack([torch.stack([q[0] + q[1], torch.zeros(8)]), torch.stack([q[2], q[3] + q[4]])])
    pool = FakeQuantSumPool(["a", "b"], "int4", start_step=2).train()
    pooled = lambda p: p(embedded).values().view(2, 2, 8)  # noqa: E731  (the KeyedTensor an EBC returns: [B, F * D])
    assert torch.allclose(pooled(pool), fp32)       # step 0
    assert torch.allclose(pooled(pool.eval()), quant)  # eval: as exported; does not count as a step
    assert torch.allclose(pooled(pool.train()), fp32)  # step 1
    assert torch.allclose(pooled(pool), quant)       # step 2 on
    assert pool.step == 3
    assert pool.eval()(embedded).keys() == ["a", "b"]
    from torchrec_kd.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="distill.qat_start must be between 0 and"):
        load_config(None, ["distill.qat_start=-1"])
