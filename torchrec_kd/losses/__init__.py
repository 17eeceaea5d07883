"""Knowledge-distillation loss terms, picked by name from the config and summed with weights."""

from torchrec_kd.losses import features, retrieval_terms, terms  # noqa: F401  (import registers the built-in terms)
from torchrec_kd.losses.registry import (
                                         FEATURES,
                                         LOSSES,
                                         CandidateScores,
                                         FeatureDims,
                                         KDInputs,
                                         KDLoss,
                                         WeightedKDLoss,
                                         build_loss,
                                         check_loss_names,
                                         check_tower_losses,
                                         register_loss,
                                         term_args,
)
from torchrec_kd.losses.taps import Tap, TapInfo, as_feature

__all__ = ["CandidateScores", "FEATURES",
           "FeatureDims", "KDInputs", "KDLoss", "LOSSES", "register_loss", "build_loss", "WeightedKDLoss",
           "check_loss_names", "check_tower_losses",
           "term_args", "Tap", "TapInfo", "as_feature"]
