"""Recipe: score traffic (or a split of the configured data) with an export; write CSV or Parquet.

``--input`` names any file, folder or glob in the format the model was trained on (its input
contract, ``contract.json``): labels optional, every row scored, chosen columns passed
through to join on. Without ``--input`` the configured ``val`` / ``test`` split is scored,
every row. Without ``--config`` the config the model was trained with (recorded in the export)
is used. The destination is checked (created, writable) before any row is scored. Rows are
read and scored in chunks (memory stays bounded); each rank scores a contiguous share of
every chunk and rank 0 writes them in input order, so 1 process and N ranks write the same file.

Output columns: ``row`` (0-based position among the input's rows; a row the training rules
reject leaves a gap, a line that is no row at all is not counted), the passed-through
columns, ``label`` when the input has one, ``logit``, ``probability``. A multi-task model
writes, per task in order, ``label_<task>`` (when labelled), ``<task>`` (the probability, or
the value of a regression task) and ``logit_<task>`` (binary tasks).

Example::

    python -m torchrec_kd.cli predict --config configs/adult_census.yaml \\
        --model outputs/adult_census/export/distilled_int4 --input new_traffic.csv --columns id --out scores.csv
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch.distributed as dist
import yaml

from torchrec_kd.config import RunConfig, load_config
from torchrec_kd.core.console import progress_bar
from torchrec_kd.core.layout import EXPORT_META_FILE
from torchrec_kd.core.plugins import load_plugins
from torchrec_kd.data import build_data
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.contract import CHUNK_ROWS
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.distributed.env import DistEnv, init_distributed
from torchrec_kd.errors import ConfigError, DataError
from torchrec_kd.models.dlrm import check_fits_data
from torchrec_kd.quant.export import read_quantized_meta
from torchrec_kd.serving.served_model import ServedModel, load_model, score_columns

logger = logging.getLogger(__name__)

# (rows of a chunk, its extra columns: row, pass-through, label)
Chunk = Tuple[RowBlock, pd.DataFrame]


def _label_columns(served: ServedModel, labels: np.ndarray) -> dict:
    """``label`` (one task, as always), else ``label_<task>`` per task (binary 0/1, regression values)."""
    if len(served.tasks) == 1:
        return {"label": labels.astype(int)}
    return {f"label_{t.name}": labels[:, i].astype(int) if t.binary else labels[:, i]
            for i, t in enumerate(served.tasks)}


def _file_chunks(served: ServedModel, path: str, columns: Sequence[str], bad_rows: BadRowLog,
                 chunk_rows: int) -> Iterator[Chunk]:
    """The input's rows converted by the export's contract, with their row numbers and pass-through columns."""
    seen = 0
    for frame, lines, unreadable, file in served.rows.read(path, chunk_rows):
        for line, reason, text in unreadable:
            bad_rows.add(str(file), line, reason, text)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"--columns: {missing} not in {file}; its columns are {list(frame.columns)}")
        converted = served.rows.convert(frame, lines, str(file))
        for line, reason, text in converted.bad:
            bad_rows.add(str(file), line, reason, text)
        extra = pd.DataFrame({"row": np.arange(seen, seen + len(frame))[converted.good]})
        for c in columns:
            extra[c] = frame[c].to_numpy()[converted.good]
        if converted.labeled:
            for name, values in _label_columns(served, converted.rows.labels).items():
                extra[name] = values
        seen += len(frame)  # lines that are not rows (wrong field count, undecodable) are not counted
        yield converted.rows, extra


def _split_chunks(cfg: RunConfig, served: ServedModel, split: str, where: str, chunk_rows: int) -> Iterator[Chunk]:
    """Every row of the configured ``split``, in stored order, about ``chunk_rows`` at a time."""
    data = build_data(cfg.data, cfg.seed, tasks=cfg.tasks)
    check_fits_data(served.sidecar["meta"], data.dense_names, data.sparse_names, data.num_embeddings, where)
    seen, rows = 0, 0
    pending: List[RowBlock] = []
    for block in itertools.chain(data.row_blocks(split), [None]):  # None: the end, flush what is left
        if block is not None:
            pending.append(block)
            rows += len(block)
        if pending and (rows >= chunk_rows or block is None):
            merged = RowBlock.concat(pending)
            yield merged, pd.DataFrame({"row": np.arange(seen, seen + rows), **_label_columns(served, merged.labels)})
            seen, pending, rows = seen + rows, [], 0


def _score_share(served: ServedModel, chunk: Chunk, env: DistEnv, batch_size: int) -> Optional[pd.DataFrame]:
    """This rank scores its share of the chunk's batches; rank 0 gets the whole chunk back, in order.

    The chunk is cut into batches of ``batch_size`` rows whatever the world size, and each rank
    scores whole batches: every row is scored in the same batch by 1 process or N ranks, so the
    files are identical to the bit.
    """
    block, extra = chunk
    n = len(block)
    batches = -(-n // batch_size)
    first, last = env.rank * batches // env.world_size, (env.rank + 1) * batches // env.world_size
    logit, prob = served.score_block(block.slice(first * batch_size, min(n, last * batch_size)), batch_size)
    mine = (logit.numpy(), prob.numpy())
    if env.world_size > 1:
        shares: List[Any] = [None] * env.world_size
        dist.all_gather_object(shares, mine)
    else:
        shares = [mine]
    if not env.is_main:
        return None
    out = extra.reset_index(drop=True).copy()
    logit, prob = (np.concatenate([s[i] for s in shares]) for i in (0, 1))
    for name, values in score_columns(served.tasks, logit, prob).items():
        out[name] = values
    return out


class _Writer:
    """Appends chunks to ``<out>.tmp`` and moves it to ``out`` when all rows are in (nothing half-written)."""

    def __init__(self, out: Path) -> None:
        self.out, self.tmp = out, out.with_name(out.name + ".tmp")
        self.parquet = out.suffix == ".parquet"
        self.rows, self.started, self._pq = 0, False, None
        # made now, before any row is scored: a destination that cannot be written (a read-only file
        # system, a parent that is a file, no permission) stops the run before the work, not after it
        if out.is_dir():
            raise ConfigError(f"--out {out}: is a directory; name the file to write (e.g. {out / 'scores.csv'})")
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"--out {out}: {blocker} is a file, not a folder; choose a writable place")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.open("wb").close()
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot be written ({e.strerror or type(e).__name__}: "
                              f"{e.filename or out.parent}); choose a writable place") from None

    def write(self, frame: pd.DataFrame) -> None:
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._pq = self._pq or pq.ParquetWriter(str(self.tmp), table.schema)
            self._pq.write_table(table)
        else:
            frame.to_csv(self.tmp, mode="a" if self.started else "w", header=not self.started, index=False)
        self.rows += len(frame)
        self.started = True

    def close(self, columns: Sequence[str] = ("row", "logit", "probability")) -> None:
        if not self.started:  # no chunk at all: still a file with the header
            self.write(pd.DataFrame({c: [] for c in columns}))
        if self._pq is not None:
            self._pq.close()
        os.replace(self.tmp, self.out)

    def discard(self) -> None:
        if self._pq is not None:
            self._pq.close()
        self.tmp.unlink(missing_ok=True)


def _check_model_dir(model_dir: str) -> None:
    """``--model`` names an export directory (ConfigError otherwise)."""
    if not (Path(model_dir) / EXPORT_META_FILE).is_file():
        raise ConfigError(f"--model {model_dir}: no quantized.json there; pass a directory from the quantize step "
                          f"(e.g. <output_dir>/export/distilled_int4)")


def export_config(model_dir: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The config the export's model was trained with (recorded in its ``quantized.json``), plus ``overrides``.

    What ``predict`` scores with when no ``--config`` is given: the data a split is read from,
    the batch size and the bad-row policy of the run that made the model, never the defaults.

    Args:
        model_dir (str): an export directory (``<output_dir>/export/<name>``).
        overrides (Sequence[str]): ``key=value`` overrides on top (validated like any config's).

    Returns:
        RunConfig: the validated config.

    Raises:
        ConfigError: not an export, or one that records no config (then pass ``--config``).
        CheckpointError: the export is unfinished or damaged.
    """
    _check_model_dir(model_dir)
    meta = read_quantized_meta(model_dir)["meta"]
    recorded = meta.get("config")
    if not isinstance(recorded, dict):
        raise ConfigError(f"--model {model_dir}: the export does not record the config its model was trained with; "
                          "pass that config with --config")
    load_plugins(meta.get("plugins") or [])  # the recorded config may name a plugin's model builder
    # through the one config loader (validation, overrides, messages); the message names the export, not a temp file
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "config.yaml"
        f.write_text(yaml.safe_dump(recorded, sort_keys=False))
        try:
            return load_config(f, overrides)
        except ConfigError as e:
            where = f"{Path(model_dir) / EXPORT_META_FILE} (the config recorded with the export)"
            raise ConfigError(str(e).replace(str(f), where)) from None


def run(cfg: RunConfig, model_dir: str, split: str, out: str, input_path: Optional[str] = None,
        columns: Sequence[str] = (), chunk_rows: int = CHUNK_ROWS) -> Path:
    """Score traffic (``input_path``) or the configured ``split`` with the export in ``model_dir``.

    Args:
        cfg (RunConfig): distributed settings, batch size, ``data.on_bad_row`` (and the data, for a split).
        model_dir (str): a directory written by the quantize step (``export/<name>``).
        split (str): "val" or "test" when no ``input_path`` is given.
        out (str): output file; ``.parquet`` writes Parquet (needs pyarrow), anything else CSV.
        input_path (Optional[str]): file, folder or glob of traffic in the model's input format.
        columns (Sequence[str]): input columns copied to the output (ids to join on); needs ``input_path``.
        chunk_rows (int): rows read and scored at a time.

    Returns:
        Path: the file written (on rank 0).
    """
    _check_model_dir(model_dir)
    if out.endswith(".parquet"):
        try:
            import pyarrow  # noqa: F401  (only checks it is installed)
        except ImportError:
            raise ConfigError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow), or use a .csv name") from None
    if columns and not input_path:
        raise ConfigError("--columns passes input columns through; it needs --input (a split has no raw columns)")
    env = init_distributed(cfg.distributed)
    path = Path(out)
    writer = _Writer(path) if env.is_main else None  # the destination is checked before any work
    bar = None
    try:
        served = load_model(model_dir)
        bad_rows = BadRowLog(cfg.data.on_bad_row, verbose=env.is_main)
        chunks = (_file_chunks(served, input_path, columns, bad_rows, chunk_rows) if input_path
                  else _split_chunks(cfg, served, split, f"--model {model_dir}", chunk_rows))
        for chunk in chunks:
            # the bar starts with the first rows: errors while opening the input come before it
            if bar is None:  # (not `bar or …`: a tqdm without a total has no truth value)
                bar = progress_bar(None, "predict", enabled=env.is_main, unit=" rows")
            scored = _score_share(served, chunk, env, cfg.data.batch_size)
            if writer is not None and scored is not None:
                writer.write(scored)
                bar.update(len(scored))
    except BaseException:
        if writer is not None:
            writer.discard()  # a bad row under on_bad_row=error, an interrupt: no partial file stays behind
        raise
    finally:
        if bar is not None:
            bar.close()
    if writer is not None:
        empty = np.zeros((0, len(served.tasks)) if len(served.tasks) > 1 else 0, np.float32)
        writer.close(["row", *score_columns(served.tasks, empty, empty)])
        if bad_rows.count:
            logger.warning("%s: %s", input_path, bad_rows.summary())
        logger.info("wrote %d scored rows to %s", writer.rows, path)
    return path
