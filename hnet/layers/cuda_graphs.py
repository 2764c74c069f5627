"""CUDA graphs. For training steps, applied to a model from outside: `use_cuda_graphs(model)` replaces the
`run_layers` of every `Isotropic` stack with one that replays the layers' forward and backward as CUDA
graphs, one per input signature, up to MAX_GRAPHS a stack.

Each of a training step's ~3000 launches costs host time (Python, autograd); a graph launches a stack's
forward (or backward) in one call. Only training steps replay (CUDA, grad enabled, no cache); evaluation
runs eagerly. Autocast must be entered with cache_enabled=False: a cached weight cast would outlive the
optimizer step.

For decoding, `capture(fn)` makes any function over persistent tensors a graph (`hnet.generation.graphs`
captures a whole decoding step of the model with it).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from hnet.layers.isotropic import Isotropic

MAX_GRAPHS = 4  # per stack: each holds its own activations for the backward


def use_cuda_graphs(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Replay every stack of `model` as CUDA graphs in training steps, or (enabled=False) run them eagerly
    again and free the graphs. Either way the graphs captured so far are dropped."""
    for name, m in model.named_modules():
        if isinstance(m, Isotropic):
            m.__dict__.pop("run_layers", None)  # back to the class's eager method
            if enabled:
                m.run_layers = GraphedLayers(m, name)
    return model


def uses_cuda_graphs(model: nn.Module) -> bool:
    return any(isinstance(m.__dict__.get("run_layers"), GraphedLayers) for m in model.modules())


class GraphedLayers:
    """A stack's `run_layers` that, in a training step, replays a CUDA graph captured for the input's
    signature (the first call of one captures it). A plain object, not a module: the stack holds it, and
    it must not show up among the model's modules."""

    def __init__(self, stack: Isotropic, name: str = ""):
        self.stack, self.name = stack, name or "the model"
        self.graphs: dict[tuple, object] = {}

    def eager(self, x, cu_seqlens, seq_idx, max_seqlen, cache=None):
        return Isotropic.run_layers(self.stack, x, cu_seqlens, seq_idx, max_seqlen, cache)

    def __call__(self, x, cu_seqlens, seq_idx, max_seqlen, cache=None):
        if not (self.stack.training and cache is None and x.is_cuda and torch.is_grad_enabled()):
            return self.eager(x, cu_seqlens, seq_idx, max_seqlen, cache)
        # The attention's max_seqlen rounded up to a power of two, so that signatures repeat.
        if max_seqlen is not None:
            max_seqlen = min(1 << (max_seqlen - 1).bit_length(), x.shape[1])
        autocast = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda")
        if self.stack.has_attention and autocast not in (torch.float16, torch.bfloat16):
            return self.eager(x, cu_seqlens, seq_idx, max_seqlen)  # the fp32 attention syncs: not capturable
        key = (tuple(x.shape), x.dtype, x.requires_grad, None if cu_seqlens is None else cu_seqlens.shape[0],
               max_seqlen, autocast)
        graphed = self.graphs.get(key)
        if graphed is None:
            if len(self.graphs) >= MAX_GRAPHS:
                return self.eager(x, cu_seqlens, seq_idx, max_seqlen)
            graphed = _capture(self.stack, x, cu_seqlens, seq_idx, max_seqlen)
            self.graphs[key] = graphed
            if len(self.graphs) == MAX_GRAPHS:
                warnings.warn(f"{self.name}: {MAX_GRAPHS} CUDA graphs captured; new input shapes run eagerly")
        if cu_seqlens is None:
            return graphed(x)
        return graphed(x, cu_seqlens, seq_idx)


class _Captured(nn.Module):
    """A stack's layers at one signature, as make_graphed_callables takes them: tensors in, tensors out
    (a module, so that the graphs' backward reaches the stack's parameters)."""

    def __init__(self, stack: Isotropic, max_seqlen):
        super().__init__()
        self.stack, self.max_seqlen = stack, max_seqlen

    def forward(self, x, cu_seqlens=None, seq_idx=None):
        return Isotropic.run_layers(self.stack, x, cu_seqlens, seq_idx, self.max_seqlen)


def _capture(stack: Isotropic, x, cu_seqlens, seq_idx, max_seqlen):
    # Copies as the graph's static inputs: every replay copies its real inputs into them.
    sample = [x.detach().clone().requires_grad_(x.requires_grad)]
    if cu_seqlens is not None:
        sample += [cu_seqlens.clone(), seq_idx.clone()]
    return torch.cuda.make_graphed_callables(_Captured(stack, max_seqlen), tuple(sample))


def capture(fn, warmup: int = 2, generators=(), after_warmup=None) -> torch.cuda.CUDAGraph:
    """fn() as a CUDA graph: `replay()` reruns its kernels on the very tensors it read and wrote, so fn
    must keep its state in tensors that outlive the graph and change nothing on the host. The warmup
    calls run first, on a side stream (kernels compile and tune there, which would not capture); then
    after_warmup() may undo what they did. Generators fn draws from (a seeded torch.Generator) are
    registered, so that each replay draws on from their state as an eager call would."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if after_warmup is not None:
        after_warmup()
    graph = torch.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        fn()
    return graph
