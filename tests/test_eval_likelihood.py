"""Continuation log-likelihoods: one forward pass by hand, and the same numbers batched, packed, padded and alone."""

import pytest
import torch
import torch.nn.functional as F

from hnet import HNetConfig, HNetForCausalLM
from hnet.eval.likelihood import continuation_logprobs
from hnet.models import HNetFixedForCausalLM

from tiny_runs import HNET_MODEL, TRANSFORMER_MODEL

MODELS = {"hnet_1stage": HNET_MODEL, "transformer": TRANSFORMER_MODEL, "hnet_space": HNET_MODEL}
BOS = 254


def model_of(name: str) -> HNetForCausalLM:
    torch.manual_seed(0)
    config = HNetConfig.from_dict(MODELS[name])
    model = HNetFixedForCausalLM(config, "space") if name == "hnet_space" else HNetForCausalLM(config)
    return model.eval()


def requests() -> list[tuple[list[int], list[int]]]:
    """Contexts and continuations of many lengths, two of one total length (a plain batch), UTF-8 beyond ASCII."""
    pairs = [("To be, or not to be", ", that is the question"), ("", "Once upon a time"), ("café", " naïve"),
             ("ROMEO: But soft, what light", " breaks?"), ("ab", "cdefghijklmnopqrstuv"), ("abcdefghijklmnop", "qrstuv"),
             ("三国", "演义"), ("x" * 70, "yz")]
    return [([BOS, *c.encode()], list(t.encode())) for c, t in pairs]


@pytest.mark.parametrize("name", ["hnet_1stage", "transformer"])
def test_a_continuation_scores_the_sum_of_its_byte_logprobs_from_one_forward_pass(name):
    model = model_of(name)
    for context, continuation in requests():
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logp = F.log_softmax(model(ids[:, :-1]).logits[0].double(), dim=-1)
        targets = ids[0, len(context):]
        expected = logp[len(context) - 1:].gather(-1, targets[:, None]).sum().item()
        (got, _), = continuation_logprobs(model, [(context, continuation)], window=512)
        assert got == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_packed_and_padded_equal_one_request_at_a_time(name):
    model = model_of(name)
    alone = [continuation_logprobs(model, [r], window=512)[0] for r in requests()]
    for batch_size in (3, 8):
        for packing in (True, False):
            together = continuation_logprobs(model, requests(), window=512, batch_size=batch_size, packing=packing)
            assert [g for _, g in together] == [g for _, g in alone]
            torch.testing.assert_close(torch.tensor([lp for lp, _ in together], dtype=torch.float64),
                                       torch.tensor([lp for lp, _ in alone], dtype=torch.float64), rtol=0, atol=1e-5)


def test_a_request_longer_than_the_window_keeps_its_last_ids():
    model = model_of("hnet_1stage")
    context, continuation = [BOS, *b"a long context that will not fit " * 3], list(b"the end")
    window = 32
    kept = (context + continuation)[-(window + 1):]
    (long, _), = continuation_logprobs(model, [(context, continuation)], window=window)
    (cut, _), = continuation_logprobs(model, [(kept[:-len(continuation)], continuation)], window=window + 100)
    assert long == pytest.approx(cut, abs=1e-6)
    with pytest.raises(ValueError, match="does not fit the window"):
        continuation_logprobs(model, [([BOS], list(b"x" * 40))], window=window)


def test_greedy_flag_and_empty_continuation():
    model = model_of("transformer")
    prompt = b"To be, or not"
    greedy = model.generate([prompt], 6, temperature=0)[0]
    other = bytes([greedy[0] ^ 1]) + greedy[1:]
    results = continuation_logprobs(model, [([BOS, *prompt], list(greedy)), ([BOS, *prompt], list(other)),
                                            ([BOS, *prompt], [])], window=512)
    assert results[0][1] is True and results[1][1] is False
    assert results[2] == (0.0, True)
    assert results[0][0] > results[1][0]
