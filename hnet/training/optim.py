"""The optimizer and learning-rate schedule of a run: one builder for `hnet train` and the benchmarks."""

from __future__ import annotations

import torch

from hnet.training.schedule import lr_multiplier

ROUTER = "routing_module."  # the official name of each stage's router (its q and k projections)


def router_split(groups: list[dict], router_lr_multiplier: float) -> list[dict]:
    """The model's parameter groups with the routers' parameters in groups of their own (flag "router"),
    their lr scaled by `router_lr_multiplier`."""
    out = []
    for group in groups:
        is_router = [ROUTER in name for name in group["names"]]
        for router in (False, True):
            params = [(p, n) for p, n, r in zip(group["params"], group["names"], is_router) if r == router]
            if not params:
                continue
            scale = router_lr_multiplier if router else 1.0
            out.append(dict(group, params=[p for p, _ in params], names=[n for _, n in params], router=router,
                            lr=group["lr"] * scale, lr_multiplier=group["lr_multiplier"] * scale))
    return out


def build_optimizer(model, tc) -> torch.optim.AdamW:
    """AdamW over `model.param_groups` (per-stage lr multipliers, no decay on biases and norms), the
    routers in groups of their own when their lr differs (`tc.router_lr_multiplier`, `router_warmup_steps`;
    otherwise the groups, and so the optimizer's state, are those of earlier runs). Fused on GPU (a few
    kernels for all parameters; the model may still be on the CPU, accelerate moves it); on CPU the plain
    per-parameter loop. Both are elementwise: the same result on any number of processes."""
    groups = model.param_groups(tc.lr, tc.weight_decay, tc.lr_multipliers)
    if tc.router_lr_multiplier != 1.0 or tc.router_warmup_steps:
        groups = router_split(groups, tc.router_lr_multiplier)
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), fused=torch.cuda.is_available(), foreach=False)


def build_schedule(optimizer, tc) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's schedule (`lr_multiplier`) on every group; the routers' groups also ramp up linearly
    over `tc.router_warmup_steps`."""
    def base(step):
        return lr_multiplier(step, tc.max_steps, tc.schedule, tc.warmup_fraction, tc.decay_fraction, tc.min_lr_fraction)

    def router(step):
        return base(step) * min(1.0, (step + 1) / tc.router_warmup_steps) if tc.router_warmup_steps else base(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [router if g.get("router") else base for g in optimizer.param_groups])


def ratio_loss_scale(step: int, tc) -> float:
    """The ratio loss's weight at `step` (counted from 0) relative to its full value: a linear ramp over
    `tc.ratio_loss_warmup_steps`."""
    return min(1.0, (step + 1) / tc.ratio_loss_warmup_steps) if tc.ratio_loss_warmup_steps else 1.0
