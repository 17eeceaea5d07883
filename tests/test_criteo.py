"""Criteo readers: the 200-row sample (tests/fixtures/criteo), TSV == preprocessed npy, rank shares, fuzzed rows, errors."""

import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CRITEO_SAMPLE, REPO
from torchrec_kd.config import ConfigError, CriteoDataConfig, DataConfig, load_config
from torchrec_kd.data import build_data
from torchrec_kd.data.criteo import CriteoNpyLog, CriteoTsvLog
from torchrec_kd.data.preprocess import preprocess_criteo
from torchrec_kd.errors import DataError

SAMPLE = CRITEO_SAMPLE
TABLES = [1000 + 37 * i for i in range(26)]  # distinct sizes catch a feature/table mix-up


def _cfg(path, name="criteo_sample.tsv", **kw):
    base = dict(path=str(path), train=[name], val=[], test=[], num_embeddings=TABLES)
    base.update(kw)
    return CriteoDataConfig(**base)


def _reference(lines):
    """Independent parse: labels, dense log1p(max(x,0)) with empty -> 0, per-feature id lists."""
    rows = [l.split("\t") for l in lines]
    labels = [float(r[0]) for r in rows]
    dense = [[math.log1p(max(int(x), 0)) if x else 0.0 for x in r[1:14]] for r in rows]
    ids = [[[int(x, 16) % TABLES[f]] if x else [] for f, x in enumerate(r[14:])] for r in rows]
    return labels, dense, ids


def _rows_of(batch):
    """Per row: (label, dense tuple, tuple of id tuples) — hashable, for set comparisons."""
    feats = batch.sparse_features.to_dict()
    per_key = [feats[k] for k in batch.sparse_features.keys()]
    out = []
    for i in range(batch.labels.numel()):
        out.append((float(batch.labels[i]), tuple(batch.dense_features[i].tolist()),
                    tuple(tuple(jt.to_dense()[i].tolist()) for jt in per_key)))
    return out


def test_criteo_sample_parses_to_200_rows():
    log = CriteoTsvLog(_cfg(SAMPLE.parent))
    assert log.rows("train") == 200 and log.num_batches("train", 200) == 1
    (batch,) = list(log.batches("train", 200))
    assert batch.dense_features.shape == (200, 13) and batch.dense_features.dtype == torch.float32
    assert batch.labels.dtype == torch.float32
    assert int((batch.labels == 0).sum()) == 151 and int((batch.labels == 1).sum()) == 49
    kjt = batch.sparse_features
    assert kjt.keys() == [f"cat_{i}" for i in range(26)] and kjt.values().dtype == torch.int64
    labels, dense, ids = _reference(SAMPLE.read_text().splitlines())
    assert batch.labels.tolist() == labels
    assert torch.allclose(batch.dense_features, torch.tensor(dense, dtype=torch.float32))
    feats = kjt.to_dict()
    for f in range(26):
        jt = feats[f"cat_{f}"]
        assert jt.lengths().tolist() == [len(r[f]) for r in ids]  # empty categories -> empty bags
        assert jt.values().tolist() == [v for r in ids for v in r[f]]
        assert int(jt.values().max()) < TABLES[f]
    lengths = kjt.lengths().view(26, 200)
    assert (lengths == 0).any(), "the sample has empty categories"
    assert log.bad_rows["train"].count == 0


def test_raw_then_preprocessed_gives_the_same_batches(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = SAMPLE.read_text().splitlines()
    # bad rows in the middle: preprocessing must drop exactly the rows the TSV reader drops
    lines.insert(50, "1\t2\t3")
    lines.insert(120, "2" + lines[10][1:])
    (raw / "day_0").write_text("\n".join(lines[:101]) + "\n")
    (raw / "day_1").write_text("\n".join(lines[101:]) + "\n")
    cc = CriteoDataConfig(path=str(raw), npy_path=str(tmp_path / "npy"), train=["day_0", "day_1[0:1/2]"],
                          val=["day_1[1/2:3/4]"], test=["day_1[3/4:1]"], num_embeddings=TABLES, chunk_bytes=4096)
    results = preprocess_criteo(DataConfig(criteo=cc), show_progress=False)
    assert [r.rows for r in results] == [100, 100] and [r.bad_rows for r in results] == [1, 1]
    tsv, npy = CriteoTsvLog(cc), CriteoNpyLog(cc)
    for split, batch_size in (("train", 20), ("val", 10), ("test", 10)):
        for world in (1, 2):
            for rank in range(world):
                a = list(tsv.batches(split, batch_size, rank, world))
                b = list(npy.batches(split, batch_size, rank, world))
                assert len(a) == len(b) == tsv.num_batches(split, batch_size) == npy.num_batches(split, batch_size) > 0
                for x, y in zip(a, b):
                    assert torch.equal(x.dense_features, y.dense_features)
                    assert torch.equal(x.labels, y.labels)
                    assert torch.equal(x.sparse_features.values(), y.sparse_features.values())
                    assert torch.equal(x.sparse_features.lengths(), y.sparse_features.lengths())
    meta = json.loads((tmp_path / "npy" / "day_1_meta.json").read_text())
    assert meta["num_embeddings"] == TABLES and meta["rows"] == 100 and "day_1:" in meta["bad_row_summary"]


def test_preprocessed_files_load_in_torchrecs_datapipe(tmp_path):
    from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

    cc = _cfg(SAMPLE.parent, npy_path=str(tmp_path))
    preprocess_criteo(DataConfig(criteo=cc), show_progress=False)
    stem = tmp_path / "criteo_sample"
    pipe = InMemoryBinaryCriteoIterDataPipe("train", [f"{stem}_dense.npy"], [f"{stem}_sparse.npy"],
                                            [f"{stem}_labels.npy"], batch_size=50, rank=0, world_size=1)
    theirs = next(iter(pipe))
    ours = next(iter(CriteoNpyLog(cc).batches("train", 50)))
    assert torch.equal(theirs.dense_features, ours.dense_features)
    assert torch.equal(theirs.labels.float(), ours.labels)


@pytest.mark.filterwarnings("ignore:Local function is not supported by pickle")  # inside TorchRec
def test_reads_files_from_torchrecs_own_preprocessing(tmp_path):
    from torchrec.datasets.criteo import BinaryCriteoUtils

    stem = tmp_path / "day_0"
    BinaryCriteoUtils.tsv_to_npys(str(SAMPLE), f"{stem}_dense.npy", f"{stem}_sparse.npy", f"{stem}_labels.npy")
    (batch,) = list(CriteoNpyLog(_cfg(SAMPLE.parent, "day_0", npy_path=str(tmp_path))).batches("train", 200))
    assert int(batch.labels.sum()) == 49
    # TorchRec maps a missing category to id 0 (a bag of one) and stores raw 32-bit values: we take them modulo
    _, _, ids = _reference(SAMPLE.read_text().splitlines())
    cat0 = batch.sparse_features["cat_0"]
    assert cat0.lengths().tolist() == [1] * 200 and cat0.values().tolist() == [r[0][0] for r in ids]


def _numbered_sample(path: Path) -> Path:
    """The sample with I13 replaced by the line number, so every row is unique and traceable."""
    out = []
    for i, line in enumerate(SAMPLE.read_text().splitlines()):
        f = line.split("\t")
        f[13] = str(i)
        out.append("\t".join(f))
    path.write_text("\n".join(out) + "\n")
    return path


def _line_of(row):
    return round(math.expm1(row[1][12]))


@pytest.mark.parametrize("source", ["tsv", "npy"])
def test_rank_shares_are_disjoint_and_cover_every_row_once(tmp_path, source):
    _numbered_sample(tmp_path / "numbered.tsv")
    cc = _cfg(tmp_path, "numbered.tsv", npy_path=str(tmp_path / "npy"))
    if source == "npy":
        preprocess_criteo(DataConfig(criteo=cc), show_progress=False)
    log = CriteoTsvLog(cc) if source == "tsv" else CriteoNpyLog(cc)
    for batch_size, world in ((40, 1), (40, 2), (48, 4), (200, 8)):
        per_rank = [[_rows_of(b) for b in log.batches("train", batch_size, r, world)] for r in range(world)]
        assert len({len(p) for p in per_rank}) == 1, "every rank yields the same number of batches"
        assert all(len(rows) == batch_size // world for p in per_rank for rows in p)
        seen = [_line_of(row) for p in per_rank for rows in p for row in rows]
        full = 200 // batch_size * batch_size
        assert sorted(seen) == list(range(full))  # disjoint, every row of every full batch once, tail dropped
        # global batch i is the same rows on any number of ranks: rank r holds its r-th slice
        for i in range(len(per_rank[0])):
            assert [_line_of(row) for r in range(world) for row in per_rank[r][i]] == list(
                range(i * batch_size, (i + 1) * batch_size))


def test_train_repeats_epochs_and_start_resumes():
    log = CriteoTsvLog(_cfg(SAMPLE.parent))
    one = [b.labels for b in log.batches("train", 64)]
    assert len(one) == 3  # 200 rows: 3 full batches, 8 rows dropped
    many = [b.labels for b in log.batches("train", 64, num_batches=7)]
    assert len(many) == 7 and all(torch.equal(many[i], one[i % 3]) for i in range(7))
    tail = [b.labels for b in log.batches("train", 64, num_batches=7, start=4)]
    assert len(tail) == 3 and all(torch.equal(t, many[4 + k]) for k, t in enumerate(tail))


_HEX = "0123456789abcdefABCDEF"
_good_dense = st.one_of(st.just(""), st.integers(-10**6, 10**12).map(str))
_good_cat = st.one_of(st.just(""), st.text(_HEX, min_size=1, max_size=16))
_good_row = st.tuples(st.sampled_from("01"), st.lists(_good_dense, min_size=13, max_size=13),
                      st.lists(_good_cat, min_size=26, max_size=26)).map(
    lambda t: "\t".join([t[0], *t[1], *t[2]]).encode())
_junk_field = st.one_of(st.text(max_size=6).map(lambda s: s.replace("\t", "").replace("\n", "")),
                        st.sampled_from(["nan", "inf", "-", "1.5", "1e3", "0x1f", "g", "ÿ", "12345678901234567",
                                         "99999999999999999999999"]))


@st.composite
def _fuzzed_line(draw):
    """A row that may be broken in one of the ways the reader must survive."""
    kind = draw(st.sampled_from(["good", "field", "fields", "bytes", "cut"]))
    row = draw(_good_row)
    if kind == "field":  # replace one field by junk
        parts = row.split(b"\t")
        parts[draw(st.integers(0, 39))] = draw(_junk_field).encode()
        row = b"\t".join(parts)
    elif kind == "fields":  # drop or add fields
        parts = row.split(b"\t")
        row = b"\t".join(parts[: draw(st.integers(0, 39))] if draw(st.booleans()) else parts + [b"1"])
    elif kind == "bytes":  # arbitrary bytes (undecodable, control characters)
        row = draw(st.binary(max_size=80)).replace(b"\n", b"")
    elif kind == "cut":
        row = row[: draw(st.integers(0, len(row)))]
    return row


def _oracle_ok(line: bytes) -> bool:
    """The documented rules, written independently of the reader."""
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return False
    f = text.split("\t")
    if len(f) != 40 or f[0] not in ("0", "1"):
        return False
    for x in f[1:14]:
        if x:
            try:
                float(x)
            except ValueError:
                return False
    return all(x == "" or re.fullmatch(r"[0-9a-fA-F]{1,16}", x) for x in f[14:])


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_fuzzed_line(), min_size=1, max_size=40), st.booleans())
def test_fuzzed_rows_never_crash_and_are_counted_exactly(lines, final_newline):
    with tempfile.TemporaryDirectory() as d:
        data = b"\n".join(lines) + (b"\n" if final_newline else b"")
        Path(d, "day_0").write_bytes(data)
        # a final line without newline still counts; the newline ending the file starts no new line
        expected_lines = data.split(b"\n")
        if expected_lines[-1] == b"":
            expected_lines = expected_lines[:-1]
        ok = [_oracle_ok(l) for l in expected_lines]
        log = CriteoTsvLog(_cfg(d, "day_0", chunk_bytes=1024))
        rows = sum(len(p.labels) for p in log.parsed_blocks("train"))
        bad = log.bad_rows["train"]
        assert rows == sum(ok)
        assert bad.count == len(ok) - sum(ok)
        first_bad = [i + 1 for i, good in enumerate(ok) if not good][:5]
        assert [line for _, line, _ in bad.first] == first_bad
        if bad.count:
            strict = CriteoTsvLog(_cfg(d, "day_0", chunk_bytes=1024), on_bad_row="error")
            with pytest.raises(DataError, match=rf"day_0:{first_bad[0]}: "):
                sum(len(p.labels) for p in strict.parsed_blocks("train"))


def test_nan_inf_and_huge_values_follow_the_documented_rule(tmp_path):
    base = SAMPLE.read_text().splitlines()[0].split("\t")
    row = list(base)
    row[1:5] = ["nan", "inf", "-inf", "1e300"]
    row[14] = "ffffffffffffffff"  # 2^64 - 1: still taken modulo the table size
    (tmp_path / "d").write_text("\t".join(row) + "\n")
    (batch,) = list(CriteoTsvLog(_cfg(tmp_path, "d")).batches("train", 1))
    assert batch.dense_features[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert batch.dense_features[0, 3].item() == pytest.approx(math.log1p(1e300))
    assert batch.sparse_features["cat_0"].values().tolist() == [(2**64 - 1) % TABLES[0]]


def test_errors_name_the_key_file_and_expectation(tmp_path):
    with pytest.raises(ConfigError, match="data.criteo.path is not set"):
        CriteoTsvLog(CriteoDataConfig())
    with pytest.raises(DataError, match=r"data.criteo.train: no file matches 'train.txt' in .*files there: d"):
        (tmp_path / "d").write_text("")
        CriteoTsvLog(CriteoDataConfig(path=str(tmp_path)))
    log = CriteoTsvLog(_cfg(tmp_path, "d"))  # an empty file: no batch can be made
    with pytest.raises(DataError, match="split 'train' has no usable rows: every row was malformed or the files are empty"):
        list(log.batches("train", 8, num_batches=5))
    with pytest.raises(ConfigError, match="data.criteo.val lists no files"):
        list(log.batches("val", 8))
    with pytest.raises(ConfigError, match="data.batch_size=9 must split evenly over 2"):
        list(CriteoTsvLog(_cfg(SAMPLE.parent)).batches("train", 9, 0, 2))
    with pytest.raises(ConfigError, match="data.criteo.num_embeddings lists 3 values"):
        load_config(None, ["data.criteo.num_embeddings=[1,2,3]"])
    with pytest.raises(ConfigError, match=r"data.criteo.train: 'x\[0.5:0.2\]'"):
        CriteoTsvLog(_cfg(tmp_path, "x[0.5:0.2]"))


def test_npy_errors(tmp_path):
    cc = _cfg(SAMPLE.parent, npy_path=str(tmp_path))
    with pytest.raises(DataError, match="no file matches 'criteo_sample_dense.npy'"):
        CriteoNpyLog(cc)
    preprocess_criteo(DataConfig(criteo=cc), show_progress=False)
    other = _cfg(SAMPLE.parent, npy_path=str(tmp_path), num_embeddings=500)
    with pytest.raises(ConfigError, match="data.criteo.num_embeddings differs"):
        CriteoNpyLog(other)
    labels = np.load(tmp_path / "criteo_sample_labels.npy")
    labels[3] = -1  # Kaggle test.txt style filler label
    np.save(tmp_path / "criteo_sample_labels.npy", labels)
    with pytest.raises(DataError, match="criteo_sample_labels.npy row 3: label -1 is not 0 or 1"):
        list(CriteoNpyLog(cc).batches("train", 50))
    (tmp_path / "criteo_sample_sparse.npy").unlink()
    with pytest.raises(DataError, match="criteo_sample_sparse.npy is missing"):
        CriteoNpyLog(cc)


def test_configs_load_and_build(tmp_path):
    sources = {"criteo_kaggle": "criteo_tsv", "criteo_terabyte": "criteo_npy", "movielens_100k": "movielens",
               "table_example": "table"}
    for name, source in sources.items():
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.data.source == source, name
    _numbered_sample(tmp_path / "train.txt")
    cfg = load_config(REPO / "configs" / "criteo_kaggle.yaml", [f"data.criteo.path={tmp_path}"])
    data = build_data(cfg.data, cfg.seed)
    assert data.num_embeddings == cfg.data.criteo.num_embeddings and len(data.dense_names) == 13
    # Kaggle convention: 6/7 train, the last 7th halved into val and test
    assert (data.rows("train"), data.rows("val"), data.rows("test")) == (172, 14, 14)
