"""Candidates for listwise retrieval distillation: (user_i, item_j) pair rows and both models' scores on them.

A ranker teacher scores rows, not users against items, so each user i is paired with every
candidate item j as a row of its own: row i's user features (and every feature that is
neither a user's nor an item's — the request's context — and row i's dense features, which
are user-side in a retrieval run) joined with candidate j's item features.
:func:`pair_batch` builds the B*C rows with jagged index gathers (no loop over rows).
Pair ``(i, i)`` is row i itself, so the teacher's and the student's pointwise logits are the
diagonal of the candidate matrices: each model's embedding tables are called once per step,
on the candidate work only (TorchRec's train pipeline allows one call per sharded module).

:class:`CandidateScorer` is that step (DistillationModel calls it when a loss term requires
``candidates``): the frozen teachers on the pair rows (no grad), the student's towers on the
rows (``user_embedding``, ``item_embedding``, ``score_matrix``), R random corpus items if the
terms ask for them. It holds the models by reference, not as submodules, so TorchRec's
pipeline tracer keeps it a leaf: the embedding lookups inside run unpipelined (a sharded
module called from a leaf does its own input distribution).

Example::

    pairs = pair_batch(batch, ["user_id", "user_history"], ["item_id", "genres"],
                       torch.arange(B).expand(B, B))          # B*B rows: user i x item j
    teacher_logits = teacher(pairs.dense_features, pairs.sparse_features).view(B, B)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import CandidateScores, WeightedKDLoss
from torchrec_kd.models.io import ModelIO
from torchrec_kd.models.two_tower import in_order  # noqa: F401  (re-exported: the callers pad one tower's keys)

TOWER_METHODS = ("user_embedding", "item_embedding", "score_matrix")


def take_rows(values: Tensor, lengths: Tensor, idx: Tensor,
              weights: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Rows ``idx`` of one jagged feature (repeats allowed), vectorised.

    Args:
        values (Tensor): the feature's ids, rows back to back.
        lengths (Tensor): [n] ids per row.
        idx (Tensor): [m] int64 rows to take, in order.
        weights (Optional[Tensor]): per-id weights, gathered alike.

    Returns:
        Tuple[Tensor, Tensor, Optional[Tensor]]: the new values, lengths [m] and weights.
    """
    lengths = lengths.long()
    starts = torch.cumsum(lengths, 0) - lengths
    new_lengths = lengths[idx]
    new_starts = torch.cumsum(new_lengths, 0) - new_lengths
    total = int(new_lengths.sum())
    # position k of the output comes from starts[row] + (k - new_starts[row]) of its row
    pos = torch.arange(total, device=values.device) + torch.repeat_interleave(starts[idx] - new_starts, new_lengths,
                                                                             output_size=total)
    return values[pos], new_lengths, None if weights is None else weights[pos]


def pair_batch(batch: Batch, user_keys: Sequence[str], item_keys: Sequence[str], cand_idx: Tensor,
               items: Optional[KeyedJaggedTensor] = None) -> Batch:
    """The B*C rows ``(user of row i, item of candidate cand_idx[i, c])``, row-major (i, then c).

    Args:
        batch (Batch): B rows: dense [B, D], sparse KJT, labels.
        user_keys (Sequence[str]): the user features (taken from row i; so is any key of neither side).
        item_keys (Sequence[str]): the item features (taken from the candidate).
        cand_idx (Tensor): [B, C] int64: candidate ``j < B`` is row j's item, ``j >= B`` row ``j - B`` of ``items``.
        items (Optional[KeyedJaggedTensor]): extra candidates (e.g. random corpus items) with the item keys.

    Returns:
        Batch: B*C rows with the batch's keys in its order, dense ``dense[i]``, zero labels.
    """
    b, c = cand_idx.shape
    user_rows = torch.arange(b, device=cand_idx.device).repeat_interleave(c)
    return pair_rows(batch, item_keys, user_rows, cand_idx.reshape(-1).long(), items)


def pair_rows(batch: Batch, item_keys: Sequence[str], user_rows: Tensor, cand_rows: Tensor,
              items: Optional[KeyedJaggedTensor] = None) -> Batch:
    """The M rows ``(user of row user_rows[m], item of candidate cand_rows[m])``.

    Args:
        batch (Batch): B rows: dense [B, D], sparse KJT, labels.
        item_keys (Sequence[str]): the item features (taken from the candidate; every other key from the user's row).
        user_rows (Tensor): [M] int64 batch row of each pair's user.
        cand_rows (Tensor): [M] int64 candidate: ``j < B`` is row j's item, ``j >= B`` row ``j - B`` of ``items``.
        items (Optional[KeyedJaggedTensor]): extra candidates (e.g. random corpus items) with the item keys.

    Returns:
        Batch: M rows with the batch's keys in its order, dense ``dense[user_rows]``, zero labels.
    """
    kjt = batch.sparse_features
    b, m = kjt.stride(), user_rows.numel()
    jts = kjt.to_dict()
    extra = items.to_dict() if items is not None else {}
    item_set = set(item_keys)
    values: List[Tensor] = []
    lengths: List[Tensor] = []
    weights: List[Tensor] = []
    weighted = kjt.weights_or_none() is not None
    for key in kjt.keys():  # a loop over features, not rows
        jt = jts[key]
        if key in item_set:
            v, ln, w = jt.values(), jt.lengths(), jt.weights_or_none()
            if key in extra:  # the pool: the batch's items, then the extra ones
                v, ln = torch.cat([v, extra[key].values()]), torch.cat([ln, extra[key].lengths().to(ln.dtype)])
                ew = extra[key].weights_or_none()
                if w is not None:
                    w = torch.cat([w, ew if ew is not None else torch.ones_like(extra[key].values(), dtype=w.dtype)])
            elif items is not None and m and int(cand_rows.max()) >= b:
                raise ValueError(f"pair_batch: the extra items have no feature '{key}' (item keys {list(item_keys)})")
            out = take_rows(v, ln, cand_rows, w)
        else:
            out = take_rows(jt.values(), jt.lengths(), user_rows, jt.weights_or_none())
        values.append(out[0])
        lengths.append(out[1].to(kjt.lengths().dtype))
        if weighted:
            weights.append(out[2] if out[2] is not None else torch.ones_like(out[0], dtype=torch.float))
    pairs = KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths),
                              weights=torch.cat(weights) if weighted else None, stride=m)
    labels = batch.labels
    return Batch(dense_features=batch.dense_features[user_rows], sparse_features=pairs,
                 labels=labels.new_zeros((m,) + tuple(labels.shape[1:])))


def select_keys(kjt: KeyedJaggedTensor, keys: Sequence[str]) -> KeyedJaggedTensor:
    """The features ``keys`` of ``kjt`` (in that order) as a KJT of the same rows."""
    jts = kjt.to_dict()
    return KeyedJaggedTensor(keys=list(keys), values=torch.cat([jts[k].values() for k in keys]),
                             lengths=torch.cat([jts[k].lengths() for k in keys]), stride=kjt.stride())


def has_towers(model: nn.Module) -> bool:
    """Whether ``model`` has the two-tower methods (``user_embedding``, ``item_embedding``, ``score_matrix``)."""
    return all(callable(getattr(model, m, None)) for m in TOWER_METHODS)


@dataclass
class CandidateSpec:
    """What the candidate step needs from the run.

    Args:
        user_keys (Sequence[str]): user features (``data.retrieval.user_features`` plus ``user_history``).
        item_keys (Sequence[str]): item features (``data.retrieval.item_features``).
        item_id (str): the item-id feature (its first id is the row's item, for the logQ counts).
        corpus (Optional[KeyedJaggedTensor]): every corpus item's item features (random negatives), N rows.
    """

    user_keys: Sequence[str]
    item_keys: Sequence[str]
    item_id: str
    corpus: Optional[KeyedJaggedTensor] = None


def corpus_kjt(block: Any, names: Sequence[str]) -> KeyedJaggedTensor:
    """A corpus ``RowBlock``'s item features as one KJT of N rows (random negatives are drawn from it)."""
    values = [torch.from_numpy(j.values) for j in block.sparse]
    lengths = [torch.from_numpy(j.offsets[1:] - j.offsets[:-1]) for j in block.sparse]
    return KeyedJaggedTensor(keys=list(names), values=torch.cat(values).long(), lengths=torch.cat(lengths).int(),
                             stride=len(block))


def spec_from_data(data: Any) -> Optional[CandidateSpec]:
    """The run's :class:`CandidateSpec` from its data (None when the data declares no ``retrieval``).

    Args:
        data (Any): the run's data; a retrieval source has ``retrieval`` (``RetrievalDataConfig``) and ``corpus()``.

    Returns:
        Optional[CandidateSpec]: user keys (``user_history`` included), item keys, item id, corpus.
    """
    rcfg = getattr(data, "retrieval", None)
    if rcfg is None:
        return None
    corpus = data.corpus() if callable(getattr(data, "corpus", None)) else None
    return CandidateSpec(rcfg.user_keys(), list(rcfg.item_features), rcfg.item_id,
                         corpus_kjt(corpus.block, corpus.sparse_names) if corpus is not None else None)


@dataclass(frozen=True)
class CandidateSettings:
    """What one step's candidate work is, from every candidate term's args.

    Args:
        num_random (int): R random corpus items drawn a step (the terms with ``inbatch+random`` agree on R).
        teacher_random (int): the random items the teacher scores too (R when a teacher term reads them, else 0).
        positive_anchors (bool): the teacher scores only positive rows' candidates (every teacher term anchors there).
        max_anchors (int): at most this many anchor rows (a random subset) get the teacher's scores (0: all).
        taught (bool): a teacher term reads the candidate scores (else the teacher scores each row's own pair only).
    """

    num_random: int = 0
    teacher_random: int = 0
    positive_anchors: bool = False
    max_anchors: int = 0
    taught: bool = False  # a teacher term reads candidate scores (else the teacher scores each row's own pair only)


def candidate_settings(loss: WeightedKDLoss) -> CandidateSettings:
    """The step's :class:`CandidateSettings` (ConfigError if the terms ask for candidates one step cannot give).

    A term with ``negatives: inbatch`` reads the in-batch columns only, one with
    ``inbatch+random`` every column: both share one candidate list, so the terms that draw
    random items must draw as many.
    """
    terms = [t for t in loss.terms if "candidates" in t.requires]
    randoms = {t.cand_args.num_random for t in terms if t.cand_args.negatives == "inbatch+random"}
    if len(randoms) > 1:
        raise ConfigError(f"distill.losses: the candidate terms draw different numbers of random items "
                          f"{sorted(randoms)}; give them one args.num_random (one candidate list per step)")
    taught = [t for t in terms if t.needs_teacher]
    capped = [n for n, t in zip(loss.names, loss.terms) if "candidates" in t.requires and not t.needs_teacher
              and t.cand_args.max_anchors]
    if capped:
        raise ConfigError(f"{capped}: args.max_anchors caps the rows the teacher scores; a label-only term reads every "
                          "row: drop it there")
    caps = {t.cand_args.max_anchors for t in taught}
    if len(caps) > 1:
        raise ConfigError(f"distill.losses: the teacher's candidate terms ask for different args.max_anchors "
                          f"{sorted(caps)}; give them one (the teacher scores one set of anchor rows per step)")
    num_random = next(iter(randoms)) if randoms else 0
    teacher_random = num_random if any(t.cand_args.negatives == "inbatch+random" for t in taught) else 0
    return CandidateSettings(num_random, teacher_random,
                             bool(taught) and all(t.cand_args.anchors == "positive" for t in taught),
                             next(iter(caps)) if caps else 0, bool(taught))


def check_candidates(loss: WeightedKDLoss, student: nn.Module, spec: Optional[CandidateSpec],
                     teachers: Sequence[nn.Module], where: str = "distill.losses") -> CandidateSettings:
    """Refuse, in one line, a candidate term the run cannot feed; return the step's :class:`CandidateSettings`.

    Args:
        loss (WeightedKDLoss): the terms.
        student (nn.Module): the model whose towers score the candidates.
        spec (Optional[CandidateSpec]): the run's user / item keys and corpus (None: no data.retrieval).
        teachers (Sequence[nn.Module]): the online teachers (none: only label terms may ask for candidates).
        where (str): the config key the terms come from (for the message).

    Raises:
        ConfigError: no data.retrieval, a model without towers, a teacher term without an online teacher,
            random negatives without a corpus.
    """
    names = [n for n, t in zip(loss.names, loss.terms) if "candidates" in t.requires]
    if spec is None:
        raise ConfigError(f"{where}: {names} score users against candidate items and need data.retrieval "
                          "(user_features / item_features); set it or drop the term")
    if not has_towers(student):
        raise ConfigError(f"{where}: {names} need a model with towers (user_embedding, item_embedding, "
                          f"score_matrix, e.g. arch: two_tower); {type(student).__name__} has none")
    taught = [n for n, t in zip(loss.names, loss.terms) if "candidates" in t.requires and t.needs_teacher]
    if taught and not teachers:
        raise ConfigError(f"{where}: {taught} need the teacher online (it scores the candidate pairs); "
                          "set distill.offline: false (train.tower_losses takes only label terms: inbatch_softmax)")
    settings = candidate_settings(loss)
    if settings.num_random > 0 and (spec.corpus is None or spec.corpus.stride() == 0):
        raise ConfigError(f"{where}: {names} ask for random negatives but the data gives no item corpus; "
                          "use args.negatives: inbatch")
    return settings


def first_ids(kjt: KeyedJaggedTensor, key: str) -> Tensor:
    """[B] the first id of feature ``key`` in each row (-1 for an empty row)."""
    jt = kjt[key]
    lengths = jt.lengths().long()
    values = jt.values().long()
    if values.numel() == 0:
        return torch.full_like(lengths, -1)
    starts = (torch.cumsum(lengths, 0) - lengths).clamp(max=values.numel() - 1)
    return torch.where(lengths > 0, values[starts], torch.full_like(lengths, -1))


class CandidateScorer(nn.Module):
    """One step's candidate work: teacher logits on the pair rows, the student's tower scores.

    The teacher's cost is its pair rows: anchors x C (C = B + R candidates) plus the B rows'
    own pairs (its pointwise logits). ``settings`` narrows the anchors to positive rows and
    caps them (a random subset per step) when the terms ask; the student scores every row.

    Args:
        student (nn.Module): the student (``user_embedding``, ``item_embedding``, ``score_matrix``).
        teachers (Sequence[nn.Module]): the frozen teachers (any rankers); none when a tower model trains
            alone (its label terms read only its own scores).
        teacher_ios (Sequence[ModelIO]): how each teacher is called.
        teacher_weights (Sequence[float]): the ensemble's weights (normalised).
        spec (CandidateSpec): user / item keys, item id, corpus.
        settings (CandidateSettings): random negatives and the teacher's anchor rows.
    """

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module], teacher_ios: Sequence[ModelIO],
                 teacher_weights: Sequence[float], spec: CandidateSpec,
                 settings: CandidateSettings = CandidateSettings()) -> None:
        super().__init__()
        # references, not submodules: a module without sharded children stays a leaf for the pipeline tracer
        self._models: Dict[str, Any] = {"student": student, "teachers": list(teachers)}
        self.teacher_ios = list(teacher_ios)
        self.teacher_weights = list(teacher_weights)
        self.spec = spec
        self.settings = settings
        self.num_random = int(settings.num_random)
        self.item_keys = list(spec.item_keys)

    def _random_items(self, keys: Sequence[str], device: torch.device) -> Optional[KeyedJaggedTensor]:
        if self.num_random == 0:
            return None
        corpus = self.spec.corpus
        assert corpus is not None
        pick = torch.randint(corpus.stride(), (self.num_random,))
        jts = corpus.to_dict()
        values, lengths = [], []
        for key in self.item_keys:
            v, ln, _ = take_rows(jts[key].values(), jts[key].lengths(), pick)
            values.append(v)
            lengths.append(ln)
        items = KeyedJaggedTensor(keys=self.item_keys, values=torch.cat(values).to(device),
                                  lengths=torch.cat(lengths).to(device), stride=self.num_random)
        return in_order(items, keys)  # the batches' key order: a sharded EBC routes by it

    def anchor_rows(self, labels: Tensor) -> Optional[Tensor]:
        """[A] rows whose candidates the teacher scores (positive rows, capped at random), None for every row."""
        st = self.settings
        if not st.positive_anchors and not st.max_anchors:
            return None
        first = labels if labels.dim() == 1 else labels[:, 0]
        rows = torch.nonzero(first > 0).flatten() if st.positive_anchors else torch.arange(first.numel(),
                                                                                            device=first.device)
        if st.max_anchors and rows.numel() > st.max_anchors:
            rows = rows[torch.randperm(rows.numel())[:st.max_anchors].to(rows.device)].sort().values
        return rows

    def forward(self, batch: Batch) -> Tuple[Tensor, Tensor, CandidateScores]:
        """Student and teacher pointwise logits [B] (their own pairs) and the candidate scores.

        Args:
            batch (Batch): B (user, item) rows.

        Returns:
            Tuple[Tensor, Tensor, CandidateScores]: ``student [B]`` (with grad), ``teacher [B]`` (without a
            teacher: the student's, detached), the scores: student [B, B+R], teacher [A, B+R_t] on the anchors
            (R_t: the random items a teacher term reads, R or 0).
        """
        student, teachers = self._models["student"], self._models["teachers"]
        kjt = batch.sparse_features
        b = kjt.stride()
        items = self._random_items(kjt.keys(), kjt.values().device)
        c = b + self.num_random
        u = student.user_embedding(batch.dense_features, kjt)
        v = student.item_embedding(kjt)
        if items is not None:
            v = torch.cat([v, student.item_embedding(items)])
        s = student.score_matrix(u, v)  # [B, C]
        diag = torch.arange(b, device=u.device)
        item_ids = first_ids(kjt, self.spec.item_id)
        random_ids = first_ids(items, self.spec.item_id) if items is not None else None
        corpus_size = 0 if self.spec.corpus is None else self.spec.corpus.stride()
        if not teachers:
            return s[diag, diag], s[diag, diag].detach(), CandidateScores(s, None, item_ids, self.num_random,
                                                                          corpus_size, random_ids=random_ids)
        rows = self.anchor_rows(batch.labels)
        anchors = diag if rows is None else rows.to(u.device)
        if not self.settings.taught:  # no teacher term reads candidates: only the rows' own pairs are scored
            anchors = diag[:0]
        a = anchors.numel()
        c = b + self.settings.teacher_random  # the columns the teacher's terms read
        # anchors x those candidates, then each row's own pair (the teacher's pointwise logit)
        user_rows = torch.cat([anchors.repeat_interleave(c), diag])
        cand_rows = torch.cat([torch.arange(c, device=u.device).repeat(a), diag])
        pairs = pair_rows(batch, self.item_keys, user_rows, cand_rows, items)
        with torch.no_grad():
            logits = [io.logits(t, pairs).reshape(-1) for t, io in zip(teachers, self.teacher_ios)]
            t = logits[0] if len(logits) == 1 else sum(w * x for w, x in zip(self.teacher_weights, logits))
        teacher = t[:a * c].reshape(a, c) if self.settings.taught else None
        scores = CandidateScores(s, teacher, item_ids, self.num_random, corpus_size, rows, random_ids)
        return s[diag, diag], t[a * c:], scores
