"""Sampling the next byte: greedy, temperature, top-k, top-p, seeds."""

import pytest
import torch

from hnet.generation.sampling import sample


def test_temperature_zero_and_top_k_1_are_greedy():
    logits = torch.randn(4, 256)
    assert torch.equal(sample(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample(logits, top_k=1), logits.argmax(-1))


def test_top_k_and_top_p_keep_only_the_most_likely():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, -1)
    g = torch.Generator().manual_seed(0)
    assert set(sample(logits, top_k=2, generator=g).tolist()) == {0, 1}
    # top_p = 0.6: 0.5 alone is not enough, 0.5 + 0.3 reaches it, so ids 0 and 1.
    assert set(sample(logits, top_p=0.6, generator=g).tolist()) == {0, 1}
    assert set(sample(logits, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample(logits, generator=g).tolist()) == {0, 1, 2, 3}


def test_a_seeded_generator_reproduces_samples():
    logits = torch.randn(8, 256)
    draw = lambda seed: sample(logits, temperature=1.3, top_p=0.9, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scales_the_distribution(temperature):
    logits = torch.log(torch.tensor([[0.7, 0.3]])).expand(20000, -1)
    ids = sample(logits, temperature=temperature, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits[0] / temperature, -1)[1].item()
    assert abs(ids.float().mean().item() - p) < 0.02
