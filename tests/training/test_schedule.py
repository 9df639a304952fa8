import math

import pytest
import torch

from facetrain.config import TrainConfig
from facetrain.training.optim import WarmupDecay, build_optimizer, param_groups


def schedule(**kwargs) -> WarmupDecay:
    cfg = TrainConfig(lr=1.0, **kwargs)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    return WarmupDecay(optimizer, cfg, total_steps=110, warmup_steps=10)


def test_warmup_then_cosine():
    sched = schedule(schedule="cosine", min_lr=0.0)
    assert sched.lr_at(0) == pytest.approx(0.1) and sched.lr_at(9) == pytest.approx(1.0)
    assert sched.lr_at(60) == pytest.approx(0.5)  # half-way through the decay
    assert sched.lr_at(110) == pytest.approx(0.0, abs=1e-12)


def test_poly_decay_and_floor():
    sched = schedule(schedule="poly", poly_power=2.0, min_lr=0.1)
    assert sched.lr_at(60) == pytest.approx(0.1 + 0.9 * 0.25)
    assert sched.lr_at(110) == pytest.approx(0.1)


def test_scheduler_sets_the_optimizer_lr_every_step_and_round_trips():
    sched = schedule(schedule="cosine")
    for _ in range(30):
        sched.step()
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(sched.lr_at(30))
    other = schedule(schedule="cosine")
    other.load_state_dict(sched.state_dict())
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(sched.lr_at(30))


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    decay, no_decay = param_groups([model], 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    optimizer = build_optimizer(TrainConfig(optimizer="adamw", lr=1e-3), [model])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [TrainConfig().weight_decay, 0.0]
    assert math.isclose(optimizer.param_groups[0]["lr"], 1e-3)
