"""catdog/models/optim.py: optimizer checks, fused optimizers on CUDA, weight-decay groups."""

import math

import pytest
import torch
from omegaconf import open_dict

from catdog.errors import ConfigError
from catdog.models.module import ClassifierModule
from catdog.models.optim import check_optimizer, fused_on_cuda, optimizer_factory, param_groups
from tests.conftest import compose_train


def test_fused_optimizer_only_on_cuda_and_only_when_not_configured():
    sgd = optimizer_factory({"_target_": "torch.optim.SGD", "lr": 0.1})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fused_on_cuda(sgd, cuda) == {"fused": True}
    assert fused_on_cuda(sgd, cpu) == {}
    assert fused_on_cuda(optimizer_factory({"_target_": "torch.optim.SGD", "lr": 0.1, "foreach": False}), cuda) == {}
    assert fused_on_cuda(optimizer_factory({"_target_": "torch.optim.AdamW", "lr": 0.1}), cuda) == {"fused": True}


def test_optimizer_switch_by_target_alone_names_the_setting():
    cfg = compose_train(["model.optimizer._target_=torch.optim.AdamW"])
    with pytest.raises(ConfigError, match=r"AdamW does not accept.*momentum.*model/optimizer=adamw"):
        check_optimizer(cfg.model.optimizer)
    # Removing the SGD-only settings makes it valid, as the message says.
    cfg = compose_train(["model.optimizer._target_=torch.optim.AdamW", "~model.optimizer.momentum"])
    with open_dict(cfg):
        del cfg.model.optimizer["nesterov"]
    check_optimizer(cfg.model.optimizer)
    assert optimizer_factory(cfg.model.optimizer).func is torch.optim.AdamW


def test_no_weight_decay_on_biases_and_norm_weights():
    model = ClassifierModule(
        ["a", "b"],
        width=0.0625,
        head_hidden=8,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1, "weight_decay": 1e-3},
    )
    groups = {g["name"]: g for g in model.configure_optimizers().param_groups}
    names = {id(p): n for n, p in model.named_parameters()}

    def named(group):
        return {names[id(p)] for p in groups[group]["params"]}

    decay = named("head") | named("backbone")
    no_decay = named("head_no_decay") | named("backbone_no_decay")
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 1e-3
    bn = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert no_decay == {n for n, p in model.named_parameters() if n.endswith(".bias") or p.ndim == 1}
    assert {f"{b}.weight" for b in bn} <= no_decay
    assert all(model.get_parameter(n).ndim > 1 for n in decay)
    assert decay | no_decay == set(names.values())

    switch = ClassifierModule(
        ["a", "b"],
        width=0.0625,
        head_hidden=8,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1, "weight_decay": 1e-3},
        decay_bias_and_norm=True,
    )
    groups = switch.configure_optimizers().param_groups
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert all(g["weight_decay"] == 1e-3 for g in groups)


def test_param_groups_leave_out_empty_groups():
    lin = torch.nn.Linear(2, 2)
    groups = param_groups([("head", 0.1, lin.named_parameters()), ("backbone", 0.01, [])], weight_decay=0.1)
    assert [g["name"] for g in groups] == ["head", "head_no_decay"]
    assert math.isclose(groups[1]["lr"], 0.1)
