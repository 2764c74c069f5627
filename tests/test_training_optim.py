"""The optimizer and schedule builders: per-stage and router learning rates, and the warmups."""

import pytest
from tiny_runs import tiny_hnet

from hnet.config import RunConfig
from hnet.training import model_for_run
from hnet.training.optim import build_optimizer, build_schedule, ratio_loss_scale


def setup(tmp_path, **train):
    config = RunConfig.from_dict(tiny_hnet(tmp_path, lr_multipliers=[2.0, 1.0], warmup_fraction=0.0, **train))
    model = model_for_run(config)
    optimizer = build_optimizer(model, config.train)
    return config.train, optimizer, build_schedule(optimizer, config.train)


def test_router_groups_only_when_their_lr_differs(tmp_path):
    tc, optimizer, _ = setup(tmp_path)
    assert not any("router" in g for g in optimizer.param_groups)  # the groups of earlier runs
    tc, optimizer, _ = setup(tmp_path, router_lr_multiplier=0.25)
    routers = [g for g in optimizer.param_groups if g["router"]]
    assert routers and all(n.startswith("backbone.routing_module.") for g in routers for n in g["names"])
    assert all(g["lr"] == pytest.approx(tc.lr * 2.0 * 0.25) for g in routers)  # stage 0's multiplier, then the router's
    others = [g for g in optimizer.param_groups if not g["router"]]
    assert not any("routing_module" in n for g in others for n in g["names"])
    assert sorted({round(g["lr"] / tc.lr, 9) for g in others}) == [1.0, 2.0]


def test_router_warmup_ramps_only_the_routers(tmp_path):
    tc, optimizer, schedule = setup(tmp_path, router_warmup_steps=4, max_steps=100)
    lrs = []
    for _ in range(5):
        lrs.append({g["router"]: g["lr"] / (tc.lr * g["lr_multiplier"]) for g in optimizer.param_groups})
        optimizer.step()
        schedule.step()
    assert [x[True] for x in lrs] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert [x[False] for x in lrs] == pytest.approx([1.0] * 5)


def test_ratio_loss_warmup(tmp_path):
    tc = RunConfig.from_dict(tiny_hnet(tmp_path, ratio_loss_warmup_steps=4)).train
    assert [ratio_loss_scale(s, tc) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    tc.ratio_loss_warmup_steps = 0
    assert ratio_loss_scale(0, tc) == 1.0


def test_the_step_scales_the_ratio_loss(tmp_path):
    """forward_loss adds ratio_scale x alpha x the ratio loss of each stage to the cross-entropy."""
    import torch

    from hnet.training import Objective, forward_loss

    config = RunConfig.from_dict(tiny_hnet(tmp_path, ratio_loss_weight=0.2))
    torch.manual_seed(0)
    model = model_for_run(config)
    ids = torch.randint(0, 256, (2, 33))
    batch = {"input_ids": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous()}
    objective = Objective.of(config.train, 1)
    for scale in (1.0, 0.25, 0.0):
        out = forward_loss(model, batch, objective, ratio_scale=scale)
        assert out.loss.item() == pytest.approx(out.ce.item() + scale * 0.2 * out.ratio[0].item(), rel=1e-6)
