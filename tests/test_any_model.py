"""Any ranking model, in one process: its own forward (or an adapter), probability heads as logits, every
built-in in either role, taps by module path, type-based quantization / QAT / export of a non-DLRM student,
plugins and their errors."""

import math

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch

import examples.custom_ranker.kd_plugin  # noqa: F401  (registers mlp_ranker and confident_soft_bce)
from torchrec_kd.config import LossTermConfig, ModelConfig
from torchrec_kd.core.plugins import load_plugins
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.distill.taps import measure_taps, probe_batch, probe_feature_dims
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import Tap, build_loss
from torchrec_kd.models.build import build_model, build_model_from_meta, model_io, model_meta
from torchrec_kd.models.dlrm import make_tables
from torchrec_kd.models.io import ModelIO

FEATS = ["a", "b", "c"]
CPU = torch.device("cpu")
MLP = ModelConfig(arch="mlp_ranker", embedding_dim=8, table_prefix="s_", args={"hidden": [16, 8]})
DLRM = ModelConfig(embedding_dim=8, dense_arch_layer_sizes=[16, 8], over_arch_layer_sizes=[16, 1])


def _build(cfg, rows=50):
    torch.manual_seed(0)
    return build_model(cfg, make_tables(cfg, FEATS, [rows] * 3), 4, CPU)


def _batch(n=6, rows=50, seed=1):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 3, (n * len(FEATS),), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATS, values=torch.randint(0, rows, (int(lengths.sum()),), generator=g),
                                              lengths=lengths)
    return Batch(torch.randn(n, 4, generator=g), kjt, torch.randint(0, 2, (n,), generator=g).float())


class Fixed(nn.Module):
    """A model whose forward returns fixed values (logits or probabilities)."""

    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(values))

    def forward(self, dense, kjt):
        return self.values.unsqueeze(-1)


def test_a_probability_head_is_distilled_as_its_logits():
    p, s = [0.9, 0.2, 0.5], [1.0, -0.5, 0.0]
    loss = build_loss([LossTermConfig("soft_bce", 1.0, temperature=2.0)])
    model = DistillationModel([Fixed(p)], Fixed(s), loss, teacher_io=ModelIO(output="probability"))
    batch = Batch(torch.zeros(3, 1), None, torch.zeros(3))
    got, (_, student, teacher, _) = model(batch)
    assert torch.allclose(teacher, torch.tensor([math.log(x / (1 - x)) for x in p]), atol=1e-5)
    # soft_bce at T: T^2 * BCE(sigmoid(s / T), sigmoid(logit(p) / T)), by hand
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    want = sum(-(sig(math.log(q / (1 - q)) / 2) * math.log(sig(z / 2))
                 + (1 - sig(math.log(q / (1 - q)) / 2)) * math.log(1 - sig(z / 2))) for q, z in zip(p, s)) / 3 * 4
    assert got.item() == pytest.approx(want, rel=1e-5)
    # taken for logits, the same head would give other targets: the declaration matters
    naive = DistillationModel([Fixed(p)], Fixed(s), loss)(batch)[0]
    assert abs(naive.item() - want) > 1e-3
    # a saturated head stays finite
    assert torch.isfinite(ModelIO(output="probability").logits(Fixed([1.0, 0.0]), batch)).all()


def test_deepfm_is_registered_as_a_probability_head_and_called_through_its_own_forward():
    cfg = ModelConfig(arch="deepfm", embedding_dim=8, args={"hidden_layer_size": 8, "deep_fm_dimension": 4})
    model, batch = _build(cfg).eval(), _batch()
    assert model_io(cfg).output == "probability"
    p = model(batch.dense_features, batch.sparse_features).squeeze(-1)
    assert ((p > 0) & (p < 1)).all()
    assert torch.allclose(model_io(cfg).logits(model, batch), torch.logit(p), atol=1e-5)


def test_hint_and_embedding_taps_by_path_on_a_non_dlrm_student():
    student, teacher = _build(MLP).eval(), _build(DLRM).eval()
    batch = _batch()
    dims = probe_feature_dims({"student": lambda: _build(MLP, rows=2), "teacher": lambda: _build(DLRM, rows=2)},
                              probe_batch(FEATS, 4), defaults={"student": {"embeddings": "ebc"},
                                                               "teacher": {"embeddings": "sparse_arch"}})
    loss = build_loss([LossTermConfig("hint_mse", 1.0, args={"student": "mlp", "teacher": "over_arch.model.0"}),
                       LossTermConfig("embedding_mse", 1.0)], dims)
    hint, emb = loss.terms
    assert hint.proj.weight.shape == (16, 8)  # the teacher's over-arch MLP (16) from the student's mlp (8)
    assert emb.proj.shape == (3, 8, 8) and emb.teacher_index.tolist() == [0, 1, 2]
    model = DistillationModel([teacher], student, loss)
    got = model(batch)[0]
    # the same terms computed from the modules called by hand
    with torch.no_grad():
        pooled = student.ebc(batch.sparse_features)
        s_hint = student.mlp(torch.cat([batch.dense_features, pooled.values()], dim=1))
        t_sparse = teacher.sparse_arch(batch.sparse_features)
        t_hint = teacher.over_arch.model[0](teacher.inter_arch(teacher.dense_arch(batch.dense_features), t_sparse))
        want = (torch.mean((hint.proj(s_hint) - t_hint) ** 2)
                + torch.mean((pooled.values().view(6, 3, 8) - torch.einsum("bfd,fde->bfe", t_sparse, emb.proj)) ** 2))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="no module 'mpl' in the model; did you mean 'mlp'"):
        measure_taps(student, ModelIO(), batch, [Tap("student", "mpl", "hint")], "student")


def test_a_custom_student_quantizes_to_int4_exports_reloads_and_predicts_the_same(tmp_path):
    from torchrec_kd.quant.embeddings import quantize_model, table_dtypes
    from torchrec_kd.quant.export import export_torchscript, load_quantized, load_torchscript, save_quantized, seal_export
    from torchrec_kd.quant.qat import use_fake_quant

    tables = make_tables(MLP, FEATS, [50] * 3)
    student, batch = _build(MLP).eval(), _batch()
    qm = quantize_model(student, "int4")
    assert set(table_dtypes(qm).values()) == {"int4"}
    save_quantized(qm, tmp_path, model_meta(MLP, tables, 4))
    export_torchscript(qm, tmp_path / "model.ts")
    seal_export(tmp_path)
    again = load_quantized(tmp_path, build_model_from_meta)
    io = model_io(MLP)
    want = io.logits(qm, batch)
    assert torch.equal(io.logits(again, batch), want)
    assert torch.equal(load_torchscript(tmp_path / "model.ts")(batch.dense_features, batch.sparse_features).squeeze(-1),
                       want)
    # quantization-aware: the fake-quantized float model scores what the int4 export scores
    use_fake_quant(student, "int4")
    assert torch.allclose(io.logits(student.eval(), batch), want, atol=1e-4)


def test_plugins_load_once_and_bad_ones_give_one_line(monkeypatch):
    from torchrec_kd.core import plugins

    monkeypatch.setattr(plugins, "_LOADED", [])  # leave this worker's other tests without loaded plugins
    assert "examples.custom_ranker.kd_plugin" in load_plugins(["examples.custom_ranker.kd_plugin"])
    with pytest.raises(ConfigError, match="--plugin my_pkg.nope: no module named 'my_pkg'"):
        load_plugins(["my_pkg.nope"])
    meta = {**model_meta(MLP, make_tables(MLP, FEATS, [5] * 3), 4), "plugins": ["my_pkg.kd"]}
    meta["model"]["arch"] = "their_ranker"
    with pytest.raises(ConfigError, match="built by 'their_ranker', which no loaded module registers; pass --plugin my_pkg.kd"):
        build_model_from_meta(meta)


def test_plugin_loss_args_are_checked_like_the_config():
    from torchrec_kd.losses import check_loss_names

    check_loss_names([LossTermConfig("confident_soft_bce", 1.0, args={"gamma": 0.5})], "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: distill.losses\\[0\\].args: unknown key 'gama'; did you mean 'gamma'"):
        check_loss_names([LossTermConfig("confident_soft_bce", 1.0, args={"gama": 0.5})], "x.yaml")
    with pytest.raises(ConfigError, match="args.gamma: expected float"):
        check_loss_names([LossTermConfig("confident_soft_bce", 1.0, args={"gamma": "high"})], "x.yaml")


ARCHS = {
    "dlrm": ModelConfig(embedding_dim=8, dense_arch_layer_sizes=[16, 8], over_arch_layer_sizes=[16, 1], table_prefix="x_"),
    "dlrm_dcn": ModelConfig(arch="dlrm_dcn", embedding_dim=8, dense_arch_layer_sizes=[16, 8],
                            over_arch_layer_sizes=[16, 1], dcn_low_rank_dim=4, table_prefix="x_"),
    "dlrm_projection": ModelConfig(arch="dlrm_projection", embedding_dim=8, dense_arch_layer_sizes=[16, 8],
                                   over_arch_layer_sizes=[16, 1], table_prefix="x_",
                                   args={"interaction_branch1_layer_sizes": [16, 16],
                                         "interaction_branch2_layer_sizes": [16, 8]}),
    "deepfm": ModelConfig(arch="deepfm", embedding_dim=8, table_prefix="x_",
                          args={"hidden_layer_size": 8, "deep_fm_dimension": 4}),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_builtin_distils_in_either_role_with_its_default_taps(arch):
    import dataclasses

    from torchrec_kd.models.build import model_builder

    other = dataclasses.replace(ARCHS["dlrm"], table_prefix="y_")
    terms = [LossTermConfig("soft_bce", 1.0), LossTermConfig("hint_mse", 0.1), LossTermConfig("embedding_cosine", 0.1)]
    batch = _batch()
    for student_cfg, teacher_cfg in ((ARCHS[arch], other), (other, ARCHS[arch])):
        defaults = {role: {"hint": model_builder(c.arch).hint, "embeddings": model_builder(c.arch).embeddings}
                    for role, c in (("student", student_cfg), ("teacher", teacher_cfg))}
        dims = probe_feature_dims({"student": lambda c=student_cfg: _build(c, rows=2),
                                   "teacher": lambda c=teacher_cfg: _build(c, rows=2)}, probe_batch(FEATS, 4),
                                  {"student": model_io(student_cfg), "teacher": model_io(teacher_cfg)}, defaults)
        teacher = _build(teacher_cfg).eval()
        model = DistillationModel([teacher], _build(student_cfg), build_loss(terms, dims),
                                  teacher_io=model_io(teacher_cfg), student_io=model_io(student_cfg))
        loss, (_, student_logits, teacher_logits, _) = model(batch)
        assert torch.isfinite(loss) and loss.requires_grad
        with torch.no_grad():  # the soft targets are the teacher's logits, whatever its head returns
            raw = teacher(batch.dense_features, batch.sparse_features).squeeze(-1)
        want = torch.logit(raw, eps=1e-7) if model_io(teacher_cfg).output == "probability" else raw
        assert torch.allclose(teacher_logits, want, atol=1e-5)
        loss.backward()  # the projections and the student learn; the teacher gets no gradient
        assert all(p.grad is None for p in model.teachers.parameters())


class ReversedArgs(nn.Module):
    """A ranker whose forward takes (kjt, dense): called through a ModelIO adapter."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, kjt, dense):
        return self.lin(dense)


def test_a_call_adapter_scores_a_model_with_another_signature():
    student, batch = ReversedArgs(), _batch()
    io = ModelIO(call=lambda m, b: m(b.sparse_features, b.dense_features))
    model = DistillationModel([Fixed([0.5] * 6)], student, build_loss([LossTermConfig("soft_bce", 1.0)]), student_io=io)
    _, (_, logits, _, _) = model(batch)
    assert torch.equal(logits, student.lin(batch.dense_features).squeeze(-1).detach())
    assert torch.equal(model.score(batch), logits)


def test_a_plugins_code_is_part_of_every_fingerprint(tmp_path, monkeypatch):
    from tests.conftest import TINY
    from torchrec_kd.config import load_config
    from torchrec_kd.core import plugins
    from torchrec_kd.core.fingerprint import step_fingerprint

    cfg = load_config(TINY)
    monkeypatch.setattr(plugins, "_LOADED", [])
    without = step_fingerprint(cfg, "student")
    assert "plugins" not in without["inputs"]  # runs without plugins keep their fingerprints
    (tmp_path / "kd_edit_me.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins(["kd_edit_me"])
    first = step_fingerprint(cfg, "distilled", {"teachers": "t"})
    (tmp_path / "kd_edit_me.py").write_text("X = 2\n")  # the plugin's code changed: its results are stale
    second = step_fingerprint(cfg, "distilled", {"teachers": "t"})
    assert first["digest"] != second["digest"] and set(first["inputs"]["plugins"]) == {"kd_edit_me"}


def test_measuring_taps_leaves_the_random_stream_alone():
    dims = probe_feature_dims({"student": lambda: _build(MLP, rows=2), "teacher": lambda: _build(DLRM, rows=2)},
                              probe_batch(FEATS, 4))
    torch.manual_seed(7)
    dims.info(Tap("student", "mlp", "hint"), "x")  # builds and runs a copy
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))  # so the projections are drawn as if nothing was measured


def _bare_deepfm(rows=50):
    """TorchRec's SimpleDeepFMNN built by hand (not by our builder): nothing declares its sigmoid head."""
    from torchrec.models.deepfm import SimpleDeepFMNN
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=make_tables(ModelConfig(embedding_dim=8, table_prefix="t_"), FEATS, [rows] * 3))
    return SimpleDeepFMNN(num_dense_features=4, embedding_bag_collection=ebc, hidden_layer_size=8, deep_fm_dimension=4)


def test_a_bare_simple_deepfm_teacher_is_distilled_on_its_logits(caplog):
    teacher, batch = _bare_deepfm().eval(), _batch(n=32)
    loss = build_loss([LossTermConfig("soft_bce", 0.5, temperature=2.0), LossTermConfig("logit_mse", 0.5)])
    student = _build(MLP)
    with caplog.at_level("WARNING"):
        bare = DistillationModel([teacher], student, loss)(batch)
    declared = DistillationModel([teacher], student, loss, teacher_io=ModelIO(output="probability"))(batch)
    with torch.no_grad():
        p = teacher(batch.dense_features, batch.sparse_features).squeeze(-1).double().clamp(1e-7, 1 - 1e-7)
    assert ((p > 0) & (p < 1)).all() and p.std() > 0
    want = torch.log(p / (1 - p)).float()  # logit = log(p / (1 - p)), clamped
    assert torch.allclose(bare[1][2], want, atol=1e-5)
    assert torch.equal(bare[1][2], declared[1][2]) and torch.equal(bare[0], declared[0])
    # taken for logits (the old behaviour, or declaring it wrongly) the targets would be the probabilities
    wrong = DistillationModel([teacher], student, loss, teacher_io=ModelIO(output="logit"))(batch)
    assert (wrong[1][2] - bare[1][2]).abs().max() > 0.1
    assert "lie in [0, 1]" not in caplog.text  # known by its type: nothing to warn about
    # and the default convention knows it outside distillation too (RankerTrain, evaluation)
    assert ModelIO().output_kind(teacher) == "probability" and ModelIO().resolved(teacher).output == "probability"


class SigmoidRanker(nn.Module):
    """An unknown model ending in a sigmoid, passed without a declaration."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, dense, kjt):
        return torch.sigmoid(self.lin(dense))


def test_an_undeclared_teacher_whose_outputs_all_lie_in_0_1_is_warned_about_once(caplog):
    from torchrec_kd.models.io import OUTPUT_WATCH

    OUTPUT_WATCH.reset()
    batch = _batch(n=32)
    dlrm = _build(DLRM).eval()  # TorchRec's DLRM, its outputs forced into [0, 1]: known to return logits
    with torch.no_grad():
        dlrm.over_arch.model[-1].weight.zero_()
        dlrm.over_arch.model[-1].bias.fill_(0.5)
    loss = build_loss([LossTermConfig("soft_bce", 1.0)])
    with caplog.at_level("WARNING", logger="torchrec_kd.models.io"):
        model = DistillationModel([SigmoidRanker(), dlrm], _build(MLP), loss)  # teachers are frozen
        for _ in range(3):
            model(batch)
            assert torch.equal(ModelIO().logits(dlrm, batch), torch.full((32,), 0.5))
            ModelIO(output="logit").logits(SigmoidRanker().requires_grad_(False), batch)  # declared: not watched
    warnings = [r for r in caplog.records if "lie in [0, 1]" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    message = warnings[0].getMessage()
    assert message.startswith("SigmoidRanker:") and "ModelIO(output='probability')" in message
    # a frozen logit model of unknown type whose outputs leave [0, 1], and a trainable model, are not warned about
    OUTPUT_WATCH.reset()
    caplog.clear()
    with caplog.at_level("WARNING", logger="torchrec_kd.models.io"):
        for _ in range(3):
            ModelIO().logits(Fixed([-0.5] + [0.5] * 31), batch)
            ModelIO().logits(SigmoidRanker(), batch)
    assert "lie in [0, 1]" not in caplog.text
