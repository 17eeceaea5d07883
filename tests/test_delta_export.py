"""Delta exports: applied to the previous export they give the next one bit for bit, they are small when
few rows changed, and they refuse an export they were not written against.

The exports are real ones built in-process (a DLRM student quantized to int8, written by
``save_quantized`` with its contract and TorchScript program, as the quantize step writes them),
with tables large enough to dominate the export as they do in production.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROWS, DIM = 6000, 16
FEATURES = ["cat_0", "cat_1", "cat_2"]


def _meta():
    from torchrec_kd.config.schema import ModelConfig

    cfg = ModelConfig(embedding_dim=DIM, dense_arch_layer_sizes=[16, DIM], over_arch_layer_sizes=[16, 1], table_prefix="s_")
    return {"model": dataclasses.asdict(cfg), "dense_in_features": 4, "sparse_features": FEATURES,
            "num_embeddings": [ROWS] * len(FEATURES), "plugins": [], "role": "student"}


def _export(model, path, meta, dtype="int8", pruning=None, contract=None, extra_files=None):
    """What the quantize step writes: weights.pt, quantized.json, contract.json, model.ts (sealed, atomic)."""
    from torchrec_kd.models.build import io_from_meta
    from torchrec_kd.quant.embeddings import quantize_model
    from torchrec_kd.quant.export import export_torchscript, save_quantized
    from torchrec_kd.quant.scoring_head import ScoringHead

    qm = quantize_model(model, dtype, pruning=pruning)
    head = ScoringHead(qm, io_from_meta(meta).output)
    contract = contract or {"contract": "torchrec_kd.contract/1", "format": "features", "label": "label"}
    extras = {"contract.json": lambda f: f.write_text(json.dumps(contract, indent=2)),
              "model.ts": lambda f: export_torchscript(head, f)}
    for name, text in (extra_files or {}).items():
        extras[name] = lambda f, text=text: f.write_text(text)
    return save_quantized(qm, path, {**meta, "window": str(path)}, pruning=pruning, extras=extras)


def _tables(model):
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    ebc = next(m for m in model.modules() if isinstance(m, EmbeddingBagCollection))
    return {name: bag.weight for name, bag in ebc.embedding_bags.items()}


def _update(model, fraction, seed):
    """A window's update: ``fraction`` of each table's rows and every dense weight move."""
    g = torch.Generator().manual_seed(seed)
    changed = {}
    with torch.no_grad():
        for name, w in _tables(model).items():
            ids = torch.randperm(w.shape[0], generator=g)[: int(fraction * w.shape[0])]
            w[ids] += 0.5 * torch.randn(len(ids), w.shape[1], generator=g)
            changed[name] = set(ids.tolist())
        for name, p in model.named_parameters():
            if "embedding_bags" not in name:
                p += 0.01 * torch.randn(p.shape, generator=g)
    return changed


def _inputs(batch=64):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, ROWS, (batch * len(FEATURES),), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync(FEATURES, ids, torch.ones(batch * len(FEATURES), dtype=torch.int32))
    return torch.randn(batch, 4, generator=g), kjt


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of one student: window 0's and window 1's after 5% of rows (and all dense weights) moved."""
    from torchrec_kd.models.build import build_model_from_meta

    torch.manual_seed(0)
    meta = _meta()
    model = build_model_from_meta(meta)
    root = tmp_path_factory.mktemp("delta")
    prev = _export(model, root / "w0", meta)
    changed = _update(model, 0.05, seed=1)
    new = _export(model, root / "w1", meta, extra_files={"id_remap.json": '{"cat_0": {"7": 1}}'})
    return prev, new, changed, model, meta


def _same_files(a: Path, b: Path):
    from torchrec_kd.checkpoint.integrity import file_records

    ra, rb = file_records(a), file_records(b)
    assert sorted(ra) == sorted(rb)
    for name in ra:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return ra


def test_the_delta_applied_to_the_previous_export_is_the_new_export_bit_for_bit(exports, tmp_path):
    from torchrec_kd.models.build import build_model_from_meta
    from torchrec_kd.quant.delta import apply_delta, delta_info, write_delta
    from torchrec_kd.quant.export import load_quantized

    prev, new, changed, _, _ = exports
    info = write_delta(prev, new, tmp_path / "delta")
    out = apply_delta(prev, tmp_path / "delta", tmp_path / "rebuilt")
    records = _same_files(out, new)  # every file, quantized.json's seal included
    assert {"weights.pt", "model.ts", "quantized.json", "contract.json", "id_remap.json"} <= set(records)
    # the rows shipped are exactly the rows whose stored (quantized) bytes changed
    prev_w = torch.load(prev / "weights.pt", weights_only=True)
    new_w = torch.load(new / "weights.pt", weights_only=True)
    for table, (n_changed, n_rows) in info.tables.items():
        key = next(k for k in new_w if k.endswith(f".{table}.weight"))
        stored = int((prev_w[key] != new_w[key]).any(dim=1).sum())
        assert n_changed == stored and n_rows == ROWS
        assert 0 < n_changed <= len(changed[table])
    assert info.rows_total == ROWS * len(FEATURES) and info.rows_changed == sum(c for c, _ in info.tables.values())
    assert info.files["weights.pt"] == "tensors" and info.files["model.ts"] == "patch"
    assert info.files["contract.json"] == "same" and info.files["id_remap.json"] == "whole"
    assert delta_info(tmp_path / "delta") == info
    # and the rebuilt export loads (its seal holds) and scores as the new one, not as the old one
    dense, kjt = _inputs()
    scores = [load_quantized(p, build_model_from_meta)(dense, kjt) for p in (out, new, prev)]
    assert torch.equal(scores[0], scores[1]) and not torch.equal(scores[0], scores[2])


def test_a_delta_of_few_changed_rows_is_a_small_part_of_the_full_export(exports, tmp_path):
    from torchrec_kd.quant.delta import write_delta

    prev, new, _, _, _ = exports
    info = write_delta(prev, new, tmp_path / "delta")
    assert info.rows_changed <= 0.10 * info.rows_total
    assert info.export_bytes == sum(f.stat().st_size for f in new.iterdir())
    assert info.delta_bytes == sum(f.stat().st_size for f in (tmp_path / "delta").iterdir())
    assert info.delta_bytes <= 0.20 * info.export_bytes, info


def test_a_delta_refuses_an_export_it_was_not_written_against(exports, tmp_path):
    from torchrec_kd.errors import CheckpointError
    from torchrec_kd.quant.delta import apply_delta, write_delta

    prev, new, _, _, _ = exports
    write_delta(prev, new, tmp_path / "delta")
    with pytest.raises(CheckpointError, match="written against the export") as e:
        apply_delta(new, tmp_path / "delta", tmp_path / "out")  # the new export is not the base
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    # a damaged payload is refused before anything is written
    payload = tmp_path / "delta" / "payload.bin"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="payload.bin"):
        apply_delta(prev, tmp_path / "delta", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_delta_between_pruned_exports_ships_a_table_whose_kept_rows_changed_whole(exports, tmp_path):
    from torchrec_kd.quant.delta import apply_delta, write_delta
    from torchrec_kd.quant.pruning import prune_plan

    _, _, _, model, meta = exports
    kept = {"s_cat_0": np.arange(0, ROWS, 2), "s_cat_1": np.arange(0, ROWS, 3)}
    prev = _export(model, tmp_path / "p0", meta, pruning=prune_plan(model, kept))
    _update(model, 0.02, seed=2)
    kept["s_cat_1"] = np.arange(1, ROWS, 3)  # the same count of other rows: the remapping differs
    new = _export(model, tmp_path / "p1", meta, pruning=prune_plan(model, kept))
    info = write_delta(prev, new, tmp_path / "delta")
    _same_files(apply_delta(prev, tmp_path / "delta", tmp_path / "out"), new)
    assert info.tables["s_cat_2"][0] < 0.1 * ROWS  # an unpruned table: its changed rows only
    kept_rows = len(kept["s_cat_1"]) + 1  # and the fallback row
    assert info.tables["s_cat_1"] == [kept_rows, kept_rows]  # other rows kept: the table whole (cheaper than ids)
    assert info.files["weights.pt"] == "tensors"
