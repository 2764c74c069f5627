"""Our H-Net against the official implementation (goombalab/hnet) on the same bytes and the same weights:
forward and forward+backward time, peak memory, and whether logits and boundary decisions agree.

    python benchmarks/official_side_by_side.py                    # .ref/configs/hnet_{1,2}stage_L.json, CUDA, bf16
    python benchmarks/official_side_by_side.py --config .ref/configs/hnet_1stage_L.json --unfused
    TRITON_INTERPRET=1 python benchmarks/official_side_by_side.py --smoke   # a tiny model on CPU, fp32: the code path

The official code is not part of this repository, and no test needs it. Fetch it into the ignored .official/
(from the repository root; the commits ../shared/reference/README.md's goldens come from):

    mkdir -p .official && cd .official
    git clone https://github.com/goombalab/hnet && git -C hnet checkout 3673fe1217ebeb0d1438c7c71d58d32bdd190ec2
    git clone https://github.com/state-spaces/mamba && git -C mamba checkout a6a1dae6efbf804c9944a0c2282b437deb4886d8
    # optional: flash-attention's Triton RMSNorm and rotary kernels and its SwiGLU, used as they are
    git clone --depth 1 --branch v2.8.0.post2 https://github.com/Dao-AILab/flash-attention

Only Python files are read from there: hnet's package, mamba_ssm's Mamba2 module and Triton kernels (its
__init__, which loads compiled CUDA extensions, is not run) and flash-attention's ops. The compiled entry
points the official code calls are replaced by plain PyTorch stand-ins, listed with the table, unless a real
build is installed (flash_attn with flash_attn_2_cuda, causal_conv1d with causal_conv1d_cuda):
- causal_conv1d (causal_conv1d_cuda's forward and backward behind the package's functions): the convolution
  in float32, as the CUDA kernel computes it (`hnet.ops.conv1d`'s reference on float32 copies). Its time
  counts in the official rows, and it is slower than the CUDA kernel it stands for.
- flash_attn's flash_attn_*_func (flash_attn_2_cuda): torch's varlen flash attention on CUDA in 16 bits (the
  kernel our model calls), else SDPA per sequence; the decoding entry point is not needed here.
- flash_attn's RMSNorm, rotary and SwiGLU: flash-attention's own files where fetched, else PyTorch.
- GenerationMixin and optree (inference only): an empty class, torch's pytree.

Both models are built in bf16 (fp32 on CPU) as the official generate.py builds them (residual_proj and D stay
fp32 in both), the official one initialised by its init_weights and its state dict copied into ours by key
name. Input: the rows of `hnet.eval.timing.text_batch` (documents of 2048 bytes), packed, so each document is
its own sequence; the official backbone is called on the packed bytes as ../shared/reference/README.md
section 5.2 does. Forward: no gradient. Forward+backward: cross-entropy + 0.03 x the ratio loss per routing
stage (the official `load_balancing_loss`, our `ratio_loss`; N = 6, or 3 per stage for two), no optimizer.
Agreement is read on the forward: logits' largest difference and relative norm, and boundary decisions that
differ per stage (in bf16 a p within rounding of 0.5 may flip; after a flip the stages' lengths may differ).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hnet import HNetConfig, HNetForCausalLM
from hnet.chunking.ratio_loss import ratio_loss
from hnet.config import default_ratio_targets
from hnet.constants import IGNORE_INDEX
from hnet.eval.flops import device_info
from hnet.eval.timing import DOC_BYTES, bench, environment, fitting, load_model_config, peak_gib, text_batch
from hnet.layers.attention import _VARLEN_WINDOW, varlen_attn
from hnet.ops.conv1d import causal_conv1d
from hnet.ops.dispatch import kernel_path
from hnet.ops.packed import positions_in_sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [".ref/configs/hnet_1stage_L.json", ".ref/configs/hnet_2stage_L.json"]
SMOKE_CONFIG = REPO / ".." / "shared" / "reference" / "golden" / "tiny_1stage" / "config.json"
RATIO_WEIGHT = 0.03


# ---- stand-ins for the compiled entry points --------------------------------------------------------------

def conv_fwd(x, weight, bias, seq_idx, initial_states, final_states_out, silu_activation):
    """causal_conv1d_fwd_function: x (b, d, l) -> (b, d, l), float32 inside."""
    if initial_states is not None or final_states_out is not None:
        raise NotImplementedError("the stand-in convolution takes no initial or final states")
    out = causal_conv1d(x.transpose(1, 2).float(), weight.float(), None if bias is None else bias.float(), seq_idx,
                        "silu" if silu_activation else None)
    return out.to(x.dtype).transpose(1, 2)


def conv_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, return_dinitial_states,
             silu_activation):
    """causal_conv1d_bwd_function: (dx, dweight, dbias, None), dx written into the given one if any."""
    if initial_states is not None or return_dinitial_states:
        raise NotImplementedError("the stand-in convolution takes no initial states")
    with torch.enable_grad():
        leaves = [t.detach().float().requires_grad_() for t in (x.transpose(1, 2), weight)]
        leaves.append(bias.detach().float().requires_grad_() if bias is not None else None)
        out = causal_conv1d(leaves[0], leaves[1], leaves[2], seq_idx, "silu" if silu_activation else None)
        wanted = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(out, wanted, dout.transpose(1, 2).float())
    dx_new = grads[0].transpose(1, 2).to(x.dtype)
    dx = dx_new if dx is None else dx.copy_(dx_new)
    return dx, grads[1].to(weight.dtype), grads[2].to(bias.dtype) if bias is not None else None, None


def conv_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
            final_states_out=None, activation=None):
    """causal_conv1d_fn: x (b, d, l), differentiable (only the inference path of Mamba2 calls it)."""
    return causal_conv1d(x.transpose(1, 2), weight, bias, seq_idx, activation if activation else None).transpose(1, 2)


def conv_not_needed(*args, **kwargs):
    raise NotImplementedError("decoding is not benchmarked: no stand-in for this causal_conv1d entry point")


def _attend(q, k, v, causal: bool, window: int, scale):
    """One sequence: q (lq, h, d), k and v (lk, h, d); the bottom-right-aligned causal mask of flash-attn, and a
    left window of `window` keys (-1: none)."""
    lq, lk = q.shape[0], k.shape[0]
    i = torch.arange(lq, device=q.device)[:, None] + (lk - lq)
    j = torch.arange(lk, device=q.device)[None, :]
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= j <= i
    if window >= 0:
        allowed &= j >= i - window
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed,
                                         scale=scale)
    return out.transpose(0, 1)


def _varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_size):
    window = window_size[0]
    # as hnet/layers/attention.py: torch's varlen attention where it takes the window (or none is asked)
    if varlen_attn is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and causal \
            and (window < 0 or _VARLEN_WINDOW):
        cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)
        if _VARLEN_WINDOW:  # torch's window: keys i - left .. i + right (left -1: causal, no window)
            return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=(window, 0))
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=True, scale=scale)
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    return torch.cat([_attend(q[a:b], k[c:e], v[c:e], causal, window, scale)
                      for a, b, c, e in zip(bounds_q[:-1], bounds_q[1:], bounds_k[:-1], bounds_k[1:])])


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), **_):
    q, k, v = qkv.unbind(1)
    return _varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale, causal, window_size)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), **_):
    k, v = kv.unbind(1)
    return _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_size)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **_):
    q, k, v = qkv.unbind(2)
    return torch.stack([_attend(q[b], k[b], v[b], causal, window_size[0], softmax_scale) for b in range(q.shape[0])])


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **_):
    k, v = kv.unbind(2)
    return torch.stack([_attend(q[b], k[b], v[b], causal, window_size[0], softmax_scale) for b in range(q.shape[0])])


def flash_attn_with_kvcache(*args, **kwargs):
    raise NotImplementedError("decoding is not benchmarked: no stand-in for flash_attn_with_kvcache")


class RMSNorm(nn.Module):
    """flash_attn.ops.triton.layer_norm.RMSNorm's module: residual' = x + residual (float32 with
    residual_in_fp32), y = residual' * rsqrt(mean(residual'^2) + eps) * weight in x's dtype; (y, residual') with
    prenorm."""

    def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, zero_centered_weight=False, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        summed = x.float() if residual is None else x.float() + residual.float()
        y = (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)
        if not prenorm:
            return y
        return y, summed if residual_in_fp32 or (residual is not None and residual.dtype == torch.float32) else summed.to(x.dtype)


def apply_rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None, interleaved=False, inplace=False,
                 conjugate=False):
    """flash_attn.ops.triton.rotary.apply_rotary, GPT-NeoX style (what H-Net uses), in float32."""
    if interleaved or not isinstance(seqlen_offsets, int):
        raise NotImplementedError("the stand-in rotary is non-interleaved, with an integer offset")
    half = cos.shape[-1]
    if cu_seqlens is not None:  # x (total, h, d): positions restart with every sequence
        pos = positions_in_sequence(cu_seqlens.long(), x.shape[0]) + seqlen_offsets
        c, s = cos[pos][:, None, :], sin[pos][:, None, :]
    else:  # x (b, l, h, d)
        pos = torch.arange(x.shape[1], device=x.device) + seqlen_offsets
        c, s = cos[pos][None, :, None, :], sin[pos][None, :, None, :]
    c, s = c.float(), (-s if conjugate else s).float()
    x1, x2 = x[..., :half].float(), x[..., half:2 * half].float()
    rotated = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)  # both halves before any write
    out = x if inplace else x.clone()
    out[..., :2 * half] = rotated
    return out


def swiglu(x, y):
    """flash_attn.ops.activations.swiglu: silu(x) * y, in float32."""
    return (F.silu(x.float()) * y.float()).to(x.dtype)


# ---- the official code under its own name ------------------------------------------------------------------

def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _installed(extension: str) -> bool:
    return importlib.util.find_spec(extension) is not None


def install_dependencies(official: Path, device) -> list[str]:
    """Put mamba_ssm (from the fetched tree) and stand-ins for flash_attn and causal_conv1d into sys.modules;
    returns one line per stand-in, for the table."""
    notes = []
    mamba_dir = official / "mamba" / "mamba_ssm"
    if not (mamba_dir / "modules" / "mamba2.py").exists():
        sys.exit(f"{mamba_dir}: no mamba_ssm tree (see this script's docstring for how to fetch it)")
    mamba = types.ModuleType("mamba_ssm")
    mamba.__path__ = [str(mamba_dir)]  # its submodules load from the tree; its __init__ (CUDA extensions) does not run
    sys.modules["mamba_ssm"] = mamba

    if _installed("causal_conv1d_cuda") and _installed("causal_conv1d"):
        notes.append("causal_conv1d: the installed CUDA build")
    else:
        sys.modules["causal_conv1d"] = _module("causal_conv1d", causal_conv1d_fn=conv_fn, causal_conv1d_update=conv_not_needed,
                                               __path__=[])
        sys.modules["causal_conv1d.cpp_functions"] = _module(
            "causal_conv1d.cpp_functions", causal_conv1d_fwd_function=conv_fwd, causal_conv1d_bwd_function=conv_bwd,
            causal_conv1d_update_function=conv_not_needed)
        sys.modules["causal_conv1d.causal_conv1d_varlen"] = _module(
            "causal_conv1d.causal_conv1d_varlen", causal_conv1d_varlen_states=conv_not_needed)
        notes.append("causal_conv1d: STAND-IN, PyTorch (float32 depthwise conv, taps masked at sequence changes)")

    if _installed("flash_attn_2_cuda") and _installed("flash_attn"):
        notes.append("flash_attn: the installed CUDA build")
    else:
        varlen = "torch.nn.attention.varlen flash attention" if device.type == "cuda" else "SDPA per sequence"
        attn = dict(flash_attn_varlen_qkvpacked_func=flash_attn_varlen_qkvpacked_func,
                    flash_attn_varlen_kvpacked_func=flash_attn_varlen_kvpacked_func,
                    flash_attn_qkvpacked_func=flash_attn_qkvpacked_func, flash_attn_kvpacked_func=flash_attn_kvpacked_func,
                    flash_attn_with_kvcache=flash_attn_with_kvcache)
        for name in ("flash_attn", "flash_attn.ops", "flash_attn.ops.triton", "flash_attn.utils"):
            sys.modules[name] = _module(name, __path__=[], **(attn if name == "flash_attn" else {}))
        sys.modules["flash_attn.utils.generation"] = _module("flash_attn.utils.generation", GenerationMixin=type(
            "GenerationMixin", (), {}))
        fa = official / "flash-attention" / "flash_attn"
        kernels = None
        if (fa / "ops" / "triton" / "layer_norm.py").exists() and device.type == "cuda":
            try:
                for name in ("utils.torch", "utils.library", "ops.triton.layer_norm", "ops.triton.rotary",
                             "ops.activations"):
                    _load_file(f"flash_attn.{name}", fa / (name.replace(".", "/") + ".py"))
                kernels = "flash-attention's own (Triton RMSNorm and rotary, jiterator SwiGLU)"
            except (ImportError, AttributeError) as exc:  # an API of this torch that the file expects is missing
                print(f"flash-attention's ops do not load here ({type(exc).__name__}: {exc}); PyTorch stand-ins instead")
        if kernels is None:
            sys.modules["flash_attn.ops.triton.layer_norm"] = _module("flash_attn.ops.triton.layer_norm", RMSNorm=RMSNorm)
            sys.modules["flash_attn.ops.triton.rotary"] = _module("flash_attn.ops.triton.rotary", apply_rotary=apply_rotary)
            sys.modules["flash_attn.ops.activations"] = _module("flash_attn.ops.activations", swiglu=swiglu)
            kernels = "STAND-INS in PyTorch (float32 math)"
        notes.append(f"flash_attn: STAND-IN attention, {varlen}; RMSNorm, rotary, SwiGLU: {kernels}; "
                     "GenerationMixin: empty")
    if not _installed("optree"):
        from torch.utils import _pytree

        sys.modules["optree"] = _module("optree", tree_map=_pytree.tree_map)
        notes.append("optree: torch.utils._pytree (used for inference caches only)")
    return notes


def import_official(official: Path) -> types.SimpleNamespace:
    """The official `hnet` package, imported while ours is out of sys.modules (both are called hnet), then kept
    under no name: every official import is at module level, so its modules hold what they need."""
    root = official / "hnet"
    if not (root / "hnet" / "models" / "mixer_seq.py").exists():
        sys.exit(f"{root}: no goombalab/hnet checkout (see this script's docstring for how to fetch it)")
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "hnet" or k.startswith("hnet.")}
    sys.path.insert(0, str(root))
    try:
        from hnet.models.config_hnet import AttnConfig, HNetConfig as OfficialConfig, SSMConfig
        from hnet.models.mixer_seq import HNetForCausalLM as OfficialModel
        from hnet.modules import mha
        from hnet.utils.train import load_balancing_loss
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "hnet" or k.startswith("hnet.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    return types.SimpleNamespace(AttnConfig=AttnConfig, HNetConfig=OfficialConfig, SSMConfig=SSMConfig,
                                 HNetForCausalLM=OfficialModel, mha=mha, load_balancing_loss=load_balancing_loss)


def without_device_asserts(mha) -> str:
    """The official attention asserts CUDA tensors in 16 bits; on the CPU its forward runs without those two
    asserts (the same calls otherwise), as ../shared/reference/README.md's goldens were made."""
    def forward(self, qkv, cu_seqlens=None, max_seqlen=None):
        if cu_seqlens is not None:
            return mha.flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, softmax_scale=self.softmax_scale,
                                                        causal=True, window_size=(self.window_size, -1))
        return mha.flash_attn_qkvpacked_func(qkv, softmax_scale=self.softmax_scale, causal=True,
                                             window_size=(self.window_size, -1))

    mha.FlashCausalSelfAttention.forward = forward
    # mamba_ssm's launchers enter torch.cuda.device(x.device.index): None for a CPU tensor; its autotuned
    # kernels would time their configurations, which the interpreter cannot: each takes its first.
    from triton.runtime.autotuner import Autotuner

    torch.cuda.device = lambda index: contextlib.nullcontext()
    torch.cuda.get_device_properties = lambda device: types.SimpleNamespace(multi_processor_count=4)  # sizes partial sums
    Autotuner.prune_configs = lambda self, kwargs: self.configs[:1]
    return ("FlashCausalSelfAttention.forward without its CUDA and 16-bit asserts; torch.cuda.device a no-op and "
            "4 SMs reported; autotuned kernels at their first configuration (CPU only: Triton's interpreter)")


# ---- the comparison ----------------------------------------------------------------------------------------

def official_model(off, config: HNetConfig, device, dtype):
    """The official model, initialised by its init_weights. Its dechunk runs in bf16 by default (its SSD kernel's
    casts); on the CPU in float32, as the interpreter's bf16 products are not faithful (our default is the
    float32 EMA: on the GPU their gap, ~3e-2 in the logits at most, shows in the agreement column)."""
    fields = dataclasses.asdict(config)
    attn, ssm = off.AttnConfig(**fields.pop("attn_cfg")), off.SSMConfig(**fields.pop("ssm_cfg"))
    model = off.HNetForCausalLM(off.HNetConfig(**fields, attn_cfg=attn, ssm_cfg=ssm), device=device, dtype=dtype)
    model.init_weights()
    if device.type == "cpu":
        for module in model.modules():
            if type(module).__name__ == "DeChunkLayer":
                module.dtype = torch.float32
    return model


def run_official(model, batch):
    ids, cu = batch["input_ids"].reshape(-1), batch["cu_seqlens"]
    longest = int((cu[1:] - cu[:-1]).max())
    h, routing = model.backbone(model.embeddings(ids), cu_seqlens=cu, max_seqlen=longest, mask=None)
    return model.lm_head(h), [(r.boundary_prob, r.boundary_mask) for r in routing], routing


def run_ours(model, batch):
    out = model(batch["input_ids"].reshape(1, -1), cu_seqlens=batch["cu_seqlens"])
    return out.logits[0], [(r.boundary_prob[0], r.boundary_mask[0]) for r in out.routing], out.routing


def loss_of(logits, labels, ratio):
    ce = F.cross_entropy(logits.float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    return ce + RATIO_WEIGHT * ratio


def measure(name: str, model, run, ratio, batch, device) -> dict:
    """Forward (no gradient) and forward+backward times, the peak memory of forward+backward above what was
    allocated before it, and the forward's logits and boundary masks."""
    def forward():
        with torch.no_grad():
            return run(model, batch)

    def forward_backward():
        for p in model.parameters():
            p.grad = None
        logits, _, routing = run(model, batch)
        loss_of(logits, batch["labels"], ratio(routing)).backward()

    logits, masks, _ = forward()
    forward_backward()  # compiles, tunes, allocates
    peak = peak_gib(forward_backward, device)
    return {"name": name, "fwd": bench(forward, device), "fwd_bwd": bench(forward_backward, device), "peak": peak,
            "logits": logits.float(), "masks": [m for _, m in masks],
            "bytes_per_chunk": [logits.shape[0] / max(int(m.sum()), 1) for _, m in masks]}


def agreement(ours: dict, official: dict) -> str:
    diff = (ours["logits"] - official["logits"]).abs()
    rel = ((ours["logits"] - official["logits"]).norm() / official["logits"].norm()).item()
    flips = []
    for s, (a, b) in enumerate(zip(ours["masks"], official["masks"])):
        flips.append(f"stage {s}: {int((a != b).sum())} of {a.numel()}" if a.shape == b.shape else
                     f"stage {s}: lengths differ ({a.numel()} vs {b.numel()})")
    return f"max {diff.max().item():.3g}, rel {rel:.2e}; boundaries differing: " + ("; ".join(flips) or "-")


def compare(path: str, off, args, device, dtype) -> list[str]:
    config = load_model_config(path)
    stages = config.num_stages - 1
    targets = default_ratio_targets(stages) if stages else []

    def official_ratio(routing):
        return sum(off.load_balancing_loss(r, n) for r, n in zip(routing, targets)) if routing else 0.0

    def our_ratio(routing):
        return ratio_loss(routing, targets) if routing else 0.0

    def run_all(batch_size):
        torch.manual_seed(0)
        batch = text_batch(batch_size, args.seq_len, device)
        official = official_model(off, config, device, dtype)
        ours = HNetForCausalLM(config, device=device, dtype=dtype)
        ours.load_weights(official.state_dict(), source="the official model")
        results = [measure("official", official, run_official, official_ratio, batch, device)]
        del official
        paths = [("ours, fast (mixer fused)", "fast")] + ([("ours, fast (mixer unfused)", "unfused")] if args.unfused else [])
        for label, kpath in paths:
            with kernel_path(kpath):
                results.append(measure(label, ours, run_ours, our_ratio, batch, device))
        return results

    batch_size, results = fitting(run_all, args.batch)
    stem = Path(path).stem if Path(path).stem != "config" else Path(path).parent.name  # a golden case's folder
    if results is None:
        return [f"| {stem} | - | OOM at 1 x {args.seq_len} | - | - | - | - | - |"]
    params = sum(p.numel() for p in HNetForCausalLM(config, device="meta").parameters())
    rows = []
    for r in results:
        agree = "-" if r["name"] == "official" else agreement(r, results[0])
        bpc = ", ".join(f"{x:.2f}" for x in r["bytes_per_chunk"]) or "-"
        rows.append(f"| {stem} {r['name']} | {params / 1e6:.1f}M | {batch_size} x {args.seq_len} | {r['fwd']:.1f} | "
                    f"{r['fwd_bwd']:.1f} | {r['peak']:.1f} | {bpc} | {agree} |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", default=str(REPO / ".official"), help="the folder of the fetched official code")
    parser.add_argument("--config", nargs="+", default=DEFAULT_CONFIGS, help="official model JSONs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="rows of --seq-len bytes (halved while it does not fit)")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--unfused", action="store_true", help="also our row with Mamba-2's mixer op by op")
    parser.add_argument("--smoke", action="store_true", help="a tiny model (the golden tiny_1stage) at 1 x 256 bytes "
                        "in fp32 on the CPU: checks the code path (needs TRITON_INTERPRET=1 for the Triton kernels)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.smoke:
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--smoke on the CPU runs the Triton kernels in Triton's interpreter: set TRITON_INTERPRET=1")
        args.config, args.batch, args.seq_len = [str(SMOKE_CONFIG)], 1, 256
    if missing := [p for p in args.config if not (REPO / p).exists()]:
        sys.exit(f"{missing[0]}: not found (the official configs: mkdir -p .ref && cp -r ../shared/reference/configs .ref/)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    notes = install_dependencies(Path(args.official), device)
    off = import_official(Path(args.official))
    if device.type == "cpu":
        notes.append(without_device_asserts(off.mha))
        notes.append("DeChunkLayer in float32 (CPU only; its default bf16 casts meet the interpreter's unfaithful bf16)")
    print(environment(device_info(device)[0]))
    print(f"official goombalab/hnet against ours, {dtype}, packed documents of {min(DOC_BYTES, args.seq_len)} bytes; "
          f"CE + {RATIO_WEIGHT} x ratio loss, no optimizer. Stand-ins in the official rows:")
    for note in notes:
        print(f"  - {note}")
    rows = []
    for path in args.config:
        rows += compare(str(REPO / path), off, args, device, dtype)
    print("\n| model | params | batch | fwd ms | fwd+bwd ms | fwd+bwd peak GiB | bytes/chunk (cumulative) | "
          "logits and boundaries vs official |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        print(row)
    if device.type == "cpu":
        print("(CPU: times mean nothing; the run checks that both models build, agree and train)")


if __name__ == "__main__":
    main()
