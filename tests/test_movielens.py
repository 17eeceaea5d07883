"""MovieLens as click data: the ml-100k fixture's features and labels, ml-1m layout, splits, bad rows, the CLI."""

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
from torchrec_kd.data.movielens import SPARSE_NAMES, MovieLensClickLog
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
    assert log.bad_rows.count == 0
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
    with pytest.raises(DataError, match="no u.data .ml-100k. or ratings.dat .ml-1m. there; files there: none"):
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
