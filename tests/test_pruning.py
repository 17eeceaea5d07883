"""Row pruning: pruned ids score as the fallback row, kept ids as before; the storage shrinks and reloads."""

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.data.rows import Jagged, RowBlock
from torchrec_kd.quant.embeddings import dequantized_tables, embedding_storage_bytes_per_table, quantize_model
from torchrec_kd.quant.export import load_quantized, save_quantized
from torchrec_kd.quant.pruning import id_counts, keep_rows, prune_plan

ROWS, DIM = {"t0": 200, "t1": 30}, 8


class TwoTables(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=t, embedding_dim=DIM, num_embeddings=n, feature_names=[f"f{i}"])
            for i, (t, n) in enumerate(ROWS.items())])

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.ebc(kjt).values()


def _kjt(ids0, ids1) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(keys=["f0", "f1"], values=torch.tensor([*ids0, *ids1]),
                                               lengths=torch.ones(len(ids0) + len(ids1), dtype=torch.int32))


@pytest.fixture(scope="module")
def pruned():
    model = TwoTables()
    rng = np.random.default_rng(0)
    ids = np.minimum(rng.zipf(1.3, 5000) - 1, ROWS["t0"] - 1)  # a Zipf head: most rows rarely or never seen
    block = RowBlock(np.zeros((5000, 0), np.float32), np.zeros(5000, np.float32),
                     [Jagged.from_lengths(ids, np.ones(5000, np.int64)), Jagged.from_lengths(ids % 30, np.ones(5000, np.int64))])
    counts = id_counts([block], ["f0", "f1"], model)
    plan = prune_plan(model, {"t0": keep_rows(counts["t0"], keep_fraction=0.1)})
    return model, counts, plan, quantize_model(model, "int8", pruning=plan, counts=counts)


def test_kept_ids_score_as_before_and_pruned_ids_as_the_fallback_row(pruned):
    model, counts, plan, qp = pruned
    q = quantize_model(model, "int8")  # the same int8 quantization, no pruning
    kept = plan["t0"].kept
    cut = np.setdiff1d(np.arange(ROWS["t0"]), kept)
    assert len(kept) == 20 and counts["t0"][kept].min() >= counts["t0"][cut].max()  # the most frequent rows
    ids1 = [0, 1, 2]
    x = torch.zeros(3, 1)
    kept_ids = [int(kept[0]), int(kept[7]), int(kept[-1])]
    assert torch.equal(qp(x, _kjt(kept_ids, ids1)), q(x, _kjt(kept_ids, ids1)))
    out = qp(x, _kjt([int(c) for c in cut[[0, 50, -1]]], ids1))[:, :DIM]
    fallback = dequantized_tables(qp)["t0"][len(kept)]
    assert torch.equal(out, fallback.expand(3, DIM))
    # the fallback row is the count-weighted mean of the pruned float rows (up to int8 rounding)
    w = model.ebc.embedding_bags["t0"].weight.detach()
    c = torch.from_numpy(counts["t0"][cut]).double()
    assert torch.allclose(fallback, (c @ w[torch.from_numpy(cut)].double() / c.sum()).float(), atol=2e-3)


def test_pruned_storage_counts_the_remapping_and_reloads_exactly(pruned, tmp_path):
    model, _, plan, qp = pruned
    size = embedding_storage_bytes_per_table(qp)
    row = DIM + 4  # int8 values plus fp16 scale and bias
    assert size["t0"] == (len(plan["t0"].kept) + 1) * row + ROWS["t0"] * 4  # stored rows + an int32 remapping per id
    assert size["t1"] == ROWS["t1"] * row
    save_quantized(qp, tmp_path / "p", {}, pruning=plan)
    again = load_quantized(tmp_path / "p", lambda meta: TwoTables())
    kjt = _kjt(list(range(0, 200, 7)), [i % 30 for i in range(0, 200, 7)])
    assert torch.equal(again(torch.zeros(1), kjt), qp(torch.zeros(1), kjt))
    assert embedding_storage_bytes_per_table(again) == size


def test_keep_rows_honours_min_count_and_keeps_one_row():
    counts = np.array([5, 0, 3, 9, 1])
    assert keep_rows(counts, min_count=3).tolist() == [0, 2, 3]
    assert keep_rows(counts, keep_fraction=0.4).tolist() == [0, 3]
    assert keep_rows(np.zeros(4, np.int64), min_count=1).tolist() == [0]
    with pytest.raises(ValueError, match="t9"):
        prune_plan(TwoTables(), {"t9": np.array([0])})


def test_a_pruned_export_is_checked_against_its_recorded_source():
    from torchrec_kd.reporting.summary import consistency_notes

    metrics = {"distilled": {"fingerprint": "a"}, "distilled_int4": {"fingerprint": "b", "source_fingerprint": "a"},
               "distilled_int4_pruned": {"source": "distilled", "source_fingerprint": "a"}}
    assert consistency_notes(metrics) == []  # not mistaken for an export of distilled_int4
    metrics["distilled_int4_pruned"]["source_fingerprint"] = "old"
    assert consistency_notes(metrics) == ["distilled_int4_pruned was exported from an earlier distilled model: "
                                          "re-run quantize (--source distilled)."]


def test_a_replayed_plan_is_fingerprinted_by_its_content(tmp_path):
    from tests.conftest import TINY
    from torchrec_kd.config import load_config
    from torchrec_kd.core.fingerprint import step_fingerprint

    plan = tmp_path / "plan.json"
    plan.write_text('{"tables": {}}')
    cfg = load_config(str(TINY), [f"quantize.budget.replay={tmp_path}"])
    before = step_fingerprint(cfg, "distilled_budgeted", {"source": "s"})["digest"]
    plan.write_text('{"tables": {"s_cat_0": {"dtype": "int4", "keep_fraction": 1.0}}}')
    assert step_fingerprint(cfg, "distilled_budgeted", {"source": "s"})["digest"] != before  # never reused
