"""One distillation run stepped through TrainPipelineSparseDist and, beside it, eagerly (run on each rank)."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from tests.conftest import TINY
from torchrec_kd.config import load_config
from torchrec_kd.distributed.state import local_tensors
from torchrec_kd.training.distill_run import DistillRun


def pipelined_vs_eager(rank: int, world_size: int, out_dir: str, steps: int, overrides: Sequence[str] = (),
                       config=TINY, plugins: Sequence[str] = ()) -> Dict[str, Any]:
    """Set up two identical distillation runs, step one through the pipeline and one eagerly.

    Returns:
        Dict[str, Any]: per-step logit differences, weight difference, the teacher's frozen state, and
        ``soft_target_diff``: the ensemble logits the model used against the teachers' own forwards.
    """
    from torchrec_kd.core.plugins import load_plugins

    load_plugins(plugins)
    cfg = load_config(config, [f"output_dir={out_dir}", f"train.steps={steps}", *overrides])
    piped, eager = DistillRun(cfg), DistillRun(cfg)
    piped.setup()
    eager.setup()
    teacher_before = local_tensors(piped.model, "teachers.")
    batches = list(piped.data.batches("train", cfg.data.batch_size, rank, world_size, num_batches=steps))
    pipeline = TrainPipelineSparseDist(piped.model, piped.optimizer, piped.env.device)
    it = iter(batches)
    piped.model.train()
    eager.model.train()
    student_diff, teacher_diff, soft_target_diff = [], [], []
    module = eager.model.module
    for b in batches:
        _, s_p, t_p, _ = pipeline.progress(it)
        eager.optimizer.zero_grad()
        loss, (_, s_e, t_e, _) = eager.model(b)
        loss.backward()
        eager.optimizer.step()
        student_diff.append(float((s_p - s_e).abs().max()))
        teacher_diff.append(float((t_p - t_e).abs().max()))
        with torch.no_grad():  # each teacher through its own forward; probabilities turned into logits
            own = [io.logits(t, b) for t, io in zip(module.teachers, module.teacher_ios)]
            want = sum(w * x for w, x in zip(module.teacher_weights, own))
        soft_target_diff.append(float((t_e - want).abs().max()))
    model = pipeline.detach()
    teacher_after = local_tensors(model, "teachers.")
    sp, se = local_tensors(model, "student."), local_tensors(eager.model, "student.")
    teacher_fused_state = {name: sum(len(s) for s in opt.state.values())
                           for name, opt in model.fused_optimizer.optimizers if name.startswith("teachers.")}
    return {
        "n_pipelined": len(pipeline._pipelined_modules),
        "student_diff": student_diff, "teacher_diff": teacher_diff, "soft_target_diff": soft_target_diff,
        "student_weight_diff": max(float((v - se[k]).abs().max()) for k, v in sp.items() if v.numel()),
        "teacher_identical": all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before),
        "teacher_keys": len(teacher_before),
        "optimizer_keys": list(piped.optimizer.state_dict()["state"].keys()),
        "optimizer_params": [k for k in piped.optimizer.params.keys()],
        "teacher_fused_state": teacher_fused_state,
        # fused tables are reported as slices of one TBE weight; the TBE weight is what autograd sees
        "teacher_requires_grad": [n for n, p in model.named_parameters()
                                  if n.startswith("teachers.") and getattr(p, "_original_tensor", p).requires_grad],
        "taps": [f"{t.role}/{t.key}" for t in module.loss_fn.taps],
    }


def assert_pipelined_equals_eager_and_teacher_frozen(r: Dict[str, Any], n_pipelined: int = 2) -> None:
    """What every distillation on N ranks must show."""
    assert r["n_pipelined"] == n_pipelined  # every embedding collection's input dist runs in the pipeline
    assert max(r["student_diff"]) < 1e-5 and max(r["teacher_diff"]) < 1e-6
    assert r["student_weight_diff"] < 1e-5
    assert max(r["soft_target_diff"]) < 1e-6  # the soft targets are the teachers' logits
    # the teacher: bit-identical, no grads, no optimizer (and no optimizer state) for any of its parameters
    assert r["teacher_keys"] > 0 and r["teacher_identical"]
    assert r["teacher_requires_grad"] == []
    assert not [k for k in r["optimizer_params"] if k.startswith("teachers.") or ".teacher." in k], r["optimizer_params"]
    assert not [k for k in r["optimizer_keys"] if "teacher" in k]
    assert r["teacher_fused_state"] and all(v == 0 for v in r["teacher_fused_state"].values())
