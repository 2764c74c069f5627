"""Choose, per call, between the plain PyTorch reference of an op and its Triton kernel.

The Triton kernels run on CUDA tensors when triton imports; CPU tensors, a missing triton, or the
environment variable HNET_REFERENCE=1 take the reference, which stays the definition. Inside
`force_triton()` the kernels also take CPU tensors, which only works under TRITON_INTERPRET=1: the
tests use it to run whole models through the kernels on a machine without a GPU.

Where the kernels run, Mamba-2's mixer (everything between its two projections) can be one fused Function
(`hnet.ops.triton.mamba2`): HNET_FUSED_MAMBA2=1, or FUSED_MAMBA2_BY_DEFAULT once it has been checked on a
GPU; otherwise it is composed op by op, each op still its kernel.

`kernel_path("fast")`, `kernel_path("unfused")` (the kernels, the mixer op by op) or
`kernel_path("reference")` sets one path for a block (benchmarks, tests) and then puts back what was set.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from hnet.ops import cache as _cache_ref
from hnet.ops import conv1d as _conv1d_ref
from hnet.ops import cosine as _cosine_ref
from hnet.ops import ema as _ema_ref
from hnet.ops import mamba2 as _mamba2_ref
from hnet.ops import norm as _norm_ref
from hnet.ops import rotary as _rotary_ref
from hnet.ops import ssd as _ssd_ref
from hnet.ops import ssd_varlen as _ssd_varlen
from hnet.ops import swiglu as _swiglu_ref

HAS_TRITON = importlib.util.find_spec("triton") is not None
_forced = False


@contextmanager
def force_triton():
    """Route every dispatched op to its Triton kernel, whatever the device (tests under the interpreter)."""
    global _forced
    previous, _forced = _forced, True
    try:
        yield
    finally:
        _forced = previous


FUSED_MAMBA2_BY_DEFAULT = False  # True once the fused mixer equals the unfused one on a GPU at real shapes (#25)
KERNEL_PATHS = {  # path: (HNET_REFERENCE, HNET_FUSED_MAMBA2), None for unset
    "fast": (None, "1"),
    "unfused": (None, "0"),
    "reference": ("1", None),
}


@contextmanager
def kernel_path(path: str):
    """'reference': every op its PyTorch reference (HNET_REFERENCE=1). 'fast': the Triton kernels with
    Mamba-2's mixer fused (HNET_REFERENCE unset, HNET_FUSED_MAMBA2=1); 'unfused': the same kernels, the
    mixer op by op (HNET_FUSED_MAMBA2=0). The kernels also take CPU tensors under TRITON_INTERPRET=1
    (`force_triton`; CUDA tensors take them anyway). On leaving, both variables are again what they were."""
    if path not in KERNEL_PATHS:
        raise ValueError(f"kernel path {path!r}: expected one of {', '.join(map(repr, KERNEL_PATHS))}")
    names = ("HNET_REFERENCE", "HNET_FUSED_MAMBA2")
    previous = {name: os.environ.pop(name, None) for name in names}
    for name, value in zip(names, KERNEL_PATHS[path]):
        if value is not None:
            os.environ[name] = value
    try:
        forced = path != "reference" and os.environ.get("TRITON_INTERPRET") == "1"
        with force_triton() if forced else nullcontext():
            yield
    finally:
        for name, value in previous.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def reference_requested() -> bool:
    """HNET_REFERENCE=1: every op takes its plain PyTorch reference (read at every call)."""
    return os.environ.get("HNET_REFERENCE") == "1"


def fused_mamba2_requested() -> bool:
    """HNET_FUSED_MAMBA2=1: Mamba-2's mixer fused where the kernels run; =0: op by op; unset:
    FUSED_MAMBA2_BY_DEFAULT (read at every call)."""
    return os.environ.get("HNET_FUSED_MAMBA2", "1" if FUSED_MAMBA2_BY_DEFAULT else "0") == "1"


def use_triton(x) -> bool:
    if not HAS_TRITON or reference_requested():
        return False
    return _forced or x.is_cuda


def mamba2_mixer(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, headdim: int, chunk_size: int,
                 seq_idx=None, eps: float = 1e-5, return_final_state: bool = False, recompute_conv: bool = True,
                 recompute_states: bool = True, out_proj_weight=None):
    """`hnet.ops.mamba2.mamba2_mixer`: fused where the kernels run and `fused_mamba2_requested()`, else the
    composition of the dispatched conv1d, SSD and gated norm (each its kernel or its reference).
    recompute_conv, recompute_states: the fused backward recomputes the convolution's output, and the scan's
    entering states and C.B, rather than keep them. out_proj_weight: also apply out_proj (no bias); where the
    kernels run, fused or not, its input (the norm's output) is recomputed in the backward rather than kept."""
    args = (zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, headdim, chunk_size, seq_idx, eps,
            return_final_state)
    if use_triton(zxbcdt) and fused_mamba2_requested():
        from hnet.ops.triton.mamba2 import mamba2_mixer as fused

        # under autocast in_proj's output is in autocast's dtype, out_proj's weight not
        weight = out_proj_weight.to(zxbcdt.dtype) if out_proj_weight is not None else None
        return fused(*args, recompute_conv=recompute_conv, recompute_states=recompute_states, out_proj_weight=weight)
    norm = gated_rms_norm if out_proj_weight is None else partial(gated_rms_norm, out_proj_weight=out_proj_weight)
    return _mamba2_ref.mamba2_mixer(*args, conv=causal_conv1d, scan=ssd_chunked, norm=norm)


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, initial_state=None, seq_idx=None, return_final_state=False):
    impl = _ssd_ref.ssd_chunked
    if use_triton(x):
        from hnet.ops.triton.ssd import ssd_chunked as impl
    return impl(x, dt, A, B, C, chunk_size, D, initial_state, seq_idx, return_final_state)


def ssd_state_update(state, x, dt, dt_bias, A_log, B, C, D, mask=None):
    """One decoding step of the SSD recurrence, in place (see hnet.ops.ssd.ssd_state_update)."""
    impl = _ssd_ref.ssd_state_update
    if use_triton(x):
        from hnet.ops.triton.mamba2_step import ssd_state_update as impl
    return impl(state, x, dt, dt_bias, A_log, B, C, D, mask)


def ssd_varlen(x, dt, A, B, C, chunk_size, cu_seqlens, D=None, initial_states=None, shared=None):
    """Packed sequences, each from its own initial state to its own final state (see hnet.ops.ssd_varlen)."""
    scan = _ssd_ref.ssd_scan_with_chunk_states
    if use_triton(x):
        from hnet.ops.triton.ssd import ssd_scan_with_chunk_states as scan
    return _ssd_varlen.ssd_varlen(x, dt, A, B, C, chunk_size, cu_seqlens, D, initial_states, scan, shared)


def append_kv_(cache_k, cache_v, seqlen, k, v, mask=None):
    """A decoding step's keys and values into the KV cache (see hnet.ops.cache.append_kv_)."""
    impl = _cache_ref.append_kv_
    if use_triton(k):
        from hnet.ops.triton.cache import append_kv_ as impl
    impl(cache_k, cache_v, seqlen, k, v, mask)


def attend_kv_cache(q, cache_k, cache_v, seqlen, mask=None):
    """A decoding step's attention over the filled slots of a KV cache (see hnet.ops.cache.attend_kv_cache)."""
    impl = _cache_ref.attend_kv_cache
    if use_triton(q):
        from hnet.ops.triton.cache import attend_kv_cache as impl
    return impl(q, cache_k, cache_v, seqlen, mask)


def causal_conv1d_step(conv_state, x, weight, bias=None, mask=None):
    """One decoding position of the convolution and its SiLU (see hnet.ops.conv1d.causal_conv1d_step)."""
    impl = _conv1d_ref.causal_conv1d_step
    if use_triton(x):
        from hnet.ops.triton.mamba2_step import causal_conv1d_step as impl
    return impl(conv_state, x, weight, bias, mask)


def causal_conv1d(x, weight, bias=None, seq_idx=None, activation: str | None = "silu"):
    impl = _conv1d_ref.causal_conv1d
    if use_triton(x):
        from hnet.ops.triton.conv1d import causal_conv1d as impl
    return impl(x, weight, bias, seq_idx, activation)


def gated_rms_norm(x, z, weight, eps: float = 1e-5, out_dtype=torch.float32, out_proj_weight=None):
    """out_proj_weight: also apply out_proj (no bias); where the kernels run, its input (the norm's output) is
    recomputed in the backward rather than kept."""
    if use_triton(x):
        from hnet.ops.triton.norm import gated_rms_norm as impl

        weight_ = out_proj_weight.to(out_dtype) if out_proj_weight is not None else None  # autocast's dtype
        return impl(x, z, weight, eps, out_dtype, weight_)
    out = _norm_ref.gated_rms_norm(x, z, weight, eps, out_dtype)
    return out if out_proj_weight is None else F.linear(out, out_proj_weight)


def add_rms_norm(h, residual, weight, eps: float = 1e-5):
    impl = _norm_ref.add_rms_norm
    if use_triton(h):
        from hnet.ops.triton.norm import add_rms_norm as impl
    return impl(h, residual, weight, eps)


def ema_scan(x, p, seq_idx=None, chunk_size: int = 64):
    impl = _ema_ref.ema_scan
    if use_triton(x):
        from hnet.ops.triton.ema import ema_scan as impl
    return impl(x, p, seq_idx, chunk_size)


def swiglu_mlp(x, fc1_weight, fc2_weight):
    """The Transformer's MLP, fc2(swiglu(fc1(x))). Where the kernels run, fc1's output and the activation
    are recomputed in the backward rather than kept from the forward (less memory at the step's peak, for
    one more GEMM a layer)."""
    if use_triton(x):
        from hnet.ops.triton.swiglu import swiglu_mlp

        device = x.device.type  # the Function runs in one dtype: autocast's, as its linears would have
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return swiglu_mlp(x.to(dtype), fc1_weight.to(dtype), fc2_weight.to(dtype))
    return F.linear(_swiglu_ref.swiglu(F.linear(x, fc1_weight)), fc2_weight)


def rotary_qkv(qkv, cos, sin):
    impl = _rotary_ref.rotary_qkv
    if use_triton(qkv):
        from hnet.ops.triton.rotary import rotary_qkv as impl
    return impl(qkv, cos, sin)


def rotary_qkv_into(qkv, cos, sin, k_out, v_out):
    impl = _rotary_ref.rotary_qkv_into
    if use_triton(qkv):
        from hnet.ops.triton.rotary import rotary_qkv_into as impl
    return impl(qkv, cos, sin, k_out, v_out)


def rowwise_cosine(q, k, eps: float = 1e-12):
    impl = _cosine_ref.rowwise_cosine
    # The kernel computes in float32: float32 inputs, or any under autocast (whose roundings it makes).
    if use_triton(q) and (q.dtype == torch.float32 or torch.is_autocast_enabled(q.device.type)):
        from hnet.ops.triton.cosine import rowwise_cosine as impl
    return impl(q, k, eps)
