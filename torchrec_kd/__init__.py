"""torchrec_kd: distill large sharded TorchRec DLRM teachers into slim, quantized students.

Public API::

    from torchrec_kd import DistillationModel, build_loss, LossTermConfig, freeze_teacher_tables
"""

from torchrec_kd.config import ConfigError, LossTermConfig, RunConfig, load_config
from torchrec_kd.data import build_data
from torchrec_kd.data.synthetic import SyntheticClickLog
from torchrec_kd.distill.freeze import freeze_teacher_tables
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.losses import LOSSES, KDLoss, WeightedKDLoss, build_loss, register_loss
from torchrec_kd.quantization import quantize_dlrm

__all__ = [
    "ConfigError", "DistillationModel", "KDLoss", "LOSSES", "LossTermConfig", "RunConfig", "SyntheticClickLog",
    "WeightedKDLoss", "build_data", "build_loss", "freeze_teacher_tables", "load_config", "quantize_dlrm", "register_loss",
]
