"""Build a role's model by its registered name, check configs against the registry, rebuild saved models.

Example::

    check_models(cfg, "configs/x.yaml")                       # arch names and args, before any work
    model = build_model(cfg.student, tables, dense_in)         # on meta
    io = model_io(cfg.student)                                 # how to call it, logits out
    model = build_model_from_meta(read_meta(ckpt))             # a saved model, on CPU
    model = build_model(cfg.student, tables, dense_in, tasks=run_tasks(cfg))   # [B, T] when T >= 2
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig

import torchrec_kd.models.builtin  # noqa: F401  (registers dlrm, dlrm_dcn, dlrm_projection, deepfm, shared_bottom, mmoe)
from torchrec_kd.config import ModelConfig, RunConfig, build_section
from torchrec_kd.core.plugins import loaded_plugins
from torchrec_kd.core.tasks import DEFAULT_TASK, Task, run_tasks, task_names
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.dlrm import make_tables
from torchrec_kd.models.io import ModelIO
from torchrec_kd.models.registry import MODELS, BuildInputs, FeatureRoles, ModelBuilder


def model_builder(arch: str, where: str = "arch") -> ModelBuilder:
    """The builder registered as ``arch``.

    Args:
        arch (str): a ``teacher.arch`` / ``student.arch`` value.
        where (str): the key, for the message.

    Raises:
        ConfigError: ``<where>: unknown model 'x'; did you mean 'y'? registered: …`` (and how plugins add one).
    """
    if arch in MODELS:
        return MODELS[arch]
    near = difflib.get_close_matches(arch, list(MODELS), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise ConfigError(f"{where}: unknown model '{arch}'; {hint}registered: {', '.join(sorted(MODELS))} "
                      "(a --plugin module can register more with torchrec_kd.models.registry.register_model)")


def model_args(cfg: ModelConfig, where: str) -> Any:
    """``cfg.args`` checked against the builder's declared args (a dataclass instance, or None).

    Raises:
        ConfigError: an unknown key (with the nearest one), a wrong type, or args given to a
            builder that takes none.
    """
    builder = model_builder(cfg.arch, f"{where}.arch")
    if builder.args is None:
        if cfg.args:
            raise ConfigError(f"{where}.args: model '{cfg.arch}' takes no args (its sizes are {where}'s own keys), "
                              f"got {sorted(cfg.args)}")
        return None
    return build_section(builder.args, dict(cfg.args), f"{where}.args")


def check_models(cfg: RunConfig, source: str) -> None:
    """Refuse an unknown ``teacher.arch`` / ``student.arch`` or bad ``args`` before any work.

    Args:
        cfg (RunConfig): the run config.
        source (str): the config's source (``config_source``), for the message.

    Raises:
        ConfigError: ``<source>: student.args: unknown key 'hiden'; did you mean 'hidden'?``.
    """
    tasks = run_tasks(cfg)
    for role in ("teacher", "student"):
        try:
            model_args(getattr(cfg, role), role)
            check_multitask(getattr(cfg, role), tasks, role)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def check_multitask(cfg: ModelConfig, tasks: Optional[Sequence[Task]], where: str) -> None:
    """Refuse a builder that has one head in a run of several tasks.

    Raises:
        ConfigError: ``<where>.arch: deepfm has one sigmoid head; ... use shared_bottom or mmoe``.
    """
    if tasks is None or len(tasks) < 2:
        return
    builder = model_builder(cfg.arch, f"{where}.arch")
    if not builder.multitask:
        raise ConfigError(f"{where}.arch: '{cfg.arch}' has one output but the run has {len(tasks)} tasks "
                          f"({', '.join(task_names(tasks))}); use {where}.arch=shared_bottom or mmoe")


def build_model(cfg: ModelConfig, tables: List[EmbeddingBagConfig], dense_in_features: int,
                device: torch.device = torch.device("meta"), dense_columns: Optional[Sequence[int]] = None,
                where: str = "model", tasks: Optional[Sequence[Task]] = None,
                roles: Optional[FeatureRoles] = None) -> nn.Module:
    """The model ``cfg.arch`` names, holding ``tables``.

    Args:
        cfg (ModelConfig): the role's model section.
        tables (List[EmbeddingBagConfig]): its tables (see :func:`~torchrec_kd.models.dlrm.make_tables`).
        dense_in_features (int): width of the dense input.
        device (torch.device): ``meta`` to shard later, or a real device.
        dense_columns (Optional[Sequence[int]]): the dense columns it may read (None: all).
        where (str): the role, for messages.
        tasks (Optional[Sequence[Task]]): the run's tasks (``run_tasks(cfg)``); None: one task.
            With two or more the model returns ``[B, T]`` in their order.
        roles (Optional[FeatureRoles]): user / item features of a retrieval run
            (``feature_roles(cfg.data.retrieval)``); a two-tower model needs them, rankers ignore them.

    Returns:
        nn.Module: the model (called through :func:`model_io`).

    Raises:
        ConfigError: bad args, privileged dense features for a builder that cannot leave them out,
            or several tasks for a one-head builder.
    """
    builder = model_builder(cfg.arch, f"{where}.arch")
    args = model_args(cfg, where)
    check_multitask(cfg, tasks, where)
    if dense_columns is not None:
        bad = [c for c in dense_columns if not 0 <= c < dense_in_features]
        if not dense_columns or bad:
            raise ConfigError(f"{where}: dense_columns {list(dense_columns)} must be a non-empty subset of "
                              f"0..{dense_in_features - 1}")
        if not builder.privileged_dense:
            raise ConfigError(f"{where}.arch: model '{cfg.arch}' cannot leave out privileged dense features "
                              "(registered without privileged_dense=True); list only sparse features in "
                              "distill.privileged_features")
    inputs = BuildInputs(cfg, args, list(tables), dense_in_features,
                         None if dense_columns is None else list(dense_columns), device,
                         tuple(tasks) if tasks else (Task(DEFAULT_TASK),), roles)
    try:
        return builder.build(inputs)
    except ConfigError as e:
        raise ConfigError(f"{where} ({cfg.arch}): {e}") from None


def model_io(cfg: ModelConfig, tasks: Optional[Sequence[Task]] = None) -> ModelIO:
    """How the ``cfg.arch`` model is called and what it returns (``[B, T]`` logits when ``tasks`` has two or more)."""
    io = model_builder(cfg.arch).io
    return io if tasks is None else io.with_tasks(tasks)


def _is_default(tasks: Optional[Sequence[Task]]) -> bool:
    """No tasks listed: the one binary ``label`` task every run had before tasks existed."""
    return not tasks or (len(tasks) == 1 and tasks[0].name == DEFAULT_TASK and tasks[0].binary)


def model_meta(cfg: ModelConfig, tables: Sequence[EmbeddingBagConfig], dense_in_features: int,
               dense_columns: Optional[Sequence[int]] = None,
               tasks: Optional[Sequence[Task]] = None, roles: Optional[FeatureRoles] = None) -> Dict[str, Any]:
    """What :func:`build_model_from_meta` needs to rebuild the model (JSON-serialisable).

    Records the builder's name and args (``model.arch``, ``model.args``) and the plugins this
    process loaded, so a plugin model's checkpoint says which ``--plugin`` rebuilds it; and the
    run's ``tasks`` (``[{"name", "type"}]``, the model's output columns in order) unless the run
    named none (then the meta is what it always was: one ``label`` logit); and the feature
    ``roles`` of a retrieval run when given (a two-tower is rebuilt with the same towers).
    """
    meta: Dict[str, Any] = {
        "model": dataclasses.asdict(cfg),
        "dense_in_features": dense_in_features,
        "sparse_features": [t.feature_names[0] for t in tables],
        "num_embeddings": [t.num_embeddings for t in tables],
        "plugins": loaded_plugins(),
    }
    if dense_columns is not None:
        meta["dense_columns"] = list(dense_columns)
    if not _is_default(tasks):
        assert tasks is not None
        meta["tasks"] = [{"name": t.name, "type": t.type} for t in tasks]
    if roles is not None:
        meta["roles"] = roles.to_json()
    return meta


def meta_tasks(meta: Dict[str, Any]) -> List[Task]:
    """A saved model's tasks, its output columns in order (one ``label`` task when it records none).

    Args:
        meta (dict): from :func:`model_meta` (a checkpoint's ``meta.json``, an export's ``quantized.json`` meta).

    Returns:
        List[Task]: name and type of each column (weights and spaces are the training run's business).
    """
    return [Task(t["name"], t.get("type", "binary")) for t in meta.get("tasks") or []] or [Task(DEFAULT_TASK)]


def model_config_from_meta(meta: Dict[str, Any], where: str = "meta.json") -> ModelConfig:
    """The :class:`ModelConfig` a saved model was built from, its builder checked to be registered.

    Raises:
        ConfigError: the builder is not registered (naming the plugins the run used).
    """
    cfg = ModelConfig(**meta["model"])
    if cfg.arch not in MODELS:
        plugins = meta.get("plugins") or []
        need = (f"pass --plugin {' --plugin '.join(plugins)} (the plugins the model was trained with)" if plugins
                else "load the plugin that registers it with --plugin")
        raise ConfigError(f"{where}: the model was built by '{cfg.arch}', which no loaded module registers; {need}")
    return cfg


def build_model_from_meta(meta: Dict[str, Any], device: torch.device = torch.device("cpu")) -> nn.Module:
    """Rebuild a model described by :func:`model_meta` (e.g. from a checkpoint's meta.json).

    Args:
        meta (dict): holds ``model``, ``dense_in_features``, ``sparse_features``, ``num_embeddings``
            (and ``dense_columns`` when some dense features were privileged).
        device (torch.device): where to build it.

    Returns:
        nn.Module: the model with freshly initialised weights.
    """
    cfg = model_config_from_meta(meta)
    tables = make_tables(cfg, meta["sparse_features"], meta["num_embeddings"])
    tasks = meta_tasks(meta) if meta.get("tasks") else None
    return build_model(cfg, tables, meta["dense_in_features"], device=device, dense_columns=meta.get("dense_columns"),
                       tasks=tasks, roles=FeatureRoles.from_json(meta.get("roles")))


def io_from_meta(meta: Dict[str, Any]) -> ModelIO:
    """How a saved model is called and what it returns (from its builder; ``[B, T]`` for a multi-task model)."""
    return model_io(model_config_from_meta(meta), meta_tasks(meta) if meta.get("tasks") else None)
