"""A planted user-item world for retrieval: users shown items over time, clicks from a ranker-like oracle.

Read when ``data.source: synthetic`` and ``data.retrieval`` is set (knobs:
``data.retrieval.synthetic``, :class:`~torchrec_kd.config.data_sources.SyntheticRetrievalConfig`).
Everything is drawn from ``data.synthetic.world_seed`` (null: the run seed); the run seed
only reshuffles the train rows each epoch.

* Users belong to ``user_segments`` segments, items to ``item_categories`` categories; each
  has latent codes around its segment's / category's centre (``spread`` apart): ``p_u, q_i``
  (``latent_dim``) and ``a_u, b_i`` (``cross_dim``).
* The oracle's logit of (u, i) is ``logit_scale`` times the weighted sum of
  ``<p_u, q_i> / sqrt(latent_dim)`` (a dot product: what a two-tower represents),
  ``(x^2 - 1) / sqrt(2)`` with ``x = <a_u, b_i> / sqrt(cross_dim)`` (not a dot product of
  any narrow embeddings: a ranker's MLP over the (user, item) interaction learns it, a
  two-tower of width w only approximates it unless w >= cross_dim (cross_dim + 1) / 2) and a
  per-item bias, shifted so the clicked share of impressions is ``positive_rate``.
* Each user is shown distinct items (``impressions_per_user`` on average), ``relevance_share``
  of them chosen by the oracle (an earlier stage that already recommends), the rest by Zipf
  popularity, at increasing integer times; each is clicked with ``sigmoid(logit)``.

Rows (one per impression, in time order) carry the sparse features ``user_id``,
``user_segment``, ``item_id``, ``item_category``, ``item_tags`` (the item's nearest tag
prototypes, multi-hot) and ``user_history`` (the user's earlier clicks), and ``num_dense``
user-side dense features (noisy projections of ``p_u``). Splits are leave-last-out by time
(:mod:`torchrec_kd.data.retrieval`).

Example::

    log = SyntheticRetrievalLog(SyntheticRetrievalConfig(num_users=200, num_items=300),
                                RetrievalDataConfig(user_features=["user_id", "user_segment"],
                                                    item_features=["item_id", "item_category", "item_tags"]),
                                world_seed=0, seed=0)
    corpus, users = log.corpus(), log.eval_users("test")
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from torchrec_kd.config.data_sources import USER_HISTORY, RetrievalDataConfig, SyntheticRetrievalConfig
from torchrec_kd.data.retrieval import RetrievalLogMixin, check_roles, history_bags, leave_last_out, retrieval_views
from torchrec_kd.data.rows import InMemoryClickLog, Jagged, RowBlock

logger = logging.getLogger(__name__)

SPARSE_NAMES = ["user_id", "user_segment", "item_id", "item_category", "item_tags"]
USER_FEATURES = ["user_id", "user_segment"]
ITEM_FEATURES = ["item_id", "item_category", "item_tags"]
# Users generated at a time when drawing impressions (bounds the [users, items] score matrix).
_CHUNK_USERS = 256


@dataclass
class World:
    """The planted codes of users and items (kept for tests and oracle baselines)."""

    segment: np.ndarray  # [U]
    category: np.ndarray  # [N]
    p: np.ndarray  # [U, d]
    q: np.ndarray  # [N, d]
    a: np.ndarray  # [U, k]
    b: np.ndarray  # [N, k]
    bias: np.ndarray  # [N]
    popularity: np.ndarray  # [N], sums to 1
    tags: List[np.ndarray]  # per item, its tag ids
    dense: np.ndarray  # [U, num_dense]
    weights: np.ndarray  # (dot, cross, bias) / their norm, times logit_scale
    offset: float = 0.0  # calibrated: the clicked share of impressions is positive_rate

    def logits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Oracle logits of each pair (``users[j]``, ``items[j]``)."""
        return self._terms(users, items) + self.offset

    def logit_matrix(self, users: np.ndarray) -> np.ndarray:
        """Oracle logits ``[len(users), N]`` of these users against every item."""
        d, k = self.p.shape[1], self.a.shape[1]
        dot = self.p[users] @ self.q.T / math.sqrt(d)
        x = self.a[users] @ self.b.T / math.sqrt(k)
        w = self.weights
        return w[0] * dot + w[1] * (x * x - 1.0) / math.sqrt(2.0) + w[2] * self.bias[None, :] + self.offset

    def _terms(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        d, k = self.p.shape[1], self.a.shape[1]
        dot = np.einsum("nd,nd->n", self.p[users], self.q[items]) / math.sqrt(d)
        x = np.einsum("nd,nd->n", self.a[users], self.b[items]) / math.sqrt(k)
        w = self.weights
        return w[0] * dot + w[1] * (x * x - 1.0) / math.sqrt(2.0) + w[2] * self.bias[items]


def _codes(rng: np.random.Generator, centres: np.ndarray, member: np.ndarray, spread: float) -> np.ndarray:
    """Unit-variance codes: each member's centre plus ``spread`` noise."""
    noise = rng.standard_normal((len(member), centres.shape[1]))
    return (centres[member] + spread * noise) / math.sqrt(1.0 + spread * spread)


def make_world(cfg: SyntheticRetrievalConfig, world_seed: int) -> World:
    """Draw the users' and items' codes, biases, popularity, tags and dense features from ``world_seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([world_seed, 0x7E7A1]))
    U, N, d, k = cfg.num_users, cfg.num_items, cfg.latent_dim, cfg.cross_dim
    segment = rng.integers(0, cfg.user_segments, U)
    category = rng.integers(0, cfg.item_categories, N)
    p = _codes(rng, rng.standard_normal((cfg.user_segments, d)), segment, cfg.spread)
    q = _codes(rng, rng.standard_normal((cfg.item_categories, d)), category, cfg.spread)
    a = _codes(rng, rng.standard_normal((cfg.user_segments, k)), segment, cfg.spread)
    b = _codes(rng, rng.standard_normal((cfg.item_categories, k)), category, cfg.spread)
    bias = rng.standard_normal(N)
    ranks = rng.permutation(N)
    popularity = 1.0 / (ranks + 1.0) ** cfg.zipf_exponent
    popularity /= popularity.sum()
    prototypes = rng.standard_normal((cfg.num_tags, d))
    affinity = q @ prototypes.T + 0.5 * rng.standard_normal((N, cfg.num_tags))
    tags = [np.sort(np.argsort(-row)[:cfg.tags_per_item]) for row in affinity]
    proj = rng.standard_normal((d, cfg.num_dense)) / math.sqrt(d)
    dense = (p @ proj + 0.5 * rng.standard_normal((U, cfg.num_dense))).astype(np.float32)
    w = np.array([cfg.dot_weight, cfg.cross_weight, cfg.bias_weight], np.float64)
    return World(segment, category, p, q, a, b, bias, popularity, tags, dense, cfg.logit_scale * w / np.linalg.norm(w))


def _impressions(world: World, cfg: SyntheticRetrievalConfig, world_seed: int) -> Dict[str, np.ndarray]:
    """Each user's distinct shown items, their times and clicks (rows sorted by time, then user)."""
    rng = np.random.default_rng(np.random.SeedSequence([world_seed, 0x1A9E5]))
    U, m = cfg.num_users, cfg.impressions_per_user
    counts = rng.integers(max(1, m // 2), m + m // 2 + 1, U)
    users: List[np.ndarray] = []
    items: List[np.ndarray] = []
    for lo in range(0, U, _CHUNK_USERS):
        us = np.arange(lo, min(U, lo + _CHUNK_USERS))
        scores = world.logit_matrix(us)  # offset 0 here: a softmax ignores it
        relevant = np.exp(scores - scores.max(axis=1, keepdims=True))
        relevant /= relevant.sum(axis=1, keepdims=True)
        weight = cfg.relevance_share * relevant + (1.0 - cfg.relevance_share) * world.popularity[None, :]
        # distinct items drawn with probability ~ weight: the top of log(weight) + Gumbel noise
        keys = np.log(weight + 1e-30) + rng.gumbel(size=weight.shape)
        most = int(counts[us].max())
        top = np.argpartition(-keys, most - 1, axis=1)[:, :most]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
        for j, u in enumerate(us):
            chosen = top[j, :counts[u]]
            users.append(np.full(len(chosen), u, np.int64))
            items.append(rng.permutation(chosen))  # shown in a random order over time
    user, item = np.concatenate(users), np.concatenate(items)
    # each user starts at a random time and sees the items at increasing integer times
    start = rng.integers(0, 1_000_000, U)
    gaps = rng.integers(1, 1000, len(user))
    first = np.r_[0, np.cumsum(counts)[:-1]]
    cum = np.cumsum(gaps)
    time = start[user] + cum - np.repeat(cum[first] - gaps[first], counts)
    order = np.lexsort((user, time))
    return {"user": user[order], "item": item[order], "time": time[order].astype(np.int64)}


def _calibrate(terms: np.ndarray, rate: float) -> float:
    """The offset whose mean sigmoid over ``terms`` is ``rate`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if np.mean(1.0 / (1.0 + np.exp(-(terms + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


class SyntheticRetrievalLog(RetrievalLogMixin, InMemoryClickLog):
    """The planted user-item world as leave-last-out click rows, a corpus and evaluation users.

    Args:
        cfg (SyntheticRetrievalConfig): ``data.retrieval.synthetic``.
        rcfg (RetrievalDataConfig): ``data.retrieval`` (feature roles, history length, eval users).
        world_seed (int): seed of everything drawn.
        seed (int): run seed (train reshuffled each epoch).
        verbose (bool): log the shape (rank 0).

    Attributes:
        world (World): the planted codes (oracle baselines, tests).
        user, item, time, label (np.ndarray): every impression in file (time) order.
        split_rows (Dict[str, np.ndarray]): each split's rows of that order.
    """

    def __init__(self, cfg: SyntheticRetrievalConfig, rcfg: RetrievalDataConfig, world_seed: int, seed: int = 0,
                 verbose: bool = True) -> None:
        self.where = "data.retrieval.synthetic (the synthetic user-item world)"
        check_roles(rcfg, SPARSE_NAMES, self.where)
        self.cfg, self.retrieval, self.seed, self.shuffle = cfg, rcfg, seed, True
        self.world = make_world(cfg, world_seed)
        imp = _impressions(self.world, cfg, world_seed)
        self.user, self.item, self.time = imp["user"], imp["item"], imp["time"]
        terms = self.world._terms(self.user, self.item)
        self.world.offset = _calibrate(terms, cfg.positive_rate)
        rng = np.random.default_rng(np.random.SeedSequence([world_seed, 0xC11C5]))
        prob = 1.0 / (1.0 + np.exp(-(terms + self.world.offset)))
        self.label = (rng.random(len(prob)) < prob).astype(np.float32)
        self.probability = prob.astype(np.float32)  # the oracle's click probability of each row
        positive = self.label > 0.5

        self.dense_names = [f"user_dense_{j}" for j in range(cfg.num_dense)]
        self.sparse_names = list(SPARSE_NAMES)
        self.num_embeddings = [cfg.num_users, cfg.user_segments, cfg.num_items, cfg.item_categories, cfg.num_tags]
        tags = self.world.tags
        columns = [Jagged.from_ids(self.user), Jagged.from_ids(self.world.segment[self.user]),
                   Jagged.from_ids(self.item), Jagged.from_ids(self.world.category[self.item]),
                   Jagged.from_lengths(np.concatenate([tags[i] for i in self.item]) if len(self.item) else
                                       np.zeros(0, np.int64), np.full(len(self.item), cfg.tags_per_item, np.int64))]
        if rcfg.history_length > 0:
            columns.append(history_bags(self.user, self.time, positive, self.item, rcfg.history_length))
            self.sparse_names.append(USER_HISTORY)
            self.num_embeddings.append(cfg.num_items)
        rows = RowBlock(self.world.dense[self.user], self.label, columns)
        lo = leave_last_out(self.user, self.time, positive, rcfg.min_positives)
        self.split_rows = lo.split_rows
        self.splits: Dict[str, RowBlock] = {s: rows.take(idx) for s, idx in lo.split_rows.items()}
        self._corpus, self._eval_users = retrieval_views(rows.take, self.sparse_names, self.dense_names, rcfg,
                                                         self.item, self.time, lo, self.where)
        if verbose:
            logger.info("%s: %d users, %d items, %d impressions (%.1f%% clicked); rows %s; %d evaluation users",
                        self.where, cfg.num_users, cfg.num_items, len(self.user), 100 * float(self.label.mean()),
                        {s: len(b) for s, b in self.splits.items()}, len(self._eval_users["test"]))


__all__ = ["ITEM_FEATURES", "SPARSE_NAMES", "SyntheticRetrievalLog", "USER_FEATURES", "World", "make_world"]
