"""Recipe: quantize a trained student's tables, evaluate each dtype, export for serving.

Every rank rebuilds the (small) student unsharded on CPU from the DCP checkpoint,
quantizes it, and scores its own share of the test split, so metrics come out of the
same collective ``RecMetricModule`` path as training. Rank 0 writes
``metrics.json`` entries ``<source>_<dtype>`` and the exports under ``export/``:
``weights.pt`` + ``quantized.json`` (plain tensors, loads with ``weights_only=True``),
``contract.json`` (the input contract: raw columns in, features out) and a TorchScript
program ``model.ts`` returning logits and probabilities. Each export is written into a hidden
sibling (``export/.<name>.tmp-<pid>``), sealed and renamed into place when complete.

Example::

    python -m torchrec_kd.cli quantize --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch.distributed as dist
from torch import nn

from torchrec_kd.config import BudgetConfig, PruneConfig, RunConfig
from torchrec_kd.core.console import FILE_ONLY, progress_bar
from torchrec_kd.core.fingerprint import read_recorded, step_fingerprint
from torchrec_kd.core.layout import PLAN_FILE, TORCHSCRIPT_FILE, RunLayout
from torchrec_kd.core.tasks import run_tasks
from torchrec_kd.data import build_data
from torchrec_kd.data.contract import contract_files, input_contract
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import io_from_meta, meta_tasks
from torchrec_kd.models.saved import load_float_model
from torchrec_kd.quant.embeddings import embedding_storage_bytes, quantize_model
from torchrec_kd.quant.export import contract_with_tasks, export_torchscript, save_quantized
from torchrec_kd.quant.item_index import corpus_index, index_summary, item_index_files
from torchrec_kd.quant.plan import REFERENCE, apply_plan, check_budget, choice_from_json, plan_table, plan_tables
from torchrec_kd.quant.pruning import TablePruning, id_counts, keep_rows, prune_plan, pruning_table, table_configs
from torchrec_kd.quant.scoring_head import ScoringHead, head_tasks
from torchrec_kd.reporting.metrics_file import metrics_table, read_entry, update_metrics
from torchrec_kd.training.evaluate import evaluate
from torchrec_kd.training.retrieval_entry import retrieval_metrics

logger = logging.getLogger(__name__)


def export_names(cfg: RunConfig, source: str, dtypes: Optional[Sequence[str]] = None) -> List[str]:
    """The exports (and metrics entries) :func:`run` writes for ``source``."""
    dtypes = list(dtypes or cfg.quantize.dtypes)
    names = [f"{source}_{d}" for d in dtypes]
    if cfg.quantize.prune is not None:
        names += [f"{source}_{d}_pruned" for d in dtypes]
    if cfg.quantize.budget is not None:
        names.append(f"{source}_budgeted")
    return names


def _count_ids(cfg: RunConfig, model: nn.Module) -> Dict[str, np.ndarray]:
    """Lookups per row of each student table over the student's train rows (the rows it distilled on)."""
    data = build_data(cfg.data, cfg.seed, role="student", tasks=cfg.tasks)
    limit = cfg.quantize.prune.count_rows if cfg.quantize.prune else PruneConfig().count_rows
    if hasattr(data, "splits"):  # in memory: the split's first rows
        blocks = _first_rows(data.row_blocks("train"), limit)
    else:
        n = max(1, limit // cfg.data.batch_size)
        blocks = (RowBlock.from_batch(b) for b in data.batches("train", cfg.data.batch_size, 0, 1, num_batches=n))
    return id_counts(blocks, data.sparse_names, model)


def _first_rows(blocks: Iterable[RowBlock], limit: int) -> Iterator[RowBlock]:
    """The first ``limit`` rows of a stream of blocks."""
    for block in blocks:
        if limit <= 0:
            return
        yield block.slice(0, limit)
        limit -= len(block)


def _pruning(cfg: RunConfig, model: nn.Module, counts: Dict[str, np.ndarray]) -> Dict[str, TablePruning]:
    """``quantize.prune`` applied to the counted rows."""
    prune = cfg.quantize.prune
    assert prune is not None
    return prune_plan(model, {t: keep_rows(counts[t], prune.keep_fraction, prune.min_count)
                              for t in (prune.tables or sorted(counts))})


def run(cfg: RunConfig, source: str = "distilled", dtypes: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Quantize ``<output_dir>/<source>`` to each of ``quantize.dtypes`` (pruned, budgeted) and evaluate.

    Args:
        cfg (RunConfig): the run config (``quantize`` section, data, output dir).
        source (str): which checkpoint: ``distilled``, ``distilled_qat`` or ``student``.
        dtypes (Optional[Sequence[str]]): overrides ``quantize.dtypes`` (a QAT student is
            exported in the format it was trained for).

    Returns:
        Dict[str, dict]: the metrics entries written, keyed by :func:`export_names`.
    """
    env = init_distributed(cfg.distributed)
    data = build_data(cfg.data, cfg.seed, tasks=cfg.tasks)
    out = cfg.out_dir
    layout = RunLayout(out)
    float_model, meta = load_float_model(layout.model(source))
    local_batch = cfg.data.batch_size // env.world_size
    io = io_from_meta(meta)
    remaps = getattr(data, "remaps", None)  # a windowed run's entity remaps travel with its exports
    contract = input_contract(cfg.data, data.dense_names, data.sparse_names, data.num_embeddings, remaps=remaps,
                              tasks=cfg.tasks)
    contract = contract_with_tasks(contract, meta)  # a multi-task export names its output columns
    tasks = meta_tasks(meta)
    recorded = read_recorded(meta)
    prune, budget = cfg.quantize.prune, cfg.quantize.budget
    unknown = sorted(set(prune.tables) - set(_sizes(float_model))) if prune is not None else []
    if unknown:  # checked, like every setting below, before anything is written
        raise ConfigError(f"quantize.prune.tables: {unknown} are not tables of the student; "
                          f"its tables are {sorted(_sizes(float_model))}")
    if budget is not None and budget.replay:  # a bad plan, or a budget no plan can meet, stops before any export
        _read_plan(budget.replay, float_model)
    elif budget is not None:
        try:
            check_budget(_sizes(float_model), _options(budget), budget.bytes)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def auc_of(qm: nn.Module, split: str) -> Dict[str, float]:
        n = data.num_batches(split, cfg.data.batch_size) or 0
        metrics = evaluate(lambda b: io.logits(qm, b), data.batches(split, cfg.data.batch_size, env.rank, env.world_size),
                           env, local_batch, n * cfg.data.batch_size, tasks=run_tasks(cfg),
                           select=cfg.train.early_stopping.task)
        if cfg.data.retrieval is not None:  # GAUC; the quantized towers' recall@K (fp32 and int8 item index)
            metrics.update(retrieval_metrics(qm, lambda b: io.logits(qm, b), data, split, cfg, env, int8_index=True))
        return metrics

    def finish(name: str, qm: nn.Module, dtype: str, pruning: Optional[Dict[str, TablePruning]] = None,
               plan: Optional[Dict[str, Any]] = None) -> None:
        t0 = time.perf_counter()
        metrics = auc_of(qm, "test")
        eval_s = time.perf_counter() - t0
        fp = step_fingerprint(cfg, name, {"source": recorded["digest"] if recorded else None})
        entry = {**metrics, "fingerprint": fp["digest"], "source": source, "source_fingerprint": fp["inputs"]["source"],
                 "params": sum(p.numel() for p in float_model.parameters()),
                 "embedding_bytes": embedding_storage_bytes(qm), "dtype": dtype, "per_table": dict(cfg.quantize.tables),
                 "eval_samples_per_s": metrics["rows"] / max(eval_s, 1e-9)}
        if pruning:
            entry["pruned"] = {t: p.to_json() for t, p in pruning.items()}
        if plan is not None:
            entry["plan"] = plan["tables"]
        if env.is_main:
            base = read_entry(out, source)
            entry["train_samples_per_s"] = base.get("train_samples_per_s")
            entry["best_step"] = base.get("best_step")  # quantized from the source's kept checkpoint
            target = layout.export(name)
            # the program returns {"logit", "probability"} with no autograd (ScoringHead); a model with
            # its own call adapter is exported as it is (load_model scores it through the adapter)
            program = ScoringHead(qm, io.output, head_tasks(tasks)) if io.call is None else qm
            extras: Dict[str, Callable[[Path], Any]] = {
                **contract_files(contract, remaps), TORCHSCRIPT_FILE: lambda f: export_torchscript(program, f)}
            if plan is not None:
                extras[PLAN_FILE] = lambda f: f.write_text(json.dumps(plan, indent=2))
            index = corpus_index(qm, data)  # a two-tower's item index (docs/retrieval.md)
            if index is not None:
                extras.update(item_index_files(index))
                entry["item_index"] = index_summary(index)
            # written beside export/<name>, sealed (sizes and hashes, checked on every load), then renamed
            # into place: a killed quantize leaves no export that loads
            save_quantized(qm, target, {**meta, "export_fingerprint": fp}, pruning=pruning, extras=extras)
            entry["export"] = str(target)
            table = metrics_table(update_metrics(out, name, entry))
            logger.info("%s: test auc %.4f, %s embedding bytes; exported to %s", name, entry["auc"],
                        f"{entry['embedding_bytes']:,}", target)
            logger.info("wrote %s\n%s", layout.metrics, table, extra=FILE_ONLY)
        results[name] = entry

    results: Dict[str, Dict[str, Any]] = {}
    dtypes = list(dtypes or cfg.quantize.dtypes)
    for dtype in dtypes:
        try:
            qm = quantize_model(float_model, dtype, cfg.quantize.tables)
        except ValueError as e:  # a table named in quantize.tables that the student does not have
            raise ConfigError(f"quantize.tables: {e}") from None
        finish(f"{source}_{dtype}", qm, dtype)
    if cfg.quantize.prune is None and cfg.quantize.budget is None:
        return results
    counts = _count_ids(cfg, float_model)
    if cfg.quantize.prune is not None:
        pruning = _pruning(cfg, float_model, counts)
        if env.is_main:
            logger.info("pruning (%s):\n%s", source, pruning_table(pruning))
        for dtype in dtypes:
            qm = quantize_model(float_model, dtype, cfg.quantize.tables, pruning=pruning, counts=counts)
            finish(f"{source}_{dtype}_pruned", qm, dtype, pruning)
    if cfg.quantize.budget is not None:
        plan = _budget_plan(cfg, float_model, counts, lambda qm: _shared(auc_of(qm, "val")["auc"], env), env)
        choice = choice_from_json(plan)
        qm = apply_plan(float_model, choice, counts)
        plan["measured_val_auc"] = _shared(auc_of(qm, "val")["auc"], env)  # single-table losses need not add up
        if env.is_main:
            logger.info("budgeted plan (%s): %s bytes; val auc %.4f (int8 reference %.4f, predicted %.4f)\n%s", source,
                        f"{plan['bytes']:,}", plan["measured_val_auc"], plan["reference_val_auc"],
                        plan["reference_val_auc"] - plan["predicted_auc_loss"], plan_table(plan))
        kept = {t: keep_rows(counts[t], k) for t, (_, k) in choice.items() if k < 1.0}
        finish(f"{source}_budgeted", qm, "mixed", prune_plan(float_model, kept), plan)
    return results


def _shared(value: float, env: Any) -> float:
    """Rank 0's metric on every rank (the collective metrics land on rank 0), so every rank plans alike."""
    if env.world_size == 1:
        return float(value)
    box = [float(value) if env.is_main else 0.0]
    dist.broadcast_object_list(box, src=0)
    return float(box[0])


def _sizes(model: nn.Module) -> Dict[str, Tuple[int, int]]:
    return {t.name: (t.num_embeddings, t.embedding_dim) for t in table_configs(model)}


def _options(budget: BudgetConfig) -> List[Tuple[str, float]]:
    return [(d, k) for d in budget.dtypes for k in budget.keep_fractions]


def _budget_plan(cfg: RunConfig, model: nn.Module, counts: Dict[str, np.ndarray],
                 val_auc: Callable[[nn.Module], float], env: Any) -> Dict[str, Any]:
    """A measured plan under ``quantize.budget``, or the stored one it replays."""
    budget = cfg.quantize.budget
    assert budget is not None
    if budget.replay:
        return _read_plan(budget.replay, model)
    sizes, options = _sizes(model), _options(budget)
    bar = progress_bar(1 + len(sizes) * len(set(options) - {REFERENCE}), "sensitivity", enabled=env.is_main, unit="plans")

    def measure(choice: Dict[str, Tuple[str, float]]) -> float:
        auc = val_auc(apply_plan(model, choice, counts))
        bar.update(1)
        return auc

    try:
        plan = plan_tables(sizes, options, measure, budget_bytes=budget.bytes, max_auc_loss=budget.max_auc_loss)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    finally:
        bar.close()
    return plan.to_json()


def _read_plan(replay: str, model: nn.Module) -> Dict[str, Any]:
    """The stored plan ``quantize.budget.replay`` names (an export directory or its plan.json), checked."""
    f = Path(replay)
    f = f / PLAN_FILE if f.is_dir() else f
    if not f.is_file():
        raise ConfigError(f"quantize.budget.replay={replay}: no {PLAN_FILE} there; give an export's plan.json")
    try:
        plan = json.loads(f.read_text())
        choice = choice_from_json(plan)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise ConfigError(f"{f}: not a plan this tool wrote ({type(e).__name__}: {e}); re-run quantize with a budget") from None
    tables = set(_sizes(model))
    if set(choice) != tables:
        raise ConfigError(f"{f}: the plan is for tables {sorted(choice)}, the student has {sorted(tables)}")
    return plan
