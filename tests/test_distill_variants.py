"""Distillation variants on gloo ranks: QAT, offline teacher scores, ensembles, privileged features, feature terms.

Each spawned rank pays torch's and torchrec's imports (seconds of CPU), so the runs share start-ups: one
2-rank start-up trains the second teacher and makes every 2-rank run the tests look at (``two_ranks``),
one 1-rank start-up makes every 1-rank run (``one_rank``); the tests assert on their results. Only the
int8 resume starts ranks of its own (a resume from disk in fresh processes)."""

import shutil

import pytest
import torch

from tests.conftest import TINY, copy_teacher
from tests.multiprocess import run_ranks
from torchrec_kd.checkpoint.model_io import read_meta
from torchrec_kd.config import load_config
from torchrec_kd.distributed.state import local_tensors
from torchrec_kd.errors import UserError
from torchrec_kd.quant.embeddings import quantize_model
from torchrec_kd.recipes import score_teacher
from torchrec_kd.recipes.quantize import load_float_model
from torchrec_kd.training.distill_run import DistillRun
from torchrec_kd.training.model_run import TrainModelRun

STEPS = 6


def _cfg(out, *extra):
    return load_config(TINY, [f"output_dir={out}", f"train.steps={STEPS}", *extra])


def _train_teacher(rank, world_size, out, *extra):
    r = TrainModelRun(_cfg(out, *extra), "teacher")
    r.setup()
    r.train()
    r.save({})


DCN_TEACHER = ("teacher.arch=dlrm_dcn", "teacher.table_prefix=t2_", "teacher.dcn_num_layers=1",
               "teacher.dcn_low_rank_dim=4")
ENSEMBLE_LOSSES = ("distill.losses=[{name: hard_bce, weight: 0.2}, {name: soft_bce, weight: 0.8}, "
                   "{name: hint_mse, weight: 0.1}, {name: embedding_cosine, weight: 0.1}, "
                   "{name: rank_listwise, weight: 0.1}, "
                   "{name: rank_pairwise, weight: 0.1, weight_schedule: {kind: linear, start: 0.0, steps: 3}}]")


def _ensemble(teachers):
    return (ENSEMBLE_LOSSES, "distill.group_feature=cat_0", "distill.privileged_features=[cat_3, int_1]",
            f"distill.teachers=[{{checkpoint: {teachers[0]}, weight: 2}}, {{checkpoint: {teachers[1]}}}]")


def _int8_args(teachers):
    return (f"distill.teacher_checkpoint={teachers[0]}", "distill.teacher_dtype=int8", "train.checkpoint_every=3",
            "train.log_every=1")


def _two_rank_runs(rank, world_size, root, dlrm):
    """Every 2-rank run the tests look at, in one start-up: the DLRM_DCN teacher first, then each run in its
    own folder under ``root`` (each run seeds itself, so the order does not change a result)."""
    _train_teacher(rank, world_size, f"{root}/dcn", *DCN_TEACHER)
    teachers = (dlrm, f"{root}/dcn/teacher")
    ckpt = f"distill.teacher_checkpoint={dlrm}"
    return {
        "qat": _distill(rank, world_size, f"{root}/qat", "int4", ckpt),
        "online_offline": _online_score_offline(rank, world_size, f"{root}/offline", ckpt,
                                                f"distill.teacher_scores={root}/offline/cache"),
        "ensemble": _distill(rank, world_size, f"{root}/ens", None, *_ensemble(teachers)),
        "dtypes": _score_by_teacher_dtype(rank, world_size, f"{root}/s", ckpt),
        "int8": _distill(rank, world_size, f"{root}/int8", None, *_int8_args(teachers)),
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_teacher):
    """The 2-rank runs (``_two_rank_runs``): ``root`` their folder, ``teachers`` a DLRM teacher (the
    session's tiny teacher, trained on one rank) and a DLRM_DCN one (other table prefix) trained on 2 ranks,
    and per run every rank's result."""
    root = tmp_path_factory.mktemp("two_ranks")
    dlrm = copy_teacher(tiny_teacher, root / "dlrm") / "teacher"
    ranks = run_ranks(_two_rank_runs, 2, root, str(root), str(dlrm))
    return {"root": root, "teachers": (dlrm, root / "dcn" / "teacher"),
            **{k: [r[k] for r in ranks] for k in ranks[0]}}


def _one_rank_runs(rank, world_size, root, teachers):
    """Every 1-rank run the tests look at, in one start-up: offline distillation from the 2-rank runs' cache,
    then the runs that must be refused (after the one that must succeed)."""
    ckpt, scores = f"distill.teacher_checkpoint={teachers[0]}", f"distill.teacher_scores={root}/offline/cache"
    single = _distill(rank, world_size, f"{root}/offline1", None, ckpt, scores, "distill.offline=true")
    refused = _try_offline_each(rank, world_size, f"{root}/refused", {
        "seed": (ckpt, scores, "seed=1"),
        "steps": (ckpt, scores, f"train.steps={STEPS + 2}"),
        "data": (ckpt, scores, "data.synthetic.zipf_exponent=1.3"),
        "teacher": (scores, f"distill.teachers=[{{checkpoint: {teachers[0]}}}, {{checkpoint: {teachers[1]}}}]"),
        "fields": (ckpt, scores, "distill.losses=[{name: soft_bce}, {name: hint_mse, weight: 0.1}]"),
    })
    errors = _try_each(rank, world_size, f"{root}/e", {
        "unknown": (ckpt, "distill.privileged_features=[cat_9]"),
        "all_dense": (ckpt, "distill.privileged_features=[int_0, int_1, int_2, int_3]"),
        "prefix": (f"distill.teachers=[{{checkpoint: {teachers[0]}}}, {{checkpoint: {teachers[0]}}}]",),
    })
    return {"single": single, "refused": refused, "errors": errors}


@pytest.fixture(scope="module")
def one_rank(two_ranks):
    """The 1-rank runs (``_one_rank_runs``), in the 2-rank runs' folder (they read its score cache)."""
    root = two_ranks["root"]
    return run_ranks(_one_rank_runs, 1, root, str(root), tuple(str(t) for t in two_ranks["teachers"]))[0]


def _distill(rank, world_size, out, qat, *extra):
    r = DistillRun(_cfg(out, *extra), qat=qat)
    r.setup()
    stats = r.train()
    entry = r.save(r.evaluate("test"))
    batch = next(iter(r.data.batches("test", r.cfg.data.batch_size, rank, world_size)))
    kjt = batch.sparse_features
    return {"losses": stats.losses, "auc": entry["auc"], "student": local_tensors(r.model, "student."),
            "scores": r.score(batch), "dense": batch.dense_features, "keys": kjt.keys(),
            "values": kjt.values(), "lengths": kjt.lengths(),
            "student_tables": [t.name for t in r.student_tables], "teacher_count": len(r.model.module.teachers)}


def _kjt(r):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor.from_lengths_sync(keys=r["keys"], values=r["values"], lengths=r["lengths"])


def test_qat_trains_on_two_ranks_and_the_int4_export_scores_what_it_trained(two_ranks):
    out = two_ranks["root"] / "qat"
    results = two_ranks["qat"]
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in results)
    assert read_meta(out / "distilled_qat")["qat"] == "int4"
    float_model, _ = load_float_model(out / "distilled_qat")  # the QAT checkpoint loads into a plain DLRM
    qm = quantize_model(float_model, "int4")
    for r in results:
        exported = qm(r["dense"], _kjt(r)).squeeze(-1)
        assert torch.allclose(exported, r["scores"], atol=1e-5), (exported - r["scores"]).abs().max()
        # without QAT the float model would differ from its int4 export
        assert not torch.allclose(float_model(r["dense"], _kjt(r)).squeeze(-1), exported, atol=1e-4)


def _score(rank, world_size, out, *extra):
    return score_teacher.run(_cfg(out, *extra))


def _try_offline(rank, world_size, out, *extra):
    try:
        _distill(rank, world_size, out, None, "distill.offline=true", *extra)
    except UserError as e:
        return str(e)
    return None


def _online_score_offline(rank, world_size, root, ckpt, scores):
    """Online distillation, scoring the cache, offline distillation from it: one start-up for the three."""
    online = _distill(rank, world_size, f"{root}/online", None, ckpt)
    _score(rank, world_size, f"{root}/score", ckpt, scores)
    return online, _distill(rank, world_size, f"{root}/offline", None, ckpt, scores, "distill.offline=true")


def _try_offline_each(rank, world_size, root, runs):
    """Several refused offline runs in one process (one start-up instead of one per run)."""
    return {name: _try_offline(rank, world_size, f"{root}/{name}", *extra) for name, extra in runs.items()}


def test_offline_distillation_equals_online_and_a_mismatched_cache_is_refused(two_ranks, one_rank):
    cache = two_ranks["root"] / "offline" / "cache"
    online, offline = zip(*two_ranks["online_offline"])
    assert (cache / "manifest.json").is_file()
    for on, off in zip(online, offline):
        assert off["teacher_count"] == 0  # no teacher in memory
        assert off["losses"] == pytest.approx(on["losses"], abs=1e-6)
        for k, v in on["student"].items():
            assert torch.allclose(v, off["student"][k], atol=1e-6), k
    # the same cache, read by one rank, gives the same run
    single = [one_rank["single"]]
    # (each of 2 ranks logs the loss of its half of the global batch; one rank logs the whole)
    two_rank_mean = [sum(v) / 2 for v in zip(*(r["losses"] for r in online))]
    assert single[0]["losses"] == pytest.approx(two_rank_mean, abs=1e-5)

    refused = one_rank["refused"]
    assert all(refused.values()), refused
    assert "seed" in refused["seed"] and str(cache) in refused["seed"]
    assert str(STEPS) in refused["steps"]
    assert "made with data=" in refused["data"]  # the data identity every artifact's fingerprint uses
    assert "teachers" in refused["teacher"]
    assert "hint" in refused["fields"]


def test_ensemble_privileged_features_and_feature_terms_on_two_ranks(two_ranks):
    out = two_ranks["root"] / "ens"
    results = two_ranks["ensemble"]
    for r in results:
        assert r["teacher_count"] == 2
        assert torch.isfinite(torch.tensor(r["losses"])).all()
        assert r["student_tables"] == ["s_cat_0", "s_cat_1", "s_cat_2"]  # cat_3 is the teachers' alone
    meta = read_meta(out / "distilled")
    assert meta["sparse_features"] == ["cat_0", "cat_1", "cat_2"]
    assert meta["dense_in_features"] == 4 and meta["dense_columns"] == [0, 2, 3]  # int_1 is the teachers' alone
    # the student serves without the privileged features, from a batch that still carries them
    model, _ = load_float_model(out / "distilled")
    qm = quantize_model(model, "int8")
    r = results[0]
    scrambled = r["dense"].clone()
    scrambled[:, 1] = torch.randn(len(scrambled)) * 10
    assert torch.allclose(model(r["dense"], _kjt(r)).squeeze(-1), r["scores"], atol=1e-5)
    assert torch.equal(model(scrambled, _kjt(r)), model(r["dense"], _kjt(r)))
    assert torch.isfinite(qm(r["dense"], _kjt(r))).all()


def test_privileged_feature_must_exist_and_teacher_prefixes_must_differ(one_rank):
    errors = one_rank["errors"]
    assert "cat_9" in errors["unknown"]
    assert "every dense feature" in errors["all_dense"]
    assert "table prefix" in errors["prefix"] and "t_" in errors["prefix"]


def _try_each(rank, world_size, root, runs):
    return {name: _try_offline_online(rank, world_size, f"{root}/{name}", *extra) for name, extra in runs.items()}


def _try_offline_online(rank, world_size, out, *extra):
    try:
        _distill(rank, world_size, out, None, *extra)
    except UserError as e:
        return str(e)
    return None


def _score_by_teacher_dtype(rank, world_size, out, ckpt):
    from torchrec_kd.distributed.env import init_distributed
    from torchrec_kd.quant.int8_teacher import int8_bags

    got = {}
    for dtype in ("fp32", "fp16", "int8"):
        cfg = _cfg(out, ckpt, f"distill.teacher_dtype={dtype}")
        model, data, _, _ = score_teacher.build_scorer(cfg, init_distributed(cfg.distributed))
        batch = next(iter(data.batches("test", cfg.data.batch_size, rank, world_size)))
        tables = {k: v for k, v in local_tensors(model, "teachers.").items() if ".embedding_bags." in k and v.numel()}
        bags = int8_bags(model, "teachers.")
        with torch.no_grad():
            got[dtype] = {"logits": model.module(batch)[0], "dtypes": {v.dtype for v in tables.values()},
                          "bytes": sum(v.nbytes for v in tables.values()),
                          "int8_bytes": sum(b.int8_bytes for b in bags),
                          "int8_storage": sum(b.tbe.weights_host.numel() for b in bags),
                          "float_bytes": sum(b.float_bytes for b in bags)}
            if dtype == "fp32":  # the fp32 teacher with its rows rounded to fp16 the way a load casts them
                for name, p in model.named_parameters():
                    if name.startswith("teachers.") and ".embedding_bags." in name:
                        p.copy_(p.half().float())
                got["rounded"] = model.module(batch)[0]
            if dtype == "int8":  # what still refers to the float rows holds no memory
                got["int8"]["float_left"] = sum(p.untyped_storage().nbytes() for n, p in model.named_parameters()
                                                if n.startswith("teachers.") and ".embedding_bags." in n)
    kjt = batch.sparse_features
    got["batch"] = {"dense": batch.dense_features, "keys": kjt.keys(), "values": kjt.values(), "lengths": kjt.lengths()}
    return got


def test_fp16_and_int8_teachers_score_their_rounded_rows_in_less_memory(two_ranks):
    float_teacher, _ = load_float_model(two_ranks["teachers"][0])
    with torch.no_grad():  # an int8 teacher is loaded in fp16, then quantized
        for bag in float_teacher.sparse_arch.embedding_bag_collection.embedding_bags.values():
            bag.weight.copy_(bag.weight.half().float())
    int8_teacher = quantize_model(float_teacher, "int8")
    for got in two_ranks["dtypes"]:
        assert got["fp16"]["dtypes"] == {torch.float16} and got["fp32"]["dtypes"] == {torch.float32}
        assert got["fp16"]["bytes"] * 2 == got["fp32"]["bytes"]
        # exactly what rounding the checkpoint's rows to fp16 gives, which is not nothing
        torch.testing.assert_close(got["fp16"]["logits"], got["rounded"], atol=1e-5, rtol=1e-5)
        assert not torch.equal(got["fp16"]["logits"], got["fp32"]["logits"])
        # int8: this rank's shards as fbgemm int8 rows (d + 4 bytes), the fp16 rows it was loaded
        # in released, scoring what `quantize` int8 of the fp16-rounded teacher scores
        int8 = got["int8"]
        assert int8["float_bytes"] == got["fp16"]["bytes"] and int8["float_left"] == 0
        dim = float_teacher.sparse_arch.embedding_bag_collection.embedding_bag_configs()[0].embedding_dim
        assert int8["int8_bytes"] == got["fp32"]["bytes"] // (4 * dim) * (dim + 4)
        assert int8["int8_bytes"] <= int8["int8_storage"] <= int8["int8_bytes"] + 256  # fbgemm's buffer: the rows + alignment
        b = got["batch"]
        kjt = _kjt(b)
        torch.testing.assert_close(int8["logits"], int8_teacher(b["dense"], kjt).squeeze(-1), atol=1e-5, rtol=1e-5)
        assert not torch.equal(int8["logits"], got["fp32"]["logits"])


def test_distillation_from_an_int8_teacher_trains_checkpoints_and_resumes(two_ranks, tmp_path):
    out = tmp_path / "int8"
    shutil.copytree(two_ranks["root"] / "int8", out)  # the 2-rank runs' first run; resumed here, in a copy
    args = _int8_args(two_ranks["teachers"])
    first = two_ranks["int8"]
    assert all(len(r["losses"]) == STEPS and torch.isfinite(torch.tensor(r["losses"])).all() for r in first)
    assert read_meta(out / "distilled")["role"] == "student"  # the student's checkpoint, no teacher rows
    # a longer run resumes from the step-3 state (teacher reloaded from its fp32 checkpoint, quantized again)
    again = run_ranks(_distill, 2, tmp_path, str(out), None, *args, f"train.steps={STEPS + 3}")
    for a, b in zip(first, again):
        # steps 1-3 come from the saved training state (rank 0 writes its log), 4-6 are run again
        assert len(b["losses"]) == STEPS + 3 and b["losses"][:3] == first[0]["losses"][:3]
        assert b["losses"][3:6] == pytest.approx(a["losses"][3:6], abs=1e-6)
