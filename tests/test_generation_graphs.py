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
