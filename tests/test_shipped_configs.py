"""Every shipped config follows the protocol: no model is trained without validation, and finite
train data is read by epochs with early stopping; ``train.eval_every: null`` means every half epoch."""

import json
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import REPO, TINY
from torchrec_kd.cli import _parser
from torchrec_kd.config import RunConfig, TrainConfig, load_config
from torchrec_kd.config.schema import AUTO_EVAL_EVERY_STREAM
from torchrec_kd.core.budget import budget_spec, eval_interval
from torchrec_kd.data import build_data

SHIPPED = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "examples").glob("**/config.yaml"))


def _finite_train(cfg: RunConfig, role: str) -> bool:
    """Whether ``role`` reads a finite train split: files always; the synthetic world when it has train rows."""
    syn = cfg.data.synthetic
    if cfg.data.source != "synthetic":
        return True
    rows = syn.student_train_rows if role == "student" and syn.student_train_rows is not None else syn.train_rows
    return rows is not None


def test_every_shipped_config_is_checked():
    names = {p.name for p in SHIPPED}
    assert {"movielens_100k.yaml", "table_example.yaml", "tiny_synthetic.yaml", "config.yaml"} <= names
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_a_shipped_config_validates_and_reads_finite_data_by_epochs_with_early_stopping(path):
    cfg = load_config(path)
    train = cfg.train
    assert train.eval_every != 0, f"{path.name}: no validation, so no model selection"
    for role in ("teacher", "student"):
        if _finite_train(cfg, role):
            assert "epochs" in budget_spec(train, role), f"{path.name}: the {role}'s finite data is read by steps"
            assert train.early_stopping.patience > 0, f"{path.name}: finite data without early stopping"


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_the_opening_comment_launches_this_file_and_its_cli_lines_parse(path):
    head = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        head.append(line.lstrip("#").strip())
    rel = str(path.relative_to(REPO))
    assert any(rel in line for line in head) or "benchmarks/suite.py" in " ".join(head), f"{rel}: no launch command"
    for line in head:  # the CLI's own parser reads each shown command, and its config loads with its overrides
        if "torchrec_kd.cli " in line and "<" not in line:
            args = _parser().parse_args(shlex.split(line.split("torchrec_kd.cli ", 1)[1]))
            if args.config:
                load_config(REPO / args.config, args.overrides)


def _data(per_epoch):
    return SimpleNamespace(num_batches=lambda split, batch_size: per_epoch)


def test_null_eval_every_is_half_an_epoch_of_finite_data_and_explicit_values_win():
    auto = TrainConfig()
    assert auto.eval_every is None
    assert eval_interval(auto, _data(14), 60) == 7
    assert eval_interval(auto, _data(1), 60) == 1  # never 0: a one-batch epoch is validated every step
    assert eval_interval(auto, _data(None), 60) == AUTO_EVAL_EVERY_STREAM  # an endless stream has no epoch
    assert eval_interval(TrainConfig(eval_every=0), _data(14), 60) == 0  # off, because the config says so
    assert eval_interval(TrainConfig(eval_every=5), _data(14), 60) == 5


def test_the_shipped_table_example_and_tiny_config_resolve_to_validations():
    table = load_config(REPO / "configs" / "table_example.yaml")
    data = build_data(table.data, table.seed, "teacher")
    assert eval_interval(table.train, data, table.data.batch_size) == 7  # 840 rows / 60 = 14 batches an epoch
    tiny = load_config(TINY)
    data = build_data(tiny.data, tiny.seed, "teacher")
    assert eval_interval(tiny.train, data, tiny.data.batch_size) == AUTO_EVAL_EVERY_STREAM


def test_a_run_on_finite_data_validates_every_half_epoch_without_being_asked(tmp_path):
    # 1024 rows / 128 = 8 batches an epoch; 2 epochs: validations at 4, 8, 12, 16
    done = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                           "--output-dir", str(tmp_path), "data.synthetic.train_rows=1024", "train.epochs=2",
                           "train.early_stopping.patience=10"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads((tmp_path / "metrics.json").read_text())["teacher"]
    assert [e["step"] for e in entry["val_curve"]] == [4, 8, 12, 16]
    assert entry["best_val"] and entry["best_step"] in (4, 8, 12, 16)
