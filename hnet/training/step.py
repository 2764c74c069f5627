"""The training step: the one `hnet train` takes and the benchmarks time.

Per optimizer step: the micro-batches of one global batch, each micro-batch's loss = cross-entropy (mean
over its predicted tokens on all processes) + alpha_s * ratio loss of each routing stage s, and the mean of
those losses over the micro-batches (so a micro-batch with fewer scored tokens weighs each token more). The
ratio loss's F and G are counted over the positions of all processes (`hnet.chunking.ratio_loss`), so N
processes compute exactly what one process computes on the same global batch; across micro-batches it is
averaged, as the official training did.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hnet.chunking.ratio_loss import ratio_loss_terms
from hnet.config import default_ratio_targets
from hnet.constants import IGNORE_INDEX


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss); the last good checkpoint is kept."""


@dataclass
class Objective:
    """What a step minimises besides cross-entropy: per routing stage, a target bytes per chunk N, the
    ratio loss's weight alpha and optionally a band (`ratio_loss_terms`)."""

    targets: list[float]
    weights: list[float]
    bands: list | None = None

    @classmethod
    def of(cls, tc, num_routing_stages: int) -> "Objective":
        """From a TrainConfig, for a model with this many routing stages."""
        targets = tc.ratio_targets or default_ratio_targets(num_routing_stages)
        weight = tc.ratio_loss_weight
        weights = list(weight) if isinstance(weight, list) else [weight] * num_routing_stages
        return cls(targets, weights, tc.ratio_loss_bands)


@dataclass
class LossOutput:
    loss: torch.Tensor  # what is differentiated
    ce: torch.Tensor  # detached, like the rest
    ratio: torch.Tensor  # (num_routing_stages,) unweighted ratio loss per stage
    routing: list
    counts: torch.Tensor  # labels, then (boundaries, positions) per stage, over all processes


def run_batch(model, batch):
    """A loader batch through the model: packed (1, B*L) with cu_seqlens, or plain rows (separator packing)."""
    if batch.get("cu_seqlens") is not None:
        return model(batch["input_ids"].reshape(1, -1), cu_seqlens=batch["cu_seqlens"])
    return model(batch["input_ids"])


def forward_loss(model, batch, objective: Objective, reduce_sum=None, world_size: int = 1,
                 ratio_scale: float = 1.0) -> LossOutput:
    """The loss of one micro-batch. reduce_sum sums a tensor over the processes (None: one process).
    ratio_scale multiplies every stage's weight (a warmup of the ratio loss)."""
    out = run_batch(model, batch)
    logits = out.logits.view(-1, out.logits.shape[-1]).float()
    labels = batch["labels"].view(-1)
    nll = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    # One all-reduce per micro-batch: the label count, then each routing stage's boundaries and positions.
    local = [(labels != IGNORE_INDEX).sum().float()]
    for r in out.routing:
        local += [r.boundary_mask.sum().float(), labels.new_full((), r.boundary_prob[..., 1].numel(), dtype=torch.float32)]
    counts = torch.stack(local)
    if reduce_sum is not None:
        counts = reduce_sum(counts)
    ce = nll / counts[0] * world_size
    loss = ce
    if out.routing:
        terms = ratio_loss_terms(out.routing, objective.targets, counts[1:].view(-1, 2), world_size, objective.bands)
        loss = ce + sum(ratio_scale * w * t for w, t in zip(objective.weights, terms))
        ratio = torch.stack(terms).detach()
    else:
        ratio = ce.new_zeros(0)
    return LossOutput(loss, ce.detach(), ratio, out.routing, counts)


@dataclass
class StepOutput:
    loss: torch.Tensor  # of the last micro-batch, detached
    last: LossOutput  # the last micro-batch's loss parts and routing
    batch: dict  # the last micro-batch
    tokens: int  # ids through the model in this step, this process


def train_step(model, optimizer, micro_batches, objective: Objective, grad_clip: float = 1.0,
               accelerator=None, step: int | None = None, ratio_scale: float = 1.0,
               reduce_sum=None, world_size: int = 1) -> StepOutput:
    """Forward and backward over `micro_batches` (the gradient of their mean loss), gradient clipping,
    one optimizer step, gradients freed. With an accelerate `Accelerator`, its backward, clipping and
    no-sync are used; without, plain torch. A non-finite loss raises TrainingError naming `step` (the
    step being taken, counted from 1) before anything is applied."""
    micro_batches = list(micro_batches)
    n, tokens = len(micro_batches), 0
    for i, batch in enumerate(micro_batches):
        sync = accelerator is None or i == n - 1
        with nullcontext() if sync else accelerator.no_sync(model):
            out = forward_loss(model, batch, objective, reduce_sum, world_size, ratio_scale)
            if not torch.isfinite(out.loss):
                where = f" at step {step}" if step is not None else ""
                raise TrainingError(f"non-finite loss ({out.loss.item()}){where}")
            loss = out.loss / n
            accelerator.backward(loss) if accelerator is not None else loss.backward()
        tokens += batch["input_ids"].numel()
    if grad_clip > 0:
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        clip(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(out.loss.detach(), out, batch, tokens)
