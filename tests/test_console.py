"""The console filter: our lines and real warnings through, third-party chatter and harmless warnings to the file."""

import logging

from torchrec_kd.core.console import _ConsoleFilter, _CountLines, _QuarterLines


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
