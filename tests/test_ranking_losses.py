"""Ranking distillation: hand-computed values, invariances, empty cases, group ids."""

import math

import pytest
import torch

from torchrec_kd.losses.ranking import group_ids_from_jagged, listwise_rank_distill, pairwise_rank_distill


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_listwise_equals_hand_computed_value():
    s = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5])
    t = torch.tensor([1.0, 0.0, 0.0, 2.0, 3.0])
    groups = torch.tensor([4, 4, 4, 8, 8])
    for temp in (1.0, 2.0):
        ces = []
        for idx in ([0, 1, 2], [3, 4]):
            p = _softmax([t[i].item() / temp for i in idx])
            q = _softmax([s[i].item() / temp for i in idx])
            ces.append(-sum(pi * math.log(qi) for pi, qi in zip(p, q)))
        want = sum(ces) / 2 * temp * temp
        assert listwise_rank_distill(s, t, groups, temp).item() == pytest.approx(want, rel=1e-6)


def test_pairwise_equals_hand_computed_value_and_is_order_invariant():
    s, t, groups = torch.tensor([0.5, -0.5, 2.0]), torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1, 1, 2])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = lambda z, y: -(y * math.log(sig(z)) + (1 - y) * math.log(1 - sig(z)))  # noqa: E731
    temp = 2.0
    want = (bce(1.0 / temp, sig(-1.0 / temp)) + bce(-1.0 / temp, sig(1.0 / temp))) / 2 * temp * temp
    assert pairwise_rank_distill(s, t, groups, temp).item() == pytest.approx(want, rel=1e-6)
    perm = torch.tensor([2, 0, 1])
    assert pairwise_rank_distill(s[perm], t[perm], groups[perm], temp).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("fn", [pairwise_rank_distill, listwise_rank_distill])
def test_singletons_give_a_connected_zero_and_teacher_order_is_a_minimum(fn):
    s = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    value = fn(s, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 2, 3]))
    value.backward()
    assert value.item() == 0.0 and torch.equal(s.grad, torch.zeros(3))
    t = torch.tensor([1.0, 2.0, -1.0, 0.5], requires_grad=True)
    s = (t.detach() + torch.tensor([3.0, 3.0, -1.0, -1.0])).requires_grad_(True)  # teacher + a per-group constant
    fn(s, t, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.allclose(s.grad, torch.zeros(4), atol=1e-6) and t.grad is None


def test_group_ids_from_jagged():
    ids = group_ids_from_jagged(torch.tensor([7, 8, 9, 7]), torch.tensor([2, 0, 1, 1]))
    assert ids.tolist() == [7, -2, 9, 7]
