"""catdog/models/distillation.py: the loss, the teacher's softened targets and the distill config's checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from catdog.errors import ConfigError
from catdog.models.class_weights import weighted_cross_entropy
from catdog.models.distillation import check_distill, distillation_loss, soften, split_targets


def _batch(seed: int = 0, b: int = 6, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (b,), generator=g)
    teacher = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64) * 2, dim=1)
    return logits, labels, teacher


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_alpha_zero_is_the_plain_cross_entropy(smoothing):
    logits, labels, teacher = _batch()
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    one_hot = F.one_hot(labels, 3).double()
    for target in (labels, one_hot, 0.3 * one_hot + 0.7 / 3):
        got = distillation_loss(logits, target, soften(teacher, 2.0), 0.0, 2.0, weight, smoothing)
        want = weighted_cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(("alpha", "t"), [(1.0, 1.0), (1.0, 4.0), (0.3, 2.0)])
def test_the_gradient_is_the_analytic_one(alpha, t):
    """d/dz of (1 - a) CE + a T^2 KL(q_T || softmax(z / T)), batch mean: ((1 - a) (softmax(z) - y) + a T (softmax(z / T)
    - q_T)) / B. Float64: the two sides differ by rounding (~1e-16 relative), far inside the tolerance."""
    logits, labels, teacher = _batch(seed=1)
    z = logits.clone().requires_grad_(True)
    q_t = soften(teacher, t)
    distillation_loss(z, labels, q_t, alpha, t).backward()
    y = F.one_hot(labels, 3).double()
    b = len(labels)
    want = ((1 - alpha) * (torch.softmax(logits, 1) - y) + alpha * t * (torch.softmax(logits / t, 1) - q_t)) / b
    torch.testing.assert_close(z.grad, want, rtol=1e-12, atol=1e-14)


def test_a_student_equal_to_the_softened_teacher_pays_no_kl():
    _, labels, teacher = _batch(seed=2)
    t = 3.0
    logits = torch.log(teacher)  # softmax(logits / T) == soften(teacher, T)
    kl_only = distillation_loss(logits, labels, soften(teacher, t), 1.0, t)
    assert abs(float(kl_only)) < 1e-12


def test_soften_raises_to_the_power_one_over_t_and_keeps_zeros():
    p = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(soften(p, 1.0), p)
    want = p[0] ** 0.5 / (p[0] ** 0.5).sum()
    torch.testing.assert_close(soften(p, 2.0)[0], want)
    assert soften(p, 2.0)[1].tolist() == [1.0, 0.0, 0.0]
    flat = soften(p[:1], 100.0)
    assert float(flat.max() - flat.min()) < 0.02  # a high temperature flattens towards uniform


def test_split_targets_softens_only_the_teachers_half_and_checks_the_width():
    own = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    got = split_targets(torch.cat([own, teacher], 1), 2, 2.0)
    assert torch.equal(got[:, :2], own)
    torch.testing.assert_close(got[:, 2:], soften(teacher, 2.0))
    with pytest.raises(ValueError, match="4 values"):
        split_targets(own, 2, 2.0)
    with pytest.raises(ValueError, match="4 values"):
        split_targets(torch.tensor([0, 1]), 2, 2.0)


def test_check_distill_completes_and_refuses_bad_values():
    assert check_distill(None) is None and check_distill({"teacher": None, "alpha": 0.9}) is None
    d = check_distill({"teacher": "runs/kfold"})
    assert d == {"teacher": "runs/kfold", "alpha": 0.5, "temperature": 2.0, "tta": 0, "tta_views": "zoom"}
    assert check_distill({"teacher": ["a", "b"], "alpha": 1})["alpha"] == 1.0
    bad = [
        ({"teacher": "r", "alpha": 1.5}, "distill.alpha"),
        ({"teacher": "r", "alpha": True}, "distill.alpha"),
        ({"teacher": "r", "temperature": 0}, "distill.temperature"),
        ({"teacher": "r", "temperature": float("inf")}, "distill.temperature"),
        ({"teacher": "r", "tta": -1}, "distill.tta"),
        ({"teacher": "r", "tta_views": "spin"}, "distill.tta_views"),
        ({"teacher": []}, "distill.teacher"),
        ({"teacher": 3}, "distill.teacher"),
        ({"teacher": "r", "alhpa": 0.5}, "unknown key"),
    ]
    for value, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_distill(value)
