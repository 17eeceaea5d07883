"""Use ``DistillationModel`` inside your own TorchRec training loop.

Runs on one CPU process or under torchrun (gloo/nccl picked automatically)::

    python examples/distill_in_your_own_loop.py
    torchrun --nproc_per_node 2 examples/distill_in_your_own_loop.py

The only torchrec_kd parts used are the model wrapper, the loss registry and the
teacher-freezing helper; planner, DMP, optimizers and the pipeline are TorchRec's.
"""

import os

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

from torchrec_kd import DistillationModel, LossTermConfig, build_loss, freeze_teacher_tables

FEATURES = [f"cat_{i}" for i in range(8)]
ROWS, DENSE, BATCH, STEPS = 10_000, 13, 256, 20


def dlrm(prefix: str, dim: int, dense_arch: list, over_arch: list) -> DLRM:
    tables = [EmbeddingBagConfig(name=f"{prefix}{f}", embedding_dim=dim, num_embeddings=ROWS, feature_names=[f])
              for f in FEATURES]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    return DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE, dense_arch_layer_sizes=dense_arch,
                over_arch_layer_sizes=over_arch, dense_device=torch.device("meta"))


def main() -> None:
    if "RANK" not in os.environ:  # plain `python`: a one-process group
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")

    teacher = dlrm("t_", 64, [128, 64], [128, 1])  # in real use: load its checkpoint after sharding
    student = dlrm("s_", 16, [32, 16], [32, 1])
    loss = build_loss([LossTermConfig("hard_bce", 0.5), LossTermConfig("soft_bce", 0.5, temperature=2.0)])
    model = DistillationModel([teacher], student, loss)

    freeze_teacher_tables(model.teacher)  # stateless fused SGD, never stepped
    apply_optimizer_in_backward(RowWiseAdagrad, model.student.sparse_arch.parameters(), {"lr": 0.05})
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
