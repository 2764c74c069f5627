"""Every Triton kernel launch of an interpreted run (TRITON_INTERPRET=1, the CPU tests), recorded so that
tests/test_triton_compiles.py can compile each for a GPU: the interpreter runs Python that the Triton
compiler refuses (a None pointer in one branch, a plain float global), and a GPU is not always at hand.

`record()` (called by conftest.py on CPU) wraps the interpreter's launch; `launches` holds one launch per
kernel, argument types and kind of constexprs; `python tests/triton_launches.py FILE` compiles the launches
of FILE (JSON) for sm90, with TRITON_INTERPRET=0 so that the kernels are Triton's own JIT functions."""

import importlib
import inspect
import json
import os
import sys

TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int64": "i64", "int32": "i32",
         "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}
launches: dict[str, list] = {}


def signature(fn, args, kwargs) -> tuple[dict, list]:
    """Triton's signature of a launch ({parameter: type}) and its constexprs ([[index, value]])."""
    import torch
    import triton.language as tl

    params = inspect.signature(fn).parameters
    bound = dict(zip(params, args)) | kwargs
    types, constexprs = {}, []
    for i, (name, p) in enumerate(params.items()):
        v = bound.get(name, p.default)
        if p.annotation in (tl.constexpr, "tl.constexpr") or v is None or isinstance(v, tl.constexpr):
            types[name] = "constexpr"
            constexprs.append([i, v.value if isinstance(v, tl.constexpr) else v])
        elif isinstance(v, torch.Tensor):
            types[name] = "*" + TYPES[str(v.dtype).removeprefix("torch.")]
        elif isinstance(v, bool):
            types[name] = "i1"
        elif isinstance(v, int):
            types[name] = "i32" if -2**31 <= v < 2**31 else "i64"
        elif isinstance(v, float):
            types[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {name} of type {type(v).__name__}")
    return types, constexprs


def _kind(value):
    """What of a constexpr changes the code made: None, booleans and strings themselves, numbers their type."""
    return value if value is None or isinstance(value, (bool, str)) else type(value).__name__


def record() -> None:
    import triton.runtime.interpreter as interpreter

    run = interpreter.InterpretedFunction.run
    if getattr(run, "records", False):
        return

    def recording_run(self, *args, grid, warmup, **kwargs):
        types, constexprs = signature(self.fn, args, kwargs)
        key = json.dumps([self.fn.__module__, self.fn.__name__, types, [[i, _kind(v)] for i, v in constexprs]])
        launches.setdefault(key, [self.fn.__module__, self.fn.__name__, types, constexprs])
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    recording_run.records = True
    interpreter.InterpretedFunction.run = recording_run


def compile_all(path: str) -> list[str]:
    """Each launch of the JSON file `path` compiled for an H100 (sm90); the errors, one string each."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    errors = []
    for module, name, types, constexprs in json.load(open(path)):
        fn = getattr(importlib.import_module(module), name)
        while not isinstance(fn, triton.runtime.jit.JITFunction):  # under autotune or heuristics
            fn = fn.fn
        try:
            triton.compile(ASTSource(fn, types, {(i,): v for i, v in constexprs}), target=GPUTarget("cuda", 90, 32))
        except Exception as e:  # noqa: BLE001 (every refusal is reported)
            errors.append(f"{module}.{name} {types}: " + "\n".join(str(e).splitlines()[-8:]))
    return errors


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "0"
    problems = compile_all(sys.argv[1])
    print("\n\n".join(problems) or "all compiled")
    sys.exit(1 if problems else 0)
