"""Malformed input rows: skip and count them (with the first file:line numbers) or stop at the first.

Every reader reports rows it cannot use through one :class:`BadRowLog`, so the rule is
the same for every source: with ``data.on_bad_row: skip`` a bad row is dropped,
counted by reason, and the first few are remembered as ``file:line`` for the summary;
with ``data.on_bad_row: error`` the first one raises :class:`DataError` naming file,
line and reason. ``DataError`` is a ``UserError``, so the CLI prints it as a clean
message and exits with code 2.

Example::

    log = BadRowLog("skip")
    log.add("train.txt", 17, "expected 40 tab-separated fields, found 39")
    log.summary()  # '1 bad row skipped (1× expected 40 ...); first at train.txt:17'
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, List, Literal, Tuple

from torchrec_kd.errors import DataError

logger = logging.getLogger(__name__)

# How many offending rows are named in a summary.
FIRST_EXAMPLES = 5


@dataclass
class BadRowLog:
    """Counts skipped rows by reason and remembers the first offending ``file:line`` numbers.

    Args:
        policy (str): "skip" to count and drop bad rows, "error" to raise at the first one.
        verbose (bool): log each of the first few bad rows as it is found (rank 0 only).
    """

    policy: Literal["skip", "error"] = "skip"
    verbose: bool = False
    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    first: List[Tuple[str, int, str]] = field(default_factory=list)

    def add(self, file: str, line: int, reason: str, text: str = "") -> None:
        """Record one bad row (or raise, under ``policy="error"``).

        Args:
            file (str): the file it came from.
            line (int): its 1-based line (or row) number in that file.
            reason (str): what is wrong, e.g. "expected 40 tab-separated fields, found 39".
            text (str): the start of the offending row, shown in the error.

        Raises:
            DataError: under ``policy="error"``.
        """
        if self.policy == "error":
            shown = f": {text[:120]!r}" if text else ""
            raise DataError(f"{file}:{line}: {reason}{shown} (data.on_bad_row=error stops at the first malformed row; "
                            "set data.on_bad_row=skip to drop and count such rows)")
        self.count += 1
        self.reasons[reason] += 1
        if len(self.first) < FIRST_EXAMPLES:
            self.first.append((file, line, reason))
            if self.verbose:
                logger.warning("skipping bad row %s:%d: %s", file, line, reason)

    def add_many(self, file: str, lines: Iterable[int], reasons: Iterable[str], texts: Iterable[str] = ()) -> None:
        """Record several bad rows of one file (same rules as :meth:`add`)."""
        texts = list(texts)
        for i, (line, reason) in enumerate(zip(lines, reasons)):
            self.add(file, int(line), reason, texts[i] if i < len(texts) else "")

    def merge(self, other: "BadRowLog") -> None:
        """Add another log's counts and examples to this one."""
        self.count += other.count
        self.reasons.update(other.reasons)
        self.first.extend(other.first[: max(0, FIRST_EXAMPLES - len(self.first))])

    def summary(self) -> str:
        """One line: how many rows were skipped, why, and where the first ones are."""
        if not self.count:
            return "no bad rows"
        why = "; ".join(f"{n}\u00d7 {r}" for r, n in self.reasons.most_common())
        where = ", ".join(f"{f}:{n}" for f, n, _ in self.first)
        return f"{self.count} bad row{'s' if self.count != 1 else ''} skipped ({why}); first at {where}"
