"""Distil a DLRM teacher into your own (non-DLRM) ranker inside your own TorchRec training loop,
evaluate it as the recipes do, and export it for ``load_model`` / ``predict``.

Runs on one CPU process or under torchrun (gloo/nccl picked automatically)::

    python examples/custom_ranker/own_loop.py [export_dir]
    torchrun --nproc_per_node 2 examples/custom_ranker/own_loop.py [export_dir]

The student is ``MLPRanker`` (``kd_plugin.py`` beside this file): pooled embeddings and dense
features into a plain MLP, called through its own ``forward(dense, kjt)``. A hint term reads
the output of its ``mlp`` against the teacher's ``inter_arch`` by module path (forward hooks,
attached after sharding); the projection between them is sized from one forward of small
CPU copies of the two models. Planner, DMP, optimizers and the pipeline are TorchRec's.

The student is built by its registered builder (``mlp_ranker``) so that ``model_meta`` can
describe it: ``export_for_serving`` writes that description with the quantized weights, and
``load_model`` rebuilds the model from it.
"""

import os
import sys

import pandas as pd
import torch
import torch.distributed as dist
from torchrec.datasets.random import RandomRecDataset
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from torchrec_kd import (
    DistillationModel,
    LossTermConfig,
    build_loss,
    build_model,
    evaluate_model,
    export_for_serving,
    freeze_teacher_tables,
    load_model,
    load_plugins,
    probe_feature_dims,
)
from torchrec_kd.config import ModelConfig
from torchrec_kd.distill.taps import probe_batch
from torchrec_kd.models.build import model_meta
from torchrec_kd.models.dlrm import make_tables

load_plugins(["kd_plugin"])  # registers mlp_ranker (beside this file); recorded in the export's meta

FEATURES = [f"cat_{i}" for i in range(8)]
ROWS, DENSE, BATCH, STEPS = 10_000, 13, 256, 20
STUDENT = ModelConfig(arch="mlp_ranker", embedding_dim=16, table_prefix="s_", args={"hidden": [64, 32]})


def tables(prefix: str, dim: int, rows: int = ROWS) -> list:
    return [EmbeddingBagConfig(name=f"{prefix}{f}", embedding_dim=dim, num_embeddings=rows, feature_names=[f])
            for f in FEATURES]


def teacher_dlrm(device: torch.device = torch.device("meta"), rows: int = ROWS) -> DLRM:
    ebc = EmbeddingBagCollection(tables=tables("t_", 64, rows), device=device)
    return DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE, dense_arch_layer_sizes=[128, 64],
                over_arch_layer_sizes=[128, 1], dense_device=device)


def student_ranker(device: torch.device = torch.device("meta"), rows: int = ROWS) -> torch.nn.Module:
    return build_model(STUDENT, make_tables(STUDENT, FEATURES, [rows] * len(FEATURES)), DENSE, device)


def batches(num: int, seed: int) -> RandomRecDataset:
    return RandomRecDataset(keys=FEATURES, batch_size=BATCH, hash_size=ROWS, ids_per_feature=1, num_dense=DENSE,
                            num_batches=num, manual_seed=seed)


def main() -> None:
    if "RANK" not in os.environ:  # plain `python`: a one-process group
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")

    # the hint term's projection: 32 (the student's mlp output) -> the teacher's inter_arch width, measured
    cpu = torch.device("cpu")
    dims = probe_feature_dims({"student": lambda: student_ranker(cpu, rows=2), "teacher": lambda: teacher_dlrm(cpu, rows=2)},
                              probe_batch(FEATURES, DENSE))
    loss = build_loss([LossTermConfig("hard_bce", 0.5), LossTermConfig("soft_bce", 0.5, temperature=2.0),
                       LossTermConfig("hint_mse", 0.05, args={"student": "mlp", "teacher": "inter_arch"})], dims)
    teacher = teacher_dlrm()  # in real use: load its checkpoint after sharding
    model = DistillationModel([teacher], student_ranker(), loss)

    freeze_teacher_tables(model.teacher)  # stateless fused SGD, never stepped
    apply_optimizer_in_backward(RowWiseAdagrad, model.student.ebc.parameters(), {"lr": 0.05})
    dmp = DistributedModelParallel(model, device=device)
    fused = [(n, o) for n, o in dmp.fused_optimizer.optimizers if not n.startswith("teachers.")]
    dense = dict(p for p in in_backward_optimizer_filter(dmp.named_parameters()) if p[1].requires_grad)
    optimizer = CombinedOptimizer([*fused, KeyedOptimizerWrapper(dense, lambda ps: torch.optim.Adagrad(ps, lr=0.01))])

    data = iter(batches(STEPS, seed=dist.get_rank()))
    pipeline = TrainPipelineSparseDist(dmp, optimizer, device)
    main = dist.get_rank() == 0
    for step in range(STEPS):
        loss_value, student_logits, teacher_logits, labels = pipeline.progress(data)
        if main and step % 5 == 0:
            print(f"step {step} loss {float(loss_value):.4f}")

    # evaluation (random labels here: AUC near 0.5): the pipeline is detached first (pipeline.progress(...)
    # would re-attach it), the student alone is scored, AUC / NE / log loss from RecMetrics across ranks
    metrics = evaluate_model(pipeline, batches(4, seed=100 + dist.get_rank()))
    if main:
        print(f"val auc {metrics['auc']:.4f} ne {metrics['ne']:.4f} logloss {metrics['logloss']:.4f} "
              f"rows {metrics['rows']}")

    # export: the student gathered unsharded, its tables stored as int8, with its input contract and model.ts
    out = sys.argv[1] if len(sys.argv) > 1 else "outputs/own_loop/export/student_int8"
    meta = model_meta(STUDENT, make_tables(STUDENT, FEATURES, [ROWS] * len(FEATURES)), DENSE)
    export_for_serving(dmp, out, meta, dtype="int8")
    batch = next(iter(batches(1, seed=7))).to(device)
    with torch.no_grad():
        trained = dmp.module.score(batch).cpu()  # every rank: the sharded tables answer collectively
    if main:  # raw columns in, as predict reads them: int_0.. (dense) and cat_0.. (ids)
        frame = pd.DataFrame(batch.dense_features.cpu().numpy(), columns=[f"int_{i}" for i in range(DENSE)])
        for f in FEATURES:
            frame[f] = batch.sparse_features[f].values().cpu().numpy()
        served = load_model(out).score(frame)
        gap = (torch.tensor(served["logit"].to_numpy()) - trained).abs().max().item()
        print(f"exported to {out}; served int8 logits within {gap:.4f} of the trained fp32 student")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
