"""The "every N-th position" rule of `hnet.chunking.fixed`: where its boundaries fall, and that the router
it replaces keeps its parameters and gets their gradient."""

import pytest
import torch
from tiny_runs import HNET_MODEL

from hnet import HNetConfig, HNetForCausalLM
from hnet.chunking.fixed import EveryNthRouting, every_nth_boundaries, route_every


def test_every_nth_boundaries_restart_at_each_sequence():
    rows = every_nth_boundaries((2, 7), 3)
    assert rows.tolist() == [[True, False, False, True, False, False, True]] * 2
    packed = every_nth_boundaries((1, 12), 3, torch.tensor([0, 5, 12]))
    assert torch.nonzero(packed[0]).flatten().tolist() == [0, 3, 5, 8, 11]


def test_route_every_keeps_the_router_and_passes_its_gradient():
    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig.from_dict(HNET_MODEL))
    before = dict(model.named_parameters())
    route_every(model, [4.0])
    assert isinstance(model.backbone.routing_module, EveryNthRouting)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is p for n, p in before.items())

    cu = torch.tensor([0, 10, 30])
    out = model(torch.randint(0, 256, (1, 30)), cu_seqlens=cu)
    (routing,) = out.routing
    assert torch.nonzero(routing.boundary_mask[0]).flatten().tolist() == [0, 4, 8, 10, 14, 18, 22, 26]
    assert set(routing.boundary_prob[0, :, 1].tolist()) == {0.0, 1.0}  # the rule's values
    out.logits.float().logsumexp(-1).sum().backward()
    router = model.backbone.routing_module
    assert router.q_proj_layer.weight.grad.abs().sum() > 0  # straight through to the learned p
    with pytest.raises(ValueError, match="does not decode"):
        router.step(torch.zeros(1, 32), router.allocate_inference_cache(1, 8))
