"""Knowledge-distillation loss terms, picked by name from the config and summed with weights."""

from torchrec_kd.losses.registry import LOSSES, KDLoss, WeightedKDLoss, build_loss, register_loss
from torchrec_kd.losses import terms  # noqa: F401  (import registers the built-in terms)

__all__ = ["KDLoss", "LOSSES", "register_loss", "build_loss", "WeightedKDLoss"]
