"""Save, reload and export quantized models (see :mod:`torchrec_kd.quant.embeddings`).

Three formats:

* :func:`save_quantized` / :func:`load_quantized`: a directory with ``weights.pt``
  (a flat dict of plain tensors, loadable with ``torch.load(weights_only=True)``)
  and ``quantized.json`` (caller's meta, table dtypes, how each tensor was stored, and the
  seal: every file's size and sha256). Reloading rebuilds the module from code, so nothing is
  unpickled. The directory is written beside its place and renamed into it when complete;
  loading refuses one without its seal.
* :func:`export_torchscript` / :func:`load_torchscript`: ``torchrec.fx`` trace then
  ``torch.jit.script`` (scripting the eager module directly fails on TorchRec 1.8).
* :func:`export_program` / :func:`load_program`: ``torch.export`` (``.pt2``).

Example::

    save_quantized(qm, out / "int4", {"model": cfg_dict, ...})
    qm2 = load_quantized(out / "int4", build_model_from_meta)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import fbgemm_gpu  # noqa: F401  (registers the fbgemm ops TorchScript / pt2 graphs call)
import numpy as np
import torch
import torchrec  # noqa: F401  (registers TorchRec's fx-wrapped ops)
import torchrec.fx
from torch import Tensor, nn
from torchrec.tensor_types import UInt2Tensor, UInt4Tensor, UIntXTensor

from torchrec_kd.checkpoint.integrity import file_records, verify_files
from torchrec_kd.core.layout import EXPORT_META_FILE as META_FILE
from torchrec_kd.core.layout import EXPORT_WEIGHTS_FILE as WEIGHTS_FILE
from torchrec_kd.errors import CheckpointError
from torchrec_kd.quant.embeddings import float_tables, quantize_model, row_alignment, table_dtypes
from torchrec_kd.quant.pruning import TablePruning

FORMAT = "torchrec_kd.quantized/1"

# Packed sub-byte tensor subclasses, stored as their uint8 bytes and re-wrapped on load.
_SUBCLASSES: Dict[str, Type[UIntXTensor]] = {"UInt4Tensor": UInt4Tensor, "UInt2Tensor": UInt2Tensor}


def _to_plain(tensor: Tensor) -> Tuple[Tensor, Dict[str, Any]]:
    """A plain, compact tensor for ``tensor`` plus a record of how to restore it."""
    record: Dict[str, Any] = {"subclass": None, "shape": list(tensor.shape)}
    if isinstance(tensor, UIntXTensor):
        record["subclass"] = type(tensor).__name__
        tensor = tensor.view(torch.uint8)
    # clone: quantized weights are views into one shared TBE buffer (with per-table
    # cacheline padding); a compact copy per key keeps the file to exactly these bytes
    # and the loaded tensors free of shared storage and offsets.
    plain = tensor.detach().clone()
    record["dtype"] = str(plain.dtype).removeprefix("torch.")
    return plain, record


def _from_plain(tensor: Tensor, record: Dict[str, Any]) -> Tensor:
    subclass = record.get("subclass")
    if subclass is None:
        return tensor
    if subclass not in _SUBCLASSES:
        raise ValueError(f"unknown tensor subclass {subclass!r} in {META_FILE}")
    return _SUBCLASSES[subclass](tensor)


def save_quantized(qmodel: nn.Module, path: Union[str, Path], meta: Dict[str, Any],
                   pruning: Optional[Dict[str, TablePruning]] = None,
                   extras: Optional[Mapping[str, Callable[[Path], Any]]] = None) -> Path:
    """Save a quantized model as plain tensors plus a JSON description, atomically and sealed.

    Everything is written into a hidden sibling (``.<name>.tmp-<pid>``), sealed (the size and
    sha256 of every file recorded in ``quantized.json``) and only then renamed to ``path``
    (an existing export there is replaced whole). A reader sees the complete export or the one
    before it, never a half-written one: an interrupted save leaves only the hidden sibling,
    which the next save removes.

    Args:
        qmodel (nn.Module): a model returned by ``quantize_model``.
        path (str | Path): the export directory (its parent is created if missing).
        meta (Dict[str, Any]): JSON-serialisable description the ``build_float``
            callable of :func:`load_quantized` needs (model config, tables, features).
        pruning (Optional[Dict[str, TablePruning]]): the pruning ``qmodel`` was quantized with (recorded,
            so reloading rebuilds the same storage; the remappings are saved with the weights).
        extras (Optional[Mapping[str, Callable[[Path], Any]]]): more files of the export, by name: each
            callable writes the path it is given (e.g. ``model.ts``, ``contract.json``); they are sealed too.

    Returns:
        Path: the directory written.

    Example::

        save_quantized(qm, out / "int4", meta, extras={"model.ts": lambda f: export_torchscript(qm, f)})
    """
    path = Path(path)
    tensors: Dict[str, Tensor] = {}
    records: Dict[str, Dict[str, Any]] = {}
    for key, value in qmodel.state_dict().items():
        tensors[key], records[key] = _to_plain(value)
    sidecar = {
        "format": FORMAT,
        "meta": meta,
        "table_dtypes": table_dtypes(qmodel),
        "row_alignment": row_alignment(qmodel),
        "pruning": {t: p.to_json() for t, p in (pruning or {}).items()},
        "tensors": records,
    }
    # Write the JSON first: json.dumps fails on non-serialisable meta before any weights land.
    text = json.dumps(sidecar, indent=2, sort_keys=True)
    staging = _staging_dir(path)
    try:
        torch.save(tensors, staging / WEIGHTS_FILE)
        (staging / META_FILE).write_text(text)
        for name, write in (extras or {}).items():
            write(staging / name)
        seal_export(staging)
        _publish(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # an error or an interrupt: nothing half-written stays
        raise
    return path


def write_dir_atomically(path: Union[str, Path], fill: Callable[[Path], Any]) -> Path:
    """Write a directory the way exports are written: into a hidden sibling, then renamed into ``path``.

    ``fill`` writes every file into the staging directory it is given (sealing included); only
    when it returns is the directory renamed to ``path`` (one there is replaced whole). An error
    or an interrupt removes the staging directory: readers see the old directory or the new one.

    Args:
        path (str | Path): the directory to (re)place.
        fill (Callable[[Path], Any]): writes the directory's content into the path it is given.

    Returns:
        Path: ``path``.

    Example::

        write_dir_atomically(out / "delta", lambda d: (d / "delta.json").write_text("{}"))
    """
    path = Path(path)
    staging = _staging_dir(path)
    try:
        fill(staging)
        _publish(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _sibling(path: Path, kind: str, pid: Optional[int] = None) -> Path:
    """``.<name>.<kind>-<pid>`` beside ``path``: hidden, so no reader of exports ever lists it."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid() if pid is None else pid}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of this very process (an earlier save that failed): stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by someone else
        return True
    return True


def _staging_dir(path: Path) -> Path:
    """A fresh, empty staging directory for ``path``, after removing what killed saves left beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for kind in ("tmp", "old"):
        for left in path.parent.glob(f".{path.name}.{kind}-*"):
            pid = left.name.rpartition("-")[2]
            if not pid.isdigit() or not _pid_alive(int(pid)):  # a save still running elsewhere keeps its own
                shutil.rmtree(left, ignore_errors=True)
    staging = _sibling(path, "tmp")
    staging.mkdir()
    return staging


def _publish(staging: Path, path: Path) -> None:
    """Rename the finished ``staging`` to ``path``; an export already there is moved aside first, then removed."""
    old = None
    if path.exists() or path.is_symlink():
        old = _sibling(path, "old")
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def seal_export(path: Union[str, Path]) -> None:
    """Record the size and sha256 of every file of an export in its JSON (the seal loading requires).

    :func:`save_quantized` seals what it writes; call this again after adding a file to a saved export.

    Args:
        path (str | Path): directory written by :func:`save_quantized` (and :func:`export_torchscript`).
    """
    path = Path(path)
    sidecar = json.loads((path / META_FILE).read_text())
    sidecar["files"] = file_records(path, exclude=[META_FILE, META_FILE + ".tmp"])
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    tmp.replace(path / META_FILE)


def read_quantized_meta(path: Union[str, Path]) -> Dict[str, Any]:
    """The JSON description written by :func:`save_quantized`.

    Args:
        path (str | Path): directory written by :func:`save_quantized`.

    Returns:
        Dict[str, Any]: keys ``meta``, ``table_dtypes``, ``row_alignment``, ``tensors``, ``files``.

    Raises:
        CheckpointError: no export there, an unreadable or foreign JSON, or an export without its seal.
    """
    meta_file = Path(path) / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{meta_file} not found: {path} is not a torchrec_kd export (run quantize first)")
    try:
        sidecar = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file}: unreadable ({e}); the export is damaged: re-run quantize") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        got = sidecar.get("format") if isinstance(sidecar, dict) else type(sidecar).__name__
        raise CheckpointError(f"{meta_file}: format {got!r}, expected {FORMAT!r}; re-run quantize")
    if not isinstance(sidecar.get("files"), dict) or WEIGHTS_FILE not in sidecar["files"]:
        # the seal (every file's size and hash) is written last: without it the export is unfinished
        raise CheckpointError(f"{meta_file}: the export is not sealed (an interrupted or older quantize left it); "
                              f"re-run quantize to export {Path(path).name} again")
    return sidecar


def load_quantized(path: Union[str, Path], build_float: Callable[[Dict[str, Any]], nn.Module]) -> nn.Module:
    """Rebuild and load a model saved by :func:`save_quantized`, without unpickling objects.

    Args:
        path (str | Path): directory written by :func:`save_quantized`.
        build_float (Callable[[dict], nn.Module]): builds the float model (on CPU) from the
            saved ``meta``; its weights are overwritten, so any initialisation works.

    Returns:
        nn.Module: the quantized model, predicting exactly as the saved one.

    Raises:
        ValueError: if the rebuilt model's tables differ from the saved ones.
        CheckpointError: the export is missing, damaged or altered (named with what to do).
    """
    path = Path(path)
    sidecar = read_quantized_meta(path)
    verify_files(path, sidecar["files"], f"re-run quantize to export {path.name} again")
    dtypes: Dict[str, str] = sidecar["table_dtypes"]
    float_model = build_float(sidecar["meta"])
    built = set(float_tables(float_model))
    if built != set(dtypes):
        raise ValueError(f"{path}: build_float made tables {sorted(built)} but the saved model has {sorted(dtypes)}")
    # Quantizing with the recorded per-table dtypes gives the saved module structure;
    # every table is named, so the default dtype is never used.
    # pruned tables: the same stored sizes (the kept ids and remappings come from weights.pt)
    pruning = {t: TablePruning(np.arange(p["kept"], dtype=np.int64), p["num_embeddings"])
               for t, p in sidecar.get("pruning", {}).items()}
    qmodel = quantize_model(float_model, next(iter(dtypes.values())), per_table=dtypes,
                           row_alignment=sidecar["row_alignment"], inplace=True, pruning=pruning)
    try:
        saved = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's message would advise weights_only=False: never do that here
        raise CheckpointError(f"{path / WEIGHTS_FILE}: not a tensor file this export wrote ({type(e).__name__}); "
                          "re-run quantize") from None
    state = {key: _from_plain(tensor, sidecar["tensors"][key]) for key, tensor in saved.items()}
    # strict: a missing or unexpected key means the rebuilt model is not the saved one.
    # Quantized weights are views into fbgemm's TBE buffer, so copy_ fills the TBE.
    qmodel.load_state_dict(state, strict=True)
    return qmodel


def contract_with_tasks(contract: Dict[str, Any], meta: Dict[str, Any]) -> Dict[str, Any]:
    """The export's input contract naming the model's tasks (``"tasks": [{"name", "type"}]``, its output columns).

    A model of the one default task (its meta names none) keeps the contract as it is.

    Args:
        contract (Dict[str, Any]): the input contract (``input_contract`` / ``features_contract``).
        meta (Dict[str, Any]): the model's ``model_meta``.

    Returns:
        Dict[str, Any]: the contract to write as ``contract.json``.
    """
    tasks = meta.get("tasks")
    if not tasks or "tasks" in contract:
        return contract
    return {**contract, "tasks": [{"name": t["name"], "type": t.get("type", "binary")} for t in tasks]}


def export_torchscript(qmodel: nn.Module, path: Union[str, Path]) -> torch.jit.ScriptModule:
    """Trace with ``torchrec.fx`` and script, then save with ``torch.jit.save``.

    Args:
        qmodel (nn.Module): a model returned by ``quantize_model``, or its
            :class:`~torchrec_kd.quant.scoring_head.ScoringHead` (what the quantize step exports).
        path (str | Path): output file (``.pt``).

    Returns:
        torch.jit.ScriptModule: the scripted model.
    """
    # torch.jit.script on the eager module fails on KJT handling; TorchRec's fx tracer
    # leaves KJT ops as wrapped calls that TorchScript accepts.
    scripted = torch.jit.script(torchrec.fx.symbolic_trace(qmodel))
    torch.jit.save(scripted, str(path))
    return scripted


def load_torchscript(path: Union[str, Path]) -> torch.jit.ScriptModule:
    """Load a model saved by :func:`export_torchscript` (fbgemm ops are registered on import).

    Args:
        path (str | Path): file written by :func:`export_torchscript`.

    Returns:
        torch.jit.ScriptModule: called as ``m(dense, kjt)``; the quantize step's program returns
        ``{"logit": [B], "probability": [B]}`` (``[B, T]`` each for a model of T tasks).
    """
    return torch.jit.load(str(path), map_location="cpu")


_FAKE_CLASSES_REGISTERED = False


def _register_fake_classes() -> None:
    # torch.export traces fbgemm's TBE, which holds script objects (fbgemm::AtomicCounter,
    # TensorQueue) that need fake classes; once per process is enough.
    global _FAKE_CLASSES_REGISTERED
    if not _FAKE_CLASSES_REGISTERED:
        from torchrec.pt2.utils import register_fake_classes

        register_fake_classes()
        _FAKE_CLASSES_REGISTERED = True


def export_program(qmodel: nn.Module, example_inputs: Tuple[Any, ...], path: Union[str, Path]) -> torch.export.ExportedProgram:
    """Export with ``torch.export`` (non-strict) and save as a ``.pt2`` archive.

    Args:
        qmodel (nn.Module): a model returned by ``quantize_model``.
        example_inputs (Tuple[Any, ...]): ``(dense, kjt)``; batch size and lengths are
            traced as given.
        path (str | Path): output file (``.pt2``).

    Returns:
        torch.export.ExportedProgram: the exported program.
    """
    _register_fake_classes()
    program = torch.export.export(qmodel, tuple(example_inputs), strict=False)
    # The example inputs hold a KeyedJaggedTensor, which torch.export.load can only
    # restore by unpickling (weights_only=False); the program does not need them.
    program.example_inputs = None
    torch.export.save(program, str(path))
    return program


def load_program(path: Union[str, Path]) -> nn.Module:
    """Load a program saved by :func:`export_program` as a callable module.

    Args:
        path (str | Path): file written by :func:`export_program`.

    Returns:
        nn.Module: called as ``m(dense, kjt) -> [B, 1]``.
    """
    return torch.export.load(str(path)).module()
