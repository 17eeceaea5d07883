"""A ``Batch`` that carries the teacher's stored outputs for its rows (offline distillation).

``TrainPipelineSparseDist`` moves batches with ``to()`` / ``pin_memory()`` / ``record_stream()``;
overriding them keeps the teacher outputs with the rows through the pipeline.

Example::

    batch = ScoredBatch(dense, kjt, labels, teacher_logits=cached["logits"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict

import torch
from torch import Tensor
from torchrec.datasets.utils import Batch


def _each(taps: Dict[str, Tensor], fn: Callable[[Tensor], Tensor]) -> Dict[str, Tensor]:
    return {key: fn(t) for key, t in taps.items()}


@dataclass
class ScoredBatch(Batch):
    """``Batch`` plus the teacher's outputs for the same rows.

    Args:
        teacher_logits (Tensor): [B] teacher logits ([B, T] for several tasks).
        teacher_taps (Dict[str, Tensor]): the teacher's tapped outputs the loss terms read, by
            tap key (``hint:inter_arch`` -> [B, H], ``embeddings:sparse_arch`` -> [B, F, D]).
    """

    teacher_logits: Tensor = None  # type: ignore[assignment]
    teacher_taps: Dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device, non_blocking: bool = False) -> "ScoredBatch":
        move = lambda t: t.to(device=device, non_blocking=non_blocking)  # noqa: E731
        return ScoredBatch(move(self.dense_features), self.sparse_features.to(device=device, non_blocking=non_blocking),
                           move(self.labels), move(self.teacher_logits), _each(self.teacher_taps, move))

    def record_stream(self, stream: torch.Stream) -> None:
        super().record_stream(stream)
        for t in (self.teacher_logits, *self.teacher_taps.values()):
            t.record_stream(stream)

    def pin_memory(self) -> "ScoredBatch":
        pin = lambda t: t.pin_memory()  # noqa: E731
        return ScoredBatch(pin(self.dense_features), self.sparse_features.pin_memory(), pin(self.labels),
                           pin(self.teacher_logits), _each(self.teacher_taps, pin))
