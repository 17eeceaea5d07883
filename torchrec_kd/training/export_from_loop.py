"""From one's own TorchRec loop to an export that ``load_model`` and ``predict`` accept.

The ``quantize`` command reads a checkpoint the recipes wrote; a model trained in one's own
loop has none. :func:`export_for_serving` takes the trained model where it is (a train
pipeline, a sharded ``DistributedModelParallel`` or a plain module), gathers the student to
one unsharded float model on CPU (through a DCP checkpoint, so any sharding plan works, and a
QAT student's tables come back in the plain layout), quantizes it with ``quantize_model`` and
writes the export the recipe writes: ``weights.pt`` and the sealed ``quantized.json``,
``contract.json`` and the TorchScript program ``model.ts``, renamed into place when complete.

The model must be one a registered builder makes (built in, or a plugin's), described by
``model_meta``: serving rebuilds it from that description, never by unpickling.

Example::

    from torchrec_kd import export_for_serving, load_model
    from torchrec_kd.models.build import build_model, model_meta

    student = build_model(cfg, tables, dense_in)                  # cfg: a ModelConfig of a registered arch
    ... DistillationModel([teacher], student, loss), DMP, pipeline.progress(...) ...
    export_for_serving(pipeline, "outputs/mine/export/int8", model_meta(cfg, tables, dense_in), dtype="int8")
    load_model("outputs/mine/export/int8").score(frame)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel

from torchrec_kd.checkpoint.model_io import save_model
from torchrec_kd.core.layout import TORCHSCRIPT_FILE
from torchrec_kd.core.table_keys import ebc_layout_key
from torchrec_kd.data.contract import CONTRACT_FORMAT, FEATURE_SEPARATOR, contract_files
from torchrec_kd.data.synthetic import dense_feature_names
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.errors import CheckpointError
from torchrec_kd.models.build import build_model_from_meta, io_from_meta, meta_tasks
from torchrec_kd.models.dlrm import MODEL_PREFIX
from torchrec_kd.models.saved import load_float_model
from torchrec_kd.models.train import RankerTrain
from torchrec_kd.quant.embeddings import quantize_model
from torchrec_kd.quant.export import contract_with_tasks, export_torchscript, save_quantized
from torchrec_kd.quant.scoring_head import ScoringHead, head_tasks


def features_contract(meta: Dict[str, Any], dense_names: Optional[list] = None) -> Dict[str, Any]:
    """The ``features`` input contract of a model described by ``model_meta``: one raw column per feature.

    Dense columns are taken as they are (missing -> 0), sparse ids modulo the table size (text
    hashed, ``|``-separated bags), as the synthetic and MovieLens data's contract says. Runs on
    a library data source should pass ``input_contract(cfg.data, …)`` instead.

    Args:
        meta (Dict[str, Any]): from ``model_meta``.
        dense_names (Optional[list]): the dense columns' names (default ``int_0`` … as TorchRec's Criteo).

    Returns:
        Dict[str, Any]: the contract (``contract.json``).
    """
    dense = list(dense_names) if dense_names is not None else dense_feature_names(int(meta["dense_in_features"]))
    if len(dense) != int(meta["dense_in_features"]):
        raise ValueError(f"dense_names lists {len(dense)} columns, the model reads {meta['dense_in_features']}")
    return {"contract": CONTRACT_FORMAT, "format": "features", "label": "label", "separator": FEATURE_SEPARATOR,
            "sparse_rule": "integers modulo num_embeddings, other values hashed; empty -> empty bag",
            "features": {"dense": dense, "sparse": list(meta["sparse_features"]),
                         "num_embeddings": [int(n) for n in meta["num_embeddings"]]}}


def _unwrap(target: Any) -> nn.Module:
    """The model behind a train pipeline (detached from it) or the module itself."""
    if hasattr(target, "progress") and callable(getattr(target, "detach", None)):
        return target.detach()  # TorchRec's progress() re-attaches it when training goes on
    return target


def _student_prefix(module: nn.Module) -> str:
    """State-dict prefix of the model to export inside ``module``: the student, the trained model, or all."""
    if isinstance(module, DistillationModel):
        return "student."
    if isinstance(module, RankerTrain):
        return MODEL_PREFIX
    return ""


def _gather_sharded(dmp: DistributedModelParallel, meta: Dict[str, Any], scratch_parent: Path) -> Optional[nn.Module]:
    """The student of a sharded model, unsharded on CPU on rank 0 (None elsewhere). Collective."""
    prefix = _student_prefix(dmp.module)
    box = [tempfile.mkdtemp(prefix=".gather-", dir=scratch_parent) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)  # every rank writes its shards into the same directory
    scratch = Path(box[0])
    model: Optional[nn.Module] = None
    try:
        # the recipes' own writer and reader: DCP gathers any plan, QAT tables return in the plain layout
        save_model(dmp, scratch, meta, model_prefix=prefix, ckpt_prefix=MODEL_PREFIX)
        if dist.get_rank() == 0:
            try:
                model = load_float_model(scratch)[0]
            except RuntimeError as e:  # the gathered state is not the model the description builds
                raise CheckpointError(f"export_for_serving: the model does not match its meta "
                                      f"({meta['model'].get('arch')}): {_first_problem(e)}; "
                                      "pass model_meta(...) of the config that built it") from None
    finally:
        dist.barrier()  # rank 0 has read every shard (or failed) before the scratch goes
        if dist.get_rank() == 0:
            shutil.rmtree(scratch, ignore_errors=True)
    return model


def _copy_unsharded(module: nn.Module, meta: Dict[str, Any]) -> nn.Module:
    """A float copy on CPU, rebuilt from ``meta``, of the student inside an unsharded ``module``."""
    prefix = _student_prefix(module)
    state = {ebc_layout_key(k[len(prefix):]): v.detach().cpu() for k, v in module.state_dict().items()
             if k.startswith(prefix)}
    model = build_model_from_meta(meta)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # the description is not the model's
        raise CheckpointError(f"export_for_serving: the model does not match its meta ({meta['model'].get('arch')}): "
                              f"{_first_problem(e)}; pass model_meta(...) of the config that built it") from None
    return model.eval()


def _first_problem(e: RuntimeError) -> str:
    """The first line of a load_state_dict error that names keys or shapes (torch's first line names none)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)


def export_for_serving(target: Any, out_dir: Union[str, Path], meta: Dict[str, Any],
                       contract: Optional[Dict[str, Any]] = None, dtype: str = "int8",
                       per_table: Optional[Dict[str, str]] = None,
                       remaps: Optional[Mapping[str, Any]] = None) -> Path:
    """Quantize a trained model of one's own loop and write an export ``load_model`` / ``predict`` accept.

    Collective when ``target`` is sharded: every rank calls it; rank 0 writes. ``out_dir``'s
    parent must be a directory every rank sees (the shards are gathered through it).

    Args:
        target: a TorchRec train pipeline (detached first), a ``DistributedModelParallel``, or a module:
            a ``DistillationModel`` (its student is exported), a ``RankerTrain`` (its model) or the model.
        out_dir (str | Path): the export directory (replaced whole if it exists).
        meta (Dict[str, Any]): ``model_meta(cfg, tables, dense_in)`` of the exported model (its registered
            builder rebuilds it when loading).
        contract (Optional[Dict[str, Any]]): the input contract (``input_contract(cfg.data, …)`` on a
            library data source); None: :func:`features_contract` of ``meta``.
        dtype (str): table storage (``int8``, ``int4``, ``int2``, ``fp16``, ``fp32``).
        per_table (Optional[Dict[str, str]]): dtypes of single tables, by table name.
        remaps (Optional[Mapping[str, IdRemap]]): a windowed run's entity remaps (``data.remaps``), the ones
            ``input_contract(..., remaps=...)`` was given: written beside the contract, so serving maps raw ids
            as training did.

    Returns:
        Path: ``out_dir``.

    Raises:
        ConfigError: ``meta`` names a builder no loaded module registers.
        CheckpointError: the model is not the one ``meta`` describes.
    """
    out_dir = Path(out_dir)
    build_model_from_meta(meta, device=torch.device("meta"))  # an unknown builder fails here, before any work
    model = _unwrap(target)
    main = not dist.is_initialized() or dist.get_rank() == 0
    if isinstance(model, DistributedModelParallel):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        float_model = _gather_sharded(model, meta, out_dir.parent)
    else:
        float_model = _copy_unsharded(model, meta) if main else None
    if main:
        assert float_model is not None
        io = io_from_meta(meta)
        qm = quantize_model(float_model, dtype, per_table or {})
        contract = contract_with_tasks(contract if contract is not None else features_contract(meta), meta)
        # the program the quantize recipe exports: {"logit", "probability"} ([B, T] for T tasks), no autograd
        program = ScoringHead(qm, io.output_kind(qm), head_tasks(meta_tasks(meta))) if io.call is None else qm
        save_quantized(qm, out_dir, meta, extras={
            **contract_files(contract, remaps), TORCHSCRIPT_FILE: lambda f: export_torchscript(program, f)})
    if dist.is_initialized() and isinstance(model, DistributedModelParallel):
        dist.barrier()  # the export exists on every rank's return
    return out_dir
