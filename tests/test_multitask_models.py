"""Multi-task models (issue 25, models and serving): shared_bottom and mmoe score [B, T] ([B] with one task),
a plugin's dict of task logits goes through ModelIO to [B, T], and a two-task model sharded, trained, quantized
to int8 and exported is served by load_model with one column per task, as the in-process model scores."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import ModelConfig
from torchrec_kd.core.tasks import Task, hard_task_loss
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import build_model, build_model_from_meta, io_from_meta, model_io, model_meta
from torchrec_kd.models.dlrm import make_tables
from torchrec_kd.models.io import ModelIO
from torchrec_kd.models.train import RankerTrain
from torchrec_kd.quant.scoring_head import ScoringHead

FEATS = ["a", "b", "c"]
DENSE = 4
ROWS = 40
CPU = torch.device("cpu")
TWO = (Task("click"), Task("like"))
SIZES = dict(embedding_dim=8, dense_arch_layer_sizes=[16, 8], over_arch_layer_sizes=[16, 1], table_prefix="s_")
SHARED = ModelConfig(arch="shared_bottom", **SIZES, args={"tower_layer_sizes": [8]})
MMOE = ModelConfig(arch="mmoe", **SIZES, args={"num_experts": 3, "tower_layer_sizes": [8]})


def _batch(n=8, seed=1, tasks=2):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 3, (n * len(FEATS),), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATS, values=torch.randint(0, ROWS, (int(lengths.sum()),), generator=g),
                                              lengths=lengths)
    shape = (n, tasks) if tasks > 1 else (n,)
    return Batch(torch.randn(n, DENSE, generator=g), kjt, torch.randint(0, 2, shape, generator=g).float())


def _build(cfg, tasks=TWO, device=CPU):
    torch.manual_seed(0)
    return build_model(cfg, make_tables(cfg, FEATS, [ROWS] * len(FEATS)), DENSE, device, tasks=tasks)


@pytest.mark.parametrize("cfg", [SHARED, MMOE], ids=["shared_bottom", "mmoe"])
def test_multitask_archs_score_one_column_per_task_and_one_task_flat(cfg):
    batch = _batch()
    three = TWO + (Task("dwell", "regression"),)
    out = _build(cfg, three)(batch.dense_features, batch.sparse_features)
    assert out.shape == (8, 3)
    assert out[:, 0].std() > 0 and not torch.equal(out[:, 0], out[:, 1])  # separate heads
    assert _build(cfg, None)(batch.dense_features, batch.sparse_features).shape == (8,)
    # the taps the feature terms read by default exist and the tables are one EmbeddingBagCollection
    model = _build(cfg, TWO, torch.device("meta"))
    names = dict(model.named_modules())
    assert {"inter_arch", "sparse_arch", "sparse_arch.embedding_bag_collection"} <= set(names)
    # quantization-aware training finds the tables by type
    from torchrec_kd.quant.qat import use_fake_quant

    model = _build(cfg)
    use_fake_quant(model, "int4")
    assert model(batch.dense_features, batch.sparse_features).shape == (8, 2)


def test_mmoe_gates_are_softmaxes_mixing_the_experts():
    model, batch = _build(MMOE).eval(), _batch()
    with torch.no_grad():
        x = model.bottom(batch.dense_features, batch.sparse_features)
        experts = torch.stack([e(x) for e in model.experts], dim=1)
        want = torch.cat([tower((torch.softmax(gate(x), 1).unsqueeze(2) * experts).sum(1))
                          for gate, tower in zip(model.gates, model.heads.towers)], dim=1)
        got = model(batch.dense_features, batch.sparse_features)
    assert torch.allclose(got, want, atol=1e-6)


def test_dlrm_gets_one_output_per_task_and_a_one_head_model_is_refused_in_one_line():
    dlrm = ModelConfig(**SIZES)
    batch = _batch()
    assert _build(dlrm)(batch.dense_features, batch.sparse_features).shape == (8, 2)
    assert _build(dlrm, None)(batch.dense_features, batch.sparse_features).shape == (8, 1)  # as always
    deepfm = ModelConfig(arch="deepfm", embedding_dim=8, args={"hidden_layer_size": 8, "deep_fm_dimension": 4})
    with pytest.raises(ConfigError, match=r"student.arch: 'deepfm' has one output .* use student.arch=shared_bottom or mmoe"
                       ) as e:
        build_model(deepfm, make_tables(deepfm, FEATS, [ROWS] * 3), DENSE, CPU, where="student", tasks=TWO)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="over_arch_layer_sizes must end with 1"):
        _build(ModelConfig(arch="shared_bottom", **{**SIZES, "over_arch_layer_sizes": [16, 2]}))


def test_ranker_train_one_task_is_plain_bce_and_two_tasks_the_per_task_loss():
    one = _build(ModelConfig(arch="shared_bottom", **SIZES), None)
    batch = _batch(tasks=1)
    loss, (_, logits, _) = RankerTrain(one, model_io(SHARED))(batch)
    assert torch.equal(loss, F.binary_cross_entropy_with_logits(logits, batch.labels))
    two, batch = _build(SHARED), _batch()
    loss, (_, logits, labels) = RankerTrain(two, model_io(SHARED, list(TWO)))(batch)
    assert logits.shape == labels.shape == (8, 2)
    want = sum(F.binary_cross_entropy_with_logits(logits[:, i], batch.labels[:, i]) for i in range(2))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert loss.item() == pytest.approx(hard_task_loss(logits, batch.labels, list(TWO)).item(), rel=1e-6)


class DictRanker(nn.Module):
    """A plugin's model: a dict of task logits (not in the run's order)."""

    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(values))

    def forward(self, dense, kjt):
        return {"like": self.values[:, 1], "click": self.values[:, 0].unsqueeze(1)}


def test_a_plugin_returning_a_dict_of_task_logits_goes_through_modelio_in_task_order():
    values = [[0.5, -1.0], [2.0, 0.25], [-0.5, 0.0]]
    model, batch = DictRanker(values), Batch(torch.zeros(3, 1), None, torch.zeros(3, 2))
    got = ModelIO(tasks=TWO).logits(model, batch)
    assert torch.equal(got, torch.tensor(values))
    assert torch.equal(ModelIO(tasks=TWO[::-1]).logits(model, batch), torch.tensor(values)[:, [1, 0]])
    loss = RankerTrain(model, ModelIO(tasks=TWO))(batch)[0]
    assert loss.item() == pytest.approx(hard_task_loss(torch.tensor(values), batch.labels, list(TWO)).item())
    with pytest.raises(ConfigError, match="the model's output has no task 'share'.*click, share"):
        ModelIO(tasks=(Task("click"), Task("share"))).logits(model, batch)
    # a served dict model: the head stacks it the same way
    head = ScoringHead(model, "logit", [("click", "binary"), ("like", "binary")])
    assert torch.equal(head(batch.dense_features, None)["logit"], torch.tensor(values))
    # a model that ignores the tasks is told what to return
    with pytest.raises(ConfigError, match=r"2 tasks \(click, like\) but the model returns shape \[3\]"):
        ModelIO(tasks=TWO).logits(lambda d, k: torch.zeros(3), batch)


def test_probability_heads_convert_binary_columns_and_pass_regression_values_through():
    out = torch.tensor([[0.9, 3.0], [0.2, -1.5]])
    tasks = (Task("click"), Task("dwell", "regression"))
    batch = Batch(torch.zeros(2, 1), None, torch.zeros(2, 2))
    got = ModelIO(output="probability", tasks=tasks).logits(lambda d, k: out, batch)
    assert torch.allclose(got, torch.stack([torch.logit(out[:, 0]), out[:, 1]], 1))
    for kind, logit, prob in [("probability", torch.logit(out[:, 0], eps=1e-7), out[:, 0]),
                              ("logit", out[:, 0], torch.sigmoid(out[:, 0]))]:
        scored = ScoringHead(_Const(out), kind, [("click", "binary"), ("dwell", "regression")])(torch.zeros(2, 1), None)
        assert torch.allclose(scored["logit"][:, 0], logit) and torch.allclose(scored["probability"][:, 0], prob)
        assert torch.equal(scored["logit"][:, 1], out[:, 1]) and torch.equal(scored["probability"][:, 1], out[:, 1])


class _Const(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, dense, kjt):
        return self.out


def test_the_meta_records_the_tasks_and_rebuilds_the_multitask_model():
    tables = make_tables(MMOE, FEATS, [ROWS] * 3)
    assert "tasks" not in model_meta(MMOE, tables, DENSE)  # no tasks named: the meta it always was
    assert "tasks" not in model_meta(MMOE, tables, DENSE, tasks=[Task("label")])
    meta = model_meta(MMOE, tables, DENSE, tasks=TWO + (Task("dwell", "regression"),))
    assert meta["tasks"] == [{"name": "click", "type": "binary"}, {"name": "like", "type": "binary"},
                             {"name": "dwell", "type": "regression"}]
    model, batch = build_model_from_meta(json.loads(json.dumps(meta))), _batch()
    assert io_from_meta(meta).logits(model, batch).shape == (8, 3)


def test_a_two_task_model_sharded_trained_quantized_and_exported_serves_a_column_per_task(tmp_path):
    import torchrec_kd
    from torchrec_kd.config import DistributedConfig, TrainConfig
    from torchrec_kd.distributed.env import init_distributed
    from torchrec_kd.distributed.sharding import build_optimizer, shard
    from torchrec_kd.models.init import init_weights

    env = init_distributed(DistributedConfig())
    tables = make_tables(SHARED, FEATS, [ROWS] * 3)
    io = model_io(SHARED, list(TWO))
    dmp = shard(RankerTrain(build_model(SHARED, tables, DENSE, tasks=TWO), io), env, 32, {})
    init_weights(dmp, seed=0, prefix="model.")
    opt = build_optimizer(dmp, TrainConfig())
    losses = []
    for step in range(4):
        loss = dmp(_batch(32, seed=10 + step))[0]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    meta = model_meta(SHARED, tables, DENSE, tasks=TWO)
    out = torchrec_kd.export_for_serving(dmp, tmp_path / "export" / "mt_int8", meta, dtype="int8")
    assert json.loads((out / "contract.json").read_text())["tasks"] == [{"name": "click", "type": "binary"},
                                                                      {"name": "like", "type": "binary"}]
    served = torchrec_kd.load_model(out)
    g = np.random.default_rng(0)
    frame = pd.DataFrame({**{f"int_{i}": g.normal(size=16) for i in range(DENSE)},
                          **{f: g.integers(0, ROWS, 16) for f in FEATS}})
    scores = served.score(frame)
    assert list(scores.columns) == ["click", "logit_click", "like", "logit_like"]
    batch = served.convert(frame).rows.to_batch(served.rows.sparse_names)
    with torch.no_grad():
        fp32 = io.logits(dmp.module.model, batch)
    assert fp32.shape == (16, 2)
    for i, task in enumerate(("click", "like")):
        got = torch.tensor(scores[f"logit_{task}"].to_numpy())
        assert (got - fp32[:, i]).abs().max().item() < 0.02  # int8 rounding of the tables
        assert np.allclose(scores[task].to_numpy(), torch.sigmoid(got).numpy(), atol=1e-6)
    assert not torch.allclose(fp32[:, 0], fp32[:, 1])
    # the TorchScript program in the export scores the same [B, 2]
    program = torch.jit.load(str(out / "model.ts"))
    logits = program(batch.dense_features, batch.sparse_features)["logit"]
    assert logits.shape == (16, 2)
    assert torch.equal(logits, torch.tensor(scores[["logit_click", "logit_like"]].to_numpy()))
    # predict writes the same columns for raw traffic
    from tests.conftest import TINY
    from torchrec_kd.config import load_config
    from torchrec_kd.recipes import predict

    frame.to_csv(tmp_path / "traffic.csv", index=False)
    cfg = load_config(TINY, [f"output_dir={tmp_path / 'run'}"])
    written = pd.read_csv(predict.run(cfg, str(out), "test", str(tmp_path / "scores.csv"), str(tmp_path / "traffic.csv")))
    assert list(written.columns) == ["row", "click", "logit_click", "like", "logit_like"]
    assert np.allclose(written[scores.columns].to_numpy(), scores.to_numpy(), atol=1e-6)
