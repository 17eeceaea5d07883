"""The teacher on 2 gloo ranks: plan, pipelined == eager, 1 vs 2 ranks, resharded reload.

Each spawned rank pays torch's and torchrec's imports (seconds of CPU), so the three shardings share one
2-rank start-up (a module fixture) and the 1-rank training and reload share another."""

import pytest
import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from tests.conftest import TINY
from tests.multiprocess import run_ranks
from torchrec_kd.checkpoint.model_io import load_full_state_dict, load_module, save_model
from torchrec_kd.config import load_config
from torchrec_kd.distributed.sharding import tables_per_rank
from torchrec_kd.distributed.state import local_tensors
from torchrec_kd.training.model_run import TrainModelRun

STEPS = 6


def _recipe(overrides=()):
    r = TrainModelRun(load_config(TINY, ["train.steps=%d" % STEPS, *overrides]))
    r.setup()
    return r


def _plan_and_pipeline_vs_eager(rank, world_size, sharding):
    piped, eager = _recipe([f"sharding.default={sharding}"]), _recipe([f"sharding.default={sharding}"])
    data = piped.data
    batches = list(data.batches("train", piped.cfg.data.batch_size, rank, world_size, num_batches=STEPS))
    pipeline = TrainPipelineSparseDist(piped.model, piped.optimizer, piped.env.device)
    it = iter(batches)
    piped.model.train()
    eager.model.train()
    diffs = []
    for b in batches:
        _, logits_p, _ = pipeline.progress(it)
        eager.optimizer.zero_grad()
        loss, (_, logits_e, _) = eager.model(b)
        loss.backward()
        eager.optimizer.step()
        diffs.append(float((logits_p - logits_e).abs().max()))
    pipeline.detach()
    sd_p, sd_e = local_tensors(piped.model), local_tensors(eager.model)
    weight_diff = max(float((v - sd_e[k]).abs().max()) for k, v in sd_p.items() if v.numel())
    return {"tables": tables_per_rank(piped.model.plan, world_size), "logit_diffs": diffs,
            "weight_diff": weight_diff, "pipelined_modules": len(pipeline._pipelined_modules)}


SHARDINGS = ("table_wise", "column_wise", "data_parallel")


def _each_sharding(rank, world_size):
    return {sharding: _plan_and_pipeline_vs_eager(rank, world_size, sharding) for sharding in SHARDINGS}


@pytest.fixture(scope="module")
def by_sharding(tmp_path_factory):
    """Every rank's ``_plan_and_pipeline_vs_eager`` result per sharding, from one 2-rank start-up."""
    ranks = run_ranks(_each_sharding, 2, tmp_path_factory.mktemp("plans"))
    return {sharding: [r[sharding] for r in ranks] for sharding in SHARDINGS}


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_plan_uses_both_ranks_and_pipelined_equals_eager(by_sharding, sharding):
    results = by_sharding[sharding]
    tables = results[0]["tables"]
    assert tables[0] and tables[1], f"plan left a rank empty: {tables}"
    if sharding == "data_parallel":
        assert tables[0] == tables[1]  # every rank holds every table
    for r in results:
        assert r["pipelined_modules"] == 1  # the EBC's input dist really is pipelined
        assert max(r["logit_diffs"]) < 1e-5, r["logit_diffs"]
        assert r["weight_diff"] < 1e-5


def _train_and_save(rank, world_size, ckpt):
    r = _recipe()
    r.train()
    save_model(r.model, ckpt, {"world_size": world_size})
    test = list(r.data.batches("test", r.cfg.data.batch_size, rank, world_size))
    r.model.eval()
    with torch.no_grad():
        return torch.cat([r.model(b)[1][1] for b in test])


def _load_and_predict(rank, world_size, ckpt):
    r = _recipe(["sharding.default=column_wise"])  # a different plan from the one that saved
    load_module(r.model, ckpt)
    test = list(r.data.batches("test", r.cfg.data.batch_size, rank, world_size))
    r.model.eval()
    with torch.no_grad():
        return torch.cat([r.model(b)[1][1] for b in test])


def _train_and_reload(rank, world_size, ckpt, other_ckpt):
    """One rank: train and save to ``ckpt``, then load ``other_ckpt`` under another plan (one start-up for both)."""
    return _train_and_save(rank, world_size, ckpt), _load_and_predict(rank, world_size, other_ckpt)


def test_one_and_two_ranks_agree_and_reload_on_other_world_size(tmp_path):
    two = run_ranks(_train_and_save, 2, tmp_path, str(tmp_path / "ckpt2"))
    n_batches = 1024 // 128  # tiny config: test_rows / batch_size; each rank scored half of every batch
    two = torch.cat([t.view(n_batches, -1) for t in two], dim=1).flatten()
    [(one, reloaded)] = run_ranks(_train_and_reload, 1, tmp_path, str(tmp_path / "ckpt1"), str(tmp_path / "ckpt2"))
    w2, w1 = load_full_state_dict(tmp_path / "ckpt2"), load_full_state_dict(tmp_path / "ckpt1")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-4, msg=f"{k} differs between 1 and 2 ranks")
    # the 2-rank checkpoint, loaded by 1 rank under another plan, predicts exactly what it did on 2 ranks
    torch.testing.assert_close(reloaded, two, rtol=0, atol=1e-6)
    torch.testing.assert_close(one, two, rtol=1e-3, atol=1e-3)
