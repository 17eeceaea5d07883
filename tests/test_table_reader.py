"""The schema reader: a DataFrame round-trips through CSV (and Parquet), labels, bad rows, hashing, shares."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from torchrec_kd.config import ConfigError, DataConfig, SparseColumnConfig, TableDataConfig, load_config
from torchrec_kd.data import build_data
from torchrec_kd.data.ids import hash_strings
from torchrec_kd.data.table import TableClickLog
from torchrec_kd.errors import DataError

FRAME = pd.DataFrame({
    "clicked": [1, 0, 0, 1, 0, 1],
    "price": [1.5, np.nan, 3.0, -2.0, np.inf, 10.0],
    "count": [0, 1, 2, 3, 4, 5],
    "user": [5, -1, 10**15, 7, 5, 999],          # ints: taken modulo the table, negatives wrap
    "city": ["paris", "", "oslo", "lima", "paris", "rome"],  # text: hashed; "" is an empty bag
    "tags": ["a|b|c", "", "b", "c|a", "  d | e ", "a|a"],   # multi-valued
})
SCHEMA = dict(label="clicked", dense=["price", "count"],
              sparse=[SparseColumnConfig(column="user", num_embeddings=100),
                      SparseColumnConfig(column="city", num_embeddings=50),
                      SparseColumnConfig(column="tags", separator="|", num_embeddings=20)],
              split="ordered", val_fraction=0.0, test_fraction=0.0, shuffle=False)


def _expected_bags(frame):
    users = [[u % 100] for u in frame["user"]]
    cities = [[int(hash_strings(np.array([c], dtype=object), 50)[0])] if c else [] for c in frame["city"]]
    tags = [[int(hash_strings(np.array([t.strip()], dtype=object), 20)[0]) for t in cell.split("|") if t.strip()]
            for cell in frame["tags"]]
    return {"user": users, "city": cities, "tags": tags}


def _check_round_trip(log, frame):
    (batch,) = list(log.batches("train", len(frame)))
    assert log.dense_names == ["price", "count"] and log.sparse_names == ["user", "city", "tags"]
    assert batch.labels.tolist() == [float(x) for x in frame["clicked"]]
    # NaN and inf become dense_fill (0); other values pass as they are
    assert batch.dense_features.tolist() == [[1.5, 0.0], [0.0, 1.0], [3.0, 2.0], [-2.0, 3.0], [0.0, 4.0], [10.0, 5.0]]
    feats = batch.sparse_features.to_dict()
    for name, bags in _expected_bags(frame).items():
        jt = feats[name]
        assert jt.lengths().tolist() == [len(b) for b in bags], name
        assert jt.values().tolist() == [v for b in bags for v in b], name
        assert jt.values().dtype == torch.int64
    assert feats["user"].values().tolist()[1] == 99  # -1 wraps to the last row


def test_csv_round_trips_dense_sparse_and_multivalued_columns(tmp_path):
    path = tmp_path / "log.csv"
    FRAME.to_csv(path, index=False)
    log = TableClickLog(TableDataConfig(path=str(path), **SCHEMA), verbose=False)
    assert log.bad_rows.count == 0
    _check_round_trip(log, FRAME)


def test_parquet_round_trips_with_list_cells(tmp_path):
    pytest.importorskip("pyarrow")
    frame = FRAME.copy()
    frame["tags"] = [[t.strip() for t in cell.split("|") if t.strip()] for cell in frame["tags"]]
    frame.to_parquet(tmp_path / "log.parquet")
    log = TableClickLog(TableDataConfig(path=str(tmp_path / "log.parquet"), **SCHEMA), verbose=False)
    _check_round_trip(log, FRAME)


def test_parquet_is_read_in_chunks_and_a_damaged_file_is_one_data_error(tmp_path):
    pytest.importorskip("pyarrow")
    from torchrec_kd.data.contract import RawRows, input_contract
    from torchrec_kd.data.table import parquet_chunks

    FRAME.to_parquet(tmp_path / "log.parquet")
    chunks = list(parquet_chunks(tmp_path / "log.parquet", chunk_rows=4))
    assert [len(df) for df, _, _ in chunks] == [4, 2] and [list(lines) for _, lines, _ in chunks] == [[1, 2, 3, 4], [5, 6]]
    assert pd.concat([df for df, _, _ in chunks], ignore_index=True).equals(pd.read_parquet(tmp_path / "log.parquet"))
    (tmp_path / "text.parquet").write_text("clicked,price\n1,2\n")  # a CSV under a Parquet name
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "log.parquet").read_bytes()[:-40])
    cfg = TableDataConfig(**{**SCHEMA, "path": str(tmp_path / "log.parquet")})
    contract = input_contract(DataConfig(source="table", table=cfg), ["price", "count"], ["user", "city", "tags"],
                              [100, 50, 20])
    for name in ["text", "empty", "cut"]:
        f = tmp_path / f"{name}.parquet"
        # training (and inspect-data) and predict --input read Parquet the same way: one DataError, one line
        for read in (lambda p: TableClickLog(TableDataConfig(**{**SCHEMA, "path": str(p)}), verbose=False),
                     lambda p: list(RawRows(contract).read(str(p)))):
            with pytest.raises(DataError, match=rf"{name}.parquet: not a readable Parquet file \(.+\); check the file") as e:
                read(f)
            assert "\n" not in str(e.value)


def test_a_text_file_named_parquet_stops_train_and_inspect_data_with_one_line(tmp_path, capsys):
    from torchrec_kd.cli import main

    (tmp_path / "clicks.parquet").write_text("event,price\nclick,2\n")
    table = str(REPO / "configs" / "table_example.yaml")
    for argv in (["train-teacher", "--config", table, "--output-dir", str(tmp_path / "out"),
                  f"data.table.path={tmp_path / 'clicks.parquet'}"],
                 ["inspect-data", "--config", table, "--format", "table", "--path", str(tmp_path / "clicks.parquet")]):
        assert main(argv) == 2  # caught as a user error: no traceback
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "clicks.parquet: not a readable Parquet file" in errors[0], errors


def test_labels_declared_values_threshold_and_errors(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("event\tx\nclick\t1\nview\t2\nclick\t3\n")
    cfg = dict(path=str(path), delimiter="\t", label="event", dense=["x"], val_fraction=0.0, test_fraction=0.0,
               shuffle=False, split="ordered")
    log = TableClickLog(TableDataConfig(positive=["click"], negative=["view"], **cfg), verbose=False)
    assert next(iter(log.batches("train", 3))).labels.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(DataError, match=r"label column 'event' holds values other than declared: 'click' \(line 2\), "
                                        r"'view' \(line 3\); expected positive \[1\] or negative \[0\]"):
        TableClickLog(TableDataConfig(**cfg), verbose=False)
    path.write_text("stars,x\n5,1\n3.5,2\n4,3\n")
    thr = dict(cfg, delimiter=",", label="stars")
    log = TableClickLog(TableDataConfig(label_threshold=4.0, **thr), verbose=False)
    assert next(iter(log.batches("train", 3))).labels.tolist() == [1.0, 0.0, 1.0]
    # 1, "1" and 1.0 are the same label; booleans are true/false
    path.write_text("y,x\n1.0,1\nTrue,2\nfalse,3\n")
    log = TableClickLog(TableDataConfig(positive=[1, True], negative=[False], **dict(thr, label="y")), verbose=False)
    assert next(iter(log.batches("train", 3))).labels.tolist() == [1.0, 1.0, 0.0]


def test_bad_rows_are_counted_with_lines_or_stop_the_run(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"clicked,price,city\n"
                     b"1,2.5,paris\n"
                     b"0,2.5\n"               # line 3: too few fields
                     b"1,cheap,oslo\n"        # line 4: dense not a number
                     b"0,1,caf\xe9\n"         # line 5: not utf-8
                     b"\n"                    # blank: not a row
                     b"0,nan,rome\n"          # NaN is a missing value, not garbage
                     b",1,lima\n"             # line 8: empty label
                     b"1,1,a,b\n")            # line 9: too many fields
    cfg = TableDataConfig(path=str(path), label="clicked", dense=["price"],
                          sparse=[SparseColumnConfig(column="city", num_embeddings=10)], val_fraction=0.0,
                          test_fraction=0.0)
    log = TableClickLog(cfg, verbose=False)
    assert log.rows("train") == 2
    assert log.bad_rows.count == 5
    assert [line for _, line, _ in log.bad_rows.first] == [3, 4, 5, 8, 9]
    assert "expected 3 fields, found 2" in log.bad_rows.summary()
    with pytest.raises(DataError, match=r"t.csv:3: expected 3 fields, found 2"):
        TableClickLog(cfg, on_bad_row="error", verbose=False)


def test_missing_columns_files_and_schema_are_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("clicked,price\n1,2\n")
    with pytest.raises(DataError, match=r"column\(s\) 'prize' \(did you mean 'price'\?\) named in data.table are not "
                                        r"in the file; its columns are: clicked, price"):
        TableClickLog(TableDataConfig(path=str(path), label="clicked", dense=["prize"]))
    with pytest.raises(DataError, match="no .csv/.tsv/.txt/.parquet/.pq file found"):
        TableClickLog(TableDataConfig(path=str(tmp_path / "nope.csv"), dense=["x"]))
    with pytest.raises(ConfigError, match="data.table declares no dense and no sparse columns"):
        TableClickLog(TableDataConfig(path=str(path)))
    with pytest.raises(ConfigError, match="data.table.path is not set"):
        TableClickLog(TableDataConfig(dense=["x"]))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        TableClickLog(TableDataConfig(path=str(tmp_path / "empty.csv"), dense=["x"]))
    (tmp_path / "header_only.csv").write_text("clicked,price\n")
    with pytest.raises(DataError, match="no usable rows"):
        TableClickLog(TableDataConfig(path=str(tmp_path / "header_only.csv"), label="clicked", dense=["price"]))
    with pytest.raises(ConfigError, match=r"data.table.sparse\[0\].num_embeddings must be between 1 and"):
        load_config(None, ["data.table.sparse=[{column: user, num_embeddings: 0}]"])


def test_hashing_keeps_every_id_in_range_and_is_stable(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(-2**62, 2**62, 50), [2**63 - 1, -2**63 + 1, 0, -1]])
    frame = pd.DataFrame({"y": rng.integers(0, 2, len(ids)), "id": ids,
                          "word": [f"w{i}" if i % 3 else f"x{i}" for i in range(len(ids))]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    sparse = [SparseColumnConfig(column="id", num_embeddings=97),
              SparseColumnConfig(column="id", name="id_hashed", num_embeddings=97, hashing="hash"),
              SparseColumnConfig(column="word", num_embeddings=13)]
    log = TableClickLog(TableDataConfig(path=str(tmp_path / "t.csv"), label="y", sparse=sparse, split="ordered",
                                        val_fraction=0.0, test_fraction=0.0, shuffle=False), verbose=False)
    (batch,) = list(log.batches("train", len(ids)))
    feats = batch.sparse_features.to_dict()
    assert feats["id"].values().tolist() == [int(v) % 97 for v in ids]
    for name, n in (("id_hashed", 97), ("word", 13)):
        v = feats[name].values()
        assert int(v.min()) >= 0 and int(v.max()) < n
    # the text hash is fixed: the same word maps to the same row in every run and process
    assert hash_strings(np.array(["paris"], dtype=object), 1000).tolist() == [
        int(pd.util.hash_array(np.array(["paris"], dtype=object), hash_key="torchrec_kd_ids0")[0] % 1000)]


def test_rank_shares_disjoint_cover_and_same_global_batches(tmp_path):
    n = 103
    frame = pd.DataFrame({"y": np.arange(n) % 2, "row": np.arange(n), "g": np.arange(n) % 7})
    frame.to_csv(tmp_path / "t.csv", index=False)
    log = TableClickLog(TableDataConfig(path=str(tmp_path / "t.csv"), label="y", dense=["row"],
                                        sparse=[SparseColumnConfig(column="g", num_embeddings=7)],
                                        val_fraction=0.1, test_fraction=0.2), seed=1, verbose=False)
    split_rows = {s: sorted(log.split_rows[s].tolist()) for s in ("train", "val", "test")}
    assert sorted(sum(split_rows.values(), [])) == list(range(n))
    assert [len(split_rows[s]) for s in ("train", "val", "test")] == [72, 10, 21]
    for split, batch_size in (("train", 12), ("test", 6)):
        one = [b.dense_features[:, 0].long().tolist() for b in log.batches(split, batch_size, num_batches=6)]
        for world in (2, 3):
            shares = [[b.dense_features[:, 0].long().tolist()
                       for b in log.batches(split, batch_size, r, world, num_batches=6)] for r in range(world)]
            assert len({len(s) for s in shares}) == 1
            assert [sum((s[i] for s in shares), []) for i in range(len(one))] == one
        flat = sum(one, [])
        if split == "test":  # one pass: distinct rows of the split, tail of 3 dropped
            assert len(set(flat)) == len(flat) == 18 and set(flat) <= set(split_rows["test"])
        else:  # 6 train epochs' worth of batches: 72 rows = 6 batches, each row once
            assert sorted(flat) == split_rows["train"]


def test_example_config_reads_the_example_csv():
    cfg = load_config(REPO / "configs" / "table_example.yaml")
    data = build_data(cfg.data, cfg.seed)
    assert data.sparse_names == ["user", "item", "category", "tags"] and data.dense_names == ["price", "position"]
    assert (data.rows("train"), data.rows("val"), data.rows("test")) == (840, 180, 180)
    batch = next(iter(data.batches("train", cfg.data.batch_size)))
    assert batch.labels.shape == (60,) and set(batch.labels.tolist()) <= {0.0, 1.0}
    # every dense value is log1p of a value of its CSV column (an empty price: dense_fill 0, then log1p)
    raw = pd.read_csv(REPO / "examples" / "data" / "clicks.csv")
    for col, values in enumerate((raw["price"].fillna(0.0), raw["position"])):
        allowed = torch.tensor([math.log1p(v) for v in sorted(set(values))])
        got = batch.dense_features[:, col].double()
        assert (got[:, None] - allowed[None, :].double()).abs().min(1).values.max() < 1e-5, col
    assert float(batch.dense_features[:, 1].min()) >= math.log1p(1) - 1e-6  # positions start at 1
