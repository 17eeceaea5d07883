"""Distil a DLRM teacher into your own (non-DLRM) ranker inside your own TorchRec training loop.

Runs on one CPU process or under torchrun (gloo/nccl picked automatically)::

    python examples/custom_ranker/own_loop.py
    torchrun --nproc_per_node 2 examples/custom_ranker/own_loop.py

The student is ``MLPRanker`` (``kd_plugin.py`` beside this file): pooled embeddings and dense
features into a plain MLP, called through its own ``forward(dense, kjt)``. A hint term reads
the output of its ``mlp`` against the teacher's ``inter_arch`` by module path (forward hooks,
attached after sharding); the projection between them is sized from one forward of small
CPU copies of the two models. Planner, DMP, optimizers and the pipeline are TorchRec's.
"""

import os

import torch
import torch.distributed as dist
from kd_plugin import MLPRanker
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

from torchrec_kd import DistillationModel, LossTermConfig, build_loss, freeze_teacher_tables, probe_feature_dims
from torchrec_kd.distill.taps import probe_batch

FEATURES = [f"cat_{i}" for i in range(8)]
ROWS, DENSE, BATCH, STEPS = 10_000, 13, 256, 20


def tables(prefix: str, dim: int, rows: int = ROWS) -> list:
    return [EmbeddingBagConfig(name=f"{prefix}{f}", embedding_dim=dim, num_embeddings=rows, feature_names=[f])
            for f in FEATURES]


def teacher_dlrm(device: torch.device = torch.device("meta"), rows: int = ROWS) -> DLRM:
    ebc = EmbeddingBagCollection(tables=tables("t_", 64, rows), device=device)
    return DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE, dense_arch_layer_sizes=[128, 64],
                over_arch_layer_sizes=[128, 1], dense_device=device)


def student_ranker(device: torch.device = torch.device("meta"), rows: int = ROWS) -> MLPRanker:
    return MLPRanker(EmbeddingBagCollection(tables=tables("s_", 16, rows), device=device), DENSE, [64, 32], device=device)


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

    data = iter(RandomRecDataset(keys=FEATURES, batch_size=BATCH, hash_size=ROWS, ids_per_feature=1,
                                 num_dense=DENSE, num_batches=STEPS))
    pipeline = TrainPipelineSparseDist(dmp, optimizer, device)
    for step in range(STEPS):
        loss_value, student_logits, teacher_logits, labels = pipeline.progress(data)
        if dist.get_rank() == 0 and step % 5 == 0:
            print(f"step {step} loss {float(loss_value):.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
