"""How several processes share a run: DDP through accelerate, or FSDP2 (`train.distributed: "fsdp"`).

FSDP2 (torch's `fully_shard`) is applied here, from outside the model, on top of the process group that
`accelerate launch` starts. accelerate's own FSDP plugin would apply the same `fully_shard`, but only on
GPUs: accelerate 1.16 turns a plugin into `DistributedType.FSDP` for GPU-like devices alone, and with
`cpu=True` it silently trains with DDP instead (`AcceleratorState` never leaves `MULTI_CPU`). Applying it
ourselves gives one path, the one CI runs on CPU processes over gloo, and the one the GPUs run.

The sharding: every residual `Block` (a mixer and its MLP) is one FSDP unit, gathered just before its
forward and freed after it (again for the backward); the rest of the model (embedding, LM head, routing
modules, residual projections, final norms) is the root unit. Parameters, gradients and the AdamW state
built over them are sharded over the processes, in fp32: the sharded fp32 parameters are the master
weights. Mixed precision is bf16 autocast around the forward, as accelerate applies it for DDP, so an FSDP
step computes what a DDP step computes (the model keeps float32 islands, the residual stream and the
routing among them, which bf16 parameters would round). Gradients are reduce-scattered in fp32 and
averaged over the processes, as DDP averages them.

One process is no process group: an "fsdp" run on one process trains the plain model, as "ddp" does, and
writes the same sharded checkpoints, so a run moves between any numbers of processes.
"""

from __future__ import annotations

import warnings

import torch

from hnet.layers.block import Block


def shard_model(model, device: torch.device, autocast_dtype: torch.dtype | None = None):
    """Apply FSDP2 to `model` in place (see the module docstring) over all processes of the default process
    group, its shards on `device` (this process's: accelerate has made it the current one); its forward
    runs under autocast to `autocast_dtype` if given. Build the optimizer after this, over the sharded
    parameters. Returns the model."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # A Block returns out_proj's output, a view (linear over a 3-d input), and FSDP2 warns that an in-place
    # op on it would skip the backward's gather. No code writes into a block's output in place;
    # tests/test_fsdp.py holds the sharded run's losses and weights to the one-process run's.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if autocast_dtype is not None:
        model.forward = torch.autocast(device.type, dtype=autocast_dtype)(model.forward)
    return model
