"""Every Triton kernel the CPU tests launched (through the interpreter) compiles for an H100: the
interpreter runs Python that Triton's compiler refuses, which session 13 found only on a GPU (a None
pointer in one branch of the rotary kernel, a float global in the softplus). conftest.py records the
launches of the whole run and puts this test last; run alone, it records a tiny model's own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import triton_launches
from hnet.ops.dispatch import kernel_path
from test_generation import random_model

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="on a GPU the kernels compile anyway")


@pytest.mark.slow
def test_every_kernel_launched_on_the_interpreter_compiles_for_a_gpu(tmp_path):
    triton_launches.record()
    for name in ("2stage", "1stage_hybrid"):  # at least two models' forward, backward and prefill, fused or not
        for path in ("fast", "unfused"):
            model = random_model(name).train()
            with kernel_path(path):
                model(torch.randint(0, 256, (1, 40))).logits.sum().backward()
                model.eval().generate([b"packed", b"prefill"], 2)  # the prefill's rotary kernels:
                model.generate([b"one fresh row"], 2)  # over packed rows, and into a new cache
    launches = tmp_path / "launches.json"
    launches.write_text(json.dumps(list(triton_launches.launches.values())))
    names = {name for _, name, _, _ in triton_launches.launches.values()}
    assert {"_rotate", "_chunk_cumsum", "_conv1d_fwd", "_ema_fwd"} <= names, names
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("triton_launches.py")), str(launches)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
