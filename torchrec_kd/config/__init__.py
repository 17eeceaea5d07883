"""Typed run configuration: the sections (``schema``) and the YAML + overrides loader (``load``).

Example::

    from torchrec_kd.config import load_config
    cfg = load_config("configs/dlrm_teacher_synthetic.yaml", ["train.steps=10"])
"""

from torchrec_kd.config.data_sources import (
    CriteoDataConfig,
    DataConfig,
    MovieLensDataConfig,
    SparseColumnConfig,
    SyntheticDataConfig,
    TableDataConfig,
)
from torchrec_kd.config.load import RANGES, build_section, config_source, config_to_dict, load_config, string_override
from torchrec_kd.config.schema import (
    DLRM_FAMILY,
    BudgetConfig,
    DistillConfig,
    DistributedConfig,
    EarlyStoppingConfig,
    ExperimentConfig,
    LossTermConfig,
    ModelConfig,
    PruneConfig,
    QuantizeConfig,
    RunConfig,
    ScheduleConfig,
    ShardingConfig,
    TeacherEntryConfig,
    TrainConfig,
)
from torchrec_kd.errors import ConfigError

__all__ = [
    "DLRM_FAMILY", "RANGES", "ConfigError", "CriteoDataConfig", "DataConfig", "DistillConfig", "DistributedConfig",
    "EarlyStoppingConfig", "ExperimentConfig", "LossTermConfig", "ModelConfig", "MovieLensDataConfig",
    "BudgetConfig", "PruneConfig", "QuantizeConfig", "RunConfig", "ScheduleConfig", "ShardingConfig", "SparseColumnConfig",
    "SyntheticDataConfig",
    "TableDataConfig", "TeacherEntryConfig", "TrainConfig", "build_section", "config_source", "config_to_dict", "load_config",
    "string_override",
]
