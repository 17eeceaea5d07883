"""The cascade on 2 gloo ranks: a DLRM ranker teacher distilled into a two-tower student, end to end.

One 2-rank start-up trains the teacher, the two-tower alone (BCE + in-batch softmax) and the
distilled two-tower (BCE + ``inbatch_kd`` from the teacher over in-batch and random candidates,
positive anchors capped + the same in-batch softmax), evaluates each on the whole corpus and
checks, inside the ranks, that the sharded item tower scores random corpus items (one tower's
keys alone) as the student's own forward scores the same (user, item) pairs."""

import pytest
import torch

from tests.conftest import REPO
from tests.multiprocess import run_ranks
from torchrec_kd.config import load_config

TINY = ["train.epochs=null", "train.steps=8", "train.eval_every=4", "train.log_every=0", "data.batch_size=128",
        "data.retrieval.synthetic.num_users=200", "data.retrieval.synthetic.num_items=300", "data.retrieval.ks=[5,20]",
        "teacher.embedding_dim=8", "teacher.dense_arch_layer_sizes=[16,8]", "teacher.over_arch_layer_sizes=[16,1]",
        "train.tower_losses=[{name: inbatch_softmax, weight: 1.0, args: {negatives: inbatch+random, num_random: 32}}]",
        "distill.losses=[{name: hard_bce, weight: 1.0}, {name: inbatch_kd, weight: 1.0, args: {negatives: "
        "inbatch+random, num_random: 32, anchors: positive, max_anchors: 16}}]"]


def _cascade(rank, world_size, out):
    from torchrec_kd.distill.candidates import pair_rows
    from torchrec_kd.training.distill_run import DistillRun
    from torchrec_kd.training.model_run import TrainModelRun
    from torchrec_kd.training.tower_train import TowerTrain

    cfg = load_config(REPO / "configs" / "retrieval_synthetic.yaml", [f"output_dir={out}", *TINY])
    result = {}
    for role in ("teacher", "student"):
        run = TrainModelRun(cfg, role)
        run.setup()
        run.train()
        result[f"{role}_tower_train"] = isinstance(run.model.module, TowerTrain)
        result[role] = run.save(run.evaluate("test"))
    run = DistillRun(cfg)
    run.setup()
    before = {k: v.detach().clone() for k, v in run.model.module.student.named_parameters()}
    run.train()
    result["distilled"] = run.save(run.evaluate("test"))
    module = run.model.module
    result["terms"] = list(module.loss_fn.names)
    result["moved"] = any(not torch.equal(before[k], v.detach()) for k, v in module.student.named_parameters())
    # the random corpus items through the item tower alone == the same pairs through the student's forward
    batch = next(iter(run.data.batches("train", cfg.data.batch_size, rank, world_size)))
    scorer, student = module.candidates, module.student
    with torch.no_grad():
        torch.manual_seed(7)
        _, teacher_own, scores = scorer(batch)
        torch.manual_seed(7)
        items = scorer._random_items(batch.sparse_features.keys(), torch.device("cpu"))
        b, r = batch.sparse_features.stride(), scorer.num_random
        users = torch.arange(b).repeat_interleave(r)
        pairs = pair_rows(batch, scorer.item_keys, users, b + torch.arange(r).repeat(b), items)
        forward = student(pairs.dense_features, pairs.sparse_features).reshape(b, r)
    result["random_max_diff"] = float((scores.student[:, b:] - forward).abs().max())
    result["teacher_rows"] = tuple(scores.teacher.shape)
    result["positives"] = int((batch.labels > 0).sum())
    from torchrec_kd.recipes import report

    result["reported"] = report.run(cfg)  # the cascade: the teacher re-ranks each tower's top 20 (rank 0)
    # the cascade's consistency: a "ranker" that is the student's own forward keeps the student's order
    if rank == 0:
        from torchrec_kd.models.saved import load_float_model
        from torchrec_kd.training.cascade_eval import cascade_metrics

        towers, _ = load_float_model(cfg.out_dir / "student")
        result["self_cascade"] = cascade_metrics(lambda b: towers(b.dense_features, b.sparse_features), towers,
                                                 run.data, cfg.data.retrieval.ks)
    return result


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    return run_ranks(_cascade, 2, root, str(root))


def test_every_model_is_judged_on_the_whole_corpus_and_both_ranks_agree(cascade):
    r0, r1 = cascade
    for name in ("teacher", "student", "distilled"):
        block = r0[name]["retrieval"]
        assert 0.0 <= block["recall@20"] <= 1.0 and block["users"] > 100
        assert block == r1[name]["retrieval"]  # collective: every rank reports the same numbers
        assert "gauc" in r0[name]
    assert r0["teacher"]["retrieval"]["scored"] == "pairs" and r0["teacher"]["retrieval"]["candidates"] == 300
    assert r0["teacher"]["retrieval"]["users"] == r0["student"]["retrieval"]["users"]
    assert "recall@20" in r0["distilled"] and "recall@20" not in r0["teacher"]  # towers select on recall@20


def test_the_two_tower_trains_alone_and_distilled_on_the_same_label_terms(cascade):
    r0 = cascade[0]
    assert r0["student_tower_train"] and not r0["teacher_tower_train"]  # the DLRM ignores tower_losses
    assert r0["terms"] == ["hard_bce", "inbatch_kd", "inbatch_softmax"]
    assert r0["moved"]


def test_sharded_item_tower_scores_random_items_as_the_forward_does(cascade):
    for r in cascade:
        assert r["random_max_diff"] < 1e-4
        # the teacher scored the capped positive anchors against every candidate (local batch 64 + 32 random)
        assert r["teacher_rows"] == (min(16, r["positives"]), 64 + 32)


def test_the_teacher_re_ranks_each_towers_top_k_in_the_report(cascade):
    from torchrec_kd.reporting.summary import summarize

    reported = cascade[0]["reported"]
    for name in ("student", "distilled"):
        c = reported[name]["cascade"]
        assert c["scored"] == "cascade" and c["candidates"] == 20 and c["users"] == reported[name]["retrieval"]["users"]
        # the same candidates: at the depth re-ranked, the set (so recall@20) is the tower's own
        assert c["recall@20"] == pytest.approx(reported[name]["retrieval"]["recall@20"])
    assert "cascade" not in reported["teacher"]
    summary = summarize({0: reported})["retrieval"]["recall@5"]
    assert summary["cascade"]["student"]["mean"] == reported["student"]["cascade"]["recall@5"]
    assert summary["cascade_gap"]["mean"] == pytest.approx(reported["student"]["cascade"]["recall@5"]
                                                           - reported["student"]["retrieval"]["recall@5"])


def test_a_ranker_that_is_the_towers_own_score_keeps_their_order(cascade):
    own, alone = cascade[0]["self_cascade"], cascade[0]["student"]["retrieval"]
    for k in ("recall@5", "recall@20", "ndcg@5", "ndcg@20", "hr@5"):
        assert own[k] == pytest.approx(alone[k], abs=1e-9), k
