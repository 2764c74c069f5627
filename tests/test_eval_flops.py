"""FLOPs per byte, counted per layer, against torch's FlopCounterMode on a real forward."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from hnet import HNetConfig, HNetForCausalLM
from hnet.eval.flops import flops_breakdown, flops_per_byte
from hnet.training.metrics import bytes_per_chunk

SSM = {"chunk_size": 32, "d_conv": 4, "d_state": 16, "expand": 2}
CONFIGS = {
    # d_intermediate 300 is not a multiple of 128: the count must round it as SwiGLU does.
    "transformer": {"arch_layout": ["T3"], "d_model": [128], "d_intermediate": [300],
                    "attn_cfg": {"num_heads": [4], "rotary_emb_dim": [16], "window_size": [-1]}},
    "mamba2": {"arch_layout": ["m3"], "d_model": [128], "d_intermediate": [0], "ssm_cfg": SSM},
    "hnet": {"arch_layout": ["m2", ["T2"], "m2"], "d_model": [128, 192], "d_intermediate": [0, 300], "ssm_cfg": SSM,
             "attn_cfg": {"num_heads": [4, 4], "rotary_emb_dim": [16, 16], "window_size": [-1, -1]}},
    "hnet_2stage": {"arch_layout": ["m1", ["m1", ["T1"], "m1"], "m1"], "d_model": [64, 96, 128],
                    "d_intermediate": [0, 0, 256], "ssm_cfg": SSM,
                    "attn_cfg": {"num_heads": [2, 2, 2], "rotary_emb_dim": [16, 16, 16], "window_size": [-1, -1, -1]}},
}


# The count and the counter differ by 2e-4 or less, by 1.6% for the 2-stage H-Net. Leaving out the
# routing term (q, k, residual projections and the dechunk) would miss 5.4% (1 stage) and 13% (2 stages).
TOLERANCE = {"hnet_2stage": 0.02}


@pytest.mark.parametrize("name", CONFIGS)
def test_counted_flops_match_flop_counter_mode(name):
    # Imported here: it imports triton, which must not happen before test_triton_kernels sets up the interpreter.
    from torch.utils.flop_counter import FlopCounterMode

    config = HNetConfig.from_dict(CONFIGS[name])
    torch.manual_seed(0)
    model = HNetForCausalLM(config).eval()
    ids = torch.randint(0, 256, (1, 256))
    # The math attention backend is made of matrix products the counter sees (the CPU kernel is not counted).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(ids)
    chunks = bytes_per_chunk([ids.numel()] + [r.boundary_mask.sum().item() for r in out.routing])
    counted = flops_per_byte(config, ids.shape[1], chunks) * ids.numel()
    assert counted == pytest.approx(counter.get_total_flops(), rel=TOLERANCE.get(name, 1e-3))


def test_breakdown_scales_inner_stages_and_bpe_tokens():
    config = HNetConfig.from_dict(CONFIGS["hnet"])
    at_4 = flops_breakdown(config, 1024, [4.0])
    at_8 = flops_breakdown(config, 1024, [8.0])
    assert at_8["mlp"] < at_4["mlp"] and at_8["head"] == at_4["head"]  # the MLPs are all in the main network
    transformer = HNetConfig.from_dict(CONFIGS["transformer"])
    assert flops_per_byte(transformer, 256, (), bytes_per_token=4.0) == pytest.approx(flops_per_byte(transformer, 256) / 4)
    with pytest.raises(ValueError, match="bytes_per_chunk"):
        flops_per_byte(config, 1024)


def test_mfu_and_peak_by_device_name():
    import math

    from hnet.eval.flops import mfu, peak_tflops

    # 1 GFLOP per byte forward, 3 GFLOP per byte trained, at 1e5 bytes/s: 3e14 FLOP/s of a 1000 TFLOP/s peak
    assert mfu(1e9, 1e5, 1000.0) == pytest.approx(0.3)
    assert peak_tflops("NVIDIA H100 80GB HBM3") == peak_tflops("NVIDIA H200") == 989.0
    assert math.isnan(peak_tflops("NVIDIA A100-SXM4-80GB")) and math.isnan(peak_tflops("cpu"))
