"""Criteo windows by day file (data.criteo.days + data.windows): the 200-row sample cut into 4 "days" of 50.

Window t is rewritten into an ordinary Criteo config (train day_t[0:1-val_fraction], val the rest,
test day_{t+1}), read by the streaming readers: checked row by row against the day files, for the
TSV and the preprocessed npy layout, plus the config errors and one tiny `continual` run.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import CRITEO_SAMPLE, TINY
from torchrec_kd.config import load_config
from torchrec_kd.data import CriteoNpyLog, CriteoTsvLog, build_data
from torchrec_kd.data.files import count_lines, parse_spec
from torchrec_kd.data.preprocess import preprocess_criteo
from torchrec_kd.data.timelines import criteo_days, criteo_window_data
from torchrec_kd.errors import ConfigError
from torchrec_kd.workflows import continual

DAY_ROWS, DAYS, TABLE = 50, 4, 97


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    """tmp/day_0 … day_3: consecutive 50-line slices of the Criteo sample."""
    root = tmp_path_factory.mktemp("criteo_days")
    lines = CRITEO_SAMPLE.read_text().splitlines()
    assert len(lines) == DAYS * DAY_ROWS
    for d in range(DAYS):
        (root / f"day_{d}").write_text("\n".join(lines[d * DAY_ROWS:(d + 1) * DAY_ROWS]) + "\n")
    return root


def _cfg(root: Path, *overrides: str, days: str = "['day_*']", windows: str = "{count: 4}"):
    return load_config(TINY, ["data.source=criteo_tsv", f"data.criteo.path={root}", f"data.criteo.days={days}",
                              f"data.criteo.num_embeddings={TABLE}", "data.batch_size=16",
                              f"data.windows={windows}", *overrides])


def _expected(root: Path, day: int, a: int, b: int):
    """Labels and cat ids (-1: empty) of lines [a, b) of day_<day>, parsed here by hand."""
    rows = [line.split("\t") for line in (root / f"day_{day}").read_text().splitlines()[a:b]]
    labels = [int(r[0]) for r in rows]
    ids = [[int(c, 16) % TABLE if c else -1 for c in r[14:40]] for r in rows]
    return labels, ids


def _read(log, split: str):
    """Every row of ``split`` in stored order: labels and cat ids (-1: empty), from the reader's blocks."""
    labels, ids = [], []
    for block in log.row_blocks(split):
        labels += block.labels.astype(int).tolist()
        cols = []
        for jag in block.sparse:
            col = np.full(len(jag), -1, np.int64)
            lengths = jag.lengths
            col[lengths > 0] = jag.values
            cols.append(col)
        ids += np.stack(cols, 1).tolist()
    return labels, ids


def _concat(parts):
    return [x for p in parts for x in p[0]], [x for p in parts for x in p[1]]


@pytest.mark.parametrize("t", [0, 1, 2])
def test_a_window_reads_its_day_rows_in_order(days, t):
    log = build_data(_cfg(days, f"data.windows.index={t}").data, seed=0)
    assert isinstance(log, CriteoTsvLog)  # the streaming reader: a window is never held in memory
    assert _read(log, "train") == _expected(days, t, 0, 45)  # val_fraction 0.1: the last 5 of 50 rows are val
    assert _read(log, "val") == _expected(days, t, 45, 50)
    assert _read(log, "test") == _expected(days, t + 1, 0, 50)  # all of the next day


def test_history_concatenates_the_train_parts_of_the_days_so_far(days):
    log = build_data(_cfg(days, "data.windows.index=2", "data.windows.history=true",
                          "data.windows.val_fraction=0.2").data, seed=0)
    assert _read(log, "train") == _concat([_expected(days, d, 0, 40) for d in range(3)])
    assert _read(log, "val") == _expected(days, 2, 40, 50)
    assert _read(log, "test") == _expected(days, 3, 0, 50)


def test_a_windows_rows_are_never_in_an_earlier_window(days):
    """Window t's rows (its train, val, and the previous index's test) share no line with windows 0..t-1."""
    lines = {f"day_{d}": count_lines(days / f"day_{d}") for d in range(DAYS)}

    def rows(specs):  # the (file, line) pairs a split's specs read
        out = set()
        for text in specs:
            spec = parse_spec(text)
            out |= {(spec.name, i) for i in range(*spec.rows(lines[spec.name]))}
        return out

    seen: set = set()
    window_rows = []
    for t in range(DAYS - 1):
        c = criteo_window_data(_cfg(days, f"data.windows.index={t}").data).criteo
        mine = rows(c.train) | rows(c.val)
        assert mine and not mine & seen, f"window {t} reads rows of an earlier window"
        window_rows.append(mine)
        seen |= mine
        assert rows(c.test) & seen == set()  # the test day is scored before anything trains on it
    assert len(seen) == 3 * DAY_ROWS and all(len(w) == DAY_ROWS for w in window_rows)


def test_day_specs_with_row_ranges_are_windows_too(days):
    # half days as windows: day_0 twice (two halves), then day_1 whole
    cfg = _cfg(days, "data.windows.index=1", days="['day_0[0:1/2]', 'day_0[1/2:1]', day_1]", windows="{count: 3}")
    assert [str(s.name) for s in criteo_days(cfg.data)] == ["day_0", "day_0", "day_1"]
    log = build_data(cfg.data, seed=0)
    # window 1 = rows 25..49 of day_0: train its first 9/10 (ceil(0.5*50 + 0.45*50) = 48), val the rest
    assert _read(log, "train") == _expected(days, 0, 25, 48)
    assert _read(log, "val") == _expected(days, 0, 48, 50)
    assert _read(log, "test") == _expected(days, 1, 0, 50)


def test_the_preprocessed_days_give_the_same_window(days, tmp_path):
    npy = tmp_path / "npy"
    cfg = _cfg(days, "data.windows.index=1", "data.windows.history=true", f"data.criteo.npy_path={npy}")
    results = preprocess_criteo(cfg.data, show_progress=False)  # a windowed config preprocesses its days
    assert sorted(Path(r.source).name for r in results) == [f"day_{d}" for d in range(DAYS)]
    npy_cfg = _cfg(days, "data.windows.index=1", "data.windows.history=true", f"data.criteo.npy_path={npy}",
                   "data.source=criteo_npy")
    tsv, log = build_data(cfg.data, seed=0), build_data(npy_cfg.data, seed=0)
    assert isinstance(log, CriteoNpyLog)
    for split in ("train", "val", "test"):
        assert _read(log, split) == _read(tsv, split)
    assert log.rows("train") == 90 and log.rows("val") == 5 and log.rows("test") == 50


@pytest.mark.parametrize("overrides, message", [
    (["data.windows.index=3"], r"data.windows.index=3 is out of range: 4 windows"),
    (["data.windows.entities=[cat_0]"], r"data.windows.entities=\['cat_0'\] must be empty for data.source=criteo_tsv: "
                                        r"Criteo's categories are hashed values"),
    (["data.criteo.days=[]"], r"data.windows on Criteo needs data.criteo.days"),
    (["data.windows={size: 1d}"], r"data.windows.size='1d': Criteo's windows are its day files"),
    (["data.criteo.days=[day_0, day_1, day_2]"], r"data.windows.count=4 but data.criteo.days names 3 day files"),
])
def test_bad_criteo_windows_are_one_line_config_errors(days, overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        _cfg(days, *overrides)
    assert "\n" not in str(e.value)


def test_what_only_the_folder_tells_is_a_one_line_error_when_the_data_is_read(days):
    cases = [(_cfg(days, windows="{count: 5}"), r"data.windows.count=5 but data.criteo.days matches 4 day files"),
             (_cfg(days, "data.windows.index=3", windows="{count: 5}", days="[day_0, day_1, day_2, day_3, day_9]"),
              r"data.criteo.days: no file matches 'day_9'"),
             (_cfg(days, days="[day_0, 'day_*']", windows="{count: 2}"), r"window 1 \(day_0\) shares rows with an "
                                                                          r"earlier window \(day_0\)")]
    for cfg, message in cases:
        with pytest.raises(Exception, match=message) as e:
            build_data(cfg.data, seed=0)
        assert "\n" not in str(e.value)


def test_continual_over_four_days(days, tmp_path):
    """Windows 0..1 trained (1 warm-started), each scored on the next day: all four models, no slices."""
    raw = yaml.safe_load(TINY.read_text())
    raw["data"].update(source="criteo_tsv", batch_size=8,
                       criteo={"path": str(days), "days": ["day_*"], "num_embeddings": TABLE},
                       windows={"count": 4, "val_fraction": 0.32})  # 16 val rows (day 0's hold 2 clicks)
    raw["train"] = {"epochs": 1, "log_every": 0}
    raw["distill"] = {"qat": None}
    path = tmp_path / "criteo_days.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    doc = continual.run(load_config(path, [f"output_dir={out}", "continual.last_window=1"]))
    assert [w["window"] for w in doc["windows"]] == [1, 2] and doc["windows_total"] == DAYS
    scored = DAY_ROWS // 8 * 8  # the next day's full batches, as every recipe's test metrics
    for w in doc["windows"]:
        assert set(w["models"]) == {"teacher", "distilled", "student", "scratch"}
        for m in w["models"].values():
            assert m["rows"] == scored and m["slices"] is None  # no entities, no cold-start slices
        assert w["test_rows"] == scored and w["export_bytes"] > 0
    labels = _expected(days, 2, 0, scored)[0]  # window 1's models are scored on day 2, before training on it
    assert doc["windows"][1]["models"]["student"]["auc"] is not None and sum(labels) > 0
    assert doc["windows"][1]["warm_started"] and doc["windows"][1]["models"]["scratch"].get("same_as") is None
    assert doc["windows"][1]["delta_bytes"] > 0 and "kd_gain" in doc and "cost_ratio" in doc
    saved = json.loads((out / "continual.json").read_text())
    assert saved["windows"] == doc["windows"]
    assert "None: this source has no user / item entities" in (out / "continual.md").read_text()
