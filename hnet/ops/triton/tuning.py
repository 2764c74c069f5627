"""Launch configurations chosen by timing. A kernel's launcher offers a few candidates (block sizes, warps,
pipeline stages, how many programs share a reduction); on the first call of a shape on a GPU each candidate
is timed and the fastest is kept for the rest of the process. The first candidate is the plain default: it
runs under Triton's interpreter, on problems too small for timing to pay, and with HNET_TUNE=0.
HNET_TUNE_VERBOSE=1 prints each candidate as it is timed, with the seconds its first launch took (mostly
compiling, unless Triton's disk cache has it).

Only launchers whose kernels write every output afresh use this (timing launches them several times).
`triton.autotune` would time too, but its candidates are fixed when the kernel is defined, and these
depend on the shape (no block longer than a chunk) and include launcher-side choices (partial-sum runs).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError
from triton.testing import do_bench

MIN_TUNED_POSITIONS = 16384  # batch x length below which the default candidate is taken untimed
_chosen: dict[tuple, dict] = {}
_timings: dict[tuple, list[tuple[dict, float]]] = {}


def launch_fastest(name: str, key: tuple, positions: int, candidates: list[dict], launch: Callable):
    """launch(**config) with the fastest candidate for (name, key), timing them on the first such call."""
    config = _chosen.get((name, key))
    if config is None:
        config = candidates[0]
        timed = (len(candidates) > 1 and positions >= MIN_TUNED_POSITIONS and os.environ.get("HNET_TUNE") != "0"
                 and os.environ.get("TRITON_INTERPRET") != "1")
        if timed:
            unique = [c for i, c in enumerate(candidates) if c not in candidates[:i]]
            times = [(c, _time(launch, c, required=i == 0, label=f"{name} {key}")) for i, c in enumerate(unique)]
            _timings[(name, key)] = times
            config = min(times, key=lambda ct: ct[1])[0]
        _chosen[(name, key)] = config
    return launch(**config)


def for_dtype(candidates: list[dict], dtype) -> list[dict]:
    """The SSD launchers' candidates for inputs of this dtype: with 16-bit inputs only those of 4 warps. Timed
    on the H100 and the H200 at two Mamba-2 shapes, every bf16 winner had 4 warps but one (1% ahead of its
    4-warp default); in fp32, whose tiles hold twice the bytes, 8 warps were up to 15x faster. Halves what
    the first step of a bf16 model compiles."""
    if dtype == torch.float32:
        return candidates
    return [c for c in candidates if c.get("num_warps", 4) == 4]


def _time(launch: Callable, config: dict, required: bool, label: str) -> float:
    start = time.perf_counter()
    try:
        launch(**config)  # the first launch compiles
        first = time.perf_counter() - start
        ms = do_bench(lambda: launch(**config), warmup=5, rep=20)
    # More shared memory or registers than the GPU has, or code this Triton cannot compile (a language op of a
    # newer one, such as conv1d's tl.gather): not a candidate.
    except (OutOfResources, PTXASError, CompilationError):
        if required:
            raise
        first, ms = time.perf_counter() - start, float("inf")
    if os.environ.get("HNET_TUNE_VERBOSE") == "1":
        print(f"tuning {label} {config}: first launch {first:.1f} s, {ms * 1e3:.0f} us", flush=True)
    return ms


def tuning_report() -> list[str]:
    """One line per tuned launch: the chosen configuration, its time and the default's."""
    lines = []
    for (name, key), times in _timings.items():
        best = min(times, key=lambda ct: ct[1])
        lines.append(f"{name} {key}: {best[0]} {best[1] * 1e3:.0f} us (default {times[0][1] * 1e3:.0f} us, "
                     f"{len(times)} candidates)")
    return lines
