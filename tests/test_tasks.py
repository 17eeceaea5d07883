"""Multi-task runs: the ``tasks`` config (names, spaces, one-line errors) and the per-task hard loss."""

import pytest
import torch
import torch.nn.functional as F

from torchrec_kd.config import load_config
from torchrec_kd.core.tasks import hard_task_loss, is_multitask, run_tasks, task_space
from torchrec_kd.errors import ConfigError

TINY = "configs/tiny_synthetic.yaml"
TWO = "tasks=[{name: click}, {name: conversion, only_where: click}]"


def test_a_run_without_tasks_is_one_binary_label_task():
    tasks = run_tasks(load_config(TINY))
    assert [t.name for t in tasks] == ["label"] and not is_multitask(tasks)
    logits, labels = torch.randn(7), torch.randint(0, 2, (7,)).float()
    assert torch.equal(hard_task_loss(logits, labels, tasks), F.binary_cross_entropy_with_logits(logits, labels))


def test_a_task_with_a_space_counts_only_its_rows():
    tasks = run_tasks(load_config(TINY, [TWO]))
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert task_space(labels, tasks, 1).tolist() == [True, False, True, False]
    out = torch.zeros(4, 2)
    out[1, 1] = out[3, 1] = 50.0  # confidently wrong conversion logits outside the clicked rows: ignored
    loss = hard_task_loss(out, labels, tasks)
    assert loss.item() == pytest.approx(2 * F.binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1)).item())


@pytest.mark.parametrize("override,needle", [
    ("tasks=[{name: click}, {name: conversion, only_where: clik}]",
     "tasks[1].only_where: no task named 'clik'; did you mean 'click'?"),
    ("train.early_stopping.task=conversoin", "train.early_stopping.task: no task named 'conversoin'; did you mean 'conversion'?"),
    ("distill.losses=[{name: soft_bce, task: clack}]", "distill.losses[0].task: no task named 'clack'; did you mean 'click'?"),
    ("tasks=[{name: click}, {name: click}]", "tasks[0].name 'click' is empty or repeated"),
    ("tasks=[{name: click}, {name: rating, type: regression, at_least: 4}]", "is a regression task"),
    ("tasks=[{name: click}, {name: r, type: regression}, {name: c, only_where: r}]", "must name another binary task"),
])
def test_a_misspelt_or_wrong_task_is_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [TWO, override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_selection_on_a_regression_task_is_refused_on_load():
    with pytest.raises(ConfigError, match="is a regression task"):
        load_config(TINY, ["tasks=[{name: rating, type: regression}, {name: like}]"])
    with pytest.raises(ConfigError, match="is a regression task"):
        load_config(TINY, ["tasks=[{name: like}, {name: rating, type: regression}]", "train.early_stopping.task=rating"])
    load_config(TINY, ["tasks=[{name: rating, type: regression}, {name: like}]", "train.early_stopping.task=mean"])


def test_a_task_named_mean_and_an_unreported_retrieval_metric_are_refused():
    with pytest.raises(ConfigError, match="'mean' is reserved"):
        load_config(TINY, ["tasks=[{name: click}, {name: mean}]"])
    retrieval = "data.retrieval={user_features: [cat_0], item_features: [cat_1], item_id: cat_1, user_id: cat_0, "
    with pytest.raises(ConfigError, match="select_metric 'recall@30' is not reported"):
        load_config(TINY, [retrieval + "select_metric: recall@30}"])
    assert load_config(TINY, [retrieval + "select_metric: ndcg@50}"]).data.retrieval.select_metric == "ndcg@50"


def test_one_task_fingerprints_hold_no_task_keys_and_teacher_tasks_count():
    """The multi-task keys at their defaults leave a one-task run's fingerprint as it was; a teacher's tasks count."""
    from torchrec_kd.core.fingerprint import step_fingerprint

    inputs = step_fingerprint(load_config(TINY), "distilled", {"teachers": "t"})["inputs"]
    assert "task" not in inputs["train"]["early_stopping"]
    assert all(not {"task", "in_space_weight", "out_space_weight"} & term.keys() for term in inputs["distill"]["losses"])
    two = [TWO, "distill.teachers=[{checkpoint: a}, {checkpoint: b}]"]
    plain = step_fingerprint(load_config(TINY, two), "distilled", {"teachers": "t"})["digest"]
    split = step_fingerprint(load_config(TINY, [TWO, "distill.teachers=[{checkpoint: a, tasks: [click]}, "
                                                     "{checkpoint: b, tasks: [conversion]}]"]), "distilled",
                             {"teachers": "t"})["digest"]
    assert plain != split
