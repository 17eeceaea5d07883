"""``TowerTrain``: a model with towers trained alone on its labels over candidates (``train.tower_losses``).

TorchRec's two-tower example trains its towers with an in-batch softmax; a two-tower trained
only pointwise (binary cross-entropy of each logged pair) is a weak retrieval baseline, and
distillation measured against it would look better than it is. ``TowerTrain`` keeps
:class:`~torchrec_kd.models.train.RankerTrain`'s contract and loss (binary cross-entropy of
each row's own pair) and adds the label terms of ``train.tower_losses`` (``inbatch_softmax``)
over each step's candidates, built by the same
:class:`~torchrec_kd.distill.candidates.CandidateScorer` distillation uses (without a teacher).
The distilled student gets the same terms (``distill_parts`` appends them to
``distill.losses``), so alone and distilled train on one label objective.

Example::

    module = TowerTrain(student, io, build_loss(cfg.train.tower_losses), spec_from_data(data))
    loss, (loss_, logits, labels) = module(batch)
"""

from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn
from torchrec.datasets.utils import Batch

from torchrec_kd.config import RunConfig
from torchrec_kd.core.tasks import hard_task_loss
from torchrec_kd.distill.candidates import CandidateScorer, CandidateSpec, check_candidates
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import WeightedKDLoss, build_loss
from torchrec_kd.models.io import ModelIO
from torchrec_kd.models.train import RankerTrain


def tower_loss(cfg: RunConfig) -> WeightedKDLoss:
    """``train.tower_losses`` built.

    Args:
        cfg (RunConfig): the run config.

    Returns:
        WeightedKDLoss: the label terms.

    Raises:
        ConfigError: a bad weight, temperature or args, naming ``train.tower_losses``.
    """
    try:
        return build_loss(cfg.train.tower_losses)
    except ValueError as e:
        raise ConfigError(f"train.tower_losses: {e}") from None


class TowerTrain(RankerTrain):
    """Binary cross-entropy of each row's pair plus label terms over the step's candidates.

    Args:
        model (nn.Module): a model with towers (``user_embedding``, ``item_embedding``, ``score_matrix``).
        io (ModelIO): how it is called (one task: retrieval runs are single-task).
        terms (WeightedKDLoss): ``train.tower_losses`` built (label-only candidate terms).
        spec (CandidateSpec): the run's user / item keys and corpus (random negatives).

    Raises:
        ConfigError: a term the run cannot feed (no towers, a teacher term, random negatives without a corpus).
    """

    def __init__(self, model: nn.Module, io: ModelIO, terms: WeightedKDLoss, spec: CandidateSpec) -> None:
        super().__init__(model, io)
        self.terms = terms
        settings = check_candidates(terms, model, spec, [], where="train.tower_losses")
        self.candidates = CandidateScorer(model, [], [], [], spec, settings)

    def forward(self, batch: Batch) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        """Score the batch's pairs and candidates once; BCE of the pairs plus the tower terms.

        Args:
            batch (Batch): dense_features, sparse_features, labels ``[B]``.

        Returns:
            Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]: ``loss`` and ``(loss, logits, labels)`` detached.
        """
        logits, own, scores = self.candidates(batch)
        loss = hard_task_loss(logits, batch.labels, self.tasks)
        loss = loss + self.terms(logits, own, batch.labels, candidates=scores)
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())
