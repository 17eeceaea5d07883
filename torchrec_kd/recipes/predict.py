"""Recipe: score data with an exported quantized student and write CSV (or Parquet).

Each rank loads the exported model (plain tensors + JSON, no unpickling) and scores
its own share of the rows; rank 0 gathers the shares in global row order and writes
one file with ``row, label, logit, probability``.

Example::

    python -m torchrec_kd.cli predict --config configs/dlrm_teacher_synthetic.yaml \\
        --model outputs/dlrm_teacher_synthetic/export/distilled_int4 --split test --out preds.csv
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import pandas as pd
import torch
import torch.distributed as dist

from torchrec_kd.config import RunConfig
from torchrec_kd.core.layout import EXPORT_META_FILE
from torchrec_kd.data import build_data
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import build_model_from_meta, io_from_meta
from torchrec_kd.models.dlrm import check_fits_data
from torchrec_kd.quant.export import load_quantized, read_quantized_meta

logger = logging.getLogger(__name__)


def run(cfg: RunConfig, model_dir: str, split: str, out: str) -> Path:
    """Score ``split`` of the configured data with the model exported under ``model_dir``.

    Args:
        cfg (RunConfig): data section and batch size.
        model_dir (str): a directory written by the quantize step (``export/<name>``).
        split (str): "train", "val" or "test" (train needs ``--max-batches``-style limits; use val/test).
        out (str): output file; ``.parquet`` writes Parquet (needs pyarrow), anything else CSV.

    Returns:
        Path: the file written (on rank 0).
    """
    if not (Path(model_dir) / EXPORT_META_FILE).is_file():
        raise ConfigError(f"--model {model_dir}: no quantized.json there; pass a directory from the quantize step "
                          f"(e.g. <output_dir>/export/distilled_int4)")
    if out.endswith(".parquet"):
        try:
            import pyarrow  # noqa: F401  (only checks it is installed)
        except ImportError:
            raise ConfigError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow), or use a .csv name") from None
    env = init_distributed(cfg.distributed)
    data = build_data(cfg.data, cfg.seed)
    if data.num_batches(split, cfg.data.batch_size) is None:
        raise ConfigError(f"--split {split}: the stream is endless; score 'val' or 'test'")
    meta = read_quantized_meta(model_dir)["meta"]
    check_fits_data(meta, data.dense_names, data.sparse_names, data.num_embeddings, f"--model {model_dir}")
    model, io = load_quantized(model_dir, build_model_from_meta).eval(), io_from_meta(meta)
    logits: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    with torch.no_grad():
        for batch in data.batches(split, cfg.data.batch_size, env.rank, env.world_size):
            logits.append(io.logits(model, batch))
            labels.append(batch.labels)
    local = torch.stack([torch.cat(logits), torch.cat(labels)])  # [2, rows_of_this_rank]
    shares = [torch.empty_like(local) for _ in range(env.world_size)] if env.is_main else None
    dist.gather(local, shares, dst=0)
    path = Path(out)
    if env.is_main:
        # rank r holds the r-th slice of every global batch: interleave back to row order
        per_batch = cfg.data.batch_size // env.world_size
        n_batches = local.shape[1] // per_batch
        merged = torch.cat([s.view(2, n_batches, per_batch) for s in shares], dim=2).reshape(2, -1)
        frame = pd.DataFrame({"row": range(merged.shape[1]), "label": merged[1].numpy().astype(int),
                              "logit": merged[0].numpy(), "probability": torch.sigmoid(merged[0]).numpy()})
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
        logger.info("wrote %d scored rows to %s", len(frame), path)
    return path
