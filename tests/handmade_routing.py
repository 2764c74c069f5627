"""A tiny H-Net whose routing is set by hand, so that its boundaries are known before it runs.

Every mixer's output projection is zero, so each encoder returns RMSNorm(its input): the byte
embedding, a one-hot of the byte's class (whitespace or BOS / other / upper-case letter). The routing
weights then give, exactly through the real forward pass:
  stage 1: p = 1 at a byte after whitespace or BOS, else (1 - 0.6) / 2 = 0.2;
  stage 2: p = 1 at a stage-1 chunk that begins with an upper-case letter, else (1 - 0.8) / 2 = 0.1.
"""

import torch

from hnet import HNetConfig, HNetForCausalLM

WS, OTHER, UPPER = 0, 1, 2  # embedding dimension of each byte class
BOS = 254
P1_OTHER, P2_OTHER = 0.2, 0.1

LAYOUTS = {1: ["m1", ["m1"], "m1"], 2: ["m1", ["m1", ["m1"], "m1"], "m1"]}


def byte_class(b: int) -> int:
    if b in b" \t\n\r\x0b\x0c" or b == BOS:
        return WS
    return UPPER if 65 <= b <= 90 else OTHER


def _routing_weights(per_class_q, per_class_k, d):
    """Linear weights mapping the one-hot of class c to the 2-d vector given for c (q and k)."""
    q, k = torch.zeros(d, d), torch.zeros(d, d)
    for c in (WS, OTHER, UPPER):
        q[:2, c] = torch.tensor(per_class_q[c])
        k[:2, c] = torch.tensor(per_class_k[c])
    return q, k


def handmade_model(routing_stages: int = 2) -> HNetForCausalLM:
    d = 64
    config = HNetConfig.from_dict({
        "arch_layout": LAYOUTS[routing_stages], "d_model": [d] * (routing_stages + 1),
        "d_intermediate": [0] * (routing_stages + 1),
        "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 16, "expand": 2},
    })
    torch.manual_seed(0)
    model = HNetForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("out_proj.weight"):
                p.zero_()
        model.embeddings.weight.zero_()
        for b in range(256):
            model.embeddings.weight[b, byte_class(b)] = 1.0
        # stage 1: q after whitespace is opposite to every k (cos -1); after anything else cos 0.6
        q, k = _routing_weights({WS: (-1, 0), OTHER: (0.6, 0.8), UPPER: (0.6, 0.8)},
                                {WS: (1, 0), OTHER: (1, 0), UPPER: (1, 0)}, d)
        model.backbone.routing_module.q_proj_layer.weight.copy_(q)
        model.backbone.routing_module.k_proj_layer.weight.copy_(k)
        if routing_stages == 2:
            # stage 2: k of an upper-case chunk is opposite to every q (cos -1); else cos 0.8
            q, k = _routing_weights({WS: (1, 0), OTHER: (1, 0), UPPER: (1, 0)},
                                    {WS: (0.8, 0.6), OTHER: (0.8, 0.6), UPPER: (-1, 0)}, d)
            model.backbone.main_network.routing_module.q_proj_layer.weight.copy_(q)
            model.backbone.main_network.routing_module.k_proj_layer.weight.copy_(k)
    return model


def expected_boundaries(text: bytes) -> tuple[list[int], list[int]]:
    """The rule above applied to the text directly: (stage-1 starts, stage-2 starts)."""
    prev = [BOS, *text[:-1]]
    stage1 = [i for i in range(len(text)) if byte_class(prev[i]) == WS]
    stage2 = [i for i in stage1 if byte_class(text[i]) == UPPER]
    return stage1, stage2
