"""model.class_weights: checks, what auto stands for, and one normalization of the weighted loss for every kind of
target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from catdog.errors import ConfigError, DatasetError
from catdog.models.class_weights import check_class_weights, resolve_class_weights, weighted_cross_entropy
from catdog.models.module import ClassifierModule

# The losses below are float32 sums of a few dozen terms of order 1: their rounding error is a few times 1e-7
# relative, so 1e-5 separates a different normalization (tens of percent) from rounding.
REL = 1e-5


def test_auto_is_the_inverse_class_frequency_and_one_for_a_balanced_set():
    assert resolve_class_weights("auto", [0] * 90 + [1] * 10, ["cat", "dog"]) == pytest.approx([100 / 180, 100 / 20])
    assert resolve_class_weights("auto", [0, 1, 2, 0, 1, 2], ["a", "b", "c"]) == [1.0, 1.0, 1.0]
    assert resolve_class_weights([1, 3], None, ["cat", "dog"]) == [1.0, 3.0]
    assert resolve_class_weights(None, None, ["cat", "dog"]) is None


def test_wrong_weights_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"2 weight\(s\), but the data has 3 classes \['a', 'b', 'c'\]"):
        resolve_class_weights([1.0, 2.0], None, ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"no training image of class\(es\) \['dog'\]"):
        resolve_class_weights("auto", [0, 0], ["cat", "dog"])
    for bad in ("balanced", [1, -1], [], [True, 1.0]):
        with pytest.raises(ConfigError, match="model.class_weights must be null, auto or a list"):
            check_class_weights(bad)


def test_auto_with_the_balanced_sampler_is_refused_and_explicit_weights_are_not():
    with pytest.raises(ConfigError, match="model.class_weights=auto with data.sampler=balanced corrects"):
        check_class_weights("auto", "balanced")
    check_class_weights([1.0, 3.0], "balanced")
    check_class_weights("auto", None)


def _reference(logits, target, weight, smoothing):
    """The definition in float64: image i weighs sum_c w_c t_ic; its loss spreads the smoothed target."""
    logits, target, weight = logits.double(), target.double(), weight.double()
    k = logits.shape[1]
    spread = target * (1 - smoothing) + smoothing / k
    per_image = -(F.log_softmax(logits, 1) * spread * weight).sum(1)
    return float(per_image.sum() / (target @ weight).sum())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_hard_one_hot_mixed_and_soft_targets_share_one_normalization(smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(24, 3, generator=g) * 2
    labels = torch.randint(0, 3, (24,), generator=g)
    weight = torch.tensor([0.5, 5.0, 1.0])
    one_hot = F.one_hot(labels, 3).float()
    hard = float(weighted_cross_entropy(logits, labels, weight, smoothing))
    assert float(weighted_cross_entropy(logits, one_hot, weight, smoothing)) == pytest.approx(hard, rel=REL)
    assert hard == pytest.approx(_reference(logits, one_hot, weight, smoothing), rel=REL)
    lam = 0.7  # a MixUp batch: each image's target mixes its label with the next image's
    mixed = lam * one_hot + (1 - lam) * one_hot.roll(1, 0)
    torch.manual_seed(0)
    soft = torch.distributions.Dirichlet(torch.ones(3)).sample((24,))
    for target in (mixed, soft):
        loss = float(weighted_cross_entropy(logits, target, weight, smoothing))
        assert loss == pytest.approx(_reference(logits, target, weight, smoothing), rel=REL)
    # without weights it is PyTorch's loss for either kind of target
    assert float(weighted_cross_entropy(logits, soft, None, smoothing)) == pytest.approx(
        float(F.cross_entropy(logits, soft, label_smoothing=smoothing)), rel=REL
    )


def test_the_training_step_scores_a_batch_alike_as_labels_and_as_one_hot_targets():
    """A run with class weights whose batches are sometimes mixed (model.mixing.prob < 1) or carry soft
    pseudo-label targets sees hard and probability targets: the same images and labels give the same loss."""
    torch.manual_seed(0)
    module = ClassifierModule(
        ["cat", "dog"], width=0.0625, head_hidden=8, dropout=0.0, class_weights=[100 / 180, 100 / 20],
        channels_last=False,
    ).train()  # fmt: skip
    module.log = lambda *args, **kwargs: None
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 5)  # weights summing to 27.8, not to the batch size (10)
    hard = float(module.training_step((x, y, torch.arange(10)), 0).detach())
    one_hot = float(module.training_step((x, F.one_hot(y, 2).float(), torch.arange(10)), 0).detach())
    assert one_hot == pytest.approx(hard, rel=REL)
