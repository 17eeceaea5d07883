"""torchrec_kd: distill large sharded TorchRec DLRM teachers into slim, quantized students.

Public API::

    from torchrec_kd import DistillationModel, build_loss, LossTermConfig, freeze_teacher_tables
    from torchrec_kd import use_fake_quant_sparse_arch, ScoredBatch, TeacherEnsemble   # QAT, offline, ensembles
    from torchrec_kd import ModelSelector, summarize, paired_interval   # model selection, honest comparisons
"""

from torchrec_kd.config import ConfigError, EarlyStoppingConfig, LossTermConfig, RunConfig, ScheduleConfig, load_config
from torchrec_kd.data import build_data
from torchrec_kd.data.synthetic import SyntheticClickLog
from torchrec_kd.distill.freeze import freeze_teacher_tables
from torchrec_kd.distill.model import DistillationModel, TeacherEnsemble
from torchrec_kd.distill.scored_batch import ScoredBatch
from torchrec_kd.losses import LOSSES, FeatureDims, KDInputs, KDLoss, WeightedKDLoss, build_loss, register_loss
from torchrec_kd.qat.fake_quant import fake_quantize_rows
from torchrec_kd.qat.sparse_arch import use_fake_quant_sparse_arch
from torchrec_kd.quantization import quantize_dlrm
from torchrec_kd.summary import paired_interval, summarize
from torchrec_kd.training.selection import ModelSelector

__all__ = [
    "ConfigError", "DistillationModel", "EarlyStoppingConfig", "ModelSelector", "paired_interval", "summarize", "FeatureDims", "KDInputs", "KDLoss", "LOSSES", "LossTermConfig", "RunConfig",
    "ScheduleConfig", "ScoredBatch", "SyntheticClickLog", "TeacherEnsemble", "WeightedKDLoss", "build_data", "build_loss",
    "fake_quantize_rows", "freeze_teacher_tables", "load_config", "quantize_dlrm", "register_loss",
    "use_fake_quant_sparse_arch",
]
