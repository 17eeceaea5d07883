"""MovieLens as click data: the ml-100k fixture's features and labels, ml-1m and ml-latest layouts, splits, bad rows,
the CLI, and the real ml-latest-small when ../shared/data has it."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from torchrec_kd.config import ConfigError, MovieLensDataConfig, load_config
from torchrec_kd.data.movielens import LATEST_SPARSE_NAMES, SPARSE_NAMES, MovieLensClickLog
from torchrec_kd.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "ml-100k-tiny"
OCC = ["administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive", "healthcare",
       "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer", "retired", "salesman",
       "scientist", "student", "technician", "writer"]
# What the fixture's users and items must become (written out by hand from the files).
USERS = {1: dict(gender=0, age_bucket=1, occupation=OCC.index("technician"), zip_prefix=1),   # 24, M, 857..
         2: dict(gender=1, age_bucket=5, occupation=OCC.index("other"), zip_prefix=2),        # 53 -> 50-55, F, 940..
         3: dict(gender=0, age_bucket=1, occupation=OCC.index("writer"), zip_prefix=0),       # 23, M, 320..
         4: dict(gender=1, age_bucket=0, occupation=OCC.index("student"), zip_prefix=3)}      # 17 -> under 18, T8H..
ITEMS = {1: ([3, 4, 5], 0.95), 2: ([1, 2, 16], 0.95), 3: ([16], 0.95), 4: ([1, 5, 8], 0.95), 5: ([6, 8, 16], 0.95),
         6: ([], 0.0)}  # item 6: no genre (an empty bag), no release date (year 0)
# (user, item, rating, timestamp) in time order: train = first 6, val = next 2, test = last 2
RATINGS = [(1, 1, 5, 874965758), (1, 5, 4, 875072484), (1, 2, 3, 876893171), (2, 1, 4, 888550871),
           (2, 3, 2, 888551234), (2, 4, 3, 888552000), (3, 5, 1, 889237269), (3, 4, 4, 889237455),
           (4, 2, 4, 892002000), (4, 6, 5, 892003000)]


def _rows(batch):
    feats = batch.sparse_features.to_dict()
    out = []
    for i in range(batch.labels.numel()):
        row = {k: feats[k].to_dense()[i].tolist() for k in SPARSE_NAMES}
        row["dense"] = batch.dense_features[i].tolist()
        row["label"] = batch.labels[i].item()
        out.append(row)
    return out


def test_fixture_yields_the_expected_features_and_labels():
    cfg = MovieLensDataConfig(path=str(FIXTURE), split="chronological", val_fraction=0.2, test_fraction=0.2,
                              shuffle=False)  # train rows in time order, as listed above
    log = MovieLensClickLog(cfg, seed=0)
    assert log.sparse_names == SPARSE_NAMES and log.dense_names == ["release_year", "user_count", "item_count"]
    assert log.num_embeddings == [5, 7, 19, 2, 7, 21, 4]  # max id + 1, 19 genres, 2 genders, 7 ages, 21 jobs, 4 zips
    assert log.bad_rows.count == 0 and log.tag_cutoff is None  # no tags in ml-100k
    assert log.times["train"].tolist() == [r[3] for r in RATINGS[:6]]
    train = RATINGS[:6]
    user_n = {u: sum(r[0] == u for r in train) for u in USERS}
    item_n = {i: sum(r[1] == i for r in train) for i in ITEMS}
    for split, expected in (("train", RATINGS[:6]), ("val", RATINGS[6:8]), ("test", RATINGS[8:])):
        (batch,) = list(log.batches(split, len(expected)))
        assert batch.dense_features.dtype == torch.float32 and batch.labels.dtype == torch.float32
        for row, (u, i, rating, _) in zip(_rows(batch), expected):
            assert row["label"] == float(rating >= 4)
            assert row["user_id"] == [u] and row["item_id"] == [i]
            assert row["genres"] == ITEMS[i][0]
            for name, value in USERS[u].items():
                assert row[name] == [value], (name, u)
            assert row["dense"] == pytest.approx([ITEMS[i][1], math.log1p(user_n[u]), math.log1p(item_n[i])])
    # the genres bag is jagged: 3, 3, 1, ... ids; item 6 has none
    (test,) = list(log.batches("test", 2))
    assert test.sparse_features["genres"].lengths().tolist() == [3, 0]


def test_random_split_is_seeded_disjoint_and_independent_of_the_run_seed():
    def splits(split_seed, seed):
        log = MovieLensClickLog(MovieLensDataConfig(path=str(FIXTURE), split_seed=split_seed, val_fraction=0.2,
                                                    test_fraction=0.2), seed=seed, verbose=False)
        return {k: sorted(v.tolist()) for k, v in log.split_rows.items()}

    a = splits(0, 0)
    assert a == splits(0, 5)  # the run seed does not move the test set
    assert a != splits(1, 0)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(10))
    assert [len(a[s]) for s in ("train", "val", "test")] == [6, 2, 2]


def test_threshold_and_table_overrides():
    log = MovieLensClickLog(MovieLensDataConfig(path=str(FIXTURE), positive_threshold=5, val_fraction=0.0,
                                                test_fraction=0.0, num_embeddings={"user_id": 3}), verbose=False)
    (batch,) = list(log.batches("train", 10))
    assert int(batch.labels.sum()) == 2  # two 5-star ratings
    assert log.num_embeddings[0] == 3
    assert int(batch.sparse_features["user_id"].values().max()) < 3  # user 4 wraps into the smaller table
    with pytest.raises(ConfigError, match=r"data.movielens.num_embeddings: unknown feature\(s\) \['users'\]"):
        MovieLensClickLog(MovieLensDataConfig(path=str(FIXTURE), num_embeddings={"users": 3}))


def test_ml1m_layout(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n"
                                          "2::30::1::978300275\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (tmp_path / "movies.dat").write_bytes("10::GoldenEye (1995)::Action|Adventure|Thriller\n"
                                          "20::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
                                          "30::Unknown::\n".encode("latin-1"))
    log = MovieLensClickLog(MovieLensDataConfig(path=str(tmp_path), split="chronological", val_fraction=0.0,
                                                test_fraction=0.0, shuffle=False), verbose=False)
    assert log.layout.name == "ml-1m"
    (batch,) = list(log.batches("train", 4))
    rows = _rows(batch)  # time order: (2,30), (1,10), (2,10), (1,20)
    genres = ["Action", "Adventure", "Comedy", "Romance", "Thriller"]
    assert [r["item_id"] for r in rows] == [[30], [10], [10], [20]]
    assert rows[0]["genres"] == [] and rows[1]["genres"] == [0, 1, 4] and rows[3]["genres"] == [2, 3]
    assert [r["age_bucket"] for r in rows] == [[6], [0], [6], [0]]  # codes 56 and 1
    assert [r["occupation"] for r in rows] == [[16], [10], [16], [10]]
    assert [r["gender"] for r in rows] == [[0], [1], [0], [1]]
    assert rows[3]["dense"][0] == pytest.approx(1.01) and rows[0]["dense"][0] == 0.0
    assert [r["label"] for r in rows] == [0.0, 1.0, 1.0, 0.0]
    assert log.num_embeddings[2] == len(genres)


def test_bad_lines_are_skipped_and_counted_or_stop_the_run(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    for f in FIXTURE.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    with open(d / "u.data", "ab") as f:
        f.write(b"5\t1\tfive\t892003000\n")  # line 11: rating not a number
        f.write(b"5\t1\t4\n")  # line 12: 3 fields
        f.write(b"\xff\xfe\t1\t4\t1\n")  # line 13: undecodable bytes
        f.write(b"6\t2\t4\t892003001\n")  # line 14: fine (user 6 has no metadata: empty bags)
    log = MovieLensClickLog(MovieLensDataConfig(path=str(d), val_fraction=0.0, test_fraction=0.0), verbose=False)
    assert log.bad_rows.count == 3
    assert [line for _, line, _ in log.bad_rows.first] == [11, 12, 13]
    assert "u.data:11" in log.bad_rows.summary()
    assert log.rows("train") == 11
    (batch,) = list(log.batches("train", 11))
    unknown_user = next(r for r in _rows(batch) if r["user_id"] == [6])
    assert unknown_user["gender"] == [] and unknown_user["zip_prefix"] == [] and unknown_user["age_bucket"] == []
    with pytest.raises(DataError, match=r"u.data:11: user, item and timestamp must be integers"):
        MovieLensClickLog(MovieLensDataConfig(path=str(d)), on_bad_row="error", verbose=False)


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.movielens.path is not set"):
        MovieLensClickLog(MovieLensDataConfig())
    with pytest.raises(DataError, match="no u.data .ml-100k. or ratings.dat .ml-1m. there, nor ratings.csv .ml-latest.; "
                                        "files there: none"):
        MovieLensClickLog(MovieLensDataConfig(path=str(tmp_path)))
    (tmp_path / "u.data").write_text("")
    with pytest.raises(DataError, match="no usable ratings"):
        MovieLensClickLog(MovieLensDataConfig(path=str(tmp_path)))
    with pytest.raises(ConfigError, match="val_fraction \\+ data.movielens.test_fraction must be < 1"):
        load_config(None, ["data.movielens.val_fraction=0.5", "data.movielens.test_fraction=0.5"])
    log = MovieLensClickLog(MovieLensDataConfig(path=str(FIXTURE)), verbose=False)
    with pytest.raises(DataError, match="split 'val' has 1 usable row"):
        list(log.batches("val", 2))


def test_rank_shares_and_epochs():
    log = MovieLensClickLog(MovieLensDataConfig(path=str(FIXTURE), val_fraction=0.0, test_fraction=0.0), seed=3,
                            verbose=False)
    def key(r):  # unique per rating in the fixture
        return r["user_id"][0], r["item_id"][0]

    one = [[key(r) for r in _rows(b)] for b in log.batches("train", 4, num_batches=6)]
    two = [[[key(r) for r in _rows(b)] for b in log.batches("train", 4, rank, 2, num_batches=6)] for rank in (0, 1)]
    assert [a + b for a, b in zip(*two)] == one  # same global batches on 1 and 2 ranks
    # epochs of 2 full batches: each epoch's 8 rows are distinct, and epochs are reshuffled
    epochs = [sum(one[i:i + 2], []) for i in (0, 2, 4)]
    assert all(len(set(e)) == 8 for e in epochs) and epochs[0] != epochs[1]


def write_fake_ml100k(root: Path, users: int = 60, items: int = 90, ratings: int = 3000, seed: int = 0) -> Path:
    """A MovieLens-like folder (ml-100k layout) with a learnable signal: user and item biases."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ub, ib = rng.normal(0, 1, users + 1), rng.normal(0, 1, items + 1)
    u = rng.integers(1, users + 1, ratings)
    i = rng.integers(1, items + 1, ratings)
    r = np.clip(np.round(3.3 + ub[u] + ib[i] + rng.normal(0, 0.6, ratings)), 1, 5).astype(int)
    t = 880000000 + np.sort(rng.integers(0, 10**7, ratings))
    (root / "u.data").write_text("".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in zip(u, i, r, t)))
    (root / "u.user").write_text("".join(
        f"{k}|{rng.integers(10, 70)}|{'MF'[k % 2]}|{OCC[k % len(OCC)]}|{rng.integers(10000, 99999)}\n"
        for k in range(1, users + 1)))
    (root / "u.item").write_text("".join(
        f"{k}|Movie {k} ({1950 + k % 50})|01-Jan-{1950 + k % 50}||http://x|" + "|".join(
            "1" if (k * 7 + g) % 5 == 0 else "0" for g in range(19)) + "\n" for k in range(1, items + 1)))
    return root


@pytest.mark.slow
def test_train_teacher_through_the_cli(tmp_path):
    data = write_fake_ml100k(tmp_path / "ml")
    out = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config",
                          str(REPO / "configs" / "movielens_100k.yaml"), "--output-dir", str(tmp_path / "out"),
                          f"data.movielens.path={data}", "data.batch_size=128", "train.teacher_steps=5",
                          "train.log_every=5"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    entry = json.loads((tmp_path / "out" / "metrics.json").read_text())["teacher"]
    assert entry["steps"] == 5 and 0.0 <= entry["auc"] <= 1.0
    assert "teacher test auc" in out.stderr


# ml-latest: a hand-made folder. (user, movie, rating, time) in time order; chronological 0.2 / 0.2 makes
# the first 6 train (the last at T + 500: the tag cutoff), then 2 val, 2 test. Half stars: >= 4.0 is a click.
T = 1_100_000_000
LATEST_RATINGS = [(1, 1, 4.0, T), (1, 2, 3.5, T + 100), (2, 1, 4.5, T + 200), (2, 3, 0.5, T + 300),
                  (3, 2, 5.0, T + 400), (3, 10, 2.0, T + 500), (1, 4, 4.0, T + 600), (4, 1, 3.0, T + 700),
                  (4, 2, 4.5, T + 800), (5, 99, 3.5, T + 900)]
LATEST_MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
3,Fawlty Towers (1975-1979),Comedy
4,Hyena Road,(no genres listed)
10,Amélie (2001),Comedy|Romance
"""
LATEST_TAGS = f"""userId,movieId,tag,timestamp
1,1,Pixar,{T + 50}
2,1,pixar ,{T + 250}
2,1,"funny,  clever",{T + 250}
3,2,politics,{T + 500}
4,2,Boring,{T + 501}
1,99,classic,{T + 10}
"""
# sorted genre names: Adventure Animation Children Comedy Drama Fantasy Romance; the tags at or before T + 500:
# classic, funny, clever, pixar, politics ("boring" came after the train period: not in the vocabulary)
LATEST_ITEMS = {1: ([0, 1, 2, 3, 5], 0.95, [1, 2]), 2: ([3, 4, 6], 0.95, [3]), 3: ([3], 0.75, []),
                4: ([], 0.0, []), 10: ([3, 6], 1.01, []), 99: ([], 0.0, [0])}
SHARED_LATEST = REPO.parent / "shared" / "data" / "ml-latest-small"


def write_ml_latest(root: Path) -> Path:
    """The hand-made ml-latest folder above (ratings written newest first: the split must sort them)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r:g},{t}\n" for u, i, r, t in reversed(LATEST_RATINGS)))
    (root / "movies.csv").write_text(LATEST_MOVIES, encoding="utf-8")
    (root / "tags.csv").write_text(LATEST_TAGS)
    (root / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n")  # not read
    return root


def _latest(root: Path, **kw) -> MovieLensClickLog:
    args = dict(split="chronological", val_fraction=0.2, test_fraction=0.2, shuffle=False)
    return MovieLensClickLog(MovieLensDataConfig(path=str(root), **{**args, **kw}), verbose=False)


def test_ml_latest_layout_features_labels_and_leak_free_tags(tmp_path):
    log = _latest(write_ml_latest(tmp_path / "ml-latest"))
    assert log.layout.name == "ml-latest" and log.bad_rows.count == 0
    assert log.sparse_names == LATEST_SPARSE_NAMES == ["user_id", "item_id", "genres", "tags"]  # no demographics
    assert log.dense_names == ["release_year", "user_count", "item_count"]
    assert log.num_embeddings == [6, 100, 7, 4]  # max user + 1, max movie + 1, 7 genres, 4 tags seen by T + 500
    train = LATEST_RATINGS[:6]
    user_n = {u: sum(r[0] == u for r in train) for u in range(1, 6)}
    item_n = {i: sum(r[1] == i for r in train) for i in LATEST_ITEMS}
    for split, expected in (("train", train), ("val", LATEST_RATINGS[6:8]), ("test", LATEST_RATINGS[8:])):
        (batch,) = list(log.batches(split, len(expected)))
        assert sorted(batch.sparse_features.keys()) == sorted(LATEST_SPARSE_NAMES)
        for row, (u, i, rating, _) in zip(_rows_of(batch, LATEST_SPARSE_NAMES), expected):
            genres, year, tags = LATEST_ITEMS[i]
            assert row["label"] == float(rating >= 4.0), (u, i, rating)
            assert row["user_id"] == [u] and row["item_id"] == [i]
            assert row["genres"] == genres and row["tags"] == tags, (split, i)
            assert row["dense"] == pytest.approx([year, math.log1p(user_n[u]), math.log1p(item_n[i])])
    # a later split does not move the vocabulary: "boring" (T + 501) is in no bag and has no row
    assert log.num_embeddings[3] == 4
    # the rating times ride along row for row (time windows are cut by them)
    assert log.tag_cutoff == T + 500
    assert {s: log.times[s].tolist() for s in ("val", "test")} == {"val": [T + 600, T + 700], "test": [T + 800, T + 900]}


def test_ml_latest_tags_follow_the_train_period(tmp_path):
    root = write_ml_latest(tmp_path / "ml-latest")
    # a longer train period (val 0.1, test 0.1: train ends at T + 700) takes "boring" in
    log = _latest(root, val_fraction=0.1, test_fraction=0.1)
    assert log.num_embeddings[3] == 5  # boring, classic, funny, clever, pixar, politics
    (batch,) = list(log.batches("train", 8))
    tags = {r["item_id"][0]: r["tags"] for r in _rows_of(batch, LATEST_SPARSE_NAMES)}
    assert tags[2] == [0, 4] and tags[1] == [2, 3]
    # a random split: the train period is the train rows' last rating (here T + 900: every tag)
    log = _latest(root, split="random", val_fraction=0.2, test_fraction=0.0)
    assert log.num_embeddings[3] == 5
    # without tags.csv the feature stays, with empty bags
    (root / "tags.csv").unlink()
    log = _latest(root)
    (batch,) = list(log.batches("train", 6))
    assert log.num_embeddings[3] == 1 and batch.sparse_features["tags"].values().numel() == 0


def test_ml_latest_threshold_overrides_and_layout_checks(tmp_path):
    root = write_ml_latest(tmp_path / "ml-latest")
    log = _latest(root, positive_threshold=4.5, val_fraction=0.0, test_fraction=0.0, num_embeddings={"item_id": 50})
    (batch,) = list(log.batches("train", 10))
    assert int(batch.labels.sum()) == 3  # 4.5, 5.0, 4.5
    assert log.num_embeddings[1] == 50 and int(batch.sparse_features["item_id"].values().max()) < 50
    with pytest.raises(ConfigError, match=r"unknown feature\(s\) \['gender'\]; the ml-latest layout's features are"):
        _latest(root, num_embeddings={"gender": 2})
    (root / "ratings.csv").write_text("1,1,4.0,1100000000\n")
    with pytest.raises(DataError, match=r"ratings.csv:1: expected the header userId,movieId,rating,timestamp"):
        _latest(root)


def test_ml_latest_bad_lines_are_skipped_and_counted_or_stop_the_run(tmp_path):
    root = write_ml_latest(tmp_path / "ml-latest")
    with open(root / "ratings.csv", "a") as f:
        f.write(f"6,1,four,{T + 1000}\n")  # line 12: rating not a number
        f.write("6,1,4.0\n")  # line 13: 3 fields
        f.write(f"6,2,4.0,{T + 1001}\n")  # line 14: fine
    with open(root / "movies.csv", "a") as f:
        f.write("x5,Heat (1995),Action\n")  # line 7: id not an integer
    with open(root / "tags.csv", "a") as f:
        f.write(f"1,2,  ,{T}\n")  # line 8: empty tag
    log = _latest(root, val_fraction=0.0, test_fraction=0.0)
    assert log.bad_rows.count == 4 and log.rows("train") == 11
    assert [(Path(f).name, line) for f, line, _ in log.bad_rows.first] == [
        ("ratings.csv", 12), ("ratings.csv", 13), ("movies.csv", 7), ("tags.csv", 8)]
    with pytest.raises(DataError, match=r"ratings.csv:12: user, item and timestamp must be integers"):
        MovieLensClickLog(MovieLensDataConfig(path=str(root)), on_bad_row="error", verbose=False)


def _rows_of(batch, names):
    feats = batch.sparse_features.to_dict()
    return [{**{k: feats[k].to_dense()[i].tolist() for k in names}, "dense": batch.dense_features[i].tolist(),
             "label": batch.labels[i].item()} for i in range(batch.labels.numel())]


@pytest.mark.skipif(not SHARED_LATEST.is_dir(), reason=f"{SHARED_LATEST} (real ml-latest-small) is not here")
def test_real_ml_latest_small():
    ratings = np.loadtxt(SHARED_LATEST / "ratings.csv", delimiter=",", skiprows=1)
    log = MovieLensClickLog(MovieLensDataConfig(path=str(SHARED_LATEST), split="chronological"), verbose=False)
    assert log.layout.name == "ml-latest" and log.bad_rows.count == 0
    assert sum(log.rows(s) for s in ("train", "val", "test")) == len(ratings) == 100_004
    assert log.num_embeddings[:2] == [672, 164_980]  # 671 users; movie ids up to 164,979 (9,066 rated)
    assert log.num_embeddings[2] == 19  # 20 genre names, "(no genres listed)" is an empty bag
    positives = sum(float(log.splits[s].labels.sum()) for s in ("train", "val", "test"))
    assert positives == int((ratings[:, 2] >= 4.0).sum())
    # chronological: every val / test rating comes after the train period, and no bag uses a later tag
    order = np.argsort(ratings[:, 3], kind="stable")
    cutoff = ratings[order[log.rows("train") - 1], 3]
    assert ratings[order[log.rows("train"):], 3].min() >= cutoff
    with open(SHARED_LATEST / "tags.csv", newline="", encoding="utf-8") as f:
        tags = list(csv.DictReader(f))
    early = {" ".join(t["tag"].split()).lower() for t in tags if int(t["timestamp"]) <= cutoff}
    later = {" ".join(t["tag"].split()).lower() for t in tags} - early
    assert log.num_embeddings[3] == len(early) and len(later) > 100  # the vocabulary holds no later tag


def write_fake_ml_latest(root: Path, users: int = 60, items: int = 90, ratings: int = 3000, seed: int = 0) -> Path:
    """An ml-latest folder with a learnable signal (user and item biases), half stars, genres and tags."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ub, ib = rng.normal(0, 1, users + 1), rng.normal(0, 1, items + 1)
    u, i = rng.integers(1, users + 1, ratings), rng.integers(1, items + 1, ratings)
    r = np.clip(np.round((3.3 + ub[u] + ib[i] + rng.normal(0, 0.6, ratings)) * 2) / 2, 0.5, 5.0)
    t = T + np.sort(rng.integers(0, 10**7, ratings))
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{a},{b},{c:g},{d}\n" for a, b, c, d in zip(u, i, r, t)))
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance"]
    (root / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f'{k},"Movie {k}, The ({1950 + k % 50})",{"|".join(g for j, g in enumerate(genres) if (k + j) % 3 == 0)}\n'
        for k in range(1, items + 1)))
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n" + "".join(
        f"{k % users + 1},{k},{'good' if ib[k] > 0 else 'bad'},{T + k * 10**5}\n" for k in range(1, items + 1)))
    return root


@pytest.mark.slow
def test_latest_small_config_runs_train_teacher_on_a_fake_folder(tmp_path, capsys):
    from torchrec_kd.cli import main

    cfg = load_config(REPO / "configs" / "movielens_latest_small.yaml")
    ml = cfg.data.movielens
    assert (cfg.data.source, ml.path, ml.split) == ("movielens", "../shared/data/ml-latest-small", "chronological")
    assert cfg.train.epochs and cfg.train.eval_every != 0 and cfg.student.embedding_dim == 8
    data = write_fake_ml_latest(tmp_path / "ml")
    code = main(["train-teacher", "--config", str(REPO / "configs" / "movielens_latest_small.yaml"), "--output-dir",
                 str(tmp_path / "out"), f"data.movielens.path={data}", "data.batch_size=128", "train.epochs=1"])
    assert code == 0, capsys.readouterr().err[-3000:]
    entry = json.loads((tmp_path / "out" / "metrics.json").read_text())["teacher"]
    assert entry["steps"] == 18 and 0.5 < entry["auc"] <= 1.0  # 2,400 train rows; the biases are learnable
