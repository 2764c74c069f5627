"""The Mamba-2 mixer (mamba_ssm `Mamba2` defaults: ngroups 1, no in/out bias, D per head)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hnet.layers.norm import GatedRMSNorm
from hnet.ops.cache import cache_zeros, write_cache
from hnet.ops.dispatch import causal_conv1d, causal_conv1d_step, mamba2_mixer, ssd_state_update, ssd_varlen
from hnet.ops.packed import as_packed, sequence_of_position


@dataclass
class Mamba2Cache:
    """Fixed size, whatever the sequence length."""

    conv_state: torch.Tensor  # (B, d_conv - 1, conv_dim): the last inputs of the short convolution
    ssm_state: torch.Tensor  # (B, nheads, headdim, d_state) float32
    # Set for one prefill by `hnet.generation.prefill.mark_empty` (one host read for every layer's cache):
    # whether the states are all zero; None: the prefill asks itself.
    empty: bool | None = None

    def holds_nothing(self) -> torch.Tensor:
        return ~(self.ssm_state.any() | self.conv_state.any())


class Mamba2(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 256,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        self.chunk_size = chunk_size
        conv_dim = self.d_inner + 2 * d_state
        # in_proj output: [z (d_inner), xBC (d_inner + 2 d_state), dt (nheads)]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False, **kw)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, **kw)
        # dt_bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max]; A = -exp(A_log) in [-16, -1].
        dt = torch.exp(torch.rand(self.nheads, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(dtype))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads, device=device).uniform_(1, 16)).to(dtype))
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))  # fp32, as upstream creates it
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **kw)
        # The fused mixer's backward recomputes the convolution's output (one pass over xBC) rather than keep
        # it from the forward (b x l x (d_inner + 2 d_state) at the peak); False keeps it.
        self.recompute_conv = True
        # Likewise the scan's entering states (x's size in float32, the largest tensor the scan keeps) and C.B:
        # recomputed from x, B, C and dt (a third of the scan's forward); False keeps them. (Unfused, the
        # Triton scan always recomputes them.)
        self.recompute_states = True

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> Mamba2Cache:
        w = self.in_proj.weight
        conv_dim, _, d_conv = self.conv1d.weight.shape
        return Mamba2Cache(
            cache_zeros(batch_size, d_conv - 1, conv_dim, device=w.device, dtype=dtype or w.dtype),
            # The state is a running sum over the whole sequence: kept in fp32 whatever the weights' dtype.
            cache_zeros(batch_size, self.nheads, self.headdim, self.d_state, device=w.device, dtype=torch.float32),
        )

    def forward(self, u, seq_idx=None, cache=None, cu_seqlens=None, shared: dict | None = None):
        """u (B, L, D) -> (B, L, D); seq_idx (B, L) resets the conv and the state per packed sequence.

        With a cache (prefill), every row continues its row of the cache, from the state its earlier
        positions left (none: a fresh cache), and its state after its last position is written back.
        Packed, u (1, T, D) with cu_seqlens: sequence i continues row i (an empty one leaves it as it is).
        shared: a dict the layers of a stack pass along in a prefill, which keeps the index tensors that
        depend on cu_seqlens only, so that the first layer makes them for all.
        Without one, between the projections: `hnet.ops.mamba2.mamba2_mixer` (conv, SiLU, SSD scan, gated
        norm), one fused Function where the Triton kernels run.
        """
        if cache is not None:
            return self._prefill(u, cache, cu_seqlens, {} if shared is None else shared)
        # out_proj's weight goes in with the rest: where the kernels run, the norm's output is not kept for it
        return mamba2_mixer(self.in_proj(u), self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, self.A_log,
                            self.D, self.norm.weight, self.headdim, self.chunk_size, seq_idx, self.norm.eps,
                            recompute_conv=self.recompute_conv, recompute_states=self.recompute_states,
                            out_proj_weight=self.out_proj.weight)

    def _prefill(self, u, cache: Mamba2Cache, cu_seqlens, shared: dict):
        if cu_seqlens is None:
            packed, cu_seqlens = as_packed(u)
            return self._prefill(packed, cache, cu_seqlens, shared).view_as(u)
        T = u.shape[1]
        empty, cache.empty = cache.empty, None  # known for this prefill only
        one_row = cache.ssm_state.shape[0] == 1 and cu_seqlens.shape[0] == 2
        if one_row and T > 0 and (empty if empty is not None else bool(cache.holds_nothing())):
            return self._prefill_fresh_row(u, cache, shared)
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], dim=-1)
        xBC = self._conv_continuing(xBC[0], cache, cu_seqlens.long(), shared).unsqueeze(0)
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        y, final_states = ssd_varlen(
            x.view(1, T, self.nheads, self.headdim),
            self._dt(dt),
            -torch.exp(self.A_log.float()),
            B.view(1, T, 1, self.d_state),
            C.view(1, T, 1, self.d_state),
            self.chunk_size,
            cu_seqlens,
            D=self.D,
            initial_states=cache.ssm_state,
            shared=shared,
        )
        write_cache(shared, cache.ssm_state, final_states)
        y = self.norm(y.reshape(1, T, self.d_inner), z)
        return self.out_proj(y)

    def _prefill_fresh_row(self, u, cache: Mamba2Cache, shared: dict):
        """A cache of one row that holds nothing yet (the common first prefill of one prompt): the forward's
        mixer, which also gives the state at the end, and the last inputs of the convolution kept. Equal to
        the general path from zero states, in fewer ops."""
        zxbcdt = self.in_proj(u)
        y, final_state = mamba2_mixer(zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias,
                                      self.A_log, self.D, self.norm.weight, self.headdim, self.chunk_size, None,
                                      self.norm.eps, return_final_state=True)
        write_cache(shared, cache.ssm_state, final_state)
        held, T = cache.conv_state.shape[1], u.shape[1]
        xBC = zxbcdt[0, -held:, self.d_inner:self.d_inner + cache.conv_state.shape[2]]
        cache.conv_state[0, max(0, held - T):].copy_(xBC)  # a prompt shorter than that leaves zeros before it
        return self.out_proj(y)

    def _conv_continuing(self, xBC, cache: Mamba2Cache, cu, shared: dict):
        """The short convolution of packed xBC (T, conv_dim), each sequence after the inputs its row of
        the cache holds: those k - 1 inputs are put in front of it, the packed conv runs over the whole and
        their outputs are dropped. The last k - 1 inputs of every sequence so extended become its cache."""
        T, held, n = xBC.shape[0], cache.conv_state.shape[1], cu.shape[0] - 1  # held: d_conv - 1 inputs a row
        if ("conv", held) not in shared:  # where each extended position reads from, and what is kept
            ext_cu = cu + torch.arange(n + 1, device=cu.device) * held
            seq = sequence_of_position(ext_cu, T + n * held)
            offset = torch.arange(T + n * held, device=cu.device) - ext_cu[seq]
            source = torch.where(offset < held, seq * held + offset, n * held + cu[seq] + offset - held)
            tail = ext_cu[1:, None] - held + torch.arange(held, device=cu.device)  # (n, held)
            own = torch.arange(T, device=cu.device) + (sequence_of_position(cu, T) + 1) * held
            shared["conv", held] = source, seq[None].int(), tail, own
        source, seq_idx, tail, own = shared["conv", held]
        ext = torch.cat([cache.conv_state.reshape(n * held, -1).to(xBC.dtype), xBC])[source]
        out = causal_conv1d(ext[None], self.conv1d.weight.squeeze(1), self.conv1d.bias, seq_idx=seq_idx)[0]
        cache.conv_state.copy_(ext[tail])
        return out[own]

    def _dt(self, dt):
        return F.softplus(dt.float() + self.dt_bias.float())  # identity above 20, as the kernel does

    def step(self, u, cache: Mamba2Cache, mask=None):
        """One position: u (B, D) -> (B, D). Rows where mask (B,) is False keep their cache.

        The recurrence of `forward` one step at a time: conv over the cached inputs and this one, then
        h = exp(dt A) h + dt x B^T, y = h C + D x.
        """
        b = u.shape[0]
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], dim=-1)
        xBC = causal_conv1d_step(cache.conv_state, xBC, self.conv1d.weight, self.conv1d.bias, mask)  # float32
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        x = x.view(b, self.nheads, self.headdim)
        y = ssd_state_update(cache.ssm_state, x, dt, self.dt_bias, self.A_log, B, C, self.D, mask)
        y = self.norm(y.reshape(b, self.d_inner).to(u.dtype), z)
        return self.out_proj(y)
