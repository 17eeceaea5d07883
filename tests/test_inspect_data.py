"""`inspect-data` and `preprocess` through the CLI: counts a person can read, clean errors (exit 2)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import CRITEO_SAMPLE, REPO
from torchrec_kd.cli import main

SAMPLE = CRITEO_SAMPLE
FIXTURE = REPO / "tests" / "fixtures" / "ml-100k-tiny"


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _count(text, word, split="train"):
    line = next(l for l in text.splitlines() if l.startswith(f"split {split}"))
    return int(re.search(rf"\b{word} (\d+)", line).group(1))


def test_inspect_the_criteo_sample(capsys):
    code, out, err = _run(capsys, "inspect-data", "--format", "criteo_tsv", "--path", str(SAMPLE))
    assert code == 0, err
    assert _count(out, "rows") == 200 and _count(out, "positives") == 49 and _count(out, "negatives") == 151
    assert "bad rows skipped 0" in out
    cat21 = next(l for l in out.splitlines() if l.strip().startswith("cat_21 "))
    assert cat21.split()[1:4] == ["100000", "41", "159"]  # table rows, ids, empty bags: C22 is mostly empty
    int0 = next(l for l in out.splitlines() if l.strip().startswith("int_0 "))
    assert int0.split()[-3:] == ["90", "0", "0"]  # I1 is missing in 90 rows
    int1 = next(l for l in out.splitlines() if l.strip().startswith("int_1 "))
    assert int1.split()[-1] == "15"  # I2 holds 15 negative values, clamped to 0


def test_inspect_counts_bad_rows_and_names_their_lines(capsys, tmp_path):
    lines = SAMPLE.read_text().splitlines()
    lines[4] = "0\t1\t2"
    lines[9] = lines[9].replace("\t", "\tx", 1)
    (tmp_path / "day_0").write_text("\n".join(lines) + "\n")
    code, out, err = _run(capsys, "inspect-data", "--format", "criteo_tsv", "--path", str(tmp_path / "day_0"),
                          "data.batch_size=64")
    assert code == 0, err
    assert _count(out, "rows") == 198 and "bad rows skipped 2" in out
    assert f"first at {tmp_path / 'day_0'}:5, {tmp_path / 'day_0'}:10" in out
    assert "data.batch_size=64: 3 full global batch(es), 6 row(s) in the dropped tail" in out
    code, out, err = _run(capsys, "inspect-data", "--format", "criteo_tsv", "--path", str(tmp_path / "day_0"),
                          "--limit", "50")
    assert code == 0 and _count(out, "rows") == 50 and "(first 50 rows only)" in out


def test_preprocess_then_inspect_the_npy(capsys, tmp_path):
    code, _, err = _run(capsys, "preprocess", "--out", str(tmp_path), f"data.criteo.path={SAMPLE.parent}",
                        "data.criteo.train=[criteo_sample.tsv]", "data.criteo.val=[]", "data.criteo.test=[]")
    assert code == 0, err
    assert (tmp_path / "criteo_sample_dense.npy").is_file()
    code, out, err = _run(capsys, "inspect-data", "--format", "criteo_npy", "--path", str(tmp_path / "criteo_sample"))
    assert code == 0, err
    assert _count(out, "rows") == 200 and _count(out, "positives") == 49
    cat21 = next(l for l in out.splitlines() if l.strip().startswith("cat_21 "))
    assert cat21.split()[1:4] == ["100000", "41", "159"]  # empty categories survive preprocessing


def test_inspect_movielens_and_table(capsys):
    code, out, err = _run(capsys, "inspect-data", "--format", "movielens", "--path", str(FIXTURE),
                          "data.movielens.val_fraction=0.2", "data.movielens.test_fraction=0.2")
    assert code == 0, err
    assert [_count(out, "rows", s) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sum(_count(out, "positives", s) for s in ("train", "val", "test")) == 6
    assert "loading all splits: bad rows skipped 0" in out and "genres" in out
    code, out, err = _run(capsys, "inspect-data", "--format", "table", "--path", str(REPO / "examples/data/clicks.csv"),
                          "--config", str(REPO / "configs/table_example.yaml"), "--split", "test")
    assert code == 0, err
    assert _count(out, "rows", "test") == 180 and "split train" not in out


@pytest.mark.parametrize("argv, message", [
    (["--format", "criteo_tsv", "--path", "/nonexistent/day_0"], "data.criteo.path=/nonexistent: no such directory"),
    (["--format", "table", "--path", str(REPO / "examples/data/clicks.csv")],
     "data.table declares no dense and no sparse columns"),
    (["--format", "movielens", "--path", str(REPO)], "no u.data (ml-100k) or ratings.dat (ml-1m) there"),
])
def test_bad_input_is_a_message_and_exit_code_2(capsys, argv, message):
    code, out, err = _run(capsys, "inspect-data", *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_error_in_a_fresh_process(tmp_path):
    bad = tmp_path / "day_0"
    bad.write_text(SAMPLE.read_text().splitlines()[0] + "\n1\t2\n")
    out = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "inspect-data", "--format", "criteo_tsv",
                          "--path", str(bad), "data.on_bad_row=error"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert f"error: {bad}:2: expected 40 tab-separated fields, found 2" in out.stderr
    assert "data.on_bad_row=error" in out.stderr and "Traceback" not in out.stderr
