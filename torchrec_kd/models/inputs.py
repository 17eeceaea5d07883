"""What each model of a run reads of the data: the student may leave out privileged features.

Example::

    inputs = model_inputs(cfg, "student", data.sparse_names, data.num_embeddings, data.dense_names)
    tables = make_tables(cfg.student, inputs.sparse_features, inputs.num_embeddings)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from torchrec_kd.config import RunConfig
from torchrec_kd.errors import ConfigError


@dataclass(frozen=True)
class ModelInputs:
    """What one role's model reads of the data.

    Attributes:
        sparse_features (List[str]): the sparse features it has tables for.
        num_embeddings (List[int]): their table sizes.
        dense_in_features (int): width of the batch's dense input (every dense feature).
        dense_columns (Optional[List[int]]): the dense columns it reads; None: all.
    """

    sparse_features: List[str]
    num_embeddings: List[int]
    dense_in_features: int
    dense_columns: Optional[List[int]] = None


def model_inputs(cfg: RunConfig, role: str, sparse_names: Sequence[str], sizes: Sequence[int],
                 dense_names: Sequence[str]) -> ModelInputs:
    """The features the ``role`` model reads.

    The teacher reads every feature; the student leaves out ``distill.privileged_features``,
    which may name sparse features (no table) and dense features (its dense arch skips
    their columns).

    Args:
        cfg (RunConfig): the run config.
        role (str): "teacher" or "student".
        sparse_names (Sequence[str]): the data's sparse features.
        sizes (Sequence[int]): their table sizes.
        dense_names (Sequence[str]): the data's dense features, in column order.

    Returns:
        ModelInputs: the features kept.

    Raises:
        ConfigError: a privileged feature the data does not have, or every sparse (or
            every dense) feature privileged.
    """
    privileged = set(cfg.distill.privileged_features)
    unknown = sorted(privileged - set(sparse_names) - set(dense_names))
    if unknown:
        raise ConfigError(f"distill.privileged_features: {unknown} are not features of this data; it has sparse "
                          f"{list(sparse_names)[:8]}{' …' if len(sparse_names) > 8 else ''} and dense "
                          f"{list(dense_names)[:8]}{' …' if len(dense_names) > 8 else ''}")
    if role == "teacher" or not privileged:
        return ModelInputs(list(sparse_names), list(sizes), len(dense_names))
    kept = [(n, k) for n, k in zip(sparse_names, sizes) if n not in privileged]
    if not kept:
        raise ConfigError("distill.privileged_features lists every sparse feature; the student needs at least one")
    columns = [i for i, n in enumerate(dense_names) if n not in privileged]
    if dense_names and not columns:
        raise ConfigError("distill.privileged_features lists every dense feature; the student needs at least one")
    return ModelInputs([n for n, _ in kept], [k for _, k in kept], len(dense_names),
                       columns if len(columns) < len(dense_names) else None)
