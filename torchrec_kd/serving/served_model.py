"""An export, loaded for inference: raw rows in, logits and probabilities out.

``load_model(dir)`` reads what the quantize step wrote (``weights.pt``, ``quantized.json``,
``contract.json``, and a windowed run's ``id_remap.json``), rebuilds the quantized student (no
unpickling), and pairs it with its input contract, so a caller hands over raw columns exactly as
they sit in the training data and gets scores computed exactly as ``predict`` computes them. Raw
user / item ids of a windowed run read the rows training gave them; an id never trained on reads
the fallback row 0.

Example::

    import torchrec_kd
    model = torchrec_kd.load_model("outputs/run/export/distilled_int4")
    scores = model.score(pd.DataFrame([{"age": 39, "workclass": "State-gov", ...}]))
    scores["probability"]                              # one per row, in order

A multi-task export (its meta names two or more tasks) scores one column per task instead:
``<task>`` (the probability of a binary task, the value of a regression task) and
``logit_<task>`` (binary tasks), in the tasks' order.

A two-tower export also holds its item index (``item_index.pt``): ``model.retrieve(user_rows, k)``
returns each user's top-K item ids and logits (:mod:`torchrec_kd.serving.retrieval`, docs/retrieval.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from torchrec_kd.core.layout import CONTRACT_FILE
from torchrec_kd.core.plugins import load_plugins
from torchrec_kd.core.tasks import Task, task_names
from torchrec_kd.data.contract import Converted, RawRows
from torchrec_kd.data.id_remap import IdRemap, load_remaps
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.errors import CheckpointError, ConfigError, DataError
from torchrec_kd.models.build import build_model_from_meta, io_from_meta, meta_tasks
from torchrec_kd.models.io import ModelIO
from torchrec_kd.quant.export import load_quantized, read_quantized_meta
from torchrec_kd.quant.item_index import ItemIndex, read_item_index
from torchrec_kd.quant.scoring_head import ScoringHead, head_tasks
from torchrec_kd.serving.retrieval import IndexOptions, Retriever, index_options, user_block


class ServedModel:
    """A quantized student with its input contract, scoring in inference mode.

    Args:
        model (nn.Module): the quantized model.
        io (ModelIO): how it is called and what it returns.
        contract (Dict[str, Any]): the input contract (``contract.json``).
        sidecar (Dict[str, Any]): the export's ``quantized.json``.
        remaps (Optional[Dict[str, IdRemap]]): the entity remaps the contract names (``id_remap.json``).
        item_index (Optional[ItemIndex]): a two-tower export's item index (``retrieve``).
    """

    def __init__(self, model: nn.Module, io: ModelIO, contract: Dict[str, Any], sidecar: Dict[str, Any],
                 remaps: Optional[Dict[str, IdRemap]] = None, item_index: Optional[ItemIndex] = None) -> None:
        self.model, self.io, self.contract, self.sidecar = model.eval(), io, contract, sidecar
        self.tasks: List[Task] = meta_tasks(sidecar.get("meta") or {})
        # a model called as model(dense, kjt) is scored by the same head the TorchScript program holds
        # (which freezes its parameters); one with its own call adapter is frozen here
        self.head: Optional[ScoringHead] = (ScoringHead(model, io.output, head_tasks(self.tasks))
                                            if io.call is None else None)
        model.requires_grad_(False)
        self.rows = RawRows(contract, remaps)
        self.item_index = item_index
        self._retrievers: Dict[str, Retriever] = {}  # built (FAISS) indexes, by their options

    @property
    def remaps(self) -> Dict[str, IdRemap]:
        """``{entity feature: IdRemap}``: raw id -> row (empty when the run was not windowed)."""
        return dict(self.rows.remaps)

    @property
    def table_dtypes(self) -> Dict[str, str]:
        """``{table: dtype}`` of the stored tables."""
        return dict(self.sidecar["table_dtypes"])

    def score_block(self, block: RowBlock, batch_size: int = 4096) -> Tuple[Tensor, Tensor]:
        """Logits and probabilities of converted rows.

        Args:
            block (RowBlock): rows from :meth:`convert` (or a reader).
            batch_size (int): rows per forward.

        Returns:
            Tuple[Tensor, Tensor]: ``[n]`` logits and ``[n]`` probabilities, float32 (``[n, T]`` each
            for a multi-task model; a regression column holds its value in both).
        """
        logits: List[Tensor] = []
        probs: List[Tensor] = []
        with torch.inference_mode():
            for a in range(0, len(block), batch_size):
                batch = block.slice(a, a + batch_size).to_batch(self.rows.sparse_names)
                if self.head is not None:
                    out = self.head(batch.dense_features, batch.sparse_features)
                    logit, prob = out["logit"], out["probability"]
                else:
                    logit = self.io.logits(self.model, batch).float()
                    prob = torch.sigmoid(logit)
                    if len(self.tasks) > 1:  # regression columns are values, not logits
                        regression = torch.tensor([not t.binary for t in self.tasks])
                        prob = torch.where(regression, logit, prob)
                logits.append(logit)
                probs.append(prob)
        if not logits:
            empty = torch.zeros(0) if len(self.tasks) == 1 else torch.zeros(0, len(self.tasks))
            return empty, empty.clone()
        return torch.cat(logits), torch.cat(probs)

    def convert(self, frame: pd.DataFrame, where: str = "rows") -> Converted:
        """Raw rows -> model inputs by the contract (the rules training used)."""
        return self.rows.convert(frame, where=where)

    def score(self, frame: Union[pd.DataFrame, List[Dict[str, Any]]], batch_size: int = 4096) -> pd.DataFrame:
        """Score raw rows.

        Args:
            frame (pd.DataFrame | list of dicts): one row per request, the contract's raw columns.
            batch_size (int): rows per forward.

        Returns:
            pd.DataFrame: ``logit`` and ``probability``, one row per input row, in order; for a
            multi-task model :func:`score_columns` (``<task>``, ``logit_<task>``).

        Raises:
            DataError: a row the training rules reject (named with its reason) or a missing column.
        """
        frame = pd.DataFrame(frame) if not isinstance(frame, pd.DataFrame) else frame
        converted = self.convert(frame)
        if converted.bad:
            line, reason, _ = converted.bad[0]
            raise DataError(f"row {line - 1}: {reason} ({len(converted.bad)} bad row(s))")
        logit, prob = self.score_block(converted.rows, batch_size)
        return pd.DataFrame(score_columns(self.tasks, logit.numpy(), prob.numpy()), index=frame.index)


    def retriever(self, index: Union[None, str, Dict[str, Any], IndexOptions] = None) -> Retriever:
        """The search over this export's item index with ``index`` options (built once, kept).

        Raises:
            ConfigError: the export has no item index (not a two-tower), or bad options (one line).
        """
        if self.item_index is None:
            raise ConfigError("this export has no item index: retrieve needs a two_tower model exported by quantize "
                              "from a run with data.retrieval")
        opts = index_options(index)
        key = repr(opts)
        if key not in self._retrievers:
            self._retrievers[key] = Retriever(self.item_index, opts)
        return self._retrievers[key]

    def user_embeddings(self, user_rows: Union[pd.DataFrame, RowBlock], keys: Optional[Sequence[str]] = None,
                        batch_size: int = 4096) -> Tensor:
        """The (quantized) user tower on users' rows: [U, d].

        Args:
            user_rows (pd.DataFrame | RowBlock): raw rows with the user columns (item columns may be absent), or
                converted rows whose sparse columns are ``keys`` (default: the contract's features, or the user
                features when the block holds that many columns).
            keys (Optional[Sequence[str]]): the block's sparse feature names.
            batch_size (int): users per forward.
        """
        roles = (self.sidecar.get("meta") or {}).get("roles") or {}
        block, keys = user_block(self.rows, roles.get("user") or [], user_rows, keys)
        parts: List[Tensor] = []
        with torch.inference_mode():
            for a in range(0, len(block), batch_size):
                batch = block.slice(a, a + batch_size).to_batch(keys)
                parts.append(self.model.user_embedding(batch.dense_features, batch.sparse_features).float())
        return torch.cat(parts) if parts else torch.zeros(0, self.item_index.dim if self.item_index else 0)

    def retrieve(self, user_rows: Union[pd.DataFrame, RowBlock], k: int,
                 index: Union[None, str, Dict[str, Any], IndexOptions] = None,
                 exclude: Optional[Sequence[np.ndarray]] = None,
                 keys: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Each user's K best items of the export's corpus.

        Args:
            user_rows (pd.DataFrame | RowBlock): the users (see :meth:`user_embeddings`).
            k (int): items per user.
            index (None | str | dict | IndexOptions): ``{type: exact|ivf|hnsw, nlist, nprobe, m, dtype}``
                (default exact over the fp32 rows).
            exclude (Optional[Sequence[np.ndarray]]): per user, corpus indices never returned (seen items).
            keys (Optional[Sequence[str]]): a RowBlock's sparse feature names.

        Returns:
            Tuple[np.ndarray, np.ndarray]: raw item ids [U, k] (best first) and their logits [U, k] float32.

        Raises:
            ConfigError: no item index, bad index options or k.
            DataError: a user row the training rules reject.
        """
        retriever = self.retriever(index)
        idx, logits = retriever.search(self.user_embeddings(user_rows, keys), k, exclude)
        return retriever.ids(idx), logits.numpy()


# the columns a one-task score has always had (a task of these names would be ambiguous)
RESERVED_COLUMNS = frozenset({"logit", "probability"})


def score_columns(tasks: List[Task], logit: Any, prob: Any) -> Dict[str, Any]:
    """The scored columns by name: ``logit``, ``probability`` for one task; else per task, in order,
    ``<task>`` (probability, or the value of a regression task) and ``logit_<task>`` (binary tasks).

    Args:
        tasks (List[Task]): the model's tasks (its output columns).
        logit (array): ``[n]`` or ``[n, T]`` logits (regression columns: values).
        prob (array): the same shape: probabilities (regression columns: values).

    Returns:
        Dict[str, array]: column name -> ``[n]`` values.
    """
    if len(tasks) == 1:
        return {"logit": logit, "probability": prob}
    names = task_names(tasks)
    if len(set(names) & RESERVED_COLUMNS) or any(f"logit_{n}" in names for n in names):
        raise DataError(f"task names {names} collide with the scored columns' names; rename the tasks")
    out: Dict[str, Any] = {}
    for i, task in enumerate(tasks):
        out[task.name] = prob[:, i]
        if task.binary:
            out[f"logit_{task.name}"] = logit[:, i]
    return out



def read_contract(path: Union[str, Path]) -> Dict[str, Any]:
    """The input contract stored with an export.

    Args:
        path (str | Path): an export directory.

    Returns:
        Dict[str, Any]: the contract.

    Raises:
        CheckpointError: the export has no contract (made before contracts existed): re-run quantize.
    """
    f = Path(path) / CONTRACT_FILE
    if not f.is_file():
        raise CheckpointError(f"{f} not found: this export carries no input contract; re-run quantize to export it again")
    return json.loads(f.read_text())


def load_model(path: Union[str, Path]) -> ServedModel:
    """Load an export for inference: the quantized student and its input contract.

    Args:
        path (str | Path): a directory the quantize step wrote (``<output_dir>/export/<name>``).

    Returns:
        ServedModel: ``.score(frame)`` scores raw rows; ``.model`` is the quantized module.

    Raises:
        CheckpointError: the export is missing, unfinished (no seal: a quantize was interrupted),
            damaged or altered (named, with what to do).
    """
    sidecar = read_quantized_meta(path)
    meta = sidecar["meta"]
    load_plugins(meta.get("plugins") or [])  # a plugin model is rebuilt by the plugin it was trained with
    # building and quantizing need ordinary tensors, even when the caller is in inference mode
    with torch.inference_mode(False):
        model = load_quantized(path, build_model_from_meta)  # checks every file against the seal first
    contract = read_contract(path)
    spec = contract.get("id_remap")
    remaps = load_remaps(Path(path) / spec["file"]) if spec else None
    return ServedModel(model, io_from_meta(meta), contract, sidecar, remaps, read_item_index(path))
