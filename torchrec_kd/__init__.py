"""torchrec_kd: distill large sharded TorchRec teachers into slim, quantized students.

Public API (imported on first use, so ``import torchrec_kd`` loads neither torchrec nor fbgemm)::

    from torchrec_kd import DistillationModel, build_loss, LossTermConfig, freeze_teacher_tables
    from torchrec_kd import register_model, ModelIO, build_model, RankerTrain   # any model, its own forward
    from torchrec_kd import use_fake_quant, quantize_model, ScoredBatch, TeacherEnsemble   # QAT, export, offline
    from torchrec_kd import ModelSelector, summarize, paired_interval   # model selection, honest comparisons
    from torchrec_kd import load_model   # an export for inference: raw rows in, logits and probabilities out
    from torchrec_kd import evaluate_model, export_for_serving   # one's own TorchRec loop: metrics, an export

The package map is in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

# public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    "UserError": "torchrec_kd.errors",
    "ConfigError": "torchrec_kd.errors",
    "DataError": "torchrec_kd.errors",
    "CheckpointError": "torchrec_kd.errors",
    "CacheError": "torchrec_kd.errors",
    "EarlyStoppingConfig": "torchrec_kd.config",
    "LossTermConfig": "torchrec_kd.config",
    "RunConfig": "torchrec_kd.config",
    "ScheduleConfig": "torchrec_kd.config",
    "load_config": "torchrec_kd.config",
    "RunLayout": "torchrec_kd.core.layout",
    "build_data": "torchrec_kd.data",
    "SyntheticClickLog": "torchrec_kd.data.synthetic",
    "freeze_teacher_tables": "torchrec_kd.distill.freeze",
    "DistillationModel": "torchrec_kd.distill.model",
    "TeacherEnsemble": "torchrec_kd.distill.model",
    "ScoredBatch": "torchrec_kd.distill.scored_batch",
    "LOSSES": "torchrec_kd.losses",
    "FeatureDims": "torchrec_kd.losses",
    "KDInputs": "torchrec_kd.losses",
    "KDLoss": "torchrec_kd.losses",
    "WeightedKDLoss": "torchrec_kd.losses",
    "build_loss": "torchrec_kd.losses",
    "register_loss": "torchrec_kd.losses",
    "fake_quantize_rows": "torchrec_kd.quant.fake_quant",
    "use_fake_quant": "torchrec_kd.quant.qat",
    "FakeQuantEmbeddingBagCollection": "torchrec_kd.quant.qat",
    "register_model": "torchrec_kd.models.registry",
    "BuildInputs": "torchrec_kd.models.registry",
    "MODELS": "torchrec_kd.models.registry",
    "ModelIO": "torchrec_kd.models.io",
    "build_model": "torchrec_kd.models.build",
    "build_model_from_meta": "torchrec_kd.models.build",
    "RankerTrain": "torchrec_kd.models.train",
    "FeatureTaps": "torchrec_kd.distill.taps",
    "probe_feature_dims": "torchrec_kd.distill.taps",
    "Tap": "torchrec_kd.losses",
    "TapInfo": "torchrec_kd.losses",
    "load_plugins": "torchrec_kd.core.plugins",
    "quantize_model": "torchrec_kd.quant.embeddings",
    "load_model": "torchrec_kd.serving.served_model",
    "ServedModel": "torchrec_kd.serving.served_model",
    "paired_interval": "torchrec_kd.reporting.summary",
    "summarize": "torchrec_kd.reporting.summary",
    "ModelSelector": "torchrec_kd.training.selection",
    "evaluate_model": "torchrec_kd.training.evaluate",
    "export_for_serving": "torchrec_kd.training.export_from_loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'torchrec_kd' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later accesses skip this hook
    return value


def __dir__() -> list:
    return sorted(list(globals()) + __all__)
