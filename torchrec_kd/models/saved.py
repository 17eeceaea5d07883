"""Load a saved float model (``train-teacher`` / ``train-student`` / ``distill`` output) back, unsharded.

Example::

    model, meta = load_float_model(Path("outputs/run/distilled"))
    logits = io_from_meta(meta).logits(model, batch)   # [B], through its own forward
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from torch import nn

from torchrec_kd.checkpoint.model_io import load_full_state_dict, read_meta
from torchrec_kd.models.build import build_model_from_meta
from torchrec_kd.models.dlrm import MODEL_PREFIX


def load_float_model(ckpt: Path) -> Tuple[nn.Module, Dict[str, Any]]:
    """The unsharded float model of a ``train-student``/``distill`` checkpoint, on CPU.

    Args:
        ckpt (Path): checkpoint directory (holds ``meta.json`` and ``model/``).

    Returns:
        Tuple[nn.Module, dict]: the model in eval mode (call it through ``io_from_meta(meta)``) and
        the checkpoint's meta.
    """
    meta = read_meta(ckpt)
    model = build_model_from_meta(meta)
    state = {k[len(MODEL_PREFIX):]: v for k, v in load_full_state_dict(ckpt).items() if k.startswith(MODEL_PREFIX)}
    model.load_state_dict(state)
    return model.eval(), meta
