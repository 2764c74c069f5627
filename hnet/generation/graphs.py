"""Decoding steps replayed as CUDA graphs: `decode_step` captured over a `DecodeState`'s tensors.

A graph holds the step of every stage (the inner stages run on every row, masked, so nothing branches
on the host), the sampling and the stop check: one launch a byte instead of a few thousand. It is the
eager step's very code, captured: what the CPU tests check of `decode_step` holds for the graph. It
depends on the state's shapes and on the cache's tensors (a cache that grows makes new ones), so it is
captured anew when those change (`GraphedSteps.key`). Imported on CUDA only.
"""

from __future__ import annotations

from hnet.generation.cache import slots
from hnet.generation.decode import DecodeState, decode_step
from hnet.generation.sampling import Sampling
from hnet.layers.cuda_graphs import capture


class GraphedSteps:
    """`step()` replays `decode_step(model, state, sampling, generator)` as a CUDA graph."""

    def __init__(self, model, state: DecodeState, sampling: Sampling, generator=None):
        self.key = self.key_of(state, sampling, generator)
        self.graph = _capture_without_effect(lambda: decode_step(model, state, sampling, generator), state, generator)

    @staticmethod
    def key_of(state: DecodeState, sampling: Sampling, generator=None) -> tuple:
        tensors = (state.cache, state.last, state.live, state.out, state.stops, state.forced)
        return (state.signature, slots(state.cache), sampling, id(generator), tuple(map(id, tensors)))

    def step(self) -> None:
        self.graph.replay()


def _capture_without_effect(fn, state: DecodeState, generator):
    """Capture fn, whose warmup runs execute: with no row live they change no cache (every update is
    masked), and the state's own tensors and the generator's draws are put back as they were."""
    own = (state.last, state.live, state.out, state.count, state.recent)
    saved = [t.clone() for t in own]
    rng = None if generator is None else generator.get_state()

    def put_back():
        for t, s in zip(own, saved):
            t.copy_(s)
        if rng is not None:
            generator.set_state(rng)

    state.live.zero_()
    state.count.zero_()  # the warmup writes columns 0, 1 of `out`: within any capacity
    try:
        return capture(fn, generators=() if generator is None else (generator,), after_warmup=put_back)
    except BaseException:
        put_back()
        raise
