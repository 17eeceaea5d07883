"""Quantized embeddings: row contents, storage size, predictions, save/load and exports."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from torchrec.models.dlrm import DLRM
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import ModelConfig
from torchrec_kd.models.build import build_model_from_meta
from torchrec_kd.models.dlrm import build_dlrm, make_tables
from torchrec_kd.quant.embeddings import (
    dequantized_tables,
    embedding_storage_bytes,
    embedding_storage_bytes_per_table,
    floor_bytes_per_row,
    quantize_model,
    quantized_ebcs,
    table_dtypes,
)
from torchrec_kd.quant.export import (
    export_program,
    export_torchscript,
    load_program,
    load_quantized,
    load_torchscript,
    save_quantized,
)

FEATURES = ["cat_0", "cat_1", "cat_2"]
ROWS = [100, 300, 1000]
DENSE_IN = 4
BATCH = 8
INT_BITS = {"int8": 8, "int4": 4, "int2": 2}
DTYPES = ["int8", "int4", "int2", "fp16"]


def _meta(dim: int) -> Dict[str, Any]:
    cfg = ModelConfig(embedding_dim=dim, dense_arch_layer_sizes=[32, dim], over_arch_layer_sizes=[16, 1], table_prefix="s_")
    return {"model": dataclasses.asdict(cfg), "sparse_features": FEATURES, "num_embeddings": ROWS,
            "dense_in_features": DENSE_IN, "tables": [f"s_{f}" for f in FEATURES]}


def _build_float(meta: Dict[str, Any]) -> DLRM:
    cfg = ModelConfig(**meta["model"])
    tables = make_tables(cfg, meta["sparse_features"], meta["num_embeddings"])
    return build_dlrm(cfg, tables, meta["dense_in_features"], device=torch.device("cpu"))


def _float_model(dim: int) -> DLRM:
    torch.manual_seed(dim)
    model = _build_float(_meta(dim))
    # Rows with different spreads (and offsets) so per-row scale and bias both matter.
    with torch.no_grad():
        for bag in model.sparse_arch.embedding_bag_collection.embedding_bags.values():
            n = bag.weight.shape[0]
            bag.weight.copy_(torch.randn_like(bag.weight) * (0.01 + torch.rand(n, 1)) + 0.1 * torch.randn(n, 1))
    return model.eval()


@pytest.fixture(scope="module")
def float_models() -> Dict[int, DLRM]:
    return {16: _float_model(16), 64: _float_model(64)}


@pytest.fixture(scope="module")
def batch() -> tuple:
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(BATCH, DENSE_IN, generator=g)
    lengths = torch.randint(0, 4, (len(FEATURES), BATCH), generator=g)  # multi-hot, some empty bags
    values = torch.cat([torch.randint(0, n, (int(l.sum()),), generator=g) for n, l in zip(ROWS, lengths)])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=values, lengths=lengths.flatten())
    return dense, kjt


def _float_rows(model: DLRM) -> Dict[str, torch.Tensor]:
    return {name: bag.weight.detach() for name, bag in model.sparse_arch.embedding_bag_collection.embedding_bags.items()}


def _lookup_each_row(qmodel: torch.nn.Module, feature: int) -> torch.Tensor:
    """Every row of one table as fbgemm's own TBE forward returns it (one id per bag)."""
    n = ROWS[feature]
    lengths = torch.zeros(len(FEATURES), n, dtype=torch.long)
    lengths[feature] = 1
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=torch.arange(n), lengths=lengths.flatten())
    return quantized_ebcs(qmodel)[0](kjt)[FEATURES[feature]]


def _fbgemm_dequantize(qmodel: torch.nn.Module, dtype: str) -> Dict[str, torch.Tensor]:
    """fbgemm's reference op on each table's (data, scale|bias) bytes."""
    out = {}
    for tbe in quantized_ebcs(qmodel)[0]._emb_modules:
        for spec, (data, scale_bias) in zip(tbe.embedding_specs, tbe.split_embedding_weights()):
            # The op wants the rowwise layout [data | fp16 scale | fp16 bias].
            rows = torch.cat([data, scale_bias], dim=1).contiguous()
            out[spec[0]] = torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(rows, INT_BITS[dtype])
    return out


@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantized_rows_match_fbgemm_and_float(float_models: Dict[int, DLRM], dtype: str, dim: int) -> None:
    float_model = float_models[dim]
    qmodel = quantize_model(float_model, dtype)
    deq = dequantized_tables(qmodel)
    ref = _float_rows(float_model)
    assert set(deq) == set(ref) and table_dtypes(qmodel) == {name: dtype for name in ref}
    fbgemm_op = _fbgemm_dequantize(qmodel, dtype) if dtype in INT_BITS else {}
    for i, name in enumerate(sorted(ref)):
        rows, x = deq[name], ref[name]
        assert rows.shape == x.shape and rows.dtype == torch.float32
        # What the TBE kernel actually returns for each id.
        torch.testing.assert_close(rows, _lookup_each_row(qmodel, i), rtol=0, atol=1e-6)
        if dtype in INT_BITS:
            torch.testing.assert_close(rows, fbgemm_op[name], rtol=0, atol=1e-6)
            hi, lo = x.max(dim=1, keepdim=True).values, x.min(dim=1, keepdim=True).values
            # Half a quantization step, plus fp16 rounding of the scale and bias.
            bound = (hi - lo) / (2 ** INT_BITS[dtype] - 1) / 2 + (hi.abs() + lo.abs()) * 2 ** -10 + 1e-7
        else:
            bound = x.abs() * 2 ** -11 + 1e-7
        err = (rows - x).abs()
        assert bool((err <= bound).all()), f"{name}: max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_storage_is_the_format_floor(float_models: Dict[int, DLRM], dtype: str, dim: int) -> None:
    qmodel = quantize_model(float_models[dim], dtype)
    per_table = embedding_storage_bytes_per_table(qmodel)
    assert per_table == {f"s_{f}": n * floor_bytes_per_row(dim, dtype) for f, n in zip(FEATURES, ROWS)}
    assert embedding_storage_bytes(qmodel) == sum(ROWS) * floor_bytes_per_row(dim, dtype)


def test_floor_bytes_per_row_values() -> None:
    assert [floor_bytes_per_row(64, d) for d in ["fp32", "fp16", "int8", "int4", "int2"]] == [256, 128, 68, 36, 20]
    assert [floor_bytes_per_row(16, d) for d in ["fp32", "fp16", "int8", "int4", "int2"]] == [64, 32, 20, 12, 8]
    assert floor_bytes_per_row(6, "int4") == 3 + 4 and floor_bytes_per_row(6, "int2") == 2 + 4
    with pytest.raises(ValueError, match="unknown embedding dtype"):
        floor_bytes_per_row(64, "int3")


# Max |quantized - float| logit on the test batch, in units of the float logits' spread (std
# ~0.09 here). Measured on three batches: fp16 <= 0.003, int8 <= 0.071; a quantizer that zeroes
# every row is off by 1.7-2.2, one that swaps rows by 3.8 and more. At 4 and 2 bits the error
# itself is that large (int4 up to 1.4, int2 up to 3.2), so closeness to float cannot tell a broken
# int4/int2 quantizer from a working one: the quantized model must instead compute exactly what
# the float model computes on the dequantized rows (which the row test above pins to the grid).
PREDICTION_TOL = {"fp16": 0.01, "int8": 0.25}


def _with_rows(model: DLRM, rows: Dict[str, torch.Tensor]) -> DLRM:
    """A copy of the float model with its embedding rows replaced."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, bag in out.sparse_arch.embedding_bag_collection.embedding_bags.items():
            bag.weight.copy_(rows[name])
    return out


@pytest.fixture(scope="module")
def prediction_errors(float_models: Dict[int, DLRM], batch: tuple) -> Dict[str, float]:
    """Mean |quantized - float| logit per dtype at dim 64."""
    dense, kjt = batch
    with torch.no_grad():
        expected = float_models[64](dense, kjt)
        return {d: (quantize_model(float_models[64], d)(dense, kjt) - expected).abs().mean().item() for d in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
def test_predictions_close_to_float(float_models: Dict[int, DLRM], batch: tuple, dtype: str) -> None:
    float_model = float_models[64]
    qmodel = quantize_model(float_model, dtype)
    dense, kjt = batch
    with torch.no_grad():
        expected, got = float_model(dense, kjt), qmodel(dense, kjt)
    assert got.shape == (BATCH, 1) and got.dtype == torch.float32
    with torch.no_grad():
        on_dequantized_rows = _with_rows(float_model, dequantized_tables(qmodel))(dense, kjt)
    torch.testing.assert_close(got, on_dequantized_rows, rtol=0, atol=1e-6)  # the same computation, row for row
    assert not torch.equal(on_dequantized_rows, expected)  # (the rows did change: the check above is not vacuous)
    if dtype in PREDICTION_TOL:
        error = (got - expected).abs().max().item() / expected.std().item()
        assert error <= PREDICTION_TOL[dtype], f"{dtype}: max |logit error| {error:.3f} x the logits' std"
    # Dense and over arches stay fp32 and untouched; the float model is not modified.
    float_state = float_model.state_dict()
    for key, value in qmodel.state_dict().items():
        if key.startswith(("dense_arch.", "over_arch.")):
            assert value.dtype == torch.float32 and torch.equal(value, float_state[key])
    assert "weight" in dict(float_model.sparse_arch.embedding_bag_collection.embedding_bags["s_cat_0"].named_parameters())


def test_prediction_error_grows_as_bits_shrink(prediction_errors: Dict[str, float]) -> None:
    e = prediction_errors
    assert 0 < e["fp16"] < e["int8"] < e["int4"] < e["int2"], e


def test_per_table_override(float_models: Dict[int, DLRM]) -> None:
    qmodel = quantize_model(float_models[64], "int4", per_table={"s_cat_0": "int8", "s_cat_2": "fp16"})
    assert table_dtypes(qmodel) == {"s_cat_0": "int8", "s_cat_1": "int4", "s_cat_2": "fp16"}
    assert embedding_storage_bytes_per_table(qmodel) == {"s_cat_0": 100 * 68, "s_cat_1": 300 * 36, "s_cat_2": 1000 * 128}
    with pytest.raises(ValueError, match="no table named 's_cat_9'"):
        quantize_model(float_models[64], "int4", per_table={"s_cat_9": "int8"})
    with pytest.raises(ValueError, match="unknown embedding dtype"):
        quantize_model(float_models[64], "int4", per_table={"s_cat_0": "int3"})


@pytest.fixture(scope="module")
def mixed_qmodel(float_models: Dict[int, DLRM]) -> torch.nn.Module:
    # One table per sub-byte tensor subclass and one plain uint8 table.
    return quantize_model(float_models[64], "int4", per_table={"s_cat_1": "int2", "s_cat_2": "int8"})


def test_save_load_roundtrip(mixed_qmodel: torch.nn.Module, batch: tuple, tmp_path: Path) -> None:
    meta = _meta(64)
    out = save_quantized(mixed_qmodel, tmp_path / "q", meta)
    saved = torch.load(out / "weights.pt", weights_only=True)
    assert all(type(t) is torch.Tensor for t in saved.values())
    # The file holds the packed table bytes (not fp32 rows) plus the small dense layers.
    table_bytes = sum(saved[f"sparse_arch.embedding_bag_collection.embedding_bags.s_{f}.weight"].numel() for f in FEATURES)
    assert table_bytes == embedding_storage_bytes(mixed_qmodel)
    assert (out / "weights.pt").stat().st_size < table_bytes + 100_000

    loaded = load_quantized(out, _build_float)
    assert table_dtypes(loaded) == {"s_cat_0": "int4", "s_cat_1": "int2", "s_cat_2": "int8"}
    dense, kjt = batch
    with torch.no_grad():
        assert torch.equal(loaded(dense, kjt), mixed_qmodel(dense, kjt))
    for name, rows in dequantized_tables(mixed_qmodel).items():
        assert torch.equal(dequantized_tables(loaded)[name], rows)

    with pytest.raises(ValueError, match="build_float made tables"):
        load_quantized(out, lambda m: _build_float({**m, "sparse_features": ["cat_0", "cat_1", "cat_x"]}))


def test_torchscript_roundtrip(mixed_qmodel: torch.nn.Module, batch: tuple, tmp_path: Path) -> None:
    export_torchscript(mixed_qmodel, tmp_path / "q.pt")
    scripted = load_torchscript(tmp_path / "q.pt")
    dense, kjt = batch
    with torch.no_grad():
        assert torch.equal(scripted(dense, kjt), mixed_qmodel(dense, kjt))


def test_export_program_roundtrip(mixed_qmodel: torch.nn.Module, batch: tuple, tmp_path: Path) -> None:
    dense, kjt = batch
    export_program(mixed_qmodel, (dense, kjt), tmp_path / "q.pt2")
    program = load_program(tmp_path / "q.pt2")
    with torch.no_grad():
        assert torch.equal(program(dense, kjt), mixed_qmodel(dense, kjt))


def test_privileged_dense_columns_never_reach_the_exported_student(batch: tuple, tmp_path: Path) -> None:
    """A student built without dense columns 1 and 3 reads the data's 4-column input and ignores them."""
    meta = {**_meta(16), "dense_columns": [0, 2]}
    torch.manual_seed(0)
    model = build_model_from_meta(meta).eval()
    plain = _build_float({**meta, "dense_in_features": 2})
    assert model.state_dict().keys() == plain.state_dict().keys()  # loads like any DLRM checkpoint
    dense, kjt = batch
    scrambled = dense.clone()
    scrambled[:, [1, 3]] = torch.randn(BATCH, 2) * 100
    qm = quantize_model(model, "int4")
    export_torchscript(qm, tmp_path / "q.pt")
    scripted = load_torchscript(tmp_path / "q.pt")
    export_program(qm, (dense, kjt), tmp_path / "q.pt2")
    program = load_program(tmp_path / "q.pt2")
    with torch.no_grad():
        for m in (model, qm, scripted, program):
            assert torch.equal(m(dense, kjt), m(scrambled, kjt))
        assert not torch.equal(model(dense, kjt), model(dense.roll(1, 0), kjt))  # the kept columns matter
        assert torch.equal(scripted(dense, kjt), qm(dense, kjt))
    with pytest.raises(ValueError, match="dense_columns"):
        build_model_from_meta({**meta, "dense_columns": [0, 4]})
