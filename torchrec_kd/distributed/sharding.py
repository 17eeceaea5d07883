"""Shard a model with TorchRec's planner and build its optimizers.

Sharding is applied from outside the model: the caller builds it on ``meta``, fuses
row-wise Adagrad into the backward of the tables that train, and :func:`shard`
returns a ``DistributedModelParallel`` planned by TorchRec's planner under the
config's constraints.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from torchrec_kd.config import ShardingConfig, TrainConfig
from torchrec_kd.core.console import FILE_ONLY
from torchrec_kd.core.table_keys import is_table_key
from torchrec_kd.distributed.env import DistEnv
from torchrec_kd.errors import ConfigError

logger = logging.getLogger(__name__)

SHARDING_TYPES = {
    "table_wise": ShardingType.TABLE_WISE.value,
    "row_wise": ShardingType.ROW_WISE.value,
    "column_wise": ShardingType.COLUMN_WISE.value,
    "table_row_wise": ShardingType.TABLE_ROW_WISE.value,
    "table_column_wise": ShardingType.TABLE_COLUMN_WISE.value,
    "data_parallel": ShardingType.DATA_PARALLEL.value,
}


def available_sharding_types(device_type: str) -> List[str]:
    """Config names of the sharding types TorchRec's EBC sharder offers on ``device_type``.

    On CPU TorchRec 1.8 offers table-wise, column-wise, table-column-wise and
    data-parallel; row-wise and table-row-wise need CUDA.
    """
    offered = set(EmbeddingBagCollectionSharder().sharding_types(device_type))
    return [name for name, value in SHARDING_TYPES.items() if value in offered]


def planner_constraints(sharding: ShardingConfig, tables: Sequence[EmbeddingBagConfig],
                        device_type: str) -> Dict[str, ParameterConstraints]:
    """Planner constraints for ``tables`` from the ``sharding`` config section.

    Args:
        sharding (ShardingConfig): default and per-table sharding types.
        tables (Sequence[EmbeddingBagConfig]): the tables to constrain.
        device_type (str): "cpu" or "cuda" (which sharding types exist depends on it).

    Returns:
        Dict[str, ParameterConstraints]: keyed by table name.

    Raises:
        ConfigError: a per-table entry names no known table, or a type is not offered on the device.
    """
    names = sorted(t.name for t in tables)
    unknown = sorted(set(sharding.tables) - set(names))
    if unknown:
        raise ConfigError(f"sharding.tables: unknown table(s) {unknown}; tables are {names[:6]}{' …' if len(names) > 6 else ''}")
    offered = available_sharding_types(device_type)
    # Left to itself the planner puts small tables data-parallel, where they train through
    # the non-fused kernel with DDP and a different optimizer path than every other table
    # (and fbgemm warns its CPU backward there has no autograd kernel): only on request.
    model_parallel = [SHARDING_TYPES[k] for k in offered if k != "data_parallel"]
    out: Dict[str, ParameterConstraints] = {}
    for t in tables:
        kind = sharding.tables.get(t.name, sharding.default)
        if kind is None:
            out[t.name] = ParameterConstraints(sharding_types=model_parallel)
            continue
        if kind not in offered:
            key = f"sharding.tables.{t.name}" if t.name in sharding.tables else "sharding.default"
            raise ConfigError(f"{key}: '{kind}' is not available on {device_type} in this TorchRec; use one of {offered}")
        out[t.name] = ParameterConstraints(sharding_types=[SHARDING_TYPES[kind]])
    return out


def add_fused_embedding_optimizer(module: nn.Module, cfg: TrainConfig) -> None:
    """Fuse row-wise Adagrad into the backward of every embedding table under ``module``."""
    params = [p for n, p in module.named_parameters() if is_table_key(n)]
    apply_optimizer_in_backward(RowWiseAdagrad, params, {"lr": cfg.embedding_lr, "eps": cfg.eps})


def plan_summary(plan: ShardingPlan, world_size: int) -> str:
    """One line about a plan: how many tables, sharded how, over how many ranks.

    Args:
        plan (ShardingPlan): the planner's plan.
        world_size (int): ranks.

    Returns:
        str: e.g. ``30 tables over 2 ranks: 24 table_wise, 6 row_wise (the plan is in run.log)``.
    """
    kinds: Dict[str, int] = {}
    for module_plan in plan.plan.values():
        for ps in module_plan.values():  # type: ignore[union-attr]
            kinds[ps.sharding_type] = kinds.get(ps.sharding_type, 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return f"{sum(kinds.values())} tables over {world_size} rank{'s' if world_size > 1 else ''}: {parts} (the plan is in run.log)"


def shard(module: nn.Module, env: DistEnv, local_batch_size: int,
          constraints: Dict[str, ParameterConstraints], data_parallel: bool = True) -> DistributedModelParallel:
    """Plan with TorchRec's planner (same plan on every rank) and wrap in DMP.

    Args:
        module (nn.Module): the model, usually on ``meta``.
        env (DistEnv): ranks and device.
        local_batch_size (int): per-rank batch size (the planner's cost model uses it).
        constraints (Dict[str, ParameterConstraints]): per-table constraints.
        data_parallel (bool): wrap the dense part in DDP (False for a model that never trains,
            e.g. a teacher scoring data: DDP refuses a model with nothing to train).

    Returns:
        DistributedModelParallel: the sharded model, materialised on ``env.device``.
    """
    topology = Topology(world_size=env.world_size, compute_device=env.device.type,
                        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)))
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=local_batch_size, constraints=constraints, debug=False)
    sharders = get_default_sharders()
    plan: ShardingPlan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    if env.is_main:
        logger.info("sharding: %s", plan_summary(plan, env.world_size))
        logger.info("sharding plan:\n%s", plan, extra=FILE_ONLY)
    return DistributedModelParallel(module=module, device=env.device, plan=plan, sharders=sharders,
                                    init_data_parallel=data_parallel)


def build_optimizer(model: DistributedModelParallel, cfg: TrainConfig, frozen_prefix: Optional[str] = None) -> CombinedOptimizer:
    """The fused embedding optimizers combined with Adagrad over trainable dense parameters.

    Args:
        model (DistributedModelParallel): the sharded model.
        cfg (TrainConfig): learning rates.
        frozen_prefix (Optional[str]): leave out the fused optimizers of modules under it
            (the frozen teacher's tables).

    Returns:
        CombinedOptimizer: what ``TrainPipelineSparseDist`` steps.
    """
    fused = [(name, opt) for name, opt in model.fused_optimizer.optimizers
             if frozen_prefix is None or not name.startswith(frozen_prefix)]
    dense = {n: p for n, p in in_backward_optimizer_filter(model.named_parameters(), include=False) if p.requires_grad}
    dense_opt = KeyedOptimizerWrapper(dense, lambda ps: torch.optim.Adagrad(ps, lr=cfg.dense_lr, eps=cfg.eps))
    return CombinedOptimizer([*fused, ("dense", dense_opt)])


def tables_per_rank(plan: ShardingPlan, world_size: int) -> List[List[str]]:
    """Names of the tables with a shard on each rank (to check the plan uses every rank)."""
    out: List[List[str]] = [[] for _ in range(world_size)]
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            ranks = ps.ranks or []
            for r in ranks:
                if table not in out[r]:
                    out[r].append(table)
    return out
