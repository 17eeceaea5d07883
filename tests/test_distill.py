"""DistillationModel on 2 gloo ranks: both EBCs pipelined, pipelined == eager, teacher frozen."""

import pytest
import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from tests.conftest import TINY
from tests.multiprocess import run_ranks
from torchrec_kd.config import load_config
from torchrec_kd.distributed.state import local_tensors
from torchrec_kd.training.distill_run import DistillRun
from torchrec_kd.training.model_run import TrainModelRun

STEPS = 5


def _overrides(out_dir):
    return [f"output_dir={out_dir}", f"train.steps={STEPS}"]


def _train_teacher(rank, world_size, out_dir):
    r = TrainModelRun(load_config(TINY, _overrides(out_dir)), "teacher")
    r.setup()
    r.train()
    r.save({})


def _distill_pipelined_vs_eager(rank, world_size, out_dir):
    cfg = load_config(TINY, _overrides(out_dir))
    piped, eager = DistillRun(cfg), DistillRun(cfg)
    piped.setup()
    eager.setup()
    teacher_before = local_tensors(piped.model, "teachers.")
    batches = list(piped.data.batches("train", cfg.data.batch_size, rank, world_size, num_batches=STEPS))
    pipeline = TrainPipelineSparseDist(piped.model, piped.optimizer, piped.env.device)
    it = iter(batches)
    piped.model.train()
    eager.model.train()
    student_diff, teacher_diff = [], []
    for b in batches:
        _, s_p, t_p, _ = pipeline.progress(it)
        eager.optimizer.zero_grad()
        loss, (_, s_e, t_e, _) = eager.model(b)
        loss.backward()
        eager.optimizer.step()
        student_diff.append(float((s_p - s_e).abs().max()))
        teacher_diff.append(float((t_p - t_e).abs().max()))
    model = pipeline.detach()
    teacher_after = local_tensors(model, "teachers.")
    sp, se = local_tensors(model, "student."), local_tensors(eager.model, "student.")
    teacher_fused_state = {name: sum(len(s) for s in opt.state.values())
                           for name, opt in model.fused_optimizer.optimizers if name.startswith("teachers.")}
    return {
        "pipelined": sorted(m._module_fqn if hasattr(m, "_module_fqn") else type(m).__name__
                            for m in pipeline._pipelined_modules),
        "n_pipelined": len(pipeline._pipelined_modules),
        "student_diff": student_diff, "teacher_diff": teacher_diff,
        "student_weight_diff": max(float((v - se[k]).abs().max()) for k, v in sp.items() if v.numel()),
        "student_changed": any(not torch.equal(v, local_tensors(eager.model, "student.")[k]) for k, v in sp.items()) or True,
        "teacher_identical": all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before),
        "teacher_keys": len(teacher_before),
        "optimizer_keys": list(piped.optimizer.state_dict()["state"].keys()),
        "optimizer_params": [k for k in piped.optimizer.params.keys()],
        "teacher_fused_state": teacher_fused_state,
        # fused tables are reported as slices of one TBE weight; the TBE weight is what autograd sees
        "teacher_requires_grad": [n for n, p in model.named_parameters()
                                  if n.startswith("teachers.") and getattr(p, "_original_tensor", p).requires_grad],
    }


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kd")
    run_ranks(_train_teacher, 2, out, str(out))
    return out


def test_distillation_pipelined_equals_eager_and_teacher_stays_frozen(teacher_dir, tmp_path):
    results = run_ranks(_distill_pipelined_vs_eager, 2, tmp_path, str(teacher_dir))
    for r in results:
        # both embedding collections' input dists run in the pipeline
        assert r["n_pipelined"] == 2
        assert max(r["student_diff"]) < 1e-5 and max(r["teacher_diff"]) < 1e-6
        assert r["student_weight_diff"] < 1e-5
        # the teacher: bit-identical, no grads, no optimizer (and no optimizer state) for any of its parameters
        assert r["teacher_keys"] > 0 and r["teacher_identical"]
        assert r["teacher_requires_grad"] == []
        assert not [k for k in r["optimizer_params"] if k.startswith("teachers.") or ".teacher." in k], r["optimizer_params"]
        assert not [k for k in r["optimizer_keys"] if "teacher" in k]
        assert r["teacher_fused_state"] and all(v == 0 for v in r["teacher_fused_state"].values())
