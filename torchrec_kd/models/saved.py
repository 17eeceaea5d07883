"""Load a saved float model (``train-student`` / ``distill`` output) back as a plain, unsharded DLRM.

Example::

    model, meta = load_float_model(Path("outputs/run/distilled"))
    logits = model(batch.dense_features, batch.sparse_features)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from torchrec.models.dlrm import DLRM

from torchrec_kd.checkpoint.model_io import load_full_state_dict, read_meta
from torchrec_kd.models.dlrm import MODEL_PREFIX, build_dlrm_from_meta


def load_float_model(ckpt: Path) -> Tuple[DLRM, Dict[str, Any]]:
    """The unsharded float model of a ``train-student``/``distill`` checkpoint, on CPU.

    Args:
        ckpt (Path): checkpoint directory (holds ``meta.json`` and ``model/``).

    Returns:
        Tuple[DLRM, dict]: the model in eval mode and the checkpoint's meta.
    """
    meta = read_meta(ckpt)
    model = build_dlrm_from_meta(meta)
    state = {k[len(MODEL_PREFIX):]: v for k, v in load_full_state_dict(ckpt).items() if k.startswith(MODEL_PREFIX)}
    model.load_state_dict(state)
    return model.eval(), meta
