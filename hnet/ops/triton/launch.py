"""Kernel launches without Triton's per-call argument binding.

`kernel[grid](*args)` binds and specializes every argument in Python before it launches: on the H200's host
that measured 23 us for a kernel of 4 arguments and about 5 us more per argument (the SSD's kernels take
20-30), and a training step's ~700 launches left it host-bound (138 ms of kernels in a 200 ms step).
`launch_kernel` keys the compiled kernel by what Triton specializes on (each tensor's dtype and 16-byte
alignment; each integer's being 1, its divisibility by 16 and its width; the constexprs and launch
options) and, after a first call with that key, which goes through Triton as usual, launches the
compiled kernel directly. Under the interpreter, or with HNET_PLAIN_LAUNCH=1, every call goes through Triton.
"""

from __future__ import annotations

import os

import torch

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # as Triton, read when the kernels are defined
_PLAIN = object()  # a key whose kernel is always launched through Triton
_compiled: dict[tuple, object] = {}


def _specialization(arg):
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return bool, arg
    if isinstance(arg, int):
        return int, arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31
    if arg is None or isinstance(arg, float):
        return type(arg)
    raise TypeError(type(arg))


def launch_kernel(kernel, grid: tuple, *args, **meta) -> None:
    """kernel[grid](*args, **meta); meta holds the constexprs and launch options, by name."""
    if _INTERPRETED or os.environ.get("HNET_PLAIN_LAUNCH") == "1":
        kernel[grid](*args, **meta)
        return
    try:
        key = (kernel, tuple(meta.items()), tuple(map(_specialization, args)), torch.cuda.current_device())
    except TypeError:  # an argument of a kind not keyed here
        kernel[grid](*args, **meta)
        return
    entry = _compiled.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **meta)  # compiles on a miss in Triton's own cache
        rest = kernel.arg_names[len(args):]  # the parameters given by name: the compiled kernel takes all, in order
        usable = hasattr(compiled, "__getitem__") and all(name in meta for name in rest)
        _compiled[key] = (compiled, rest) if usable else _PLAIN
    elif entry is _PLAIN:
        kernel[grid](*args, **meta)
    else:
        compiled, rest = entry
        compiled[(*grid, 1, 1)[:3]](*args, *(meta[name] for name in rest))
