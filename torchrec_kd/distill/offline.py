"""Offline distillation: what ties a teacher-score cache to a run, and reading it batch by batch.

``score-teacher`` runs the frozen teacher(s) once over the training stream that
``distill`` will consume (same data, seed, batch size, steps) and stores per row the
ensemble logits (``[n, T]``, a column per student task, in a multi-task run) and, when a
configured term needs them, the first teacher's hint and pooled embeddings — the teacher
submodules' outputs the terms tap, stored by tap key such as ``hint:inter_arch``
(:mod:`torchrec_kd.distill.score_cache`). ``distill`` with
``distill.offline: true`` then builds no teacher: :meth:`OfflineScores.attach` turns each
training batch into a :class:`~torchrec_kd.distill.scored_batch.ScoredBatch` carrying the
stored outputs of exactly its rows.

A cache is refused (``CacheError``) when its teacher fingerprint, data (the
:mod:`torchrec_kd.core.fingerprint` data identity), seed,
batch size or fields differ from the run, when it holds fewer steps than the run needs, or
when a batch's data digest differs from the one stored for the same rows.

Example::

    python -m torchrec_kd.cli score-teacher --config configs/dlrm_teacher_synthetic.yaml
    python -m torchrec_kd.cli distill --config configs/dlrm_teacher_synthetic.yaml distill.offline=true
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Sequence

from torchrec.datasets.utils import Batch

from torchrec_kd.checkpoint.model_io import checkpoint_fingerprint
from torchrec_kd.config import RunConfig
from torchrec_kd.core.fingerprint import data_identity, digest
from torchrec_kd.core.layout import RunLayout
from torchrec_kd.core.tasks import is_multitask, run_tasks, task_names
from torchrec_kd.distill.score_cache import batch_digest, check_digest, open_cache
from torchrec_kd.distill.scored_batch import ScoredBatch
from torchrec_kd.distributed.env import DistEnv
from torchrec_kd.losses.taps import Tap, tap_keys

if TYPE_CHECKING:  # pragma: no cover
    from torchrec_kd.distill.teachers import TeacherSpec



def scores_dir(cfg: RunConfig) -> Path:
    """Where the run's teacher-score cache lives (``distill.teacher_scores`` or ``<output_dir>/teacher_scores``)."""
    return Path(cfg.distill.teacher_scores or RunLayout(cfg.out_dir).teacher_scores)


def cached_fields(taps: Iterable[Tap]) -> List[str]:
    """Fields a cache must hold for loss terms reading ``taps``: logits, and each teacher tap by its key."""
    return ["logits"] + tap_keys(list(taps), "teacher")


def run_fingerprint(cfg: RunConfig, teachers: Sequence["TeacherSpec"]) -> Dict[str, Any]:
    """What a cache must match to stand in for the teacher(s) in this run.

    Several tasks add the student's task names (the stored logits' columns) and which tasks
    each teacher teaches; a one-task run's fingerprint is what it always was.
    """
    multitask = is_multitask(cfg)
    fingerprint = {
        "teachers": [{"checkpoint": str(t.checkpoint), "sha256": checkpoint_fingerprint(t.checkpoint),
                      "weight": t.weight, **({"tasks": t.teaches} if multitask else {})} for t in teachers],
        "teacher_dtype": cfg.distill.teacher_dtype,  # fp16 tables score (slightly) differently
        "data": digest(data_identity(cfg)),  # the same data identity as every artifact's fingerprint
        "seed": cfg.seed,
    }
    if multitask:
        fingerprint["tasks"] = task_names(run_tasks(cfg))
    return fingerprint


class OfflineScores:
    """The validated cache of one run, handing out the stored outputs of each batch.

    Args:
        path (Path): the cache directory.
        reader: an opened :mod:`score_cache` reader.
        fields (List[str]): fields read per batch.
    """

    def __init__(self, path: Path, reader: Any, fields: List[str]) -> None:
        self.path, self.reader, self.fields = path, reader, fields

    @classmethod
    def open(cls, cfg: RunConfig, teachers: Sequence["TeacherSpec"], taps: Sequence[Tap],
             env: DistEnv, steps: int) -> "OfflineScores":
        """Open and check the run's cache for ``steps`` batches (raises ``CacheError`` naming what does not match)."""
        path = scores_dir(cfg)
        fields = cached_fields(taps)
        reader = open_cache(path, run_fingerprint(cfg, teachers), steps=steps,
                            global_batch=cfg.data.batch_size, fields=fields)
        return cls(path, reader, fields)

    def attach(self, batches: Iterable[Batch], start: int, rank: int, world_size: int) -> Iterator[ScoredBatch]:
        """Yield each batch with its rows' stored teacher outputs, checking the data digest.

        Args:
            batches (Iterable[Batch]): this rank's training batches from step ``start``.
            start (int): the step of the first batch (a resumed run starts late).
            rank (int): this rank.
            world_size (int): ranks of this run (may differ from the scoring run's).

        Yields:
            ScoredBatch: the batch with ``teacher_logits`` (and hint / embeddings if stored).
        """
        for step, batch in enumerate(batches, start):
            outputs, digest = self.reader.read(step, rank, world_size)
            kjt = batch.sparse_features
            check_digest(digest, batch_digest(batch.dense_features, kjt.values(), kjt.lengths(), batch.labels),
                         self.path, step, rank)
            yield ScoredBatch(batch.dense_features, kjt, batch.labels, teacher_logits=outputs["logits"],
                              teacher_taps={f: outputs[f] for f in self.fields if f != "logits"})
