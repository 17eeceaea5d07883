"""Distillation loss terms and their registry: values, weighting, gradients, errors."""

import math
from typing import List

import pytest
import torch

from torchrec_kd.config import LossTermConfig
from torchrec_kd.losses import LOSSES, KDLoss, WeightedKDLoss, build_loss

S = [0.5, -1.0, 2.0]
T = [1.0, -0.5, 3.0]
Y = [1.0, 0.0, 1.0]
S2 = [[1.0, 2.0, 0.0], [0.5, -0.5, 1.0]]
T2 = [[2.0, 0.0, -1.0], [0.0, 1.5, 0.5]]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(z: float, y: float) -> float:
    """-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], written out."""
    return -(y * math.log(sig(z)) + (1 - y) * math.log(1 - sig(z)))


def softmax(xs: List[float]) -> List[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def term(name: str, temperature: float = 1.0) -> KDLoss:
    return LOSSES[name](temperature=temperature)


def tensors(*rows):
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


def test_registry_has_builtin_terms():
    assert {"hard_bce", "soft_bce", "logit_mse", "kl"} <= set(LOSSES)


def test_hard_bce_value():
    s, t, y = tensors(S, T, Y)
    expected = sum(bce(z, l) for z, l in zip(S, Y)) / 3
    assert term("hard_bce")(s, t, y).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_soft_bce_value(temp):
    s, t, y = tensors(S, T, Y)
    expected = temp**2 * sum(bce(z / temp, sig(u / temp)) for z, u in zip(S, T)) / 3
    assert term("soft_bce", temp)(s, t, y).item() == pytest.approx(expected, rel=1e-12)


def test_logit_mse_value():
    s, t, y = tensors(S, T, Y)
    expected = sum((a - b) ** 2 for a, b in zip(S, T)) / 3
    assert term("logit_mse")(s, t, y).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_kl_multiclass_value(temp):
    s, t = tensors(S2, T2)
    y = torch.tensor([1, 0])
    expected = 0.0
    for srow, trow in zip(S2, T2):
        p = softmax([v / temp for v in trow])
        q = softmax([v / temp for v in srow])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 2 * temp**2  # batchmean, Hinton scaling
    assert term("kl", temp)(s, t, y).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_kl_binary_value(temp):
    s, t, y = tensors(S, T, Y)
    expected = 0.0
    for z, u in zip(S, T):
        p, q = sig(u / temp), sig(z / temp)
        expected += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    expected = expected / 3 * temp**2
    assert term("kl", temp)(s, t, y).item() == pytest.approx(expected, rel=1e-12)


def test_kl_is_zero_when_student_matches_teacher():
    for s in tensors(S, S2):
        assert term("kl", 2.0)(s, s.clone(), torch.zeros(s.shape[0])).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_bce_equals_hard_bce_for_saturated_teacher():
    s, y = tensors(S, Y)
    teacher = (y * 2 - 1) * 60.0  # sigmoid(+-60) is 0/1 to double precision
    assert term("soft_bce")(s, teacher, y).item() == pytest.approx(term("hard_bce")(s, teacher, y).item(), rel=1e-12)


def test_soft_bce_temperature_scaling():
    # soft_bce at T on (s, t) == T**2 * soft_bce at T=1 on (s/T, t/T)
    s, t, y = tensors(S, T, Y)
    for temp in (0.5, 2.0, 4.0):
        got = term("soft_bce", temp)(s, t, y).item()
        assert got == pytest.approx(temp**2 * term("soft_bce")(s / temp, t / temp, y).item(), rel=1e-12)


def test_weighted_sum_equals_weighted_components():
    cfgs = [LossTermConfig("hard_bce", 0.3), LossTermConfig("soft_bce", 0.5, 2.0),
            LossTermConfig("logit_mse", 0.2), LossTermConfig("kl", 0.7, 3.0), LossTermConfig("soft_bce", 0.1, 1.0)]
    loss = build_loss(cfgs)
    s, t, y = tensors(S, T, Y)
    comps = loss.components(s, t, y)
    assert list(comps) == ["hard_bce", "soft_bce", "logit_mse", "kl", "soft_bce_2"]
    expected = sum(c.weight * v.item() for c, v in zip(cfgs, comps.values()))
    assert loss(s, t, y).item() == pytest.approx(expected, rel=1e-12)
    assert comps["soft_bce"].item() != pytest.approx(comps["soft_bce_2"].item())  # temperatures kept apart


def _loss_and_grad(loss: WeightedKDLoss):
    s, t, y = tensors(S, T, Y)
    s.requires_grad_(True)
    value = loss(s, t, y)
    value.backward()
    return value.detach(), s.grad


def test_soft_weight_to_zero_recovers_hard_loss():
    hard, hard_grad = _loss_and_grad(build_loss([LossTermConfig("hard_bce", 1.0)]))
    s, t, y = tensors(S, T, Y)
    soft = term("soft_bce", 2.0)(s, t, y)
    for w in (1e-1, 1e-3, 1e-6):
        value, _ = _loss_and_grad(build_loss([LossTermConfig("hard_bce", 1.0), LossTermConfig("soft_bce", w, 2.0)]))
        assert (value - hard).item() == pytest.approx(w * soft.item(), rel=1e-9)
    value, grad = _loss_and_grad(build_loss([LossTermConfig("hard_bce", 1.0), LossTermConfig("soft_bce", 0.0, 2.0)]))
    assert torch.equal(value, hard)
    assert torch.equal(grad, hard_grad)


class _Boom(KDLoss):
    def forward(self, student, teacher, labels):
        raise AssertionError("a zero-weight term was evaluated")


def test_zero_weight_term_is_not_evaluated(monkeypatch):
    monkeypatch.setitem(LOSSES, "_boom", _Boom)
    loss = build_loss([LossTermConfig("hard_bce", 1.0), LossTermConfig("_boom", 0.0)])
    s, t, y = tensors(S, T, Y)
    loss(s, t, y)
    with pytest.raises(AssertionError, match="zero-weight"):
        loss.components(s, t, y)  # components does evaluate every term


def test_all_zero_weights_still_give_a_graph_connected_zero():
    loss = build_loss([LossTermConfig("soft_bce", 0.0)])
    s, t, y = tensors(S, T, Y)
    s.requires_grad_(True)
    value = loss(s, t, y)
    assert value.requires_grad and value.item() == 0.0
    value.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


# hard_bce is defined for binary heads only
@pytest.mark.parametrize("name,shape", [("hard_bce", "binary"), ("soft_bce", "binary"), ("logit_mse", "binary"),
                                        ("kl", "binary"), ("soft_bce", "multiclass"), ("logit_mse", "multiclass"),
                                        ("kl", "multiclass")])
def test_no_gradient_into_teacher(name, shape):
    s, t = tensors(S, T) if shape == "binary" else tensors(S2, T2)
    y = torch.tensor(Y, dtype=torch.float64) if shape == "binary" else torch.tensor([1, 0])
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = build_loss([LossTermConfig(name, 1.0, 2.0)])
    loss(s, t, y).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None or torch.count_nonzero(t.grad) == 0


def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError) as err:
        build_loss([LossTermConfig("hard_bce"), LossTermConfig("sof_bce")])
    msg = str(err.value)
    assert "'sof_bce'" in msg
    assert "did you mean 'soft_bce'?" in msg
    assert all(name in msg for name in ("hard_bce", "soft_bce", "logit_mse", "kl"))


@pytest.mark.parametrize("temp", [0.0, -1.0, float("nan")])
def test_bad_temperature_names_the_term(temp):
    with pytest.raises(ValueError, match="'kl'.*temperature"):
        build_loss([LossTermConfig("kl", 1.0, temp)])


def test_negative_weight_rejected():
    with pytest.raises(ValueError, match="'soft_bce'.*weight"):
        build_loss([LossTermConfig("soft_bce", -0.5)])


def test_empty_term_list_rejected():
    with pytest.raises(ValueError, match="no loss terms"):
        build_loss([])


def test_float32_forward_and_grad():
    # The training loop runs float32; every term must give a finite scalar and gradient.
    s = torch.tensor(S, requires_grad=True)
    loss = build_loss([LossTermConfig(n, 0.25, 2.0) for n in ("hard_bce", "soft_bce", "logit_mse", "kl")])
    value = loss(s, torch.tensor(T), torch.tensor(Y))
    value.backward()
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(s.grad).all()
