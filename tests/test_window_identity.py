"""A window's fingerprint depends on the rows it reads (windows 0..t+1), not on data that arrives later.

The continual workflow records the digest of window t's rows as ``data.windows.rows_digest``;
``data_identity`` then uses it instead of the data files' identity and drops the keys that only say
how many windows follow. Checked at the fingerprint level (no training) on the three ways data
arrives: more drift windows, appended table rows, a new Criteo day file.
"""

import os
from pathlib import Path
from typing import Dict

import pytest
import yaml

from tests.conftest import CRITEO_SAMPLE, TINY
from torchrec_kd.config import load_config
from torchrec_kd.core.fingerprint import data_identity, describe_change, step_fingerprint
from torchrec_kd.data import build_data
from torchrec_kd.errors import DataError
from torchrec_kd.workflows import continual


def _fingerprints(cfg, t: int) -> Dict[str, str]:
    """Every step's fingerprint digest of window t (teacher, student, distilled, scratch)."""
    plan = continual.window_plan(cfg, t)
    out = {"teacher": step_fingerprint(plan.teacher, "teacher")["digest"],
           "student": step_fingerprint(plan.student, "student")["digest"],
           "distilled": step_fingerprint(plan.distilled, "distilled", {"teachers": "t"})["digest"]}
    if plan.scratch is not None:
        out["scratch"] = step_fingerprint(plan.scratch, "student")["digest"]
    return out


# ----------------------------------------------------------------------------- synthetic drift
def _drift(tmp_path: Path, windows: int, new_ids: float):
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["synthetic"]["drift"] = {"windows": windows, "rows_per_window": 128, "new_ids_per_window": new_ids}
    raw["data"]["windows"] = {"count": windows, "val_fraction": 0.2}
    path = tmp_path / f"drift_{windows}_{new_ids}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, [f"output_dir={tmp_path / 'run'}"])


def test_a_new_drift_window_leaves_the_earlier_windows_fingerprints(tmp_path):
    five, six = _drift(tmp_path, 5, 0.0), _drift(tmp_path, 6, 0.0)
    for t in range(3):
        assert _fingerprints(five, t) == _fingerprints(six, t), t
    # what the window count changes is left out only because the rows hold it: the whole-log identity differs
    assert data_identity(five) != data_identity(six)


def test_drift_new_id_cohorts_depend_on_the_window_count_so_its_rows_and_fingerprints_change(tmp_path):
    """With new ids, window 0's cohort is n - (W-1)k ids (data/synthetic.py: drift_rankings): one more
    window changes window 0's rows, and an honest fingerprint follows the rows."""
    five, six = _drift(tmp_path, 5, 0.02), _drift(tmp_path, 6, 0.02)
    assert continual.window_plan(five, 0).student.data.windows.rows_digest != \
        continual.window_plan(six, 0).student.data.windows.rows_digest
    assert _fingerprints(five, 0)["student"] != _fingerprints(six, 0)["student"]


# ----------------------------------------------------------------------------- a table that grows
def _table_rows(rows):
    """CSV lines of (k, time): label k % 2, dense rank k, text ids u<k % 7>, i<3k % 11>."""
    return [f"{s},{k % 2},{k},u{k % 7},i{(k * 3) % 11}" for k, s in rows]


def _table(tmp_path: Path, csv: Path):
    return load_config(TINY, ["data.source=table", f"data.table.path={csv}", "data.table.time_column=time",
                              "data.table.dense=[rank]", "data.table.sparse=[{column: user}, {column: item}]",
                              "data.windows={size: 100s, entities: [user, item]}", f"output_dir={tmp_path / 'run'}"])


def test_appended_table_rows_change_only_the_windows_that_read_them(tmp_path):
    csv = tmp_path / "log.csv"
    # 4 windows of 100 s (10 rows each, times 1000..1390), written out of time order
    order = [(k * 17) % 40 for k in range(40)]
    csv.write_text("time,label,rank,user,item\n" + "\n".join(_table_rows([(k, 1000 + 10 * k) for k in order])) + "\n")
    cfg = _table(tmp_path, csv)
    before = {t: _fingerprints(cfg, t) for t in range(3)}
    plain = data_identity(load_config(TINY, ["data.source=table", f"data.table.path={csv}",
                                             "data.table.time_column=time", "data.table.dense=[rank]",
                                             "data.table.sparse=[{column: user}, {column: item}]",
                                             "data.windows={size: 100s, entities: [user, item], index: 0}"]))
    # the next day's rows arrive: one late row of window 3 (its test rows grow) and a new window 4
    with csv.open("a") as f:
        f.write("\n".join(_table_rows([(40, 1395)] + [(k, 1000 + 10 * k) for k in range(41, 50)])) + "\n")
    os.utime(csv, ns=(1, 1))  # a different mtime whatever the clock's resolution
    cfg = _table(tmp_path, csv)
    after = {t: _fingerprints(cfg, t) for t in range(4)}
    assert after[0] == before[0] and after[1] == before[1]  # windows 0..2 / 0..3 hold the same rows
    assert all(after[2][m] != before[2][m] for m in before[2])  # window 2 is scored on window 3, which grew
    # a run without the digest (not continual) is still identified by the file: any change is a change
    assert data_identity(load_config(TINY, ["data.source=table", f"data.table.path={csv}",
                                            "data.table.time_column=time", "data.table.dense=[rank]",
                                            "data.table.sparse=[{column: user}, {column: item}]",
                                            "data.windows={size: 100s, entities: [user, item], index: 0}"])) != plain
    # and the change is named as the window's rows
    old = continual.window_plan(_table(tmp_path, csv), 2).student
    new_id = data_identity(old)
    old_id = {**new_id, "windows": {**new_id["windows"], "rows_digest": "aaaa"}}
    assert describe_change({"data": old_id}, {"data": new_id}) == \
        [f"the rows this window reads (windows 0..index+1): aaaa -> {old.data.windows.rows_digest}"]


def test_a_config_recording_other_rows_stops(tmp_path):
    cfg = _drift(tmp_path, 4, 0.0)
    data = continual.window_plan(cfg, 1).student.data
    assert build_data(data, seed=0).rows_digest == data.windows.rows_digest  # the recorded rows are read
    data.windows.rows_digest = "0123456789abcdef"
    with pytest.raises(DataError, match="data.windows.rows_digest=0123456789abcdef"):
        build_data(data, seed=0)


# ----------------------------------------------------------------------------- Criteo days
DAY_ROWS = 40


def _criteo(root: Path, count: int, tmp_path: Path):
    return load_config(TINY, ["data.source=criteo_tsv", f"data.criteo.path={root}", "data.criteo.days=['day_*']",
                              "data.criteo.num_embeddings=97", "data.batch_size=16",
                              f"data.windows={{count: {count}}}", f"output_dir={tmp_path / 'run'}"])


def test_a_new_criteo_day_leaves_the_earlier_windows_fingerprints(tmp_path):
    root = tmp_path / "days"
    root.mkdir()
    lines = CRITEO_SAMPLE.read_text().splitlines()
    for d in range(4):
        (root / f"day_{d}").write_text("\n".join(lines[d * DAY_ROWS:(d + 1) * DAY_ROWS]) + "\n")
    before = {t: _fingerprints(_criteo(root, 4, tmp_path), t) for t in range(3)}
    (root / "day_4").write_text("\n".join(lines[4 * DAY_ROWS:5 * DAY_ROWS]) + "\n")
    after = {t: _fingerprints(_criteo(root, 5, tmp_path), t) for t in range(4)}
    assert all(after[t] == before[t] for t in range(3))
    # a day a window reads does count: day_3 rewritten changes window 2 (its test day) only
    (root / "day_3").write_text("\n".join(lines[:DAY_ROWS]) + "\n")
    again = {t: _fingerprints(_criteo(root, 5, tmp_path), t) for t in range(4)}
    assert again[0] == before[0] and again[1] == before[1]
    assert again[2]["student"] != before[2]["student"] and again[3]["student"] != after[3]["student"]
