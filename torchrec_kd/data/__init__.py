"""Data sources that yield TorchRec's ``Batch`` (dense_features, sparse_features KJT, labels)."""

from torchrec_kd.config import DataConfig
from torchrec_kd.data.synthetic import SyntheticClickLog


def build_data(cfg: DataConfig, seed: int) -> SyntheticClickLog:
    """The data source named by ``cfg.source``.

    Args:
        cfg (DataConfig): the ``data`` section.
        seed (int): the run's seed.

    Returns:
        SyntheticClickLog: exposes feature names, table sizes and per-rank batch streams.
    """
    if cfg.source == "synthetic":
        return SyntheticClickLog(cfg.synthetic, seed=seed, val_rows=cfg.val_rows, test_rows=cfg.test_rows)
    raise ValueError(f"data.source={cfg.source!r} is not supported; use 'synthetic'")


__all__ = ["SyntheticClickLog", "build_data"]
