"""Recipe: each user's top-K items from a two-tower export; write CSV or Parquet.

``--input`` names users' raw rows (a file, folder or glob in the model's input format; only the
user columns are needed), each row one query. Without ``--input`` the configured data's
leave-last-out users of ``--split`` are queried (a retrieval source's ``eval_users``), their
already-seen items excluded. The export's item index is searched exactly unless ``--index``
picks FAISS (``type=ivf,nlist=1024,nprobe=32`` or ``type=hnsw,m=32,ef_search=128``; ``dtype=int8``
searches the int8 rows). One process: the user tower and a matmul are cheap next to training.

Output, one line per (user, rank): ``row`` (the user's position among the input's rows),
the ``--columns`` passed through, ``rank`` (1 = best), ``item`` (the raw item id), ``logit``.

Example::

    python -m torchrec_kd.cli retrieve --model outputs/retrieval_synthetic/export/distilled_int8 \\
        --input users.csv --columns user_id --k 100 --out top100.csv
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from torchrec_kd.config import RunConfig
from torchrec_kd.core.layout import EXPORT_META_FILE
from torchrec_kd.data import build_data
from torchrec_kd.errors import ConfigError, DataError
from torchrec_kd.serving.retrieval import IndexOptions, index_options
from torchrec_kd.serving.served_model import ServedModel, load_model

logger = logging.getLogger(__name__)


def parse_index(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """``--index type=ivf,nprobe=32`` (or just ``ivf``) as a dict of options (numbers as numbers).

    Raises:
        ConfigError: a part that is not ``key=value``.
    """
    if not text:
        return None
    if "=" not in text:
        return {"type": text}
    out: Dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--index {text}: '{part}' is not key=value (e.g. type=ivf,nprobe=32)")
        v: Any = value.strip()
        if v.lstrip("-").isdigit():
            v = int(v)
        out[key.strip()] = None if v in ("null", "none") else v
    return out


def _long(ids: np.ndarray, logits: np.ndarray, rows: np.ndarray, passed: Dict[str, np.ndarray]) -> pd.DataFrame:
    """One line per (user, rank), ranks 1..k; items marked -1 (none left after exclusion) dropped."""
    k = ids.shape[1]
    frame = pd.DataFrame({"row": np.repeat(rows, k), **{c: np.repeat(v, k) for c, v in passed.items()},
                          "rank": np.tile(np.arange(1, k + 1), len(rows)), "item": ids.reshape(-1),
                          "logit": logits.reshape(-1).astype(np.float32)})
    return frame[np.isfinite(frame["logit"].to_numpy())].reset_index(drop=True)


def _write(frame: pd.DataFrame, out: Path) -> None:
    """Write whole or not at all (a temporary sibling renamed into place)."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    except ImportError:
        raise ConfigError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow), or use a .csv name") from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--out {out}: cannot be written ({e.strerror or type(e).__name__}); choose a writable place") from None
    os.replace(tmp, out)


def _from_file(served: ServedModel, path: str, k: int, opts: IndexOptions, columns: Sequence[str]) -> List[pd.DataFrame]:
    parts, seen = [], 0
    for frame, _, unreadable, file in served.rows.read(path):
        if unreadable:
            line, reason, _ = unreadable[0]
            raise DataError(f"{file}:{line}: {reason}")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"--columns: {missing} not in {file}; its columns are {list(frame.columns)}")
        ids, logits = served.retrieve(frame, k, opts)
        rows = np.arange(seen, seen + len(frame))
        parts.append(_long(ids, logits, rows, {c: frame[c].to_numpy() for c in columns}))
        seen += len(frame)
    return parts


def _from_split(cfg: RunConfig, served: ServedModel, split: str, k: int, opts: IndexOptions) -> List[pd.DataFrame]:
    data = build_data(cfg.data, cfg.seed, tasks=cfg.tasks)
    if not callable(getattr(data, "eval_users", None)):
        raise ConfigError(f"data.source {cfg.data.source} has no users to retrieve for (set data.retrieval), "
                          "or pass --input with users' rows")
    users = data.eval_users(split)
    ids, logits = served.retrieve(users.block, k, opts, exclude=users.seen)
    return [_long(ids, logits, np.arange(len(users.block)), {})]


def run(cfg: RunConfig, model_dir: str, out: str, input_path: Optional[str] = None, k: int = 100,
        index: Union[None, str, Dict[str, Any]] = None, columns: Sequence[str] = (), split: str = "test") -> Path:
    """Write each user's top-``k`` items of the export in ``model_dir``.

    Args:
        cfg (RunConfig): the run config (its data, for a split's users).
        model_dir (str): a two-tower export (``<output_dir>/export/<name>``).
        out (str): output file; ``.parquet`` writes Parquet (needs pyarrow), anything else CSV.
        input_path (Optional[str]): users' raw rows; None: the configured data's ``split`` users.
        k (int): items per user.
        index (None | str | dict): index options (:class:`~torchrec_kd.serving.retrieval.IndexOptions`).
        columns (Sequence[str]): input columns copied to the output (ids to join on); needs ``input_path``.
        split (str): ``val`` or ``test`` when no ``input_path`` is given.

    Returns:
        Path: the file written.

    Raises:
        ConfigError: not an export, an export without an item index, bad index options or k.
        DataError: a user row the training rules reject, a missing column.
    """
    if not (Path(model_dir) / EXPORT_META_FILE).is_file():
        raise ConfigError(f"--model {model_dir}: no quantized.json there; pass a two-tower export from the quantize step")
    if columns and not input_path:
        raise ConfigError("--columns passes input columns through; it needs --input (a split has no raw columns)")
    opts = index_options(index, "--index")  # bad options stop before any work
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out}: is a directory; name the file to write (e.g. {path / 'topk.csv'})")
    if int(os.environ.get("RANK", "0")) != 0:  # one process serves; under a launcher with more, only rank 0 works
        return path
    served = load_model(model_dir)
    served.retriever(opts)  # no item index: stop now, with the reason
    parts = _from_file(served, input_path, k, opts, columns) if input_path else _from_split(cfg, served, split, k, opts)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["row", *columns, "rank", "item", "logit"])
    _write(frame, path)
    logger.info("wrote the top-%d items of %d users (%s index) to %s", k, frame["row"].nunique(), opts.type, path)
    return path
