"""A ``Batch`` that carries the teacher's stored outputs for its rows (offline distillation).

``TrainPipelineSparseDist`` moves batches with ``to()`` / ``pin_memory()`` / ``record_stream()``;
overriding them keeps the teacher outputs with the rows through the pipeline.

Example::

    batch = ScoredBatch(dense, kjt, labels, teacher_logits=cached["logits"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torchrec.datasets.utils import Batch


def _opt(t: Optional[Tensor], fn) -> Optional[Tensor]:
    return None if t is None else fn(t)


@dataclass
class ScoredBatch(Batch):
    """``Batch`` plus the teacher's outputs for the same rows.

    Args:
        teacher_logits (Tensor): [B] teacher logits.
        teacher_hint (Optional[Tensor]): [B, H] teacher over-arch input, when a hint term needs it.
        teacher_embeddings (Optional[Tensor]): [B, F, D] teacher pooled embeddings, when an
            embedding term needs them.
    """

    teacher_logits: Tensor = None  # type: ignore[assignment]
    teacher_hint: Optional[Tensor] = None
    teacher_embeddings: Optional[Tensor] = None

    def to(self, device: torch.device, non_blocking: bool = False) -> "ScoredBatch":
        move = lambda t: t.to(device=device, non_blocking=non_blocking)  # noqa: E731
        return ScoredBatch(move(self.dense_features), self.sparse_features.to(device=device, non_blocking=non_blocking),
                           move(self.labels), move(self.teacher_logits), _opt(self.teacher_hint, move),
                           _opt(self.teacher_embeddings, move))

    def record_stream(self, stream: torch.Stream) -> None:
        super().record_stream(stream)
        for t in (self.teacher_logits, self.teacher_hint, self.teacher_embeddings):
            if t is not None:
                t.record_stream(stream)

    def pin_memory(self) -> "ScoredBatch":
        pin = lambda t: t.pin_memory()  # noqa: E731
        return ScoredBatch(pin(self.dense_features), self.sparse_features.pin_memory(), pin(self.labels),
                           pin(self.teacher_logits), _opt(self.teacher_hint, pin), _opt(self.teacher_embeddings, pin))
