"""Readers emit one label column per task ([n, T] in task order); one task is exactly the old label."""

import numpy as np
import pytest
import torch

from tests.conftest import REPO, TINY
from tests.test_movielens import LATEST_RATINGS, write_ml_latest
from torchrec_kd.config import MovieLensDataConfig, TableDataConfig, load_config
from torchrec_kd.config.data_sources import SparseColumnConfig, SyntheticTasksConfig
from torchrec_kd.config.schema import TaskConfig
from torchrec_kd.data import build_data
from torchrec_kd.data.movielens import MovieLensClickLog
from torchrec_kd.data.synthetic import SyntheticClickLog
from torchrec_kd.data.table import TableClickLog
from torchrec_kd.errors import ConfigError, DataError

CSV = """user,price,clicked,converted,status,dwell
a,1.0,1,1,single,3.5
b,2.0,0,,married,0.5
c,3.0,1,0,Single,2.0
d,4.0,0,1,divorced,1.0
e,5.0,1,1,married,4.25
"""


def _table(tmp_path, text=CSV):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return TableDataConfig(path=str(path), label="clicked", dense=["price"],
                           sparse=[SparseColumnConfig(column="user", num_embeddings=10)],
                           val_fraction=0.0, test_fraction=0.0, split="ordered", shuffle=False)


def test_a_table_gives_one_column_per_task_by_name_positive_at_least_and_space(tmp_path):
    tasks = [TaskConfig("click"), TaskConfig("converted", only_where="click"),
             TaskConfig("single", column="status", positive=["single"]),
             TaskConfig("long", column="dwell", at_least=2.0), TaskConfig("dwell", type="regression")]
    log = TableClickLog(_table(tmp_path), verbose=False, tasks=tasks)
    labels = log.splits["train"].labels
    assert labels.dtype == np.float32 and labels.shape == (5, 5)
    np.testing.assert_array_equal(labels[:, 0], [1, 0, 1, 0, 1])  # data.table.label with its values
    np.testing.assert_array_equal(labels[:, 1], [1, 0, 0, 0, 1])  # 0 outside clicks (d's 1 too), b's empty cell ok
    np.testing.assert_array_equal(labels[:, 2], [1, 0, 1, 0, 0])  # text values compare case-insensitively
    np.testing.assert_array_equal(labels[:, 3], [1, 0, 1, 0, 1])
    np.testing.assert_allclose(labels[:, 4], [3.5, 0.5, 2.0, 1.0, 4.25])
    batch = next(iter(log.batches("train", 5)))
    assert batch.labels.shape == (5, 5) and batch.labels.dtype == torch.float32
    one = TableClickLog(_table(tmp_path), verbose=False)  # no tasks: the single label, [n], as always
    assert one.splits["train"].labels.shape == (5,)
    np.testing.assert_array_equal(one.splits["train"].labels, labels[:, 0])
    again = TableClickLog(_table(tmp_path), verbose=False, tasks=[TaskConfig("click")])  # one task: the same
    np.testing.assert_array_equal(again.splits["train"].labels, one.splits["train"].labels)


def test_a_table_task_cell_that_is_not_what_the_task_reads_is_one_clear_error(tmp_path):
    tasks = [TaskConfig("click"), TaskConfig("status")]  # a 0/1 task over a text column
    with pytest.raises(DataError, match="column 'status' of task 'status'.*'single'.*expected 0 or 1"):
        TableClickLog(_table(tmp_path), verbose=False, tasks=tasks)
    with pytest.raises(DataError, match="'nope'"):
        TableClickLog(_table(tmp_path), verbose=False, tasks=[TaskConfig("click"), TaskConfig("nope")])
    # an empty cell inside the task's space makes the row bad (skipped), outside it does not
    log = TableClickLog(_table(tmp_path), verbose=False, tasks=[TaskConfig("click"), TaskConfig("converted")])
    assert log.bad_rows.count == 1 and len(log.splits["train"]) == 4


def _ml_tasks(*extra):
    return [TaskConfig("like", at_least=4), TaskConfig("love", at_least=5), *extra]


def test_movielens_tasks_come_from_the_rating(tmp_path):
    root = write_ml_latest(tmp_path / "ml-latest")
    cfg = MovieLensDataConfig(path=str(root), split="chronological", val_fraction=0.0, test_fraction=0.0,
                              shuffle=False)
    log = MovieLensClickLog(cfg, verbose=False, tasks=_ml_tasks(TaskConfig("stars", type="regression")))
    ratings = np.asarray(sorted(r[2] for r in LATEST_RATINGS))  # any order: compare as multisets by row
    labels = log.splits["train"].labels
    assert labels.shape == (len(LATEST_RATINGS), 3) and labels.dtype == np.float32
    order = np.argsort(labels[:, 2], kind="stable")
    np.testing.assert_allclose(labels[order, 2], ratings)
    np.testing.assert_array_equal(labels[:, 0], labels[:, 2] >= 4)
    np.testing.assert_array_equal(labels[:, 1], labels[:, 2] >= 5)
    one = MovieLensClickLog(cfg, verbose=False)
    np.testing.assert_array_equal(one.splits["train"].labels, labels[:, 0])  # the one-task label is like
    with pytest.raises(ConfigError, match="not a MovieLens label column"):
        MovieLensClickLog(cfg, verbose=False, tasks=_ml_tasks(TaskConfig("x", column="timestamp")))


def test_movielens_100k_layout_too(tmp_path):
    fixture = REPO / "tests" / "fixtures" / "ml-100k-tiny"
    cfg = MovieLensDataConfig(path=str(fixture), val_fraction=0.0, test_fraction=0.0, shuffle=False)
    one, two = MovieLensClickLog(cfg, verbose=False), MovieLensClickLog(cfg, verbose=False, tasks=_ml_tasks())
    np.testing.assert_array_equal(two.splits["train"].labels[:, 0], one.splits["train"].labels)
    assert (two.splits["train"].labels[:, 1] <= two.splits["train"].labels[:, 0]).all()  # love implies like


def _world_tasks():
    return [TaskConfig("click"), TaskConfig("conversion", only_where="click"), TaskConfig("like"),
            TaskConfig("dwell", type="regression")]


def test_the_synthetic_world_plants_click_conversion_on_clicks_like_and_dwell():
    cfg = load_config(TINY)
    log = build_data(cfg.data, cfg.seed, tasks=_world_tasks())
    batch, oracle = log.batch("test", 0, 1024, with_oracle=True)
    labels = batch.labels
    assert labels.shape == (1024, 4) and oracle.shape == (1024, 4) and labels.dtype == torch.float32
    single = build_data(cfg.data, cfg.seed).batch("test", 0, 1024)
    assert torch.equal(labels[:, 0], single.labels)  # click is the one-task world's label, row for row
    assert torch.equal(batch.dense_features, single.dense_features)
    click, conversion = labels[:, 0], labels[:, 1]
    assert (conversion[click == 0] == 0).all()  # observed only on clicks
    rate = float(conversion[click == 1].mean())
    assert 0.15 < rate < 0.45, rate  # P(conversion | click) = 0.3
    assert 0.1 < float(labels[:, 2].mean()) < 0.3  # like_rate 0.2
    assert set(labels[:, 2].unique().tolist()) == {0.0, 1.0} and labels[:, 3].unique().numel() > 100
    corr = np.corrcoef(oracle.T.numpy())
    assert corr[0, 2] > 0.2 and corr[0, 1] < 0  # like shares click's signal, conversion partly conflicts


def test_the_synthetic_world_is_reproducible_and_its_knobs_move_it():
    cfg = load_config(TINY)
    a = build_data(cfg.data, 0, tasks=_world_tasks()[:2]).batch("val", 1, 256).labels
    b = build_data(cfg.data, 5, tasks=_world_tasks()[:2]).batch("val", 1, 256).labels  # run seed: same world
    assert torch.equal(a, b)
    four = build_data(cfg.data, 0, tasks=_world_tasks()).batch("val", 1, 256).labels
    assert torch.equal(four[:, :2], a)  # a task's labels do not depend on which other tasks the run lists
    syn = cfg.data.synthetic
    syn.tasks = SyntheticTasksConfig(conversion_rate=0.8)
    high = SyntheticClickLog(syn, tasks=_world_tasks()[:2]).batch("val", 1, 256).labels
    assert high[:, 1].sum() > a[:, 1].sum()


def test_synthetic_tasks_must_be_the_worlds():
    cfg = load_config(TINY)
    with pytest.raises(ConfigError, match="no task 'purchase'"):
        build_data(cfg.data, 0, tasks=[TaskConfig("click"), TaskConfig("purchase")])
    with pytest.raises(ConfigError, match="'dwell' is regression"):
        build_data(cfg.data, 0, tasks=[TaskConfig("click"), TaskConfig("dwell")])
    named = build_data(cfg.data, 0, tasks=[TaskConfig("ctr", column="click"), TaskConfig("cvr", column="conversion")])
    assert named.batch("val", 0, 128).labels.shape == (128, 2)


def test_one_task_is_the_old_label_and_windows_refuse_several():
    cfg = load_config(TINY)
    plain = build_data(cfg.data, cfg.seed).batch("train", 3, 128)
    one = build_data(cfg.data, cfg.seed, tasks=[TaskConfig("click")]).batch("train", 3, 128)
    assert plain.labels.shape == (128,) and torch.equal(plain.labels, one.labels)
    windowed = load_config(TINY, ["data.synthetic.drift={windows: 3, rows_per_window: 256, features: [cat_0]}"])
    with pytest.raises(ConfigError, match="time windows"):
        build_data(windowed.data, 0, tasks=_world_tasks()[:2])


@pytest.mark.parametrize("name", ["multitask_synthetic", "adult_two_task", "multitask_ml_latest_small"])
def test_the_multitask_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert len(cfg.tasks) >= 2 and cfg.train.early_stopping.task == "mean"
    if name == "adult_two_task":  # the never-married label is not an input
        assert "marital-status" not in [s.column for s in cfg.data.table.sparse]


def test_the_input_contract_records_the_tasks_and_reads_their_labels_when_present(tmp_path):
    import pandas as pd

    from torchrec_kd.config import DataConfig
    from torchrec_kd.data.contract import RawRows, input_contract

    tasks = [TaskConfig("click"), TaskConfig("converted", only_where="click"),
             TaskConfig("single", column="status", positive=["single"])]
    data = DataConfig(source="table", table=_table(tmp_path))
    log = TableClickLog(data.table, verbose=False, tasks=tasks)
    contract = input_contract(data, log.dense_names, log.sparse_names, log.num_embeddings, tasks=tasks)
    assert [t["name"] for t in contract["tasks"]] == ["click", "converted", "single"]
    assert input_contract(data, log.dense_names, log.sparse_names, log.num_embeddings, tasks=tasks[:1]).get(
        "tasks") is None  # one task: the contract as always
    rows = RawRows(contract)
    frame = pd.read_csv(tmp_path / "t.csv", dtype=object, keep_default_na=False)
    out = rows.convert(frame)
    assert out.labeled
    np.testing.assert_array_equal(out.rows.labels, log.splits["train"].labels[:, :3])
    unlabeled = rows.convert(frame.drop(columns=["clicked", "converted", "status"]))
    assert not unlabeled.labeled and unlabeled.rows.labels.shape == (5, 3) and not unlabeled.rows.labels.any()
    features = {"contract": contract["contract"], "format": "features", "label": "label", "tasks": contract["tasks"],
                "features": {"dense": ["x"], "sparse": ["f"], "num_embeddings": [10]}}
    got = RawRows(features).convert(pd.DataFrame({"x": ["1", "2"], "f": ["3", "4"], "label_click": ["1", "0"],
                                                  "label_converted": ["1", "1"], "label_single": ["0", "1"]}))
    np.testing.assert_array_equal(got.rows.labels, [[1, 1, 0], [0, 0, 1]])  # converted is 0 off clicks


def test_one_task_that_names_its_own_label_is_read_by_its_rule_as_one_column(tmp_path):
    table = TableClickLog(_table(tmp_path), verbose=False,
                          tasks=[TaskConfig("single", column="status", positive=["single"])]).splits["train"].labels
    np.testing.assert_array_equal(table, [1, 0, 1, 0, 0])
    root = write_ml_latest(tmp_path / "ml-latest")
    cfg = MovieLensDataConfig(path=str(root), val_fraction=0.0, test_fraction=0.0, shuffle=False)
    love = MovieLensClickLog(cfg, verbose=False, tasks=[TaskConfig("love", at_least=5)]).splits["train"].labels
    both = MovieLensClickLog(cfg, verbose=False, tasks=_ml_tasks()).splits["train"].labels
    assert love.shape == (len(LATEST_RATINGS),)
    np.testing.assert_array_equal(love, both[:, 1])
    tiny = load_config(TINY)
    like = build_data(tiny.data, 0, tasks=[TaskConfig("like")]).batch("val", 0, 128).labels
    assert like.shape == (128,)
    assert torch.equal(like, build_data(tiny.data, 0, tasks=_world_tasks()).batch("val", 0, 128).labels[:, 2])
    criteo = load_config(TINY, ["data.source=criteo_tsv"]).data
    with pytest.raises(ConfigError, match="Criteo has one 0/1 label column"):
        build_data(criteo, 0, tasks=[TaskConfig("click", at_least=1)])
