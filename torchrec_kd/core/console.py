"""A console for people: our stage lines, one progress bar, metrics; everything else to the run's log file.

Each command calls :func:`setup_console` once. Then:

* the console (stderr) shows ``torchrec_kd`` records at INFO and above from rank 0, and
  every rank's errors and real warnings;
* third-party INFO records (TorchRec's planner, fbgemm's kernel arguments, the
  pipeline's notes) and known-harmless warnings (``FutureWarning``/``DeprecationWarning``
  and the few listed in ``HARMLESS``, e.g. DCP's "overwriting" and torch.fx's
  ``is_fx_tracing``) go only to ``<output_dir>/run.log``, with every rank's records, each
  line marked with its rank; the loggers of ``FILE_LEVELS`` that log in a loop (the
  partitioner's every candidate plan) only from WARNING;
* ``--verbose`` or ``LOGLEVEL=INFO`` (or ``DEBUG``) puts all of it back on the console,
  and all of it in the file.

Example::

    log_file = setup_console(verbose=False, log_dir=cfg.out_dir)
    logger.info("logs: %s", log_file)
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from torchrec_kd.core.layout import LOG_FILE

OURS = "torchrec_kd"
# ``logger.info(..., extra=FILE_ONLY)``: a detail for the log file, not for the console
FILE_ONLY = {"console": False}
# Third-party warnings seen on every CPU run that say nothing about the user's job.
HARMLESS = re.compile("|".join([
    r"Failed to import",                         # optional fbgemm/torchrec kernels absent on CPU
    r"torch\.distributed\.checkpoint.*(deprecated|will be removed)",
    r"TypedStorage is deprecated",
    r"No device id is provided",                 # gloo barrier without a device (CPU ranks)
    r"torch\.meshgrid: in an upcoming release",
    r"The given NumPy array is not writable",
    r"^Sharding Type is .*(unsupported|not supported)",
    r"Optimizer state .*not found",
    r"torch\.jit\.\w+ is (deprecated|not supported)",
    r"Attempting to use hipBLASLt",
    r"sparse_dist_train.*no_grad",
    r"set_.*is deprecated",
    r"Please use the new API settings to control TF32",
    r"is_fx_tracing will return true",
    r"The topology was constructed directly",
    r"known issue with TorchRec's dense tensor size calculation",
    r"will be pipelined",
    r"torch\.distributed is disabled, unavailable or uninitialized",  # DCP loading one unsharded model per rank
    r"TorchScript type system doesn't support instance-level annotations",
    r"TorchScript will treat type annotations of Tensor dtype-specific subtypes",
    r"Detected an existing checkpoint in .*, overwriting",  # DCP: a re-run replaces its own model directory
]))
# Third-party loggers whose INFO records flood run.log, and the level the file keeps of them
# unless verbose: TorchRec's partitioner logs every candidate plan it tries (thousands of lines
# for a few tables, 97% of a distill run's log); the plan chosen is in the log from the planner's stats.
FILE_LEVELS = {"torchrec.distributed.planner.partitioners": logging.WARNING}


def _level_from_env() -> Optional[int]:
    """``LOGLEVEL`` when it asks for more than the default (INFO or DEBUG); None otherwise.

    TorchX's ``dist.ddp`` sets ``LOGLEVEL=WARNING`` for every job unless the user chose, so a
    quieter level there says nothing about what the user wants to see.
    """
    name = os.environ.get("LOGLEVEL", "").upper()
    level = logging.getLevelName(name) if name else None
    return level if isinstance(level, int) and level <= logging.INFO else None


class _ConsoleFilter(logging.Filter):
    """Lets through our records at ``ours`` and above, and the rest at WARNING unless harmless."""

    def __init__(self, ours: int, others: int) -> None:
        super().__init__()
        self.ours, self.others = ours, others

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return self.others <= logging.INFO  # a detail for the log file; verbose shows it too
        if record.name == OURS or record.name.startswith(OURS + "."):
            return record.levelno >= self.ours
        if record.levelno < self.others:
            return False
        if self.others <= logging.INFO or record.levelno >= logging.ERROR:
            return True  # verbose: every warning; errors always
        text = record.getMessage()
        if record.name == "py.warnings":
            category = text.split(":", 3)[2].strip() if text.count(":") >= 3 else ""
            if category in ("FutureWarning", "DeprecationWarning"):
                return False
        return not HARMLESS.search(text)


class _FileFilter(logging.Filter):
    """Keeps the chatty third-party loggers of ``FILE_LEVELS`` out of run.log below their level (unless verbose)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        for name, level in FILE_LEVELS.items():
            if record.name == name or record.name.startswith(name + "."):
                return record.levelno >= level
        return True


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so a line never lands inside a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001  (logging must never raise)
            self.handleError(record)


def setup_console(verbose: bool = False, log_dir: Optional[Path] = None) -> Optional[Path]:
    """Route logs: people's lines to the console, the rest to ``<log_dir>/run.log``.

    Args:
        verbose (bool): show third-party INFO records and every warning on the console too.
        log_dir (Optional[Path]): the run's output directory; None: no log file (commands
            that write no output directory).

    Returns:
        Optional[Path]: the log file, or None.
    """
    rank = int(os.environ.get("RANK", "0"))
    env_level = _level_from_env()
    if env_level is not None:
        verbose = True
    ours = (env_level or logging.INFO) if rank == 0 else logging.WARNING
    others = (env_level or logging.INFO) if verbose else logging.WARNING
    if verbose and rank != 0:
        ours = others
    root = logging.getLogger()
    for h in list(root.handlers):  # torchrec and others configure the root logger on import
        root.removeHandler(h)
    root.setLevel(min(ours, others, logging.INFO))
    fmt = f"%(asctime)s [rank {rank}] %(name)s: %(message)s"
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s" if not verbose else fmt, datefmt="%H:%M:%S"))
    console.addFilter(_ConsoleFilter(ours, others))
    root.addHandler(console)
    for name in logging.root.manager.loggerDict:  # loggers that set their own level or handlers
        lg = logging.getLogger(name)
        if not name.startswith(OURS):
            lg.handlers = [h for h in lg.handlers if not isinstance(h, logging.StreamHandler)]
            lg.propagate = True
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the filter above
    log_file = None
    if log_dir is not None:
        try:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            log_file = Path(log_dir) / LOG_FILE
            handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError:
            return None  # an unwritable output directory is reported by the run lock, in one line
        handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
        handler.setLevel(logging.INFO if not (env_level and env_level < logging.INFO) else env_level)
        handler.addFilter(_FileFilter(verbose))
        root.addHandler(handler)
    return log_file


class _QuarterLines:
    """A progress "bar" for a pipe: one log line at each quarter of the stage (tqdm's interface, the part we use)."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int, iterable: Any = None, unit: str = "it",
                 **_: Any) -> None:
        self.total, self.desc, self.enabled, self.n, self.unit = total, desc, enabled, initial, unit
        self.iterable, self.postfix = iterable, ""
        self.start, self.t0 = initial, time.perf_counter()
        self.next_mark = initial + max(1, (total - initial) // 4)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def set_postfix(self, refresh: bool = False, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next_mark and self.n < self.total:
            self._line()
            self.next_mark += max(1, (self.total - self.start) // 4)

    def _line(self) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        eta = f", {(self.total - self.n) / rate:.0f} s left" if rate > 0 and self.n < self.total else ""
        done = f"{self.n:,}/{self.total:,}" + ("" if self.unit == "it" else f" {self.unit}")
        logging.getLogger(OURS).info("%s: %3.0f%% %s in %.0f s%s%s", self.desc, 100 * self.n / self.total, done,
                                     elapsed, eta, f" ({self.postfix})" if self.postfix else "")

    def close(self) -> None:
        if self.total and self.n >= self.total and self.next_mark is not None:
            self._line()
        self.next_mark = None  # type: ignore[assignment]


class _CountLines:
    """A progress "bar" for a pipe when the total is unknown: a count line every ``every`` seconds, and at the end."""

    def __init__(self, desc: str, enabled: bool, initial: int = 0, unit: str = "it", every: float = 30.0,
                 **_: Any) -> None:
        self.desc, self.enabled, self.n, self.unit, self.every = desc, enabled, initial, unit.strip(), every
        self.t0 = self.last = time.perf_counter()

    def set_postfix(self, refresh: bool = False, **kwargs: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = time.perf_counter()
        if self.enabled:
            logging.getLogger(OURS).info("%s: %s %s in %.0f s", self.desc, f"{self.n:,}", self.unit, self.last - self.t0)

    def close(self) -> None:
        if self.n:
            self._line()
        self.n = 0


def progress_bar(total: Optional[int], desc: str, enabled: bool = True, initial: int = 0, **kwargs: Any) -> Any:
    """One progress bar for a stage: tqdm on a terminal; a line at each quarter when the console is a pipe.

    Under ``torchx run`` or in CI the console is a pipe, where every refresh of a bar
    would become a line of its own.

    Args:
        total (Optional[int]): steps (or bytes) of the stage; None when unknown.
        desc (str): the stage's name, shown first.
        enabled (bool): show it at all (rank 0 only).
        initial (int): where a resumed stage starts.
        **kwargs: passed to ``tqdm`` (e.g. ``unit="B"``, ``iterable=``).

    Returns:
        tqdm or an object with its ``update``/``set_postfix``/``close``/iteration.
    """
    if not sys.stderr.isatty() and total:
        return _QuarterLines(total, desc, enabled, initial, **kwargs)
    if not sys.stderr.isatty() and "iterable" not in kwargs:  # an unknown total: count lines
        return _CountLines(desc, enabled, initial, **kwargs)
    from tqdm import tqdm

    kwargs.setdefault("mininterval", 2.0)
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, **kwargs)
