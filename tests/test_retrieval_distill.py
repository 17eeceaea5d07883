"""Listwise retrieval distillation: pair rows, logQ, inbatch_kd toward the teacher's order, topk_rd, the hook."""

from __future__ import annotations

import math
from typing import Dict, List

import pytest
import torch
from torch import Tensor, nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import LossTermConfig
from torchrec_kd.distill.candidates import CandidateSpec, first_ids, pair_batch
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import CandidateScores, KDInputs, build_loss
from torchrec_kd.losses.retrieval_terms import InBatchArgs, InBatchKD, TopKArgs, TopKRD

USER_KEYS = ["user_id", "hist"]
ITEM_KEYS = ["item_id", "genre"]


def kjt_of(rows: List[Dict[str, List[int]]], keys: List[str]) -> KeyedJaggedTensor:
    """A KJT from per-row dicts of ids (test helper)."""
    values = [v for k in keys for r in rows for v in r[k]]
    lengths = [len(r[k]) for k in keys for r in rows]
    return KeyedJaggedTensor(keys=keys, values=torch.tensor(values, dtype=torch.long),
                             lengths=torch.tensor(lengths, dtype=torch.int32), stride=len(rows))


def rows_of(kjt: KeyedJaggedTensor) -> List[Dict[str, List[int]]]:
    """Per-row dicts of ids of a KJT."""
    out: List[Dict[str, List[int]]] = [{} for _ in range(kjt.stride())]
    for key, jt in kjt.to_dict().items():
        for i, ids in enumerate(jt.to_dense()):
            out[i][key] = ids.tolist()
    return out


ROWS = [  # 3 (user, item) rows; ctx belongs to neither side (taken from the user's row)
    {"user_id": [0], "hist": [7, 8], "ctx": [1], "item_id": [10], "genre": [1, 2]},
    {"user_id": [1], "hist": [], "ctx": [2], "item_id": [11], "genre": [3]},
    {"user_id": [2], "hist": [9], "ctx": [3], "item_id": [12], "genre": []},
]
KEYS = ["user_id", "hist", "ctx", "item_id", "genre"]


def batch_of(rows: List[Dict[str, List[int]]], labels: List[float]) -> Batch:
    dense = torch.arange(len(rows), dtype=torch.float).unsqueeze(1) * 10.0
    return Batch(dense_features=dense, sparse_features=kjt_of(rows, KEYS), labels=torch.tensor(labels))


def test_pair_batch_builds_each_user_item_row() -> None:
    batch = batch_of(ROWS, [1.0, 0.0, 1.0])
    items = kjt_of([{"item_id": [20], "genre": [5, 6, 7]}, {"item_id": [21], "genre": [8]}], ITEM_KEYS)
    pool = [{k: r[k] for k in ITEM_KEYS} for r in ROWS] + rows_of(items)
    cand = torch.tensor([[0, 1, 3], [2, 0, 4], [1, 1, 0]])
    pairs = pair_batch(batch, USER_KEYS, ITEM_KEYS, cand, items)
    assert pairs.sparse_features.keys() == KEYS and pairs.sparse_features.stride() == 9
    got = rows_of(pairs.sparse_features)
    for i in range(3):
        for c in range(3):
            want = {k: ROWS[i][k] for k in ("user_id", "hist", "ctx")} | pool[int(cand[i, c])]
            assert got[i * 3 + c] == want, (i, c)
    assert pairs.dense_features[:, 0].tolist() == [0.0] * 3 + [10.0] * 3 + [20.0] * 3
    assert pairs.labels.shape == (9,) and not pairs.labels.any()


class TableRanker(nn.Module):
    """A 'teacher' ranker: logit = table[user_id, item_id] of each row (reads pair rows like any ranker)."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, dense: Tensor, kjt: KeyedJaggedTensor) -> Tensor:
        return self.table[first_ids(kjt, "user_id"), first_ids(kjt, "item_id") - 10] + 0.0 * dense.sum(1)


class TinyTowers(nn.Module):
    """Stand-in two-tower: free user / item vectors looked up by id (the three tower methods)."""

    def __init__(self, users: Tensor, items: Tensor) -> None:
        super().__init__()
        self.users, self.items = nn.Parameter(users.clone()), nn.Parameter(items.clone())

    def user_embedding(self, dense: Tensor, kjt: KeyedJaggedTensor) -> Tensor:
        return self.users[first_ids(kjt, "user_id")]

    def item_embedding(self, kjt: KeyedJaggedTensor) -> Tensor:
        return self.items[first_ids(kjt, "item_id") - 10]

    def score_matrix(self, u: Tensor, v: Tensor) -> Tensor:
        return u @ v.T

    def forward(self, dense: Tensor, kjt: KeyedJaggedTensor) -> Tensor:
        return (self.user_embedding(dense, kjt) * self.item_embedding(kjt)).sum(1)


# The teacher orders the 3 items differently for each user; the student starts from a small random guess.
TEACHER = torch.tensor([[3.0, 1.0, -1.0], [-1.0, 3.0, 1.0], [1.0, -1.0, 3.0]])
SPEC = CandidateSpec(USER_KEYS, ITEM_KEYS, "item_id")


def kendall(a: Tensor, b: Tensor) -> float:
    """Mean Kendall tau of the rows of a and b."""
    n = a.size(1)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    taus = [sum(float(torch.sign((a[r, i] - a[r, j]) * (b[r, i] - b[r, j]))) for i, j in pairs) / len(pairs)
            for r in range(a.size(0))]
    return sum(taus) / len(taus)


def distill_model(terms: List[LossTermConfig], spec=SPEC, student=None) -> DistillationModel:
    torch.manual_seed(0)
    student = student or TinyTowers(torch.randn(3, 4) * 0.1, -(TEACHER.T @ torch.randn(3, 4)) * 0.05)
    return DistillationModel([TableRanker(TEACHER)], student, build_loss(terms), candidates=spec)


def test_one_inbatch_kd_step_moves_the_students_order_toward_the_teachers() -> None:
    model = distill_model([LossTermConfig("inbatch_kd", 1.0, temperature=1.0, args={"logq_correction": False})])
    student = model.student
    batch = batch_of(ROWS, [1.0, 1.0, 1.0])
    before = student.score_matrix(student.users, student.items).detach()
    loss, (_, s_diag, t_diag, _) = model(batch)
    assert torch.equal(t_diag, TEACHER.diagonal())  # pair (i, i) is row i itself
    assert torch.allclose(s_diag, before.diagonal())
    loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            p -= 2.0 * p.grad
    after = student.score_matrix(student.users, student.items).detach()
    assert kendall(after, TEACHER) > kendall(before, TEACHER)
    assert model(batch)[0].item() < loss.item()


def scores(student: Tensor, teacher: Tensor, ids=(10, 11, 12)) -> KDInputs:
    b = student.size(0)
    c = CandidateScores(student, teacher, torch.tensor(ids[:b]))
    return KDInputs(student.diagonal(), teacher.diagonal(), torch.ones(b), candidates=c)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_inbatch_kd_is_minimal_where_the_student_matches_the_teacher(t: float) -> None:
    term = InBatchKD(t, InBatchArgs(logq_correction=False))
    at = TEACHER.clone().requires_grad_(True)
    value = term.compute(scores(at, TEACHER))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6) and at.grad.abs().max() < 1e-6
    # a constant shift per user does not matter (a softmax); any other change does
    assert term.compute(scores(TEACHER + torch.tensor([[1.0], [2.0], [-3.0]]), TEACHER)).item() < 1e-6
    torch.manual_seed(1)
    for _ in range(5):
        assert term.compute(scores(TEACHER + torch.randn(3, 3), TEACHER)).item() > 1e-3


def test_logq_correction_subtracts_log_q() -> None:
    term = InBatchKD(1.0, InBatchArgs(logq_correction=True))
    s = torch.zeros(3, 3, requires_grad=True)
    # item 10 twice, 11 once: p = (2/3, 2/3, 1/3), q = B p = (2, 2, 1)
    got = term.student_logits(CandidateScores(s, TEACHER, torch.tensor([10, 10, 11])))
    assert torch.allclose(got.detach(), -torch.log(torch.tensor([2.0, 2.0, 1.0])).expand(3, 3))
    # the counts stream on: three more rows of item 11 -> p(10) = 2/6, p(11) = 4/6
    got = term.student_logits(CandidateScores(s, TEACHER, torch.tensor([11, 11, 11])))
    assert torch.allclose(got.detach(), torch.full((3, 3), -math.log(3 * 4 / 6)))
    # random corpus items: q = R / N
    mixed = InBatchKD(1.0, InBatchArgs(negatives="inbatch+random", num_random=2, logq_correction=True))
    s5 = torch.zeros(3, 5, requires_grad=True)
    got = mixed.student_logits(CandidateScores(s5, torch.zeros(3, 5), torch.tensor([1, 2, 3]), 2, 10))
    assert torch.allclose(got.detach()[0], torch.tensor([0.0, 0.0, 0.0, -math.log(0.2), -math.log(0.2)]))
    # with the correction the loss is minimal at s = t + log q, not at s = t
    fresh = InBatchKD(1.0, InBatchArgs(logq_correction=True))
    shifted = TEACHER + torch.log(torch.tensor([2.0, 2.0, 1.0]))
    assert fresh.compute(scores(shifted.requires_grad_(True), TEACHER, (10, 10, 11))).item() < 1e-6


def test_anchors_positive_counts_only_positive_rows() -> None:
    term = InBatchKD(1.0, InBatchArgs(logq_correction=False, anchors="positive"))
    s = TEACHER.clone()
    s[1] = -TEACHER[1]  # only user 1 disagrees with the teacher
    x = scores(s, TEACHER)
    x.labels = torch.tensor([1.0, 0.0, 1.0])
    assert term.compute(x).item() < 1e-6
    x.labels = torch.tensor([1.0, 1.0, 1.0])
    assert term.compute(x).item() > 0.1


def test_topk_rd_weights_and_value() -> None:
    term = TopKRD(1.0, TopKArgs(k=2, lam=1.0, negatives="inbatch+random", num_random=2))
    w = term.weights(2, torch.float64, torch.device("cpu"))
    assert torch.allclose(w, torch.tensor([math.exp(-1), math.exp(-2)], dtype=torch.float64) / (math.exp(-1) + math.exp(-2)))
    teacher = torch.tensor([[9.0, 1.0, 3.0, 2.0], [5.0, 0.0, 1.0, 4.0]])  # own items (columns 0, 1) excluded
    student = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    c = CandidateScores(student, teacher, torch.tensor([1, 2]), 2, 10)
    x = KDInputs(student.diagonal(), teacher.diagonal(), torch.ones(2), candidates=c)
    ls = torch.nn.functional.logsigmoid
    # row 0's teacher top-2 besides itself: columns 2, 3; row 1's: 0, 3
    want = -(w[0] * ls(torch.tensor(2.0)) + w[1] * ls(torch.tensor(3.0))
             + w[0] * ls(torch.tensor(1.0)) + w[1] * ls(torch.tensor(4.0))) / 2
    assert term.compute(x).item() == pytest.approx(float(want), rel=1e-5)


def test_random_negatives_reach_teacher_and_student() -> None:
    corpus = kjt_of([{"item_id": [10 + k], "genre": [k]} for k in range(3)], ITEM_KEYS)
    spec = CandidateSpec(USER_KEYS, ITEM_KEYS, "item_id", corpus)
    model = distill_model([LossTermConfig("inbatch_kd", 1.0, args={"negatives": "inbatch+random", "num_random": 4}),
                           LossTermConfig("topk_rd", 0.5, args={"negatives": "inbatch+random", "num_random": 4})],
                          spec)
    student, teacher, c = model.candidates(batch_of(ROWS, [1.0, 0.0, 1.0]))
    assert c.student.shape == c.teacher.shape == (3, 7) and c.num_random == 4 and c.corpus_size == 3
    assert torch.equal(c.teacher[:, :3], TEACHER)  # in-batch: user i x item j
    for col in range(3, 7):  # a random corpus item: the same item's column of the table for every user
        k = int(torch.argmin((TEACHER[0] - c.teacher[0, col]).abs()))
        assert torch.allclose(c.teacher[:, col], TEACHER[:, k])  # the same item for every user
    loss, _ = model(batch_of(ROWS, [1.0, 0.0, 1.0]))
    loss.backward()
    assert student.requires_grad and model.student.items.grad.abs().sum() > 0


def test_refusals_are_one_line_config_errors() -> None:
    term = [LossTermConfig("inbatch_kd", 1.0)]
    with pytest.raises(ConfigError, match="data.retrieval"):
        distill_model(term, spec=None)
    with pytest.raises(ConfigError, match="towers"):
        distill_model(term, student=nn.Linear(1, 1))
    with pytest.raises(ConfigError, match="different numbers of random items"):
        distill_model([LossTermConfig("inbatch_kd", 1.0, args={"negatives": "inbatch+random", "num_random": 3}),
                       LossTermConfig("topk_rd", 1.0, args={"negatives": "inbatch+random", "num_random": 2})])
    with pytest.raises(ConfigError, match="no item corpus"):
        distill_model([LossTermConfig("inbatch_kd", 1.0, args={"negatives": "inbatch+random", "num_random": 2})])
    with pytest.raises(ValueError, match="num_random"):
        build_loss([LossTermConfig("inbatch_kd", 1.0, args={"num_random": 3})])


def test_ranking_runs_build_no_candidate_step() -> None:
    model = DistillationModel([TableRanker(TEACHER)], TinyTowers(torch.zeros(3, 2), torch.zeros(3, 2)),
                              build_loss([LossTermConfig("soft_bce", 1.0)]))
    assert model.candidates is None


def test_with_the_two_tower_model() -> None:
    two_tower = pytest.importorskip("torchrec_kd.models.two_tower")
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    tables = [EmbeddingBagConfig(num_embeddings=32, embedding_dim=4, name=f"t_{k}", feature_names=[k])
              for k in USER_KEYS + ITEM_KEYS]
    torch.manual_seed(0)
    student = two_tower.TwoTower(EmbeddingBagCollection(tables=tables), USER_KEYS, ITEM_KEYS, 1, [8, 4], [8, 4])
    teacher = TableRanker(TEACHER)
    model = DistillationModel([teacher], student, build_loss([LossTermConfig("inbatch_kd", 1.0)]), candidates=SPEC)
    batch = batch_of(ROWS, [1.0, 0.0, 1.0])
    loss, (_, s_diag, _, _) = model(batch)
    assert torch.allclose(s_diag, student(batch.dense_features, batch.sparse_features), atol=1e-6)
    loss.backward()
    assert student.user_tower.out.weight.grad.abs().sum() > 0


def test_spec_from_data_reads_the_retrieval_declaration_and_corpus() -> None:
    import numpy as np

    from torchrec_kd.config.data_sources import RetrievalDataConfig
    from torchrec_kd.data.retrieval import ItemCorpus
    from torchrec_kd.data.rows import Jagged, RowBlock
    from torchrec_kd.distill.candidates import spec_from_data

    class Log:
        retrieval = RetrievalDataConfig(user_features=["user_id"], item_features=["item_id", "genre"], history_length=5)

        def corpus(self) -> ItemCorpus:
            block = RowBlock(np.zeros((2, 0), np.float32), np.zeros(2, np.float32),
                             [Jagged.from_ids(np.array([10, 11])), Jagged.from_lengths(np.array([1, 2, 3]), np.array([0, 3]))])
            return ItemCorpus(np.array([10, 11]), block, ["item_id", "genre"])

    spec = spec_from_data(Log())
    assert list(spec.user_keys) == ["user_id", "user_history"] and list(spec.item_keys) == ["item_id", "genre"]
    assert rows_of(spec.corpus) == [{"item_id": [10], "genre": []}, {"item_id": [11], "genre": [1, 2, 3]}]
    assert spec_from_data(object()) is None


def test_inbatch_softmax_is_the_cross_entropy_of_each_positive_rows_own_item() -> None:
    from torchrec_kd.losses.retrieval_terms import InBatchSoftmax, SoftmaxArgs

    term = InBatchSoftmax(1.0, SoftmaxArgs(logq_correction=False))
    s = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])
    x = KDInputs(s.diagonal(), s.diagonal(), torch.tensor([1.0, 1.0, 0.0]),
                 candidates=CandidateScores(s, None, torch.tensor([10, 11, 12])))
    want = -(torch.log_softmax(s[0], 0)[0] + torch.log_softmax(s[1], 0)[1]) / 2  # row 2 is no positive
    assert term.compute(x).item() == pytest.approx(float(want), rel=1e-6)
    # an accidental hit: row 1's item is also column 0's -> left out of row 1's softmax (and row 0's)
    x.candidates = CandidateScores(s, None, torch.tensor([11, 11, 12]))
    want = -(torch.log_softmax(s[0, [0, 2]], 0)[0] + torch.log_softmax(s[1, [1, 2]], 0)[0]) / 2
    assert term.compute(x).item() == pytest.approx(float(want), rel=1e-6)
    # a gradient step raises each positive row's own item above the others
    s = torch.zeros(3, 3, requires_grad=True)
    term.compute(KDInputs(s.diagonal(), s.diagonal(), torch.ones(3),
                          candidates=CandidateScores(s, None, torch.tensor([1, 2, 3])))).backward()
    assert (s.grad.diagonal() < 0).all() and (s.grad.sum(1).abs() < 1e-6).all()


def test_the_teacher_scores_only_the_capped_positive_anchors() -> None:
    args = {"logq_correction": False, "anchors": "positive", "max_anchors": 1}
    model = distill_model([LossTermConfig("inbatch_kd", 1.0, args=args)])
    torch.manual_seed(3)
    student, teacher, c = model.candidates(batch_of(ROWS, [1.0, 0.0, 1.0]))
    assert c.teacher.shape == (1, 3) and int(c.anchor_rows[0]) in (0, 2)  # one of the two positive rows
    assert torch.equal(c.teacher[0], TEACHER[int(c.anchor_rows[0])])
    assert torch.equal(teacher, TEACHER.diagonal())  # every row's own pair is still scored
    # the term reads the anchor's student row against the teacher's
    term = model.loss_fn.terms[0]
    s, t, labels, own = c.taught(torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(s, c.student[c.anchor_rows]) and torch.equal(own, c.anchor_rows)
    assert term.compute(KDInputs(student, teacher, torch.tensor([1.0, 0.0, 1.0]), candidates=c)).item() >= 0


def test_tower_losses_take_only_label_terms_and_need_retrieval_data(tmp_path) -> None:
    from tests.conftest import REPO, TINY
    from torchrec_kd.config import load_config
    from torchrec_kd.core.fingerprint import step_fingerprint
    from torchrec_kd.losses import check_tower_losses

    with pytest.raises(ConfigError, match="train.tower_losses\\[0\\]: 'inbatch_kd' is not a label-only"):
        check_tower_losses([LossTermConfig("inbatch_kd", 1.0)], "x.yaml")
    with pytest.raises(ConfigError, match="train.tower_losses\\[0\\].name: unknown loss 'inbatch_softmx'; did you mean"):
        check_tower_losses([LossTermConfig("inbatch_softmx", 1.0)], "x.yaml")
    check_tower_losses([LossTermConfig("inbatch_softmax", 1.0)], "x.yaml")
    with pytest.raises(ConfigError, match="need data.retrieval"):
        load_config(TINY, ["train.tower_losses=[{name: inbatch_softmax, weight: 1.0}]"])
    # no tower objective: a ranking run's fingerprint is the one it always had (no new key)
    cfg = load_config(TINY, [f"output_dir={tmp_path}"])
    assert "tower_losses" not in step_fingerprint(cfg, "student")["inputs"]["train"]
    cfg = load_config(REPO / "configs" / "retrieval_synthetic.yaml", [f"output_dir={tmp_path}"])
    assert step_fingerprint(cfg, "student")["inputs"]["train"]["tower_losses"][0]["name"] == "inbatch_softmax"
    # a DLRM teacher ignores the tower objective: changing it does not retrain the teacher
    assert "tower_losses" not in step_fingerprint(cfg, "teacher")["inputs"]["train"]
    towers = load_config(REPO / "configs" / "retrieval_synthetic.yaml", [f"output_dir={tmp_path}", "teacher.arch=two_tower",
                                                                          "teacher.args={}"])
    assert "tower_losses" in step_fingerprint(towers, "teacher")["inputs"]["train"]


def test_an_inbatch_teacher_term_beside_a_random_label_term_scores_only_in_batch_columns() -> None:
    corpus = kjt_of([{"item_id": [10 + k], "genre": [k]} for k in range(3)], ITEM_KEYS)
    spec = CandidateSpec(USER_KEYS, ITEM_KEYS, "item_id", corpus)
    model = distill_model([LossTermConfig("inbatch_kd", 1.0, args={"logq_correction": False}),
                           LossTermConfig("inbatch_softmax", 1.0, args={"negatives": "inbatch+random",
                                                                         "num_random": 4})], spec)
    _, teacher, c = model.candidates(batch_of(ROWS, [1.0, 0.0, 1.0]))
    # the student scores 3 + 4 columns (its label term reads them); the teacher only the 3 in-batch ones
    assert c.student.shape == (3, 7) and c.teacher.shape == (3, 3)
    assert torch.equal(c.teacher, TEACHER) and torch.equal(teacher, TEACHER.diagonal())
    # the KD term compares the in-batch columns only: a student equal to the teacher there costs nothing
    kd = model.loss_fn.terms[0]
    same = CandidateScores(torch.cat([TEACHER, torch.randn(3, 4)], 1), TEACHER, c.item_ids, 4, 3)
    assert kd.compute(KDInputs(TEACHER.diagonal(), TEACHER.diagonal(), torch.ones(3), candidates=same)).item() < 1e-6


def test_a_random_item_equal_to_the_rows_own_is_no_negative_of_its_softmax() -> None:
    from torchrec_kd.losses.retrieval_terms import InBatchSoftmax, SoftmaxArgs

    term = InBatchSoftmax(1.0, SoftmaxArgs(negatives="inbatch+random", num_random=2, logq_correction=False))
    s = torch.tensor([[2.0, 0.0, 5.0, 1.0], [0.0, 1.0, 1.0, 5.0]])
    x = KDInputs(s.diagonal(), s.diagonal(), torch.ones(2),
                 candidates=CandidateScores(s, None, torch.tensor([10, 11]), 2, 9, random_ids=torch.tensor([10, 12])))
    # random column 2 holds row 0's own item: out of row 0's softmax; row 1 keeps both random columns
    want = -(torch.log_softmax(s[0, [0, 1, 3]], 0)[0] + torch.log_softmax(s[1], 0)[1]) / 2
    assert term.compute(x).item() == pytest.approx(float(want), rel=1e-6)


def test_offline_distillation_with_a_tower_label_term_reads_the_teacher_logits_of_the_batch() -> None:
    from torchrec_kd.distill.scored_batch import ScoredBatch

    torch.manual_seed(0)
    student = TinyTowers(torch.randn(3, 4) * 0.1, torch.randn(3, 4) * 0.1)
    model = DistillationModel([], student, build_loss([LossTermConfig("soft_bce", 1.0),
                                                       LossTermConfig("inbatch_softmax", 1.0)]), candidates=SPEC)
    plain = batch_of(ROWS, [1.0, 0.0, 1.0])
    given = torch.tensor([4.0, -4.0, 4.0])
    scored = ScoredBatch(plain.dense_features, plain.sparse_features, plain.labels, given)
    _, (_, s_diag, t_diag, _) = model(scored)
    assert torch.equal(t_diag, given) and not torch.allclose(s_diag, given)  # not the student's own logits


def test_without_a_teacher_candidate_term_the_teacher_scores_only_each_rows_own_pair() -> None:
    model = distill_model([LossTermConfig("soft_bce", 1.0), LossTermConfig("inbatch_softmax", 1.0)])
    calls = []
    teacher = model.candidates._models["teachers"][0]
    original = teacher.forward
    teacher.forward = lambda dense, kjt: (calls.append(kjt.stride()), original(dense, kjt))[1]
    _, t_diag, c = model.candidates(batch_of(ROWS, [1.0, 0.0, 1.0]))
    assert calls == [3] and c.teacher is None and torch.equal(t_diag, TEACHER.diagonal())
    with pytest.raises(ConfigError, match="max_anchors caps the rows the teacher scores"):
        distill_model([LossTermConfig("inbatch_softmax", 1.0, args={"max_anchors": 4})])
