"""Distillation per task: task columns, task spaces, binary-only terms, per-task teachers, dict students."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import LossTermConfig
from torchrec_kd.core.tasks import Task, hard_task_loss
from torchrec_kd.distill.model import DistillationModel, TeacherEnsemble
from torchrec_kd.distill.task_teachers import TeacherTasks, saved_tasks, task_plan
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import build_loss
from torchrec_kd.models.io import ModelIO

# click on every row; conversion observed only on clicked rows
TASKS = [Task("click"), Task("conversion", space=0)]
LABELS = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
IN_SPACE = LABELS[:, 0] > 0.5
TEACHER = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, 3.0], [-2.0, -1.0], [0.0, 1.5]])


def student_logits(out_of_space_conversion: float = 0.0) -> torch.Tensor:
    s = torch.tensor([[0.5, -0.5], [0.2, 1.0], [-0.3, 0.0], [1.0, 0.0], [-1.0, -2.0]])
    s[~IN_SPACE, 1] = out_of_space_conversion
    return s.requires_grad_(True)


def loss_and_grad(loss, s):
    value = loss(s, TEACHER, LABELS)
    (grad,) = torch.autograd.grad(value, s)
    return value.detach(), grad


def soft_rows(s, t, temp=1.0):
    return F.binary_cross_entropy_with_logits(s / temp, torch.sigmoid(t / temp), reduction="none") * temp * temp


def test_a_space_restricted_term_ignores_rows_outside_its_space():
    loss = build_loss([LossTermConfig("soft_bce", 1.0, task="conversion")], tasks=TASKS)
    v1, g1 = loss_and_grad(loss, student_logits(0.0))
    v2, g2 = loss_and_grad(loss, student_logits(7.0))  # other conversion logits on unclicked rows
    assert v1.item() == pytest.approx(v2.item(), rel=1e-7)
    assert torch.equal(g1, g2) and torch.all(g1[~IN_SPACE] == 0)
    s = student_logits(0.0).detach()
    expected = soft_rows(s[IN_SPACE, 1], TEACHER[IN_SPACE, 1]).mean()
    assert v1.item() == pytest.approx(expected.item(), rel=1e-6)


def test_out_of_space_rows_count_with_their_weight():
    loss = build_loss([LossTermConfig("soft_bce", 1.0, task="conversion", out_space_weight=0.25)], tasks=TASKS)
    v1, _ = loss_and_grad(loss, student_logits(0.0))
    v2, g2 = loss_and_grad(loss, student_logits(7.0))
    assert v1.item() != pytest.approx(v2.item()) and torch.all(g2[~IN_SPACE, 1] != 0)
    s = student_logits(7.0).detach()
    w = torch.where(IN_SPACE, 1.0, 0.25)
    expected = (soft_rows(s[:, 1], TEACHER[:, 1]) * w).sum() / w.sum()
    assert v2.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_term_with_a_task_reads_only_that_column():
    loss = build_loss([LossTermConfig("logit_mse", 1.0, task="conversion")], tasks=TASKS)
    s = student_logits()
    changed = s.detach().clone()
    changed[:, 0] += 5.0  # the click column
    assert loss(s, TEACHER, LABELS).item() == pytest.approx(loss(changed, TEACHER, LABELS).item())
    _, grad = loss_and_grad(loss, s)
    assert torch.all(grad[:, 0] == 0)


def test_a_term_without_task_sums_every_task_in_its_own_space():
    tasks = [Task("click", weight=2.0), Task("conversion", space=0, weight=0.5)]
    s = student_logits()
    hard = build_loss([LossTermConfig("hard_bce", 1.0)], tasks=tasks)
    # hard_bce on every task is the run's hard loss: task-weighted, each task over its space
    assert hard(s, TEACHER, LABELS).item() == pytest.approx(hard_task_loss(s, LABELS, tasks).item(), rel=1e-6)
    soft = build_loss([LossTermConfig("soft_bce", 1.0, temperature=2.0)], tasks=tasks)
    sd = s.detach()
    expected = (2.0 * soft_rows(sd[:, 0], TEACHER[:, 0], 2.0).mean()
                + 0.5 * soft_rows(sd[IN_SPACE, 1], TEACHER[IN_SPACE, 1], 2.0).mean())
    assert soft(s, TEACHER, LABELS).item() == pytest.approx(expected.item(), rel=1e-6)


def test_binary_only_terms_refuse_a_regression_task_in_one_line():
    tasks = [Task("click"), Task("dwell", "regression")]
    for term in (LossTermConfig("soft_bce", 1.0, task="dwell"), LossTermConfig("hard_bce", 1.0)):
        with pytest.raises(ConfigError) as e:
            build_loss([LossTermConfig("logit_mse", 1.0), term], tasks=tasks)
        msg = str(e.value)
        assert "\n" not in msg and "distill.losses[1]" in msg and "'dwell'" in msg and "hard_mse" in msg
    loss = build_loss([LossTermConfig("hard_bce", 1.0, task="click"), LossTermConfig("hard_mse", 1.0, task="dwell")],
                      tasks=tasks)
    s, y = torch.tensor([[0.0, 2.0], [1.0, 1.0]]), torch.tensor([[1.0, 3.0], [0.0, 1.0]])
    expected = F.binary_cross_entropy_with_logits(s[:, 0], y[:, 0]) + ((s[:, 1] - y[:, 1]) ** 2).mean()
    assert loss(s, s, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_one_task_is_the_term_as_always():
    s, t, y = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, -0.5, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    terms = [LossTermConfig("hard_bce", 0.2), LossTermConfig("soft_bce", 0.8, temperature=2.0)]
    plain = build_loss(terms)(s, t, y)
    assert torch.equal(build_loss(terms, tasks=[Task("label")])(s, t, y), plain)


# ---- teachers per task ---------------------------------------------------------------------------

class Const(nn.Module):
    """A frozen 'teacher' returning fixed logits (``[B]`` or ``[B, T]``) for any batch."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("out", out)
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, dense, sparse):
        return self.out[: dense.size(0)]


def batch(labels=LABELS):
    n = labels.shape[0]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.zeros(n, dtype=torch.long),
                                              lengths=torch.ones(n, dtype=torch.int32))
    return Batch(torch.arange(n, dtype=torch.float32).unsqueeze(1), kjt, labels)


def test_two_single_task_teachers_make_the_students_two_columns_by_name():
    click, conv = TEACHER[:, 0], TEACHER[:, 1]
    plan = task_plan(TASKS, [TeacherTasks([Task("label")], ["click"], 1.0, "distill.teachers[0]"),
                             TeacherTasks([Task("conversion")], None, 3.0, "distill.teachers[1]")])
    out, _ = TeacherEnsemble([Const(click), Const(conv)], [1.0, 3.0], task_plan=plan)(batch())
    assert out.shape == (5, 2) and torch.equal(out, TEACHER)
    # a multi-task teacher matched by name whatever its column order, averaged with a click-only one
    swapped = TEACHER.flip(1)
    plan = task_plan(TASKS, [TeacherTasks([Task("conversion"), Task("click")], None, 1.0, "distill.teachers[0]"),
                             TeacherTasks([Task("click")], None, 3.0, "distill.teachers[1]")])
    ens = TeacherEnsemble([Const(swapped), Const(click + 4.0)], [1.0, 3.0],
                          [ModelIO(tasks=(Task("conversion"), Task("click"))), ModelIO()], task_plan=plan)
    out, _ = ens(batch())
    assert torch.allclose(out[:, 0], 0.25 * click + 0.75 * (click + 4.0)) and torch.equal(out[:, 1], conv)


def test_a_student_task_no_teacher_teaches_is_one_line_naming_it():
    with pytest.raises(ConfigError, match="no teacher teaches task 'conversion'"):
        task_plan(TASKS, [TeacherTasks([Task("click")], None, 1.0, "distill.teachers[0]")])
    with pytest.raises(ConfigError, match=r"distill.teachers\[0\].tasks: the teacher has no task 'conversion'"):
        task_plan(TASKS, [TeacherTasks([Task("click"), Task("like")], ["click", "conversion"], 1.0,
                                       "distill.teachers[0]")])
    assert task_plan([Task("label")], [TeacherTasks([Task("label")], None, 1.0, "t")]) is None  # one task: as always


def test_saved_tasks_of_old_and_new_checkpoints():
    assert [t.name for t in saved_tasks({})] == ["label"]
    assert [t.name for t in saved_tasks({"config": {"tasks": [{"name": "click"}]}})] == ["click"]
    new = saved_tasks({"tasks": [{"name": "click", "type": "binary"}, {"name": "dwell", "type": "regression"}]})
    assert [(t.name, t.type) for t in new] == [("click", "binary"), ("dwell", "regression")]


class DictStudent(nn.Module):
    """A plugin student returning ``{task: [B]}`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.click, self.conversion = nn.Linear(1, 1), nn.Linear(1, 1)

    def forward(self, dense, sparse):
        x = dense / 5.0
        return {"conversion": self.conversion(x).squeeze(1), "click": self.click(x).squeeze(1)}


def test_a_plugin_student_returning_a_dict_of_task_logits_distils():
    torch.manual_seed(0)
    loss = build_loss([LossTermConfig("hard_bce", 0.2), LossTermConfig("soft_bce", 0.8, temperature=2.0)], tasks=TASKS)
    plan = task_plan(TASKS, [TeacherTasks([Task("label")], ["click"], 1.0, "distill.teachers[0]"),
                             TeacherTasks([Task("label")], ["conversion"], 1.0, "distill.teachers[1]")])
    model = DistillationModel([Const(TEACHER[:, 0]), Const(TEACHER[:, 1])], DictStudent(), loss,
                              student_io=ModelIO(tasks=tuple(TASKS)), task_plan=plan)
    opt = torch.optim.SGD(model.student.parameters(), lr=0.5)
    model.train()
    losses = []
    for step in range(8):
        model.set_step(step)
        value, (_, student, teacher, labels) = model(batch())
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert student.shape == teacher.shape == labels.shape == (5, 2)
    assert losses[-1] < losses[0]
    assert all(p.grad is None for t in model.teachers for p in t.parameters())  # teachers stay frozen
    assert model.loss_fn.step == 7  # the loop's step, not one per forward


def test_the_loops_step_sets_the_schedules_and_forwards_leave_them_alone():
    from torchrec_kd.config import ScheduleConfig

    cfg = LossTermConfig("soft_bce", 1.0, temperature=1.0, weight_schedule=ScheduleConfig(kind="warmup", steps=4),
                         temperature_schedule=ScheduleConfig(kind="linear", start=3.0, steps=2))
    loss = build_loss([cfg]).train()
    s, t, y = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.0])
    loss.set_step(1)
    first = loss(s, t, y).item()
    assert loss(s, t, y).item() == first and loss.step == 1  # driven: a forward does not advance it
    assert loss.terms[0].temperature == pytest.approx(2.0) and loss.terms[0]._temperature == 1.0
    expected = 0.25 * build_loss([LossTermConfig("soft_bce", 1.0, temperature=2.0)])(s, t, y).item()
    assert first == pytest.approx(expected, rel=1e-6)
