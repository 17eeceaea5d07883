"""Retrieval metrics: recall / NDCG / HR / MRR by hand on a tiny corpus, seen items, ties, ranks, GAUC, the summary."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List

import numpy as np
import pytest
import torch

from tests.multiprocess import run_ranks
from torchrec_kd.data.rows import Jagged, RowBlock
from torchrec_kd.errors import ConfigError
from torchrec_kd.reporting.report import retrieval_table
from torchrec_kd.reporting.summary import summarize, summary_markdown
from torchrec_kd.training.retrieval_eval import (
    GaucAccumulator,
    evaluate_ranker_on_candidates,
    evaluate_retrieval,
    first_target_rank,
    join_rows,
    retrieval_metrics,
    row_user_ids,
    topk_excluding,
    user_auc_sums,
)


# Stand-ins with the fields of data/retrieval.py's ItemCorpus / EvalUsers (design26.md).
@dataclass
class Corpus:
    ids: np.ndarray
    block: RowBlock
    sparse_names: List[str]


@dataclass
class Users:
    block: RowBlock
    targets: List[np.ndarray]
    seen: List[np.ndarray]
    sparse_names: List[str]


# The tiny world: 3 users × 6 items, scores by hand.
S = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],   # user 0: a plain descending order
                  [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # user 1: its only target (5) is seen
                  [0.5, 0.5, 0.5, 0.9, 0.1, 0.5]])  # user 2: ties
SEEN = [np.array([0]), np.array([5, 4]), np.array([], np.int64)]
TARGETS = [np.array([2, 4]), np.array([5]), np.array([2])]


def d(i: int) -> float:
    """The NDCG discount of rank i."""
    return 1.0 / math.log2(i + 1)


def test_topk_excluding_by_hand() -> None:
    top = topk_excluding(S, SEEN, 3)
    # user 0: item 0 scores best but was seen: it is neither returned nor takes a slot -> 1, 2, 3
    # user 1: 5 and 4 seen -> 3, 2, 1
    # user 2: 3 (0.9), then the four tied 0.5s by index: 0, 1, (2, 5)
    assert top.tolist() == [[1, 2, 3], [3, 2, 1], [3, 0, 1]]
    # more slots than unseen items: user 1 has 4 unseen, the rest is -1 (a seen item never fills a slot)
    assert topk_excluding(S, SEEN, 8)[1].tolist() == [3, 2, 1, 0, -1, -1, -1, -1]
    # a bool mask works as the seen list does
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 5] = mask[1, 4] = True
    assert torch.equal(topk_excluding(S, mask, 3), top)


def test_metrics_by_hand() -> None:
    ks = [1, 3, 5]
    top = topk_excluding(S, SEEN, 5)
    assert top.tolist() == [[1, 2, 3, 4, 5], [3, 2, 1, 0, -1], [3, 0, 1, 2, 5]]
    ranks = first_target_rank(S, SEEN, TARGETS)
    # user 0: targets 2, 4 at ranks 2 and 4 -> 2; user 1: its target is seen -> none; user 2: target 2 after 3, 0, 1 -> 4
    assert ranks.tolist() == [2.0, math.inf, 4.0]
    m = retrieval_metrics(top, TARGETS, ks, first_rank=ranks)
    assert m["users"] == 3
    # recall@K = |top-K ∩ T| / |T|: user 0 1/2 at K=3 (item 2), 2/2 at K=5; user 1 never; user 2 1/1 at K=5 (rank 4)
    assert m["recall@1"] == 0.0
    assert m["recall@3"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["recall@5"] == pytest.approx((1 + 0 + 1) / 3)
    # HR@K: any target in the top K
    assert m["hr@3"] == pytest.approx(1 / 3) and m["hr@5"] == pytest.approx(2 / 3)
    # NDCG@3: user 0 hit at rank 2, ideal for |T| = 2: ranks 1, 2
    assert m["ndcg@3"] == pytest.approx((d(2) / (d(1) + d(2))) / 3)
    # NDCG@5: user 0 hits at 2 and 4 (ideal 1, 2); user 2 hit at 4 (ideal: rank 1)
    assert m["ndcg@5"] == pytest.approx((((d(2) + d(4)) / (d(1) + d(2))) + d(4) / d(1)) / 3)
    # MRR over the full ranking: 1/2, 0 (seen target), 1/4
    assert m["mrr"] == pytest.approx((1 / 2 + 0 + 1 / 4) / 3)
    # without the full ranking, MRR is within the listed items: at width 3 user 2's target (rank 4) is not listed
    assert retrieval_metrics(top[:, :3], TARGETS, [3])["mrr"] == pytest.approx((1 / 2) / 3)
    # a user without a target is not counted
    assert retrieval_metrics(top, TARGETS[:2] + [np.array([], np.int64)], [5])["users"] == 2


def test_ties_are_broken_by_index_and_ranks_agree() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (5, 40), generator=g).float()  # many ties, also at the k-th position
    scores[0] = 1.0  # all tied
    seen = [np.arange(0, 40, 7), np.array([], np.int64), np.array([3, 4]), np.arange(40)[::2], np.array([39])]
    targets = [np.array([5, 6]), np.array([0]), np.array([3, 17]), np.array([1, 2]), np.array([39, 38])]
    for k in (1, 5, 13, 40):
        top = topk_excluding(scores, seen, k)
        for u in range(5):
            ref = sorted((j for j in range(40) if j not in set(seen[u].tolist())), key=lambda j: (-scores[u, j].item(), j))
            assert top[u].tolist() == (ref + [-1] * k)[:k]
    assert topk_excluding(scores, seen, 5)[0].tolist() == [1, 2, 3, 4, 5]
    ranks = first_target_rank(scores, seen, targets).tolist()
    for u in range(5):
        ref = sorted((j for j in range(40) if j not in set(seen[u].tolist())), key=lambda j: (-scores[u, j].item(), j))
        found = [ref.index(t) + 1 for t in targets[u] if t in ref]
        assert ranks[u] == (min(found) if found else math.inf)
    # the same scores give the same lists every time
    assert torch.equal(topk_excluding(scores, seen, 13), topk_excluding(scores.clone(), seen, 13))


def test_ndcg_agrees_with_torchrec() -> None:
    """On tie-free rows our NDCG@K is TorchRec's NDCG (session = user, rows = the user's unseen items)."""
    from torchrec.metrics.ndcg import NDCGComputation

    g = torch.Generator().manual_seed(1)
    scores = torch.rand(4, 12, generator=g)
    seen = [np.array([0, 1]), np.array([], np.int64), np.array([11]), np.array([4, 5, 6])]
    targets = [np.array([2, 9]), np.array([3]), np.array([0, 1, 2]), np.array([7])]
    for k in (1, 3, 5):
        ours = retrieval_metrics(topk_excluding(scores, seen, k), targets, [k])[f"ndcg@{k}"]
        comp = NDCGComputation(my_rank=0, batch_size=48, n_tasks=1, window_size=1000, k=k, exponential_gain=False,
                               report_ndcg_as_decreasing_curve=False)
        preds, labels, sessions = [], [], []
        for u in range(4):
            for j in range(12):
                if j not in seen[u]:
                    preds.append(scores[u, j].item())
                    labels.append(float(j in targets[u]))
                    sessions.append(u)
        p = torch.tensor([preds], dtype=torch.float64)
        comp.update(predictions=p, labels=torch.tensor([labels]), weights=torch.ones_like(p),
                    required_inputs={"session_id": torch.tensor([sessions])})
        theirs = comp._compute()[0].value.item()
        assert ours == pytest.approx(theirs, abs=1e-9)


# A "two-tower" that reproduces S: user i's embedding is one-hot e_i (its dense row), item j's is column j of S.
def _world(n_users: int = 3):
    rng = np.random.default_rng(0)
    scores = S if n_users == 3 else torch.from_numpy(rng.random((n_users, 6)).astype(np.float32))
    seen = SEEN if n_users == 3 else [rng.choice(6, size=rng.integers(0, 3), replace=False) for _ in range(n_users)]
    targets = TARGETS if n_users == 3 else [np.array([rng.integers(0, 6)]) for _ in range(n_users)]
    corpus = Corpus(np.arange(100, 106), RowBlock(np.zeros((6, 0), np.float32), np.zeros(6, np.float32),
                                                  [Jagged.from_ids(np.arange(6)), Jagged.from_ids(np.arange(6) % 2)]),
                    ["item_id", "genre"])
    users = Users(RowBlock(np.eye(n_users, dtype=np.float32), np.zeros(n_users, np.float32),
                           [Jagged.from_ids(np.arange(n_users))]), targets, seen, ["user_id"])
    table = scores.t().contiguous()  # [N, U]: item j's "embedding"
    fns = (lambda dense, kjt: dense, lambda kjt: table[kjt["item_id"].values()], lambda u, v: u @ v.t())
    return scores, corpus, users, fns


def test_evaluate_retrieval_full_corpus() -> None:
    _, corpus, users, fns = _world()
    got = evaluate_retrieval(*fns, users, corpus, ks=[1, 3, 5], batch_users=2)  # two batches: 2 + 1 users
    assert got == pytest.approx(retrieval_metrics(topk_excluding(S, SEEN, 5), TARGETS, [1, 3, 5],
                                                  first_rank=first_target_rank(S, SEEN, TARGETS)))
    assert got["mrr"] == pytest.approx((1 / 2 + 0 + 1 / 4) / 3)
    assert evaluate_retrieval(*fns, users, corpus, ks=[1, 3, 5], batch_users=64) == pytest.approx(got)


def _ranker(corpus_scores: torch.Tensor):
    """A ranker scoring a (user, item) row by the table: reads the user id and item id features."""
    def score(dense: torch.Tensor, kjt) -> torch.Tensor:
        return corpus_scores[row_user_ids(kjt, "user_id"), row_user_ids(kjt, "item_id")]
    return score


def test_join_rows_builds_user_item_rows() -> None:
    _, corpus, _, _ = _world()
    users = RowBlock(np.array([[1.0], [2.0]], np.float32), np.zeros(2, np.float32),
                     [Jagged.from_ids(np.array([7, 8])), Jagged.from_lengths(np.array([1, 2, 3]), np.array([1, 2]))])
    keys = ["item_id", "user_id", "genre", "user_history"]  # the ranker's order, sides interleaved
    b = join_rows(users, ["user_id", "user_history"], np.array([1, 0, 1]), corpus.block, corpus.sparse_names,
                  np.array([5, 2, 3]), keys)
    kjt = b.sparse_features
    assert kjt.keys() == keys
    assert kjt["item_id"].values().tolist() == [5, 2, 3]
    assert kjt["genre"].values().tolist() == [1, 0, 1]
    assert kjt["user_id"].values().tolist() == [8, 7, 8]
    assert kjt["user_history"].lengths().tolist() == [2, 1, 2]
    assert kjt["user_history"].values().tolist() == [2, 3, 1, 2, 3]
    assert b.dense_features.reshape(-1).tolist() == [2.0, 1.0, 2.0]
    assert b.labels.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="price"):
        join_rows(users, ["user_id"], np.array([0]), corpus.block, corpus.sparse_names, np.array([0]), ["price"])


def test_ranker_on_candidates_by_hand() -> None:
    _, corpus, users, _ = _world()
    cand = np.array([[4, 0, 2, -1],    # user 0: 0 is seen -> dropped; 2 (0.7) before 4 (0.5)
                     [5, 3, 1, 2],     # user 1: 5 seen -> 3, 2, 1; its target is 5: nothing
                     [5, 2, 0, 4]])    # user 2: 5, 2, 0 tie at 0.5 -> candidate order; target 2 at rank 2
    m = evaluate_ranker_on_candidates(_ranker(S), users, corpus, cand, ks=[1, 2, 10],
                                      keys=["user_id", "item_id", "genre"], batch_rows=8)  # 2 users a call
    assert m["candidates"] == 4 and m["users"] == 3
    assert m["recall@1"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert m["recall@2"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["recall@10"] == pytest.approx(m["recall@2"])  # beyond the list: the whole list
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx((1.0 + d(2) / d(1)) / 3)
    assert m["mrr"] == pytest.approx((1 + 0 + 1 / 2) / 3)


def test_gauc_by_hand_and_against_torchrec() -> None:
    # user 7: 0.9 (+) above both negatives -> 1; user 8: every positive below the negative -> 0;
    # user 9: + at 0.5 ties a - at 0.5 (½) and beats the - at 0.1 (1) -> 0.75; user 10: positives only -> left out
    rows = [(7, 0.9, 1), (7, 0.1, 0), (7, 0.5, 0), (8, 0.2, 1), (8, 0.8, 0), (8, 0.3, 1), (8, 0.7, 1),
            (9, 0.5, 1), (9, 0.5, 0), (9, 0.1, 0), (10, 0.4, 1), (10, 0.6, 1)]
    random.Random(0).shuffle(rows)
    u, s, y = (np.array(c) for c in zip(*rows))
    assert user_auc_sums(u, s, y) == (pytest.approx(1.75), 3)
    acc = GaucAccumulator()
    acc.update(torch.tensor(u[:5]), torch.tensor(s[:5]), torch.tensor(y[:5]))  # a user's rows in two batches
    acc.update(torch.tensor(np.r_[u[5:], -1]), torch.tensor(np.r_[s[5:], 0.0]), torch.tensor(np.r_[y[5:], 0]))
    assert acc.compute() == {"gauc": pytest.approx(1.75 / 3), "gauc_users": 3}
    # TorchRec's gauc agrees where no positive ties a negative
    from torchrec.metrics.gauc import get_auc_states

    g = torch.Generator().manual_seed(2)
    lengths = [5, 8, 3, 6]
    preds = torch.rand(1, sum(lengths), generator=g)
    labels = (torch.rand(1, sum(lengths), generator=g) > 0.5).float()
    theirs = get_auc_states(labels, preds, torch.ones_like(preds), torch.tensor(lengths))
    users = np.repeat(np.arange(4), lengths)
    total, n = user_auc_sums(users, preds.numpy().reshape(-1), labels.numpy().reshape(-1))
    assert n == int(theirs["num_samples"].item())
    assert total == pytest.approx(theirs["auc_sum"].item(), abs=1e-6)


def test_rank_shares_sum_to_the_one_rank_numbers(monkeypatch) -> None:
    """The reduction's arithmetic in one process: each simulated rank's sums over its share, added, are one rank's."""
    from torchrec_kd.training import retrieval_eval as re_

    scores, corpus, users, fns = _world(n_users=7)
    cand = topk_excluding(scores, users.seen, 4)
    one = evaluate_retrieval(*fns, users, corpus, ks=[1, 3], batch_users=3)
    one_ranker = evaluate_ranker_on_candidates(_ranker(scores), users, corpus, cand, ks=[1, 3],
                                               keys=["user_id", "item_id"], batch_rows=8)
    means = re_._means
    monkeypatch.setattr(re_, "_means", lambda sums: dict(sums))  # each simulated rank returns its raw sums
    monkeypatch.setattr(re_, "_all_reduce_sums", lambda sums, keys, device, collective=True: {k: sums[k] for k in keys})
    shares, calls = [], []
    for rank in (0, 1):
        monkeypatch.setattr(re_, "_rank_world", lambda collective=True, rank=rank: (rank, 2))
        counting = lambda dense, kjt, rank=rank: (calls.append(rank), fns[0](dense, kjt))[1]  # noqa: E731
        shares.append((evaluate_retrieval(counting, fns[1], fns[2], users, corpus, ks=[1, 3], batch_users=3),
                       evaluate_ranker_on_candidates(_ranker(scores), users, corpus, cand, ks=[1, 3],
                                                     keys=["user_id", "item_id"], batch_rows=8)))
    assert calls.count(0) == calls.count(1) == 2  # 4 users each (rank 1: 3 + 1 padding): the same calls on every rank
    assert [s[0]["users"] for s in shares] == [4, 3]
    for i, expected in enumerate((one, one_ranker)):
        added = {k: shares[0][i][k] + shares[1][i][k] for k in shares[0][i] if k != "candidates"}
        got = means(added)
        assert got == pytest.approx({k: v for k, v in expected.items() if k != "candidates"}, abs=1e-12)


def _on_ranks(rank: int, world_size: int) -> dict:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    scores, corpus, users, fns = _world(n_users=7)  # 7 users: 4 on rank 0, 3 + 1 padding on rank 1
    cand = topk_excluding(scores, users.seen, 4)
    acc = GaucAccumulator()
    lo, hi = (0, 11) if rank == 0 else (11, 20)  # user 3's rows are on both ranks
    rng = np.random.default_rng(3)
    u, s, y = rng.integers(0, 6, 20), rng.random(20), rng.integers(0, 2, 20)
    acc.update(torch.tensor(u[lo:hi]), torch.tensor(s[lo:hi]), torch.tensor(y[lo:hi]))
    return {"retrieval": evaluate_retrieval(*fns, users, corpus, ks=[1, 3], batch_users=3),
            "ranker": evaluate_ranker_on_candidates(_ranker(scores), users, corpus, cand, ks=[1, 3],
                                                    keys=["user_id", "item_id"], batch_rows=8),
            "gauc": acc.compute(), "gauc_one": user_auc_sums(u, s, y)}


@pytest.mark.slow
def test_two_ranks_give_the_one_rank_numbers(tmp_path) -> None:
    scores, corpus, users, fns = _world(n_users=7)
    one = evaluate_retrieval(*fns, users, corpus, ks=[1, 3], batch_users=3)
    cand = topk_excluding(scores, users.seen, 4)
    one_ranker = evaluate_ranker_on_candidates(_ranker(scores), users, corpus, cand, ks=[1, 3],
                                               keys=["user_id", "item_id"], batch_rows=8)
    results = run_ranks(_on_ranks, 2, tmp_path, timeout=120)
    for r in results:
        assert r["retrieval"] == pytest.approx(one, abs=1e-12)
        assert r["ranker"] == pytest.approx(one_ranker, abs=1e-12)
        total, n = r["gauc_one"]
        assert r["gauc"] == {"gauc": pytest.approx(total / n), "gauc_users": n}
    assert one["users"] == 7


# ---------------------------------------------------------------- summary and report


def _entry(auc: float, recall: float, ndcg: float, **extra) -> dict:
    return {"auc": auc, "ne": 0.9, "best_step": 10,
            "retrieval": {"recall@20": recall, "ndcg@20": ndcg, "mrr": recall / 2, "users": 50, **extra}}


def test_summary_retrieval_block() -> None:
    per_seed = {s: {"teacher": _entry(0.80, 0.30 + s / 100, 0.20, candidates=100),
                    "student": _entry(0.70, r, n), "distilled": _entry(0.72, r + dr, n + dn)}
                for s, (r, n, dr, dn) in enumerate([(0.10, 0.05, 0.02, 0.01), (0.12, 0.06, 0.04, -0.01),
                                                     (0.11, 0.07, 0.03, 0.00)])}
    out = summarize(per_seed)["retrieval"]
    assert list(out)[:2] == ["recall@20", "ndcg@20"] and "mrr" in out and "users" not in out
    rec = out["recall@20"]
    assert rec["models"]["student"]["mean"] == pytest.approx(0.11)
    assert rec["models"]["student"]["std"] == pytest.approx(0.01)  # 0.10, 0.12, 0.11
    assert rec["models"]["teacher"]["candidates"] == 100
    # distilled − student alone per seed: 0.02, 0.04, 0.03 -> mean 0.03, sd 0.01, t(2) = 4.303
    half = 4.303 * 0.01 / math.sqrt(3)
    gain = rec["kd_gain"]
    assert gain["mean"] == pytest.approx(0.03)
    assert gain["ci95"] == pytest.approx([0.03 - half, 0.03 + half])
    assert gain["significant"] is True
    # NDCG: 0.01, -0.01, 0.00 -> mean 0, the interval includes 0
    assert out["ndcg@20"]["kd_gain"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert out["ndcg@20"]["kd_gain"]["significant"] is False
    assert out["recall@20"]["teacher_gap"]["mean"] == pytest.approx(0.31 - 0.11)
    text = summary_markdown(summarize(per_seed), "x")
    assert "## Retrieval" in text and "| student | 0.1100 | 0.0100 |" in text
    assert "distilled − student alone: recall@20 +0.0300" in text and "100 candidates" in text
    # one seed: no interval, never significant
    one = summarize({0: per_seed[0]})["retrieval"]["recall@20"]["kd_gain"]
    assert one["ci95"] is None and one["significant"] is False
    # entries without "retrieval": no block
    assert "retrieval" not in summarize({0: {"student": {"auc": 0.7, "ne": 0.9}, "distilled": {"auc": 0.71, "ne": 0.9}}})


def test_report_retrieval_table() -> None:
    metrics = {"student": _entry(0.7, 0.1, 0.05), "distilled": _entry(0.72, 0.125, 0.0625),
               "teacher": {"auc": 0.8, "ne": 0.8}}
    lines = retrieval_table(metrics)
    assert lines[0] == "## Retrieval"
    assert "| student | 0.1000 | 0.0500 | 0.0500 | 50 | the whole corpus |" in lines
    assert "| distilled | 0.1250 | 0.0625 | 0.0625 | 50 | the whole corpus |" in lines
    assert not any(line.startswith("| teacher") for line in lines)
    assert retrieval_table({"student": {"auc": 0.7}}) == []
