"""Feature terms (hint, embedding, ranking), schedules inside the weighted loss, model intermediates."""

import math

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import LossTermConfig, ModelConfig, ScheduleConfig
from torchrec_kd.distill.model import DistillationModel, TeacherEnsemble
from torchrec_kd.distill.scored_batch import ScoredBatch
from torchrec_kd.losses import FeatureDims, Tap, TapInfo, build_loss
from torchrec_kd.models.dlrm import build_dlrm, make_tables

FEATS = ["a", "b", "c"]
HS, HT = Tap("student", "inter_arch", "hint"), Tap("teacher", "inter_arch", "hint")
ES, ET = Tap("student", "sparse_arch", "embeddings"), Tap("teacher", "sparse_arch", "embeddings")
DIMS = FeatureDims({HS: TapInfo((3,)), HT: TapInfo((2,)), ES: TapInfo((2, 2), ["a", "c"]), ET: TapInfo((3, 3), FEATS)},
                   defaults={r: {"hint": "inter_arch", "embeddings": "sparse_arch"} for r in ("student", "teacher")})


def _term(name, **kw):
    return build_loss([LossTermConfig(name, 1.0, **kw)], DIMS).terms[0]


def test_hint_mse_and_cosine_equal_hand_computed_values():
    s = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    t = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    for name in ("hint_mse", "hint_cosine"):
        term = _term(name)
        with torch.no_grad():
            term.proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
            term.proj.bias.copy_(torch.tensor([0.0, 1.0]))
        # projected: row0 = [1, 3], row1 = [0, 0]
        loss = build_loss([LossTermConfig(name, 1.0)], DIMS)
        loss.terms[0].load_state_dict(term.state_dict())
        got = loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), student_taps={HS.key: s},
                   teacher_taps={HT.key: t}).item()
        if name == "hint_mse":
            expected = ((1 - 1) ** 2 + (3 - 1) ** 2 + (0 - 2) ** 2 + (0 - 0) ** 2) / 4
        else:  # cos([1,3],[1,1]) = 4 / (sqrt(10) sqrt(2)); a zero vector has cosine 0
            expected = ((1 - 4 / (math.sqrt(10) * math.sqrt(2))) + (1 - 0)) / 2
        assert got == pytest.approx(expected, rel=1e-6)


def test_hint_terms_read_the_modules_their_args_name_sized_from_those_shapes():
    other = Tap("teacher", "over_arch.model.0", "hint")
    dims = FeatureDims({**DIMS.taps, other: TapInfo((5,))}, DIMS.defaults)
    term = build_loss([LossTermConfig("hint_mse", 1.0, args={"teacher": "over_arch.model.0"})], dims).terms[0]
    assert term.taps == [HS, other] and term.proj.weight.shape == (5, 3)
    with pytest.raises(ValueError, match="unknown key 'teachr'; did you mean 'teacher'"):
        build_loss([LossTermConfig("hint_mse", 1.0, args={"teachr": "x"})], dims)
    with pytest.raises(ValueError, match="takes no args"):
        build_loss([LossTermConfig("soft_bce", 1.0, args={"student": "x"})], dims)
    no_default = FeatureDims(DIMS.taps, {"student": {}, "teacher": DIMS.defaults["teacher"]})
    with pytest.raises(ValueError, match="args.student"):
        build_loss([LossTermConfig("hint_mse", 1.0)], no_default)


def test_embedding_terms_project_the_teachers_matching_features():
    loss = build_loss([LossTermConfig("embedding_mse", 1.0)], DIMS)
    term = loss.terms[0]
    with torch.no_grad():  # feature a: pick teacher dims 0,1; feature c: 2 * teacher dim 2 into both
        term.proj.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]],
                                      [[0.0, 0.0], [0.0, 0.0], [2.0, 2.0]]]))
    teacher = torch.tensor([[[1.0, 2.0, 3.0], [9.0, 9.0, 9.0], [0.5, 0.0, 1.0]]])  # [B=1, F=3 (a,b,c), 3]
    student = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])  # [B=1, F=2 (a,c), 2]
    taps = {"student_taps": {ES.key: student}, "teacher_taps": {ET.key: teacher}}
    got = loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), **taps)
    # targets: a -> [1, 2]; c -> [2, 2]: squared errors 0, 1, 0, 4 over 4 elements
    assert got.item() == pytest.approx(5 / 4)
    cos = build_loss([LossTermConfig("embedding_cosine", 1.0)], DIMS)
    cos.terms[0].proj.data.copy_(term.proj.data)
    got = cos(torch.zeros(1), torch.zeros(1), torch.zeros(1), **taps)
    expected = ((1 - 3 / (math.sqrt(2) * math.sqrt(5))) + (1 - 4 / (2 * math.sqrt(8)))) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_feature_terms_need_dims_and_inputs():
    with pytest.raises(ValueError, match="needs the models' shapes"):
        build_loss([LossTermConfig("hint_mse", 1.0)])
    loss = build_loss([LossTermConfig("hint_mse", 1.0)], DIMS)
    assert loss.taps == [HS, HT]
    with pytest.raises(ValueError, match="reads the student's 'inter_arch'"):
        loss(torch.zeros(2), torch.zeros(2), torch.zeros(2))


def test_rank_terms_read_groups():
    s, t = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([1.0, 0.0, 2.0])
    groups = torch.tensor([7, 7, 9])
    loss = build_loss([LossTermConfig("rank_pairwise", 1.0)])
    # one group with a pair: p = sigmoid(1 - 0), q-logit = 0 - 1, both orders of the pair
    p = 1 / (1 + math.exp(-1.0))
    bce = lambda z, y: -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))  # noqa: E731
    expected = (bce(-1.0, p) + bce(1.0, 1 - p)) / 2
    assert loss(s, t, torch.zeros(3), groups=groups).item() == pytest.approx(expected, rel=1e-6)


def test_weight_and_temperature_schedules_follow_the_documented_values():
    cfg = LossTermConfig("soft_bce", 0.8, temperature=1.0, weight_schedule=ScheduleConfig(kind="warmup", steps=4),
                         temperature_schedule=ScheduleConfig(kind="linear", start=3.0, steps=2))
    loss = build_loss([LossTermConfig("hard_bce", 0.2), cfg])
    s, t, y = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.0])
    hard = build_loss([LossTermConfig("hard_bce", 1.0)])(s, t, y).item()
    loss.train()
    for step, (w, temp) in enumerate([(0.0, 3.0), (0.2, 2.0), (0.4, 1.0), (0.6, 1.0), (0.8, 1.0), (0.8, 1.0)]):
        assert loss.step == step
        assert loss.current()[1] == pytest.approx((w, temp))
        soft = build_loss([LossTermConfig("soft_bce", 1.0, temperature=temp)])(s, t, y).item()
        assert loss(s, t, y).item() == pytest.approx(0.2 * hard + w * soft, rel=1e-6)
    loss.eval()
    loss(s, t, y)
    assert loss.step == 6  # evaluation does not advance the schedules


def test_bad_schedules_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"distill.losses\[0\].weight_schedule"):
        build_loss([LossTermConfig("soft_bce", 1.0, weight_schedule=ScheduleConfig(kind="linear", steps=0))])
    with pytest.raises(ValueError, match="temperature_schedule"):
        build_loss([LossTermConfig("soft_bce", 1.0, temperature_schedule=ScheduleConfig(kind="warmup", steps=5))])


def _batch(n=6, feats=FEATS, rows=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=feats, values=torch.randint(0, rows, (n * len(feats),), generator=g),
                                              lengths=torch.ones(n * len(feats), dtype=torch.long))
    return torch.randn(n, 4, generator=g), kjt, torch.randint(0, 2, (n,), generator=g).float()


def test_ensemble_logits_are_the_weighted_mean_and_offline_reads_the_batch():
    cfgs = [ModelConfig(embedding_dim=8, dense_arch_layer_sizes=[8], over_arch_layer_sizes=[8, 1], table_prefix=p)
            for p in ("t1_", "t2_", "s_")]
    torch.manual_seed(0)
    models = [build_dlrm(c, make_tables(c, FEATS, [20] * 3), 4, device=torch.device("cpu")) for c in cfgs]
    dense, kjt, labels = _batch()
    batch = ScoredBatch(dense, kjt, labels, teacher_logits=torch.arange(6.0))
    ens = TeacherEnsemble(models[:2], [1.0, 3.0])
    want = 0.25 * models[0](dense, kjt).squeeze(-1) + 0.75 * models[1](dense, kjt).squeeze(-1)
    assert torch.allclose(ens(batch)[0], want, atol=1e-6)
    loss = build_loss([LossTermConfig("logit_mse", 1.0)])
    online = DistillationModel(models[:2], models[2], loss, teacher_weights=[1.0, 3.0])
    assert torch.allclose(online(batch)[1][2], want, atol=1e-6)
    offline = DistillationModel([], models[2], loss)
    assert torch.equal(offline(batch)[1][2], torch.arange(6.0))
    with pytest.raises(ValueError, match="teacher_weights"):
        DistillationModel(models[:2], models[2], loss, teacher_weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="group_feature"):
        DistillationModel(models[:1], models[2], build_loss([LossTermConfig("rank_listwise", 1.0)]))


def test_scored_batch_keeps_teacher_outputs_through_to_pin_and_record_stream(monkeypatch):
    """What TrainPipelineSparseDist does to a batch keeps the teacher outputs with their rows."""
    dense, kjt, labels = _batch()
    logits, tap = torch.arange(6.0) + 0.5, torch.arange(12.0).view(6, 2)  # distinct values: a mix-up shows
    b = ScoredBatch(dense, kjt, labels, teacher_logits=logits, teacher_taps={HT.key: tap})
    # to(): every tensor moves (to the meta device, a real move on a CPU-only machine)
    moved = b.to(torch.device("meta"))
    assert isinstance(moved, ScoredBatch) and list(moved.teacher_taps) == [HT.key]
    for got, want in ((moved.dense_features, dense), (moved.labels, labels), (moved.teacher_logits, logits),
                      (moved.teacher_taps[HT.key], tap), (moved.sparse_features.values(), kjt.values())):
        assert got.device.type == "meta" and got.shape == want.shape
    # pin_memory() needs an accelerator: a stand-in that copies shows each tensor goes through it, values kept
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self.clone())
    pinned = b.pin_memory()
    assert isinstance(pinned, ScoredBatch) and list(pinned.teacher_taps) == [HT.key]
    for got, want in ((pinned.dense_features, dense), (pinned.labels, labels), (pinned.teacher_logits, logits),
                      (pinned.teacher_taps[HT.key], tap), (pinned.sparse_features.values(), kjt.values())):
        assert torch.equal(got, want) and got.data_ptr() != want.data_ptr()
    # record_stream(): the teacher outputs are recorded on the stream with the rows
    recorded = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: recorded.append(self.data_ptr()))
    b.record_stream(object())
    assert {t.data_ptr() for t in (dense, labels, logits, tap, kjt.values())} <= set(recorded)


def test_flat_triu_interaction_equals_torchrecs_values_and_gradients():
    from torchrec.models.dlrm import InteractionArch

    from torchrec_kd.models.dlrm import FlatTriuInteractionArch

    g = torch.Generator().manual_seed(0)
    dense = torch.randn(5, 4, generator=g, requires_grad=True)
    sparse = torch.randn(5, 3, 4, generator=g, requires_grad=True)
    ours, theirs = FlatTriuInteractionArch(3), InteractionArch(3)
    a, b = ours(dense, sparse), theirs(dense, sparse)
    assert torch.equal(a, b)
    w = torch.randn(a.shape, generator=g)
    ga = torch.autograd.grad((a * w).sum(), (dense, sparse))
    gb = torch.autograd.grad((b * w).sum(), (dense, sparse))
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ga, gb))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
