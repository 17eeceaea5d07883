"""Retrieval data: leave-last-out by time, leak-free user_history, the item corpus, seen items, the synthetic world."""

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, TINY
from torchrec_kd.config import load_config
from torchrec_kd.config.data_sources import MovieLensDataConfig, RetrievalDataConfig, SyntheticRetrievalConfig
from torchrec_kd.data import MovieLensClickLog, TableClickLog, build_data
from torchrec_kd.data.movielens_retrieval import YEAR_BASE, MovieLensRetrievalLog
from torchrec_kd.data.retrieval import history_bags, leave_last_out
from torchrec_kd.data.synthetic_retrieval import ITEM_FEATURES, USER_FEATURES, SyntheticRetrievalLog
from torchrec_kd.errors import ConfigError, DataError

SHARED_LATEST = REPO.parent / "shared" / "data" / "ml-latest-small"
T = 1_200_000_000
# (user, item, rating, time). User 1: 4 positives (13 is the val target, 15 the test target);
# user 2: 2 positives, both at T + 15 (not evaluated: fewer than 3); user 3: 4 positives.
RATINGS = [(1, 10, 5.0, T + 10), (1, 11, 2.0, T + 20), (1, 12, 4.0, T + 30), (1, 13, 4.5, T + 40),
           (1, 14, 1.0, T + 50), (1, 15, 4.0, T + 60), (1, 16, 3.0, T + 70),
           (2, 10, 4.0, T + 15), (2, 12, 4.0, T + 15), (2, 13, 3.0, T + 25),
           (3, 11, 4.0, T + 5), (3, 12, 5.0, T + 100), (3, 14, 4.0, T + 200), (3, 10, 4.0, T + 300)]
MOVIES = """movieId,title,genres
10,Heat (1995),Action|Crime
11,Old (1860),Drama
12,Casino (1995),Crime|Drama
13,Up (2009),Animation
14,No Year,(no genres listed)
15,Alien (1979),Horror|Sci-Fi
16,Her (2013),Drama|Romance
"""
GENRES = sorted({"Action", "Crime", "Drama", "Animation", "Horror", "Sci-Fi", "Romance"})
ML_ROLES = dict(user_features=["user_id"], item_features=["item_id", "genres", "tags", "year"])


def write_folder(root: Path) -> Path:
    """The hand-made ml-latest folder above, its ratings in a scrambled file order (user 2's tie kept: 10 before 12)."""
    root.mkdir(parents=True, exist_ok=True)
    order = [13, 5, 7, 8, 0, 3, 9, 11, 1, 6, 2, 12, 4, 10]
    assert sorted(order) == list(range(len(RATINGS))) and order.index(7) < order.index(8)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        "{},{},{:g},{}\n".format(*RATINGS[k]) for k in order))
    (root / "movies.csv").write_text(MOVIES)
    (root / "tags.csv").write_text(f"userId,movieId,tag,timestamp\n1,10,heist,{T + 1}\n")
    return root


def ml_log(root: Path, **retrieval) -> MovieLensRetrievalLog:
    rcfg = RetrievalDataConfig(**{**ML_ROLES, "history_length": 2, **retrieval})
    return MovieLensRetrievalLog(MovieLensDataConfig(path=str(root), shuffle=False), rcfg, verbose=False)


def bags(jagged) -> list:
    return [jagged.values[jagged.offsets[i]:jagged.offsets[i + 1]].tolist() for i in range(len(jagged))]


def column(block, names, name) -> list:
    return bags(block.sparse[names.index(name)])


def split_pairs(log, split) -> list:
    b = log.splits[split]
    return sorted(zip((u for (u,) in column(b, log.sparse_names, "user_id")),
                      (i for (i,) in column(b, log.sparse_names, "item_id"))))


def test_movielens_leave_last_out_history_seen_and_corpus_by_hand(tmp_path):
    log = ml_log(write_folder(tmp_path / "ml"))
    assert log.sparse_names == ["user_id", "item_id", "genres", "tags", "year", "user_history"]
    assert log.dense_names == ["user_count"]  # user-side only: the year became the sparse item feature
    assert split_pairs(log, "train") == [(1, 10), (1, 11), (1, 12), (2, 10), (2, 12), (2, 13), (3, 11), (3, 12)]
    assert split_pairs(log, "val") == [(1, 13), (1, 14), (3, 14)]
    assert split_pairs(log, "test") == [(1, 15), (1, 16), (3, 10)]
    # user_history: positives strictly earlier in time, the last 2, oldest first (user 2's tie: neither sees the other)
    expected = {(1, 10): [], (1, 11): [10], (1, 12): [10], (1, 13): [10, 12], (1, 14): [12, 13], (1, 15): [12, 13],
                (1, 16): [13, 15], (2, 10): [], (2, 12): [], (2, 13): [10, 12], (3, 11): [], (3, 12): [11],
                (3, 14): [11, 12], (3, 10): [12, 14]}
    for split in ("train", "val", "test"):
        b = log.splits[split]
        for (u,), (i,), h in zip(column(b, log.sparse_names, "user_id"), column(b, log.sparse_names, "item_id"),
                                 column(b, log.sparse_names, "user_history")):
            assert h == expected[(u, i)], (split, u, i)
    # the corpus: every rated movie once, ascending, with its item features
    corpus = log.corpus()
    assert corpus.ids.tolist() == [10, 11, 12, 13, 14, 15, 16] and corpus.sparse_names == ML_ROLES["item_features"]
    assert column(corpus.block, corpus.sparse_names, "item_id") == [[i] for i in range(10, 17)]
    g = GENRES.index
    assert column(corpus.block, corpus.sparse_names, "genres") == [
        [g("Action"), g("Crime")], [g("Drama")], [g("Crime"), g("Drama")], [g("Animation")], [],
        [g("Horror"), g("Sci-Fi")], [g("Drama"), g("Romance")]]
    assert column(corpus.block, corpus.sparse_names, "year") == [[1995 - YEAR_BASE], [0], [1995 - YEAR_BASE],
                                                                 [2009 - YEAR_BASE], [], [1979 - YEAR_BASE],
                                                                 [2013 - YEAR_BASE]]
    assert column(corpus.block, corpus.sparse_names, "tags")[0] == [0] and corpus.block.dense.shape == (7, 0)
    # evaluation users: 1 and 3 (user 2 has 2 positives), targets and seen items as corpus indices
    idx = {m: k for k, m in enumerate(corpus.ids.tolist())}
    for split, targets, seen in (("val", {1: 13, 3: 14}, {1: [10, 11, 12], 3: [11, 12]}),
                                 ("test", {1: 15, 3: 10}, {1: [10, 11, 12, 13, 14], 3: [11, 12, 14]})):
        users = log.eval_users(split)
        assert users.users.tolist() == [1, 3] and users.sparse_names == ["user_id", "user_history"]
        assert [t.tolist() for t in users.targets] == [[idx[targets[1]]], [idx[targets[3]]]]
        assert [s.tolist() for s in users.seen] == [[idx[m] for m in seen[1]], [idx[m] for m in seen[3]]]
        assert column(users.block, users.sparse_names, "user_id") == [[1], [3]]
        hist = column(users.block, users.sparse_names, "user_history")
        assert hist == [expected[(1, targets[1])], expected[(3, targets[3])]]
        # the dense feature as of the train rows: log(1 + the user's train ratings)
        assert users.block.dense[:, 0].tolist() == pytest.approx([math.log1p(3), math.log1p(2)])
    # eval_users caps the users: a fixed subset, the same for val and test
    capped = ml_log(tmp_path / "ml", eval_users=1)
    assert len(capped.eval_users("val")) == 1 and capped.eval_users("val").users.tolist() == \
        capped.eval_users("test").users.tolist()


def test_movielens_retrieval_through_build_data_and_its_errors(tmp_path):
    root = write_folder(tmp_path / "ml")
    base = ["data.source=movielens", f"data.movielens.path={root}", "data.batch_size=2",
            "data.retrieval.user_features=[user_id]", "data.retrieval.item_features=[item_id,genres,tags,year]"]
    cfg = load_config(TINY, base)
    log = build_data(cfg.data, 0)
    assert isinstance(log, MovieLensRetrievalLog) and len(log.corpus()) == 7
    batch = next(iter(log.batches("train", 2)))
    assert batch.sparse_features.keys() == log.sparse_names and batch.dense_features.shape == (2, 1)
    with pytest.raises(ConfigError, match=r"data.retrieval.user_features: \['gender'\] are not features"):
        build_data(load_config(TINY, base + ["data.retrieval.user_features=[user_id,gender]"]).data, 0)
    with pytest.raises(ConfigError, match="in both user_features and item_features"):
        load_config(TINY, base + ["data.retrieval.user_features=[user_id,genres]"])
    with pytest.raises(ConfigError, match="item_id='movie' is not in data.retrieval.item_features"):
        load_config(TINY, base + ["data.retrieval.item_id=movie"])
    with pytest.raises(ConfigError, match="source 'criteo_tsv' has no user / item declaration"):
        build_data(load_config(TINY, base + ["data.source=criteo_tsv"]).data, 0)
    with pytest.raises(ConfigError, match="data.retrieval with time windows"):
        build_data(load_config(TINY, base + ["data.windows={count: 2}"]).data, 0)
    assert load_config(TINY, base).data.retrieval.ks == [10, 20, 50, 100]
    assert load_config(TINY, base + ["data.retrieval.ks=[5]"]).data.retrieval.ks == [5, 20]  # 20 always


def test_table_source_leave_last_out_by_its_time_column(tmp_path):
    # two users; file order scrambled, the time column orders them; u1: 3 clicks, u2: 1 click (not evaluated)
    csv = tmp_path / "log.csv"
    csv.write_text("time,user,item,cat,event\n5,1,30,c,click\n1,1,10,a,click\n2,2,10,a,click\n3,1,20,b,view\n"
                   "4,1,40,b,click\n6,1,50,a,view\n7,2,20,b,view\n")
    over = [f"data.table.path={csv}", "data.table.label=event", "data.table.positive=[click]",
            "data.table.negative=[view]", "data.table.dense=[]", "data.table.time_column=time", "data.batch_size=1",
            "data.table.sparse=[{column: user, num_embeddings: 100}, {column: item, num_embeddings: 100}, "
            "{column: cat, num_embeddings: 10, hashing: hash}]",
            "data.retrieval.user_features=[user]", "data.retrieval.item_features=[item,cat]",
            "data.retrieval.user_id=user", "data.retrieval.item_id=item", "data.retrieval.history_length=3"]
    log = build_data(load_config(REPO / "configs" / "table_example.yaml", over).data, 0)
    pairs = {s: sorted(zip(*(sum(column(log.splits[s], log.sparse_names, n), []) for n in ("user", "item"))))
             for s in ("train", "val", "test")}
    assert pairs == {"train": [(1, 10), (1, 20), (2, 10), (2, 20)], "val": [(1, 40)], "test": [(1, 30), (1, 50)]}
    users = log.eval_users("test")
    assert users.users.tolist() == [1] and log.corpus().ids.tolist() == [10, 20, 30, 40, 50]
    assert users.targets[0].tolist() == [2] and users.seen[0].tolist() == [0, 1, 3]
    assert column(users.block, users.sparse_names, "user_history") == [[10, 40]]
    assert column(log.splits["test"], log.sparse_names, "user_history") == [[10, 40], [10, 40, 30]]
    bad = [o.replace("{column: user, num_embeddings: 100}", "{column: user, num_embeddings: 100, separator: '|'}")
           for o in over]
    csv.write_text(csv.read_text().replace("\n2,2,10", "\n2,2|3,10"))
    with pytest.raises(DataError, match=r"data.retrieval.user_id='user': row 2 holds 2 ids"):
        build_data(load_config(REPO / "configs" / "table_example.yaml", bad).data, 0)


def small_world(**kw) -> SyntheticRetrievalConfig:
    return SyntheticRetrievalConfig(**{**dict(num_users=60, num_items=80, impressions_per_user=12, user_segments=4,
                                              item_categories=6, latent_dim=8, cross_dim=3, num_tags=10), **kw})


def synthetic_log(world_seed=0, seed=0, history_length=5, **kw) -> SyntheticRetrievalLog:
    rcfg = RetrievalDataConfig(user_features=USER_FEATURES, item_features=ITEM_FEATURES, history_length=history_length)
    return SyntheticRetrievalLog(small_world(**kw), rcfg, world_seed=world_seed, seed=seed, verbose=False)


def test_synthetic_world_leave_last_out_history_and_seen_against_brute_force():
    log = synthetic_log()
    user, item, time, pos = log.user, log.item, log.time, log.label > 0.5
    assert 0.2 < pos.mean() < 0.4  # calibrated to positive_rate 0.3
    split_of = np.empty(len(user), object)
    for s, rows in log.split_rows.items():
        split_of[rows] = s
    corpus = log.corpus()
    assert corpus.ids.tolist() == sorted(set(item.tolist()))  # every shown item, once
    evaluated = set()
    for u in np.unique(user):
        rows = np.flatnonzero(user == u)
        rows = rows[np.argsort(time[rows], kind="stable")]
        p = rows[pos[rows]]
        if len(p) < 3:
            assert set(split_of[rows]) == {"train"}
            continue
        evaluated.add(int(u))
        val_t, test_t = p[-2], p[-1]  # the last two positives by time
        for r in rows:
            want = "train" if time[r] < time[val_t] else "val" if time[r] < time[test_t] else "test"
            assert split_of[r] == want
        # no train row of this user is a target interaction (or comes after one)
        train_items = set(item[rows[split_of[rows] == "train"]].tolist())
        assert item[val_t] not in train_items and item[test_t] not in train_items
    for split, k in (("val", -2), ("test", -1)):
        users = log.eval_users(split)
        assert set(users.users.tolist()) == evaluated
        for u, t, seen, r in zip(users.users, users.targets, users.seen, users.target_rows):
            rows = np.flatnonzero(user == u)
            p = rows[pos[rows]]
            p = p[np.argsort(time[p], kind="stable")]
            assert r == p[k] and corpus.ids[t].tolist() == [item[p[k]]]
            earlier = sorted(set(item[rows[time[rows] < time[p[k]]]].tolist()) - {int(item[p[k]])})
            assert corpus.ids[seen].tolist() == earlier
    # user_history of every row: the items of the user's last 5 positives strictly earlier in time
    hist = bags(log.splits["train"].sparse[log.sparse_names.index("user_history")])
    for r, h in zip(log.split_rows["train"], hist):
        earlier = np.flatnonzero((user == user[r]) & pos & (time < time[r]))
        earlier = earlier[np.argsort(time[earlier], kind="stable")][-5:]
        assert h == item[earlier].tolist()
    # the corpus's item features are the world's
    names = corpus.sparse_names
    assert column(corpus.block, names, "item_category") == [[c] for c in log.world.category[corpus.ids]]
    assert column(corpus.block, names, "item_tags") == [log.world.tags[i].tolist() for i in corpus.ids]
    users = log.eval_users("test")
    assert column(users.block, users.sparse_names, "user_segment") == [[s] for s in log.world.segment[users.users]]
    assert np.array_equal(users.block.dense, log.world.dense[users.users])


def test_synthetic_world_is_deterministic_by_world_seed_and_the_run_seed_orders_only_train():
    a, b = synthetic_log(world_seed=3, seed=0), synthetic_log(world_seed=3, seed=1)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split_rows[s], b.split_rows[s])
        assert np.array_equal(a.splits[s].labels, b.splits[s].labels)
        assert np.array_equal(a.splits[s].dense, b.splits[s].dense)
    assert np.array_equal(a.item, b.item) and np.array_equal(a.time, b.time)
    first = [next(iter(log.batches("train", 32))).sparse_features.values() for log in (a, b)]
    assert not np.array_equal(first[0].numpy(), first[1].numpy())  # another train order
    c = synthetic_log(world_seed=4)
    assert not np.array_equal(a.item, c.item) or not np.array_equal(a.label, c.label)


def test_the_oracle_has_a_part_no_narrow_dot_product_holds():
    log = synthetic_log(cross_weight=1.0, dot_weight=0.0, bias_weight=0.0)
    scores = log.world.logit_matrix(np.arange(60))  # [users, items] of the cross term alone
    s = np.linalg.svd(scores - scores.mean(), compute_uv=False)
    # the squared 3-dim cross has rank up to 3 * 4 / 2 = 6 (plus the constant), more than a rank-3 dot product
    assert (s[:7] > 1e-6 * s[0]).sum() >= 6


def test_history_and_leave_last_out_helpers_on_ties():
    user = np.array([5, 5, 5, 5, 5])
    time = np.array([1, 1, 2, 3, 4])
    positive = np.array([True, True, True, True, True])
    h = history_bags(user, time, positive, np.array([100, 101, 102, 103, 104]), length=3)
    assert bags(h) == [[], [], [100, 101], [100, 101, 102], [101, 102, 103]]
    lo = leave_last_out(user, time, positive, min_positives=3)
    assert {s: r.tolist() for s, r in lo.split_rows.items()} == {"train": [0, 1, 2], "val": [3], "test": [4]}
    assert lo.users.tolist() == [5] and lo.before["test"][0].tolist() == [0, 1, 2, 3]


def digest(log, batch_size, num_batches=None) -> str:
    h = hashlib.sha256()
    for s in ("train", "val", "test"):
        for b in log.batches(s, batch_size, num_batches=num_batches):
            for t in (b.dense_features, b.labels, b.sparse_features.values(), b.sparse_features.lengths()):
                h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def test_a_run_without_data_retrieval_reads_byte_identical_data():
    # digests of the code before data.retrieval existed (commit e68090c)
    tiny = load_config(TINY)
    assert tiny.data.retrieval is None
    assert digest(build_data(tiny.data, 0), 128, num_batches=3) == "52746a3d46a8f0e9"
    fixture = ["data.source=movielens", f"data.movielens.path={REPO / 'tests' / 'fixtures' / 'ml-100k-tiny'}",
               "data.movielens.val_fraction=0.2", "data.movielens.test_fraction=0.2"]
    log = build_data(load_config(TINY, fixture + ["data.movielens.split=chronological"]).data, 0)
    assert type(log) is MovieLensClickLog and not hasattr(log, "corpus")
    assert digest(log, 2) == "8a3fc359df7d0fcb"
    assert digest(build_data(load_config(TINY, fixture).data, 0), 2) == "e14424142f257022"
    table = REPO / "configs" / "table_example.yaml"
    log = build_data(load_config(table).data, 0)
    assert type(log) is TableClickLog and digest(log, 60) == "77b070bc64a3a341"
    assert digest(build_data(load_config(table, ["data.table.split=random"]).data, 0), 60) == "62f72e30b32d9366"


@pytest.mark.skipif(not (SHARED_LATEST / "ratings.csv").is_file(), reason="ml-latest-small is not in ../shared/data")
def test_real_ml_latest_small_retrieval_config():
    cfg = load_config(REPO / "configs" / "retrieval_ml_latest_small.yaml")
    log = build_data(cfg.data, 0)
    ratings = np.loadtxt(SHARED_LATEST / "ratings.csv", delimiter=",", skiprows=1)
    assert sum(log.rows(s) for s in ("train", "val", "test")) == len(ratings) == 100_004
    assert len(log.corpus()) == len(np.unique(ratings[:, 1])) == 9066
    users = log.eval_users("test")
    positives = np.bincount(ratings[ratings[:, 2] >= 4.0, 0].astype(int))
    assert len(users) == int((positives >= 3).sum())
    # each test target is the user's last positive by time
    for u, r in zip(users.users[:50], users.target_rows[:50]):
        mine = ratings[(ratings[:, 0] == u) & (ratings[:, 2] >= 4.0)]
        assert ratings[r, 3] == mine[:, 3].max() and ratings[r, 0] == u
