"""Bad input of every kind ends in one line naming what to fix, before any work, leaving nothing half-written
(split from test_never_stale.py so pytest-xdist can spread the two files over its workers)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CRITEO_SAMPLE, REPO, TINY
from tests.test_never_stale import _cli, _ok, _user_error
from torchrec_kd.config import ConfigError, load_config


@pytest.mark.slow
def test_1_changed_config_does_not_resume_the_old_training_state(tmp_path, capsys):
    from torchrec_kd.cli import main

    def run(*args):  # the CLI in this process (each command releases its output dir when it returns)
        code = main(["train-teacher", "--config", str(TINY), *args])
        return code, capsys.readouterr().err

    out = tmp_path / "t"
    steps = ["train.teacher_steps=40", "train.checkpoint_every=10"]
    assert run("--output-dir", str(out), *steps)[0] == 0
    assert (out / "train_state" / "teacher" / "step_00000030").is_dir()
    code, err = run("--output-dir", str(out), *steps, "seed=1", "train.embedding_lr=0.1")
    assert code == 2 and "step_00000030 is the training state of a run with another config" in err, err[-2000:]
    assert "Traceback" not in err
    assert "seed: 0 -> 1" in err and "train.embedding_lr: 0.05 -> 0.1" in err and "train.resume=false" in err
    fresh = tmp_path / "fresh"
    assert run("--output-dir", str(fresh), *steps, "seed=1", "train.embedding_lr=0.1")[0] == 0
    # starting over as told gives the fresh run's model, not a mix
    code, err = run("--output-dir", str(out), *steps, "seed=1", "train.embedding_lr=0.1", "train.resume=false")
    assert code == 0 and "resumed from" not in err
    a = json.loads((out / "metrics.json").read_text())["teacher"]
    b = json.loads((fresh / "metrics.json").read_text())["teacher"]
    assert a["auc"] == pytest.approx(b["auc"], abs=1e-6)
    assert json.loads((out / "teacher" / "meta.json").read_text())["config"]["seed"] == 1


def test_4_a_negative_budget_is_refused(tmp_path):
    _user_error(_cli("train-teacher", "--config", str(TINY), "--output-dir", str(tmp_path / "x"),
                     "train.teacher_steps=-5"), "train.teacher_steps must be between 1 and")
    assert not (tmp_path / "x").exists()


def test_5_one_run_per_output_dir(tmp_path):
    from torchrec_kd.core.run_lock import hold_output_dir

    out = tmp_path / "busy"
    # the holder keeps the lock until it is killed (it blocks reading a stdin nobody writes; if this
    # test dies, the pipe closes and the holder ends too): no sleep that a slow start could outlast
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from torchrec_kd.core.run_lock import hold_output_dir;"
                               f"hold_output_dir({str(out)!r}); print('held', flush=True); sys.stdin.read()"],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _user_error(_cli("train-teacher", "--config", str(TINY), "--output-dir", str(out)), "is in use by another run",
                    '"pid": ' + str(holder.pid))
    finally:
        holder.kill()
        holder.wait()
    hold_output_dir(out)  # the killed holder's lock went with it: a stale .lock file is no obstacle


BAD_INPUTS = [
    (["train.steps=1000000000000"], "train.steps must be between 1 and 100000000"),
    (["train.embedding_lr=-1"], "train.embedding_lr must be >= 1e-12"),
    (["teacher.embedding_dim=0"], "teacher.embedding_dim must be between 1 and 4096"),
    (["data.synthetic.num_embeddings=0"], "data.synthetic.num_embeddings must be between 1 and"),
    (["train.early_stopping.patience=-1"], "train.early_stopping.patience must be between 0 and"),
    (["data.synthetic.zipf_exponent=1.0"], "data.synthetic.zipf_exponent must not be 1"),
]


@pytest.mark.parametrize("overrides,needle", BAD_INPUTS)
def test_out_of_range_values_are_refused_before_any_work(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(TINY, overrides)


def test_unreadable_configs_give_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00run_name: x")
    _user_error(_cli("train-teacher", "--config", str(bad)), "not UTF-8 text")  # through the CLI: exit 2, one line
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(empty)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(listed)


def test_log_every_zero_logs_only_the_last_step(tmp_path):
    done = _ok(_cli("train-teacher", "--config", str(TINY), "--output-dir", str(tmp_path / "r"), "train.log_every=0",
                    "train.teacher_steps=4"))
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["teacher"]["loss_curve"][0][0] == 4
    assert "ZeroDivisionError" not in done.stderr


def test_unwritable_output_dir_is_named_before_any_model(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _user_error(_cli("train-teacher", "--config", str(TINY), "--output-dir", str(blocker / "out")),
                "cannot write to the output directory")


def test_junk_csv_and_wrong_criteo_files_are_named_and_leave_nothing(tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(128, 256)) * 20)
    _user_error(_cli("train-teacher", "--config", str(REPO / "configs" / "table_example.yaml"), "--output-dir",
                     str(tmp_path / "a"), f"data.table.path={junk}"), "not utf-8 text", "is it a CSV file?")
    crit = tmp_path / "crit"
    crit.mkdir()
    lines = CRITEO_SAMPLE.read_text().splitlines()[:50]
    (crit / "train.txt").write_text("\n".join("\t".join(line.split("\t")[:10]) for line in lines) + "\n")
    _user_error(_cli("train-teacher", "--config", str(REPO / "configs" / "criteo_kaggle.yaml"), "--output-dir",
                     str(tmp_path / "b"), f"data.criteo.path={crit}", "data.batch_size=16"),
                "has no usable rows: every row was malformed")
    # no tensorboard/, no checkpoint: only the lock and the log of the failed attempt
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".lock", "run.log"]


def test_under_torchrun_the_error_is_printed_once_without_the_launchers_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torchrec_kd.launch", "--standalone", "--nproc_per_node=2", "-m",
                           "torchrec_kd.cli", "train-teacher", "--config", str(TINY), "--output-dir", str(tmp_path),
                           "teacher.embeding_dim=3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    _user_error(done, "unknown key 'embeding_dim'; did you mean 'embedding_dim'?")
    assert "ChildFailedError" not in done.stderr and "FAILED" not in done.stderr


# numeric keys and values a user might type; every outcome is a valid config or one ConfigError
KEYS = ["train.steps", "train.teacher_steps", "train.epochs", "train.embedding_lr", "train.dense_lr", "train.eps",
        "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
        "train.early_stopping.patience", "train.early_stopping.min_delta", "data.batch_size", "data.val_rows",
        "data.synthetic.num_embeddings", "data.synthetic.latent_dim", "data.synthetic.train_rows",
        "data.synthetic.zipf_exponent", "data.synthetic.positive_rate", "teacher.embedding_dim",
        "student.embedding_dim", "distill.qat_start", "seed", "distributed.timeout_s", "experiment.seeds"]
VALUES = st.one_of(st.integers(-10**13, 10**13), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from(["many", "", "null", "[1, 2]", "[0]", "{a: 1}", "1e-3", "-0", "true", ".inf"]))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_fuzzed_config_values_load_or_give_one_config_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        load_config(TINY, overrides)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)


@pytest.mark.slow
@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["train.teacher_steps", "train.eval_every", "train.log_every",
                                           "teacher.embedding_dim", "data.synthetic.train_rows", "train.epochs"]),
                          st.sampled_from([-1, 0, 1, 2, 3, 64, 10**9])), min_size=1, max_size=2))
def test_fuzzed_runs_end_in_a_result_or_one_line_error(tmp_path_factory, pairs):
    out = tmp_path_factory.mktemp("fuzz")
    done = _cli("train-teacher", "--config", str(TINY), "--output-dir", str(out), "train.teacher_steps=3",
                *[f"{k}={v}" for k, v in pairs], timeout=300)
    assert done.returncode in (0, 2), done.stderr[-3000:]
    if done.returncode == 2:
        _user_error(done)
    else:
        assert (Path(out) / "teacher" / "meta.json").is_file()
