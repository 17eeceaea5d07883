"""One's own TorchRec loop, in one process: evaluation as the recipes evaluate (the pipeline detached first),
training going on after it, and an export from the loop that load_model serves with the loop's scores."""

import pytest
import torch

import torchrec_kd
from tests.conftest import TINY
from torchrec_kd.config import load_config
from torchrec_kd.training.model_run import TrainModelRun

STEPS = 3


@pytest.fixture
def run(tmp_path):
    """A student of the tiny config, sharded and pipelined as train-student builds it, trained STEPS steps by hand."""
    cfg = load_config(TINY, [f"output_dir={tmp_path / 'out'}"])
    r = TrainModelRun(cfg, "student")
    r.setup()
    r.model.train()
    r.train_stream = iter(r.train_batches(0))
    r.losses = [float(r.pipeline.progress(r.train_stream)[0]) for _ in range(STEPS)]
    return r


def _val(r):
    return r.data.batches("val", r.cfg.data.batch_size, r.env.rank, r.env.world_size)


def test_after_progress_the_model_cannot_be_scored_directly_but_evaluate_model_equals_the_recipe(run):
    batch = next(iter(_val(run)))
    # the documented pitfall: the sharded tables still belong to the pipeline
    with pytest.raises(Exception, match="Invalid PipelinedForward usage"):
        for _ in range(2):
            run.score(batch)
    got = torchrec_kd.evaluate_model(run.pipeline, _val(run))
    want = run.evaluate("val")  # the recipes' evaluation: the same model (now detached), the same data
    assert got == want
    assert got["rows"] == run.cfg.data.val_rows and 0.0 < got["auc"] < 1.0
    # given the number of rows, the window is the recipe's; without it, one that holds any set: the same numbers
    assert torchrec_kd.evaluate_model(run.model, _val(run), total_rows=run.cfg.data.val_rows) == want


def test_training_goes_on_after_evaluate_model_exactly_as_without_it(tmp_path, run):
    torchrec_kd.evaluate_model(run.pipeline, _val(run))
    assert run.model.training  # left in the mode it was in
    resumed = [float(run.pipeline.progress(run.train_stream)[0]) for _ in range(2)]
    # the same run with no evaluation in between
    cfg = load_config(TINY, [f"output_dir={tmp_path / 'other'}"])
    plain = TrainModelRun(cfg, "student")
    plain.setup()
    plain.model.train()
    stream = iter(plain.train_batches(0))
    losses = [float(plain.pipeline.progress(stream)[0]) for _ in range(STEPS + 2)]
    assert losses == run.losses + resumed


def test_export_from_the_loop_loads_and_scores_as_the_trained_model(tmp_path, run):
    from torchrec_kd.data.contract import input_contract
    from torchrec_kd.data.rows import RowBlock
    from torchrec_kd.models.build import model_meta
    from torchrec_kd.quant.embeddings import quantize_model
    from torchrec_kd.training.evaluate import scorer
    from torchrec_kd.training.export_from_loop import _gather_sharded

    meta = model_meta(run.model_cfg, run.tables, run.inputs.dense_in_features, run.inputs.dense_columns)
    data = run.data
    contract = input_contract(run.cfg.data, data.dense_names, data.sparse_names, data.num_embeddings)
    out = torchrec_kd.export_for_serving(run.pipeline, tmp_path / "export" / "mine_int8", meta, contract, dtype="int8")
    served = torchrec_kd.load_model(out)
    assert set(served.table_dtypes.values()) == {"int8"}
    assert sorted(p.name for p in out.iterdir()) == ["contract.json", "model.ts", "quantized.json", "weights.pt"]
    batch = next(iter(_val(run)))
    block = RowBlock.from_batch(batch)
    logits, probs = served.score_block(block)
    with torch.no_grad():
        fp32 = scorer(run.model)(batch).float()
        # exact against an in-process int8 copy of the same weights
        copy = _gather_sharded(run.model, meta, tmp_path)
        int8 = scorer(quantize_model(copy, "int8"))(batch).float()
    assert torch.equal(logits, int8)
    assert torch.allclose(probs, torch.sigmoid(int8))
    # and within int8's rounding of the trained fp32 model (logits here have std ~0.1)
    assert (logits - fp32).abs().max().item() < 0.02
    assert not torch.equal(logits, fp32)  # it did quantize
    # the TorchScript program in the export scores the same
    program = torch.jit.load(str(out / "model.ts"))
    assert torch.equal(program(batch.dense_features, batch.sparse_features)["logit"], logits)


def test_export_from_the_loop_carries_the_id_remaps(tmp_path, run):
    """A windowed run's remaps travel with an own-loop export: serving maps raw ids as training did."""
    import numpy as np

    from torchrec_kd.data.contract import input_contract
    from torchrec_kd.data.id_remap import IdRemap
    from torchrec_kd.models.build import model_meta

    data = run.data
    feature, rows = data.sparse_names[0], data.num_embeddings[0]
    remap = IdRemap(feature, rows)
    remap.extend(np.array([1000, 7, 42]))
    meta = model_meta(run.model_cfg, run.tables, run.inputs.dense_in_features, run.inputs.dense_columns)
    contract = input_contract(run.cfg.data, data.dense_names, data.sparse_names, data.num_embeddings,
                              remaps={feature: remap})
    with pytest.raises(ValueError, match="disagree"):  # a contract naming remaps that are not given is refused
        torchrec_kd.export_for_serving(run.pipeline, tmp_path / "export" / "bad", meta, contract)
    out = torchrec_kd.export_for_serving(run.pipeline, tmp_path / "export" / "mine_int8", meta, contract,
                                         remaps={feature: remap})
    served = torchrec_kd.load_model(out)
    assert (out / "id_remap.json").is_file()
    assert served.remaps[feature].lookup(np.array([1000, 7, 42, 5])).tolist() == \
        remap.lookup(np.array([1000, 7, 42, 5])).tolist()
