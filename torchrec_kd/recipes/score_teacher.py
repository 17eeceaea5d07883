"""Recipe: score the training stream with the frozen teacher(s) once, for offline distillation.

Example::

    python -m torchrec_kd.cli score-teacher --config configs/dlrm_teacher_synthetic.yaml
    python -m torchrec_kd.cli distill --config configs/dlrm_teacher_synthetic.yaml distill.offline=true

The teachers are sharded exactly as in online distillation (so a teacher too big for one
host scores on N ranks), run under ``no_grad`` over the budget of batches that
``distill`` will read, and each rank writes its rows' outputs to the cache
(:mod:`torchrec_kd.distill.score_cache`); rank 0 writes the manifest last, so a cache cut
off half way is never mistaken for a finished one.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel

from torchrec_kd.config import RunConfig
from torchrec_kd.core.budget import max_steps
from torchrec_kd.core.console import progress_bar
from torchrec_kd.core.tasks import is_multitask, run_tasks
from torchrec_kd.data import build_data
from torchrec_kd.distill.frozen_teachers import build_frozen_teachers, distill_parts, load_frozen_teachers, teacher_ios
from torchrec_kd.distill.model import TeacherEnsemble
from torchrec_kd.distill.offline import cached_fields, run_fingerprint, scores_dir
from torchrec_kd.distill.score_cache import CacheSpec, ScoreCacheWriter, batch_digest, write_manifest
from torchrec_kd.distill.teachers import TeacherSpec
from torchrec_kd.distributed.env import DistEnv, init_distributed
from torchrec_kd.distributed.sharding import planner_constraints, shard
from torchrec_kd.losses import Tap, as_feature
from torchrec_kd.models.registry import feature_roles

logger = logging.getLogger(__name__)


def build_scorer(cfg: RunConfig, env: DistEnv) -> Tuple[DistributedModelParallel, Any, List[TeacherSpec],
                                                        Dict[Tap, Tuple[int, ...]]]:
    """The run's teacher(s), sharded and frozen, with their checkpoints loaded.

    Args:
        cfg (RunConfig): the run config.
        env (DistEnv): ranks and device.

    Returns:
        Tuple[DistributedModelParallel, data, List[TeacherSpec], Dict[Tap, shape]]: the model (no DDP:
        nothing trains; call ``model.module(batch)``), the data source, the teachers, and the taps it
        returns with their per-row shapes.
    """
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.data, cfg.seed, role="student", tasks=cfg.tasks)  # the batches distill will read
    local_batch = cfg.data.batch_size // env.world_size
    parts = distill_parts(cfg, data)  # resolves each term's taps exactly as distill will
    taps = [t for t in parts.loss.taps if t.role == "teacher"]
    shapes = {t: parts.dims.info(t, "score-teacher").shape for t in taps}
    teachers = build_frozen_teachers(parts.teachers, len(data.dense_names), roles=feature_roles(cfg.data.retrieval))
    module = TeacherEnsemble(teachers,
                             [t.weight for t in parts.teachers], teacher_ios(parts.teachers), taps, parts.task_plan)
    tables = [t for spec in parts.teachers for t in spec.tables]
    model = shard(module, env, local_batch, planner_constraints(cfg.sharding, tables, env.device.type), data_parallel=False)
    load_frozen_teachers(cfg, model, parts.teachers)
    model.eval()
    return model, data, parts.teachers, shapes


def run(cfg: RunConfig) -> Dict[str, Any]:
    """Write the teacher-score cache of ``cfg`` (``distill.teacher_scores``).

    Args:
        cfg (RunConfig): the run config; the student's whole budget of batches is scored.

    Returns:
        Dict[str, Any]: path, rows, fields and samples/s of the scoring pass.
    """
    env = init_distributed(cfg.distributed)
    model, data, teachers, tap_shapes = build_scorer(cfg, env)
    taps = list(tap_shapes)
    steps = max_steps(cfg.train, data, cfg.data.batch_size)  # distill's whole budget

    fields = cached_fields(taps)
    tasks = run_tasks(cfg)
    logit_shape = (len(tasks),) if is_multitask(tasks) else ()  # [n, T] logits for several tasks
    shapes = {"logits": logit_shape, **{t.key: shape for t, shape in tap_shapes.items()}}
    spec = CacheSpec(steps=steps, global_batch=cfg.data.batch_size,
                     fields={f: shapes[f] for f in fields},
                     dtypes={f: cfg.distill.score_feature_dtype for f in fields if f != "logits"},
                     fingerprint=run_fingerprint(cfg, teachers))
    path = scores_dir(cfg)
    writer = ScoreCacheWriter(path, spec, env.rank, env.world_size)
    batches = data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=steps)
    t0 = time.perf_counter()
    with torch.no_grad():
        for step, batch in enumerate(progress_bar(steps, "score-teacher", env.is_main, iterable=batches)):
            batch = batch.to(env.device)
            logits, tapped = model.module(batch)
            outputs = {"logits": logits, **{t.key: as_feature(tapped[t.key], t.kind) for t in taps}}
            kjt = batch.sparse_features
            writer.write(step, {f: outputs[f].float().cpu() for f in fields},
                         batch_digest(batch.dense_features, kjt.values(), kjt.lengths(), batch.labels).cpu())
    writer.flush()
    seconds = time.perf_counter() - t0
    dist.barrier()  # every rank's rows are on disk before the manifest says the cache is complete
    if env.is_main:
        write_manifest(path, spec, env.world_size, steps)
    dist.barrier()
    rows = steps * cfg.data.batch_size
    result = {"path": str(path), "rows": rows, "fields": fields, "samples_per_s": rows / max(seconds, 1e-9)}
    logger.info("score-teacher: %d rows (%s) in %.1f s (%.0f samples/s) -> %s", rows, ", ".join(fields), seconds,
                result["samples_per_s"], path)
    return result
