"""Per-table precision and pruning, chosen under a byte budget or a tolerated AUC loss.

Each table may become any ``dtype x keep fraction`` option. Its *sensitivity* is measured,
not guessed: starting from the reference student (every table int8, none pruned), one table
at a time is switched to each option and the validation AUC is measured (``measure``). The
plan then spends the budget where it costs least AUC: from the reference, it applies the
move (one table to a smaller option) with the lowest measured AUC loss per byte saved, until
the plan fits ``bytes`` — or, under ``max_auc_loss``, while the summed losses stay within it.
The whole plan is measured again at the end (losses need not add up exactly); the result says
both.

A plan is data (``{table: {"dtype", "keep_fraction"}}``) stored with the export
(``plan.json``), so it replays: :func:`apply_plan` builds the same student from it.

Example::

    plan = plan_tables(tables, sizes, bytes_of, measure, budget_bytes=60_000)
    qm = apply_plan(model, plan.choice, counts)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from torchrec_kd.quant.embeddings import floor_bytes_per_row, quantize_model
from torchrec_kd.quant.pruning import REMAP_BYTES_PER_ROW, keep_rows, prune_plan

REFERENCE = ("int8", 1.0)
Option = Tuple[str, float]  # (dtype, keep fraction)


def option_bytes(num_embeddings: int, dim: int, option: Option) -> int:
    """Stored bytes of one table under ``option``: kept rows + fallback row + int32 remapping when pruned."""
    dtype, keep = option
    if keep >= 1.0:
        return num_embeddings * floor_bytes_per_row(dim, dtype)
    kept = max(1, int(round(keep * num_embeddings)))
    return (kept + 1) * floor_bytes_per_row(dim, dtype) + num_embeddings * REMAP_BYTES_PER_ROW


def apply_plan(model: nn.Module, choice: Dict[str, Option], counts: Dict[str, np.ndarray],
               min_count: int = 0) -> nn.Module:
    """The quantized (and pruned) student a plan describes.

    Args:
        model (nn.Module): the float student.
        choice (Dict[str, Option]): ``{table: (dtype, keep_fraction)}`` for every table.
        counts (Dict[str, np.ndarray]): lookups per row (which rows a keep fraction keeps).
        min_count (int): rows looked up fewer times are pruned too (only in pruned tables).

    Returns:
        nn.Module: the quantized model.
    """
    kept = {t: keep_rows(counts[t], keep_fraction=k, min_count=min_count) for t, (_, k) in choice.items() if k < 1.0}
    dtypes = {t: d for t, (d, _) in choice.items()}
    return quantize_model(model, REFERENCE[0], per_table=dtypes, pruning=prune_plan(model, kept) or None, counts=counts)


@dataclass
class Plan:
    """A chosen plan and what it was chosen from.

    Attributes:
        choice (Dict[str, Option]): per table.
        bytes (int): predicted stored bytes.
        predicted_loss (float): summed measured single-table AUC losses.
        reference_auc (float): validation AUC of the reference student.
        sensitivity (Dict[str, Dict[str, float]]): ``{table: {"int4@0.5": auc loss}}`` as measured.
    """

    choice: Dict[str, Option]
    bytes: int
    predicted_loss: float
    reference_auc: float
    sensitivity: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, object]:
        """JSON-able form (``plan.json``)."""
        return {"tables": {t: {"dtype": d, "keep_fraction": k} for t, (d, k) in self.choice.items()},
                "bytes": self.bytes, "predicted_auc_loss": self.predicted_loss, "reference_val_auc": self.reference_auc,
                "sensitivity": self.sensitivity}


def option_name(option: Option) -> str:
    """``int4`` or ``int4@0.25`` (a keep fraction below 1)."""
    return option[0] if option[1] >= 1.0 else f"{option[0]}@{option[1]:g}"


def choice_from_json(plan: Dict[str, object]) -> Dict[str, Option]:
    """The ``{table: (dtype, keep)}`` of a stored ``plan.json``."""
    tables = plan["tables"]
    assert isinstance(tables, dict)
    return {t: (str(v["dtype"]), float(v["keep_fraction"])) for t, v in tables.items()}


def check_budget(sizes: Dict[str, Tuple[int, int]], options: Sequence[Option], budget_bytes: Optional[int]) -> None:
    """A ValueError when ``budget_bytes`` is below the smallest plan ``options`` allow (checked before any work)."""
    if budget_bytes is None:
        return
    smallest = sum(min(option_bytes(n, d, o) for o in options) for n, d in sizes.values())
    if budget_bytes < smallest:
        raise ValueError(f"quantize.budget.bytes={budget_bytes:,} is below the smallest plan the options allow "
                         f"({smallest:,} bytes); raise it or allow smaller options")


def plan_tables(sizes: Dict[str, Tuple[int, int]], options: Sequence[Option],
                measure: Callable[[Dict[str, Option]], float], budget_bytes: Optional[int] = None,
                max_auc_loss: Optional[float] = None) -> Plan:
    """Choose each table's option from measured sensitivity.

    Args:
        sizes (Dict[str, Tuple[int, int]]): ``{table: (num_embeddings, dim)}``.
        options (Sequence[Option]): what a table may become.
        measure (Callable[[Dict[str, Option]], float]): validation AUC of a full plan.
        budget_bytes (Optional[int]): fit in these stored bytes (the least AUC loss that does), or
        max_auc_loss (Optional[float]): the fewest bytes whose summed measured losses stay within this.

    Returns:
        Plan: the choice, its bytes and losses.

    Raises:
        ValueError: the budget is below the smallest plan the options allow.
    """
    check_budget(sizes, options, budget_bytes)
    reference = {t: REFERENCE for t in sizes}
    ref_auc = measure(reference)
    opts = sorted(set(options) | {REFERENCE}, key=lambda o: (-floor_bytes_per_row(8, o[0]), -o[1]))
    loss: Dict[str, Dict[Option, float]] = {}
    for t in sizes:
        loss[t] = {REFERENCE: 0.0}
        for o in opts:
            if o != REFERENCE:
                loss[t][o] = ref_auc - measure({**reference, t: o})
    nbytes = {t: {o: option_bytes(n, d, o) for o in opts} for t, (n, d) in sizes.items()}
    choice = dict(reference)
    total = sum(nbytes[t][REFERENCE] for t in sizes)
    spent = 0.0
    while True:
        # every move from a table's current option to a smaller one, by AUC loss per byte saved
        moves: List[Tuple[float, str, Option]] = []
        for t in sizes:
            cur = choice[t]
            for o in opts:
                saved = nbytes[t][cur] - nbytes[t][o]
                if saved > 0:
                    moves.append(((loss[t][o] - loss[t][cur]) / saved, t, o))
        if not moves:
            break
        if budget_bytes is not None and total <= budget_bytes:
            break
        moves.sort(key=lambda m: (m[0], m[1]))
        ratio, t, o = moves[0]
        delta = loss[t][o] - loss[t][choice[t]]
        if max_auc_loss is not None and spent + delta > max_auc_loss:
            # the cheapest move breaks the tolerance: try the others (a smaller saving may still fit)
            fitting = [m for m in moves if spent + loss[m[1]][m[2]] - loss[m[1]][choice[m[1]]] <= max_auc_loss]
            if not fitting:
                break
            ratio, t, o = fitting[0]
            delta = loss[t][o] - loss[t][choice[t]]
        total -= nbytes[t][choice[t]] - nbytes[t][o]
        spent += delta
        choice[t] = o
    sensitivity = {t: {option_name(o): round(v, 6) for o, v in loss[t].items() if o != REFERENCE} for t in sizes}
    return Plan(choice, int(total), float(spent), float(ref_auc), sensitivity)


def plan_table(plan: Dict[str, object]) -> str:
    """A stored plan as a console table: each table's option, bytes and measured single-table loss."""
    tables = plan["tables"]
    sens = plan.get("sensitivity") or {}
    assert isinstance(tables, dict) and isinstance(sens, dict)
    lines = [f"{'table':<16} {'option':<10} {'val auc loss alone':>18}"]
    for t, v in tables.items():
        name = option_name((v["dtype"], v["keep_fraction"]))
        loss = sens.get(t, {}).get(name, 0.0)
        lines.append(f"{t:<16} {name:<10} {loss:>18.5f}")
    return "\n".join(lines)
