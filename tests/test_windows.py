"""Time windows (data.windows): windows partition the log in time order, a window's splits (val = its last rows,
test = the next window, history = the train parts so far), entity ids remapped (new ids own rows, unseen row 0,
old rows kept), cold-start slices, 1 vs 2 ranks, the drifting synthetic world, ml-latest's leak-free tags, and
one-line errors for bad configs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_movielens import T, write_ml_latest
from torchrec_kd.config import load_config
from torchrec_kd.config.data_sources import WindowsConfig
from torchrec_kd.data import build_data, window_slices
from torchrec_kd.data.synthetic import drift_rankings
from torchrec_kd.data.windows import cut_windows
from torchrec_kd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_synthetic.yaml"
DRIFT = ["data.synthetic.num_embeddings=120", "data.synthetic.drift={windows: 4, rows_per_window: 1024, "
         "new_ids_per_window: 0.05, popularity_shift: 0.05, concept_shift: 0.1}"]


def _drift(*extra):
    return load_config(TINY, DRIFT + list(extra))


@pytest.fixture(scope="module")
def drift_logs():
    """Windows 0, 1 and 2 of the tiny drifting world (4 windows of 1,024 rows)."""
    return {t: build_data(_drift(f"data.windows={{count: 4, index: {t}}}").data, seed=0) for t in range(3)}


def test_windows_partition_the_rows_in_time_order():
    times = np.random.default_rng(0).integers(0, 1000, 503)
    for cfg in (WindowsConfig(count=7), WindowsConfig(size="100s"), WindowsConfig(size="50s", start=300, min_rows=60)):
        windows = cut_windows(times, cfg)
        rows = np.concatenate(windows)
        assert sorted(rows.tolist()) == list(range(len(times)))  # every row once
        for a, b in zip(windows, windows[1:]):  # a window's rows are never in an earlier window
            assert times[a].max() <= times[b].min()
    sizes = [len(w) for w in cut_windows(times, WindowsConfig(size="50s", start=300, min_rows=60))]
    assert min(sizes) >= 60 and sizes[0] == (times < 300).sum()
    assert [len(w) for w in cut_windows(times, WindowsConfig(by="rows", count=2))] == [252, 251]
    assert cut_windows(times, WindowsConfig(by="rows", count=2))[0].tolist() == list(range(252))  # stored order


def _write_table(path: Path, n: int = 40) -> Path:
    """n rows written in shuffled time order; dense ``rank`` = the row's time rank; user / item as text."""
    rng = np.random.default_rng(1)
    lines = ["time,label,rank,user,item"]
    for k in rng.permutation(n):
        lines.append(f"{1000 + 10 * k},{k % 2},{k},u{k % 7},i{(k * 3) % 11}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(csv: Path, windows: str):
    return load_config(None, ["data.source=table", f"data.table.path={csv}", "data.table.time_column=time",
                              "data.table.dense=[rank]", "data.table.sparse=[{column: user}, {column: item}]",
                              f"data.windows={windows}"])


def _ranks(log, split):
    return log.splits[split].dense[:, 0].astype(int).tolist()


def test_window_splits_val_is_the_last_rows_test_the_next_window_history_the_train_parts(tmp_path):
    csv = _write_table(tmp_path / "log.csv")
    base = "{count: 4, val_fraction: 0.2, entities: [user, item], index: %d, history: %s}"
    log = build_data(_table(csv, base % (1, "false")).data, seed=0)
    assert (_ranks(log, "val"), _ranks(log, "test")) == ([18, 19], list(range(20, 30)))
    assert sorted(_ranks(log, "train")) == list(range(10, 18))
    hist = build_data(_table(csv, base % (2, "true")).data, seed=0)
    assert sorted(_ranks(hist, "train")) == [*range(0, 8), *range(10, 18), *range(20, 28)]
    assert (_ranks(hist, "val"), _ranks(hist, "test")) == ([28, 29], list(range(30, 40)))
    # by: rows cuts the file order instead
    rows = build_data(_table(csv, "{by: rows, count: 4, entities: [user], index: 0}").data, seed=0)
    file_ranks = [int(line.split(",")[2]) for line in csv.read_text().splitlines()[1:]]
    assert _ranks(rows, "test") == file_ranks[10:20]


def test_new_ids_get_their_own_rows_unseen_ids_row_0_old_ids_keep_theirs(drift_logs):
    for t, log in drift_logs.items():
        for name in log.entities:
            f = log.sparse_names.index(name)
            remap = log.remaps[name]
            assert log.num_embeddings[f] == 121  # the table plus the fallback row
            for split in ("train", "val", "test"):
                rows = log.splits[split].sparse[f].values
                assert rows.max() < log.num_embeddings[f]
            # no two raw ids share a row, and every trained id has a row other than 0
            ids, _ = log.trained_counts[name]
            rows = remap.lookup(ids)
            assert 0 not in rows and len(set(rows.tolist())) == len(ids)
            # test ids never trained on read row 0; the others their own row
            raw = log.test_raw[name].values
            got = log.splits["test"].sparse[f].values
            assert np.array_equal(got == 0, ~np.isin(raw, ids))
            if t:  # the remap only grows: window t-1's ids keep their rows
                prev = drift_logs[t - 1].remaps[name]
                assert np.array_equal(remap.lookup(prev.ids), prev.lookup(prev.ids))
                assert len(remap) > len(prev)


def test_slices_on_a_hand_made_case(tmp_path):
    # window 0 (10 rows): train u1 x5, u2 x2, u4 x1 (item a); val u3 x2 (not trained: still new).
    # window 1 (test): u1/a rest, u2/a rare, u3/a new, u4/a rare, u5/a new, u1/zz new, 4 x u1/a rest
    users = ["u1"] * 5 + ["u2"] * 2 + ["u4", "u3", "u3"] + ["u1", "u2", "u3", "u4", "u5", "u1"] + ["u1"] * 4
    items = ["a"] * 15 + ["zz"] + ["a"] * 4
    csv = tmp_path / "slices.csv"
    csv.write_text("time,label,rank,user,item\n" + "".join(
        f"{k},{k % 2},{k},{u},{i}\n" for k, (u, i) in enumerate(zip(users, items))))
    log = build_data(_table(csv, "{count: 2, val_fraction: 0.2, entities: [user, item], index: 0, "
                                 "rare_below: 3}").data, seed=0)
    assert window_slices(log).tolist() == [2, 1, 0, 1, 0, 0, 2, 2, 2, 2]
    assert window_slices(log).dtype == np.int8
    assert log.window_info()[1]["new_ids"] == {"user": 1, "item": 1}  # u5, zz (u3 was seen in window 0's val)


def test_one_and_two_ranks_cut_the_same_global_batches(drift_logs):
    log = drift_logs[1]
    for split in ("train", "val", "test"):
        one = list(log.batches(split, 64, rank=0, world_size=1, num_batches=3))
        two = [list(log.batches(split, 64, rank=r, world_size=2, num_batches=3)) for r in range(2)]
        for b, r0, r1 in zip(one, *two):
            assert torch.equal(b.labels, torch.cat([r0.labels, r1.labels]))
            assert torch.equal(b.dense_features, torch.cat([r0.dense_features, r1.dense_features]))
            for key in log.sparse_names:
                assert torch.equal(b.sparse_features[key].values(),
                                   torch.cat([r0.sparse_features[key].values(), r1.sparse_features[key].values()]))


def test_drift_new_ids_enter_each_window_at_the_configured_rate_deterministically(drift_logs):
    cfg = _drift().data
    syn = cfg.synthetic
    world = build_data(cfg, seed=0)  # drift without data.windows: its own windows, the last one is test
    assert world.window == syn.drift.windows - 2 and len(world.windows) == syn.drift.windows
    from torchrec_kd.data.synthetic import SyntheticClickLog

    gen = SyntheticClickLog(syn, seed=0)
    rows, times = gen.drift_timeline()
    again, _ = SyntheticClickLog(syn, seed=5).drift_timeline()  # world_seed: 0 fixes the world, not the run seed
    assert np.array_equal(rows.labels, again.labels) and np.array_equal(rows.sparse[0].values, again.sparse[0].values)
    rankings = drift_rankings(syn.drift, gen.sparse_names, gen.num_embeddings, [int(o) for o in gen._offsets], 0)
    k = round(0.05 * 120)
    for f in (0, 1):
        ids = rows.sparse[f].values
        for w in range(1, syn.drift.windows):
            entering = np.setdiff1d(rankings[f][w].numpy(), rankings[f][w - 1].numpy())
            assert len(entering) == k
            assert not np.isin(entering, ids[times < w]).any()  # never seen before their window
            assert np.isin(entering, ids[times == w]).sum() >= k - 2  # and they do show up in it
    # the oracle's biases and the popularity move: windows differ in their click rates per id
    assert rows.labels.mean() > 0.05


def test_ml_latest_windows_counts_and_tags_see_only_the_past(tmp_path):
    root = write_ml_latest(tmp_path / "ml-latest")

    def log(index):
        cfg = load_config(None, ["data.source=movielens", f"data.movielens.path={root}", "data.batch_size=1",
                                 f"data.windows={{count: 5, val_fraction: 0.5, index: {index}}}"])
        return build_data(cfg.data, seed=0)

    two = log(2)
    names = two.sparse_names
    assert names == ["user_id", "item_id", "genres", "tags"]
    test = two.splits["test"]  # window 3: (1, 4, T+600), (4, 1, T+700)
    # trained rows (each window's first rating): (1,1,T) (2,1,T+200) (3,2,T+400): users 1,2,3 -> rows 1,2,3
    assert test.sparse[0].values.tolist() == [1, 0] and test.sparse[1].values.tolist() == [0, 1]
    # counts from trained rows only: user 1 once, item 1 twice; user 4 / item 4 never
    assert np.allclose(test.dense[:, 1], np.log1p([1, 0])) and np.allclose(test.dense[:, 2], np.log1p([0, 2]))
    # tags applied before the test window (T+600), ids by first application: classic 0, pixar 1, "funny, clever" 2,
    # politics 3, boring 4; item 1's bag: pixar, funny clever
    tags = test.sparse[3]
    assert tags.values[tags.offsets[1]:tags.offsets[2]].tolist() == [1, 2]
    assert two.num_embeddings[3] == 5 and two.num_embeddings[0] == 5 + 1  # 5 users + the fallback row
    one = log(1)  # test window 2 begins at T+400: politics (T+500) is the future
    bag = one.splits["test"].sparse[3]
    assert bag.values[bag.offsets[0]:bag.offsets[1]].tolist() == []  # item 2 at T+400: no tag yet
    assert T > 0


@pytest.mark.parametrize("windows, message", [
    ("{count: 4, size: 90d}", r"data.windows: set exactly one of count .* or size"),
    ("{by: rows, size: 7d}", r"data.windows.size='7d' needs by: time"),
    ("{count: 4, index: 3}", r"data.windows.index=3 is out of range: 4 windows, .* so index must be in 0..2"),
    ("{count: 4, val_fraction: 1.5}", r"data.windows.val_fraction must be in \(0, 1\)"),
    ("{size: 9x}", r"data.windows.size='9x' is not a duration"),
])
def test_bad_windows_configs_are_one_line_errors(windows, message):
    with pytest.raises(ConfigError, match=message) as e:
        _drift(f"data.windows={windows}")
    assert "\n" not in str(e.value)


def test_bad_windows_for_the_source_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.windows.size='90d': the drifting synthetic world's time"):
        _drift("data.windows={size: 90d}")
    with pytest.raises(ConfigError, match="data.windows on the synthetic source needs data.synthetic.drift"):
        load_config(TINY, ["data.windows={count: 4}"])
    with pytest.raises(ConfigError, match="data.windows on Criteo needs data.criteo.days"):  # test_criteo_windows.py
        load_config(TINY, ["data.source=criteo_tsv", "data.windows={count: 4}"])
    csv = _write_table(tmp_path / "log.csv")
    with pytest.raises(ConfigError, match=r"data.windows.entities must name the user / item columns"):
        build_data(_table(csv, "{count: 4}").data, seed=0)
    with pytest.raises(ConfigError, match=r"data.windows.entities names \['nope'\], not sparse features"):
        build_data(_table(csv, "{count: 4, entities: [nope]}").data, seed=0)
    with pytest.raises(ConfigError, match=r"data.windows.index=9 is out of range: the data has 4 windows"):
        build_data(_table(csv, "{size: 100s, entities: [user], index: 9}").data, seed=0)


def test_a_saved_remap_maps_raw_ids_as_training_did(drift_logs, tmp_path):
    from torchrec_kd.data.id_remap import load_remaps, save_remaps

    log = drift_logs[2]
    back = load_remaps(save_remaps(log.remaps, tmp_path))
    for name in log.entities:
        f = log.sparse_names.index(name)
        assert np.array_equal(back[name].lookup(log.test_raw[name].values), log.splits["test"].sparse[f].values)
