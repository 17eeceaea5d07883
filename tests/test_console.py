"""The console filter: our lines and real warnings through, third-party chatter and harmless warnings to the file."""

import logging
import os
import subprocess
import sys

from tests.conftest import REPO, TINY
from torchrec_kd.core.console import _ConsoleFilter, _CountLines, _FileFilter, _QuarterLines


def _record(name, level, msg):
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_quiet_console_keeps_ours_and_real_warnings_only():
    quiet = _ConsoleFilter(ours=logging.INFO, others=logging.WARNING)
    assert quiet.filter(_record("torchrec_kd.training.loop", logging.INFO, "teacher step 10/10"))
    assert not quiet.filter(_record("torchrec.distributed.planner.stats", logging.INFO, "# plan"))
    assert not quiet.filter(_record("py.warnings", logging.WARNING, "/x.py:3: FutureWarning: old"))
    assert not quiet.filter(_record("torchrec.distributed.planner", logging.WARNING,
                                    "The topology was constructed directly rather than via TopologyFactory"))
    assert quiet.filter(_record("py.warnings", logging.WARNING, "/x.py:3: UserWarning: your data has no rows"))
    assert quiet.filter(_record("torch", logging.ERROR, "FutureWarning in an error is still an error"))
    detail = _record("torchrec_kd.distributed.sharding", logging.INFO, "sharding plan: …")
    detail.console = False  # logger.info(..., extra=FILE_ONLY)
    assert not quiet.filter(detail)


def test_verbose_console_shows_everything():
    verbose = _ConsoleFilter(ours=logging.INFO, others=logging.INFO)
    assert verbose.filter(_record("torchrec.distributed.planner.stats", logging.INFO, "# plan"))
    assert verbose.filter(_record("py.warnings", logging.WARNING, "/x.py:3: FutureWarning: old"))
    detail = _record("torchrec_kd.distributed.sharding", logging.INFO, "sharding plan: …")
    detail.console = False
    assert verbose.filter(detail)


def test_a_pipe_gets_a_line_per_quarter(caplog):
    caplog.set_level(logging.INFO, logger="torchrec_kd")
    bar = _QuarterLines(100, "teacher", True, 0)
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[1] for line in lines] == ["25%", "50%", "75%", "100%"], lines
    assert list(_QuarterLines(8, "score", False, 0, iterable=range(8))) == list(range(8))


def test_a_pipe_without_a_total_gets_count_lines(caplog):
    caplog.set_level(logging.INFO, logger="torchrec_kd")
    bar = _CountLines("predict", True, unit=" rows", every=1e9)  # no periodic line in this test: only the last
    for _ in range(3):
        bar.update(1000)
    bar.close()
    bar.close()  # once only
    assert [r.getMessage().rsplit(" in ", 1)[0] for r in caplog.records] == ["predict: 3,000 rows"]


DCP_OVERWRITE = ("/x/state_dict_saver.py:472: UserWarning: Detected an existing checkpoint in /o/teacher/model, "
                 "overwriting since self.overwrite=True. Past version 2.5 of PyTorch, `overwrite` will default to False.")
FX_TRACING = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export. Please use …"
PARTITIONER = "GreedyPerfPartitioner - sort_by: SortBy.STORAGE, balance_modules: False"


def test_torch_warnings_about_our_own_doings_stay_off_the_console_and_the_partitioner_off_the_file():
    quiet = _ConsoleFilter(ours=logging.INFO, others=logging.WARNING)
    assert not quiet.filter(_record("py.warnings", logging.WARNING, DCP_OVERWRITE))
    assert not quiet.filter(_record("torch.fx._symbolic_trace", logging.WARNING, FX_TRACING))
    partitioner = _record("torchrec.distributed.planner.partitioners", logging.INFO, PARTITIONER)
    assert not _FileFilter(verbose=False).filter(partitioner)
    assert _FileFilter(verbose=True).filter(partitioner)  # -v / LOGLEVEL=INFO: everything in the file too
    assert _FileFilter(verbose=False).filter(_record("torchrec.distributed.planner.partitioners", logging.WARNING, "x"))
    assert _FileFilter(verbose=False).filter(_record("torchrec.distributed.planner.stats", logging.INFO, "# plan"))


def test_a_20_step_run_keeps_run_log_small_and_torch_warnings_off_the_console(tmp_path):
    out = tmp_path / "run"
    (out / "teacher" / "model").mkdir(parents=True)
    (out / "teacher" / "model" / ".metadata").write_text("x")  # an earlier model here: DCP warns it overwrites it
    env = {k: v for k, v in os.environ.items() if k != "LOGLEVEL"}
    done = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                           "--output-dir", str(out), "train.steps=20", "data.synthetic.num_sparse=8"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "overwriting" not in done.stderr and "is_fx_tracing" not in done.stderr, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    log = (out / "run.log").read_text()
    assert "Detected an existing checkpoint" in log and "is_fx_tracing" in log  # kept where they belong
    assert len(log.encode()) < 100_000, f"run.log is {len(log.encode()):,} bytes"  # 964 kB with the partitioner
    assert "teacher step 20/20" in log and "torchrec.distributed.planner.stats" in log
