"""`hnet train` on N processes through `accelerate launch`: the command and its environment, for the
scripts that start runs (the study, the multi-GPU benchmark).

Several processes share the run as its config says (`train.distributed`: DDP or FSDP). With no GPU,
`--multi_gpu` starts gloo processes on the CPU (the loop asks accelerate for cpu=True). NVLink multicast
stays off in every process (NCCL_NVLS_ENABLE=0 and its PyTorch and NVSHMEM twins): a program that uses it
can put a shared host's GPUs out of service.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `hnet`


def train_command(config: str | Path, run_dir: str | Path, processes: int = 1, resume: bool = False,
                  overrides: list[str] = ()) -> list[str]:
    """`hnet train CONFIG --out RUN_DIR (--resume | --overwrite)` on `processes` processes: one plain
    Python process, or `accelerate launch` of N."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--num_processes",
                     str(processes), "--mixed_precision", "no", "--dynamo_backend", "no"]  # the loop picks bf16 itself
    return [*launcher, "-m", "hnet.cli", "train", str(config), "--out", str(run_dir),
            *(f"--set={o}" for o in overrides), "--resume" if resume else "--overwrite"]


def launch_env(tmp: str | Path | None = None, **extra: str) -> dict[str, str]:
    """This environment with multicast off, this package importable, output unbuffered and, if given,
    temporary files (torchelastic's folders among them) under `tmp`."""
    env = dict(os.environ, **MULTICAST_OFF, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return env
