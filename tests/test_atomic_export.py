"""Exports appear whole or not at all, and what cannot be used stops before the work with one `error:` line.

(In-process ``main`` returning 2 means the error was caught and printed as one line; an uncaught
exception would fail the test with its traceback. One real process is killed.)

A killed ``quantize`` leaves nothing that loads; an unsealed export is refused by every reader;
``predict`` checks its destination before scoring and takes its config from the export when no
``--config`` is given; a text file named ``.parquet`` and a checkpoint of another shape are one
line each (exit 2, no traceback).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import REPO, TINY

DTYPE = ["quantize.dtypes=[int8]"]


def _user_error(code, stderr, *needles):
    """Exit 2, exactly one `error:` line naming what is wrong, no traceback."""
    assert code == 2, (code, stderr[-3000:])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A briefly trained tiny student and its int8 export."""
    from torchrec_kd.cli import main

    out = tmp_path_factory.mktemp("atomic")
    common = ["--config", str(TINY), "--output-dir", str(out), "train.steps=8", "train.log_every=4"]
    assert main(["train-student", *common]) == 0
    assert main(["quantize", "--source", "student", *common, *DTYPE]) == 0
    return out, common


def _fresh_run_dir(run, tmp_path):
    """An output directory holding only the trained student (a symlink), for a quantize of its own."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "student").symlink_to(run[0] / "student")
    return out


def _unsealed(src, dst):
    """A copy of an export whose quantized.json lacks the seal, as a quantize killed before sealing leaves it."""
    shutil.copytree(src, dst)
    sidecar = json.loads((dst / "quantized.json").read_text())
    del sidecar["files"]
    (dst / "quantized.json").write_text(json.dumps(sidecar))
    return dst


def test_a_killed_quantize_leaves_nothing_that_loads(run, tmp_path, capsys):
    import torchrec_kd
    from torchrec_kd.cli import main
    from torchrec_kd.errors import CheckpointError

    out = _fresh_run_dir(run, tmp_path)
    args = ["quantize", "--source", "student", "--config", str(TINY), "--output-dir", str(out), "train.steps=8", *DTYPE]
    proc = subprocess.Popen([sys.executable, "-m", "torchrec_kd.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    exports = out / "export"
    deadline = time.monotonic() + 240
    # kill it mid-write: its weights and (unsealed) quantized.json are on disk, the program not yet
    while not list(exports.glob(".student_int8.tmp-*/quantized.json")):
        assert proc.poll() is None, f"quantize ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "quantize never started writing its export"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert not (exports / "student_int8").exists()  # the export's place is empty: nothing was renamed into it
    left = [d for d in exports.iterdir() if d.is_dir()]
    assert [d.name for d in left] == [f".student_int8.tmp-{proc.pid}"]
    # the kill may land before, during or after quantized.json is written: unsealed or half-written, it is refused
    refused = "(not sealed|unreadable).*re-run quantize"
    for d in left:  # not even the leftover loads, when named by hand
        with pytest.raises(CheckpointError, match=refused):
            torchrec_kd.load_model(d)
    capsys.readouterr()
    assert main(["predict", "--config", str(TINY), "--model", str(left[0]), "--out", str(tmp_path / "p.csv")]) == 2
    assert re.search(refused, _user_error(2, capsys.readouterr().err, "re-run quantize"))
    assert not (tmp_path / "p.csv").exists()
    # the next quantize removes the leftover and publishes a whole, sealed export
    assert main(args) == 0
    assert sorted(d.name for d in exports.iterdir()) == ["student_int8"]
    assert torchrec_kd.load_model(exports / "student_int8").table_dtypes


def test_a_failure_mid_write_keeps_the_export_that_was_there(run, tmp_path):
    import torchrec_kd
    from torchrec_kd.quant.export import save_quantized

    out, _ = run
    target = tmp_path / "export" / "student_int8"
    shutil.copytree(out / "export" / "student_int8", target)
    served = torchrec_kd.load_model(target)
    before = {f.name: f.read_bytes() for f in target.iterdir()}

    def fail(path):
        assert path.parent.name.startswith(".student_int8.tmp-")  # written beside its place, never into it
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_quantized(served.model, target, served.sidecar["meta"], extras={"model.ts": fail})
    assert {f.name: f.read_bytes() for f in target.iterdir()} == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["student_int8"]  # no staging left behind
    # a save that completes replaces the export whole: only what it wrote is there, sealed
    save_quantized(served.model, target, {**served.sidecar["meta"], "note": "again"})
    assert sorted(f.name for f in target.iterdir()) == ["quantized.json", "weights.pt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["student_int8"]
    sidecar = json.loads((target / "quantized.json").read_text())
    assert sidecar["meta"]["note"] == "again" and set(sidecar["files"]) == {"weights.pt"}


def test_an_unsealed_export_is_refused_by_every_reader(run, tmp_path, capsys):
    import torchrec_kd
    from torchrec_kd.cli import main
    from torchrec_kd.errors import CheckpointError

    out, _ = run
    copy = tmp_path / "run"
    copy.mkdir()
    bad = _unsealed(out / "export" / "student_int8", copy / "export" / "student_int8")
    with pytest.raises(CheckpointError, match="not sealed"):
        torchrec_kd.load_model(bad)
    capsys.readouterr()
    assert main(["evaluate", "--config", str(TINY), "--output-dir", str(copy), "--source", "student_int8"]) == 2
    _user_error(2, capsys.readouterr().err, "quantized.json", "not sealed", "re-run quantize")
    assert main(["predict", "--model", str(bad), "--out", str(tmp_path / "p.csv")]) == 2  # also without --config
    _user_error(2, capsys.readouterr().err, "not sealed", "re-run quantize")
    assert not (tmp_path / "p.csv").exists()


def test_predict_checks_its_destination_before_scoring(run, tmp_path, capsys):
    from torchrec_kd.cli import main

    out, _ = run
    model = str(out / "export" / "student_int8")
    (tmp_path / "file.txt").write_text("a file, not a folder")
    # (tests run as root, where a read-only mode does not stop writes: a parent that is a file does)
    capsys.readouterr()
    assert main(["predict", "--config", str(TINY), "--model", model, "--out", str(tmp_path / "file.txt" / "s.csv")]) == 2
    err = capsys.readouterr().err
    _user_error(2, err, "--out", "file.txt is a file, not a folder", "choose a writable place")
    assert " rows" not in err, err  # no progress line: nothing was scored
    for dest in ["/proc/torchrec_kd_test/scores.csv", str(tmp_path)]:  # a read-only file system; a directory
        assert main(["predict", "--config", str(TINY), "--model", model, "--out", dest]) == 2
        _user_error(2, capsys.readouterr().err, f"--out {dest}", "choose a writable place" if "proc" in dest else "")
    assert not os.path.exists("/proc/torchrec_kd_test")


def test_predict_without_config_uses_the_config_recorded_in_the_export(run, tmp_path, capsys):
    from torchrec_kd.cli import main

    out, _ = run
    model = str(out / "export" / "student_int8")
    assert main(["predict", "--config", str(TINY), "--model", model, "--out", str(tmp_path / "with.csv")]) == 0
    # the defaults have other features: before, this reported a feature mismatch
    assert main(["predict", "--model", model, "--out", str(tmp_path / "without.csv"), "data.batch_size=64"]) == 0
    with_config, without = pd.read_csv(tmp_path / "with.csv"), pd.read_csv(tmp_path / "without.csv")
    assert len(without) == 1024 and without.drop(columns="probability").equals(with_config.drop(columns="probability"))
    capsys.readouterr()
    assert main(["predict", "--model", model, "--out", str(tmp_path / "x.csv"), "data.batch_size=-1"]) == 2
    _user_error(2, capsys.readouterr().err, "quantized.json (the config recorded with the export)", "data.batch_size")


def test_a_text_file_named_parquet_is_one_error_line_for_predict(run, tmp_path, capsys):
    from torchrec_kd.cli import main

    out, _ = run
    (tmp_path / "traffic.parquet").write_text("int_0,int_1\n1,2\n")
    assert main(["predict", "--model", str(out / "export" / "student_int8"), "--input", str(tmp_path / "traffic.parquet"),
                 "--out", str(tmp_path / "p.csv")]) == 2
    _user_error(2, capsys.readouterr().err, "traffic.parquet: not a readable Parquet file")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.tmp").exists()


def test_a_checkpoint_of_another_shape_names_the_key_and_shapes(run, capsys):
    from torchrec_kd.cli import main

    out, common = run
    wider = ["student.embedding_dim=4", "student.dense_arch_layer_sizes=[16,4]"]
    assert main(["evaluate", "--source", "student", *common, *wider]) == 2
    line = _user_error(2, capsys.readouterr().err, str(out / "student" / "model"), "in the checkpoint but", "in the model")
    assert "[" in line.split("has shape")[1]  # both shapes are printed
