"""CUDA graphs of the decoding step (GPU only; skipped elsewhere): the graph path chooses exactly the bytes of
the eager path, reuses its graph for a batch of the same bucket, captures anew when the cache grows, and a
step makes the host wait on nothing (CUDA's sync debug mode)."""

import pytest
import torch

from hnet.generation import Decoder, generate
from hnet.generation.decode import decode_step
from hnet.generation.sampling import Sampling
from test_generation import PROMPTS, random_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def cuda_model(name, dtype=torch.float32):
    return random_model(name).to("cuda", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["2stage", "1stage_hybrid", "isotropic_m2T1"])
def test_graphs_choose_the_eager_bytes(name, dtype):
    model = cuda_model(name, dtype)
    for options in ({"temperature": 0}, {"seed": 3, "top_k": 50, "top_p": 0.9}, {"seed": 4, "stop": [b"e", b" t"]}):
        eager = generate(model, PROMPTS[1:], 48, cuda_graphs=False, **options)
        assert generate(model, PROMPTS[1:], 48, cuda_graphs=True, **options) == eager, options
        assert generate(model, PROMPTS[1:], 48, cuda_graphs=True, read_every=5, **options) == eager, options


def test_a_graph_is_reused_for_the_same_bucket_and_captured_anew_when_the_cache_grows():
    model = cuda_model("2stage")
    decoder = Decoder(model, cuda_graphs=True)
    decoder.start([b"a", b"bb", b"ccc"])
    first = decoder.generate(16, temperature=0)
    graphed = decoder.graphed
    decoder.start([b"x", b"yy", b"z"])  # the same bucket (4), the same sampling: the same graph
    decoder.generate(16, temperature=0)
    assert decoder.graphed is graphed
    decoder.start([b"a", b"bb", b"ccc"])
    assert decoder.generate(16, temperature=0) == first
    decoder.start([b"a" * 300])  # another bucket, and room for more positions: captured anew
    decoder.generate(400, temperature=0)
    assert decoder.graphed is not graphed


@torch.no_grad()
def test_a_step_does_not_sync_with_the_host():
    model = cuda_model("1stage_hybrid", torch.bfloat16)
    decoder = Decoder(model, cuda_graphs=False)
    decoder.start(PROMPTS)
    decoder.prepare(8, top_k=20, top_p=0.9, stop=[b"\n"], seed=0)
    decode_step(model, decoder.state, Sampling(1.0, 20, 0.9), decoder.generator)  # kernels compiled, tuned
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            decode_step(model, decoder.state, Sampling(1.0, 20, 0.9), decoder.generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A tiny H-Net trained 40 steps on the bundled text: peaked logits, so greedy bytes are not ties."""
    import json

    from hnet.cli import main
    from tiny_runs import tiny_hnet

    root = tmp_path_factory.mktemp("trained_tiny")
    (root / "config.json").write_text(json.dumps(tiny_hnet(root, max_steps=40, eval_every=40, checkpoint_every=40)))
    assert main(["train", str(root / "config.json"), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.mark.parametrize("rows", [1, 16])
def test_graph_decode_equals_eager_on_a_trained_model_for_256_greedy_bytes(trained_tiny, rows, monkeypatch):
    """The issue's check: the same greedy bytes for 256 steps, and every step's logits within bf16 rounding
    (each path's logits recorded on the device by a wrapper of `emit`, which the graph captures too)."""
    import hnet.generation.decode as decode
    from hnet.generation import Decoder
    from hnet.models import load_model

    model = load_model(trained_tiny, device="cuda", dtype=torch.bfloat16)
    text = b"First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n" * 2
    prompts = [text[i % 40: i % 40 + 20 + i] for i in range(rows)]
    steps, emit = 256, decode.emit
    results = {}
    for graphs in (False, True):
        record = torch.zeros(steps + 1, rows, 256, device="cuda")  # (step, row, vocab): rows is its own bucket

        def recording_emit(state, logits, sampling, generator=None, record=record):
            record.index_copy_(0, state.count, logits[None].float())
            emit(state, logits, sampling, generator)

        monkeypatch.setattr(decode, "emit", recording_emit)
        decoder = Decoder(model, cuda_graphs=graphs)
        decoder.start(prompts)
        results[graphs] = (decoder.generate(steps, temperature=0), record[1:steps, :rows].clone())
    assert results[True][0] == results[False][0]
    assert all(len(b) == steps for b in results[True][0])
    graph_logits, eager_logits = results[True][1], results[False][1]
    scale = eager_logits.abs().amax().item()
    torch.testing.assert_close(graph_logits, eager_logits, rtol=2**-7, atol=2**-7 * scale)
