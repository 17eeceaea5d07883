"""Which teacher teaches which student task, and the teachers' outputs as the student's ``[B, T]``.

Each teacher has its own tasks (the columns of its output, named in its ``meta.json``; a
checkpoint from before tasks has one, named by its config's ``tasks`` or ``label``). A
teacher teaches the student tasks listed in its ``distill.teachers[i].tasks``, or else every
student task it has by name, whatever its column order. A one-task teacher listed for a task
teaches it whatever its own task is called (one click teacher and one conversion teacher).
Each student task's soft target is the weighted mean of the teachers teaching it (ensemble
weights renormalised per task); a student task no teacher teaches is a ``ConfigError``.

A one-task student taught by one-task teachers keeps the plain weighted mean (no plan).

Example::

    plan = task_plan(["click", "conversion"], [TeacherTasks(["label"], ["click"], 1.0, "distill.teachers[0]"),
                                               TeacherTasks(["label"], ["conversion"], 1.0, "distill.teachers[1]")])
    teacher = assemble([click_logits, conversion_logits], plan)      # [B, 2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from torchrec_kd.core.tasks import DEFAULT_TASK, Task
from torchrec_kd.errors import ConfigError


@dataclass(frozen=True)
class TeacherTasks:
    """What one teacher predicts and what it is asked to teach.

    Attributes:
        tasks (Sequence[Task]): its output columns in order (one: a ``[B]`` output).
        teaches (Optional[Sequence[str]]): ``distill.teachers[i].tasks`` (None: every task it has).
        weight (float): its ensemble weight.
        where (str): its config key (``distill.teachers[1]``), for messages.
    """

    tasks: Sequence[Task]
    teaches: Optional[Sequence[str]]
    weight: float
    where: str


@dataclass(frozen=True)
class TaskSource:
    """One teacher's share of one student task: its output column (None: its ``[B]`` output) and weight."""

    teacher: int
    column: Optional[int]
    weight: float


def saved_tasks(meta: Dict[str, Any]) -> List[Task]:
    """A checkpoint's tasks: ``meta["tasks"]``, else its config's ``tasks``, else one binary ``label`` task.

    Args:
        meta (dict): the checkpoint's ``meta.json``.

    Returns:
        List[Task]: names and types of its output columns, in order.
    """
    listed = meta.get("tasks") or (meta.get("config") or {}).get("tasks") or []
    return [Task(t["name"], t.get("type", "binary")) for t in listed] or [Task(DEFAULT_TASK)]


def _names(tasks: Sequence[Task]) -> str:
    return ", ".join(t.name for t in tasks)


def task_plan(student: Sequence[Task], teachers: Sequence[TeacherTasks]) -> Optional[List[List[TaskSource]]]:
    """For each student task, the teachers' columns and renormalised weights that make its soft target.

    Args:
        student (Sequence[Task]): the run's tasks.
        teachers (Sequence[TeacherTasks]): the teachers, in ensemble order.

    Returns:
        Optional[List[List[TaskSource]]]: one list per student task; None when the student has one
        task and every teacher one output (the plain weighted mean, as always).

    Raises:
        ConfigError: a teacher lists a task it does not have, teaches none of the student's tasks,
            or teaches a task of another type; a student task no teacher teaches; a task whose
            teachers' weights sum to 0.
    """
    if len(student) == 1 and all(len(t.tasks) == 1 and t.teaches is None for t in teachers):
        return None
    one_student = len(student) == 1
    shares: List[List[TaskSource]] = [[] for _ in student]
    for k, teacher in enumerate(teachers):
        own = [t.name for t in teacher.tasks]
        taught = 0
        for j, task in enumerate(student):
            if teacher.teaches is not None:
                if task.name not in teacher.teaches:
                    continue
                if task.name in own:
                    col: Optional[int] = own.index(task.name)
                elif len(own) == 1:
                    col = 0  # a one-task teacher teaches the task it is listed for, whatever its name
                else:
                    raise ConfigError(f"{teacher.where}.tasks: the teacher has no task '{task.name}' (it has "
                                      f"{_names(teacher.tasks)}); list only tasks it predicts")
            elif task.name in own:
                col = own.index(task.name)
            elif one_student and len(own) == 1:
                col = 0  # one task each side: the teacher's logit, as it always was
            else:
                continue
            if teacher.tasks[col].type != task.type:
                raise ConfigError(f"{teacher.where}: its task '{own[col]}' is {teacher.tasks[col].type}, the "
                                  f"student's '{task.name}' is {task.type}; a teacher teaches tasks of its own type")
            shares[j].append(TaskSource(k, None if len(own) == 1 else col, float(teacher.weight)))
            taught += 1
        if not taught:
            raise ConfigError(f"{teacher.where}: the teacher (tasks: {_names(teacher.tasks)}) teaches none of this "
                              f"run's tasks ({_names(student)}); set {teacher.where}.tasks to the tasks it teaches")
    plan: List[List[TaskSource]] = []
    for task, sources in zip(student, shares):
        if not sources:
            raise ConfigError(f"distill.teachers: no teacher teaches task '{task.name}'; name it in the tasks of the "
                              "teacher that predicts it (distill.teachers[i].tasks)")
        total = sum(s.weight for s in sources)
        if total <= 0:
            raise ConfigError(f"distill.teachers: the teachers of task '{task.name}' have weights summing to 0; "
                              "give one of them a positive weight")
        plan.append([TaskSource(s.teacher, s.column, s.weight / total) for s in sources])
    return plan


def assemble(outputs: Sequence[Tensor], plan: Sequence[Sequence[TaskSource]]) -> Tensor:
    """The student's teacher logits from each teacher's output.

    Args:
        outputs (Sequence[Tensor]): teacher ``k``'s logits, ``[B]`` or ``[B, T_k]``.
        plan (Sequence[Sequence[TaskSource]]): from :func:`task_plan`.

    Returns:
        Tensor: ``[B, T]`` in the student's task order (``[B]`` for one student task).
    """
    cols: List[Tensor] = []
    for sources in plan:
        col: Optional[Tensor] = None
        for s in sources:
            x = outputs[s.teacher] if s.column is None else outputs[s.teacher][:, s.column]
            x = x if s.weight == 1.0 else s.weight * x
            col = x if col is None else col + x
        assert col is not None
        cols.append(col)
    return torch.stack(cols, dim=1) if len(cols) > 1 else cols[0]
