"""One training loop for every model (H-Net and baselines), on accelerate: CPU, one GPU or several.

Per optimizer step: `grad_accum` micro-batches; loss = cross-entropy (mean over the predicted tokens of
the global batch) + alpha * ratio loss per routing stage. The ratio loss's F and G are counted over the
positions of all processes (F is a constant; the loss is affine in G), so N processes compute exactly
what one process computes on the same global batch; across micro-batches it is averaged, as the official
training did.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hnet.config import RunConfig, apply_overrides, read_json
from hnet.training.checkpoint import latest_checkpoint, load_checkpoint_state, save_checkpoint
from hnet.training.metrics import MetricsWriter, bytes_per_chunk, chunk_counts
from hnet.training.model import model_for_run
from hnet.training.schedule import lr_multiplier

LN2 = math.log(2)


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_bpb: float | None
    initial_val_bpb: float | None
    bytes_per_chunk: list[float]


def default_ratio_targets(num_routing_stages: int) -> list[float]:
    # The paper's text settings: N = 6 for one stage, (3, 3) for two.
    return [6.0] if num_routing_stages == 1 else [3.0] * num_routing_stages


def ratio_loss_global(routing, targets, counts, world_size: int) -> torch.Tensor:
    """The ratio loss with F and G over the positions of every process (see the module docstring).
    counts: (num_stages, 2) boundaries and positions of each stage, summed over the processes."""
    total = 0.0
    for r, N, (boundaries, positions) in zip(routing, targets, counts):
        p = r.boundary_prob[..., 1].float()
        frac = boundaries / positions
        G = p.sum() / positions * world_size  # averaging over processes (DDP) yields the global mean
        total = total + N / (N - 1) * ((N - 1) * frac * G + (1 - frac) * (1 - G))
    return total


def run_batch(model, batch):
    """A loader batch through the model: packed (1, B*L) with cu_seqlens, or plain rows (separator packing)."""
    if batch.get("cu_seqlens") is not None:
        return model(batch["input_ids"].reshape(1, -1), cu_seqlens=batch["cu_seqlens"])
    return model(batch["input_ids"])


def forward_loss(model, batch, targets, alpha, reduce_sum, world_size):
    out = run_batch(model, batch)
    logits = out.logits.view(-1, out.logits.shape[-1]).float()
    labels = batch["labels"].view(-1)
    nll = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    # One all-reduce per micro-batch: the label count, then each routing stage's boundaries and positions.
    local_counts = [(labels != -100).sum().float()]
    for r in out.routing:
        local_counts += [r.boundary_mask.sum().float(), labels.new_full((), r.boundary_prob[..., 1].numel(), dtype=torch.float32)]
    counts = reduce_sum(torch.stack(local_counts))
    ce = nll / counts[0] * world_size
    ratio = (ratio_loss_global(out.routing, targets, counts[1:].view(-1, 2), world_size) if out.routing
             else torch.zeros((), device=ce.device))
    return ce + alpha * ratio, ce.detach(), ratio.detach(), out.routing


@torch.no_grad()
def evaluate(model, batches, token_bytes=None) -> dict:
    """Validation bits per byte: total NLL in bits over the raw bytes the scored tokens cover."""
    model.eval()
    nll, n_bytes, chunks = 0.0, 0, None
    for batch in batches:
        out = run_batch(model, batch)
        labels = batch["labels"].view(-1)
        nll += F.cross_entropy(out.logits.view(-1, out.logits.shape[-1]).float(), labels, ignore_index=-100, reduction="sum").item()
        scored = labels[labels != -100]
        n_bytes += int(scored.numel() if token_bytes is None else token_bytes[scored.cpu()].sum())
        if out.routing:
            counts = chunk_counts(batch, out.routing)
            chunks = counts if chunks is None else chunks + counts
    model.train()
    result = {"val_bpb": nll / LN2 / max(n_bytes, 1), "val_bytes": n_bytes}
    if chunks is not None:
        result["bytes_per_chunk"] = bytes_per_chunk(chunks)
    return result


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber a run that has a checkpoint; return the checkpoint to resume from, if any."""
    existing = latest_checkpoint(run_dir) if run_dir.exists() else None
    if resume:
        if existing is None:
            raise ValueError(f"{run_dir}: --resume given, but the run directory has no checkpoint")
        return existing
    if existing is not None or (run_dir / "metrics.jsonl").exists():
        if not overwrite:
            raise FileExistsError(f"{run_dir}: the run directory already holds a run; pass --resume or --overwrite")
        shutil.rmtree(run_dir)
    return None


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import send_to_device
    from tqdm.auto import tqdm

    from hnet.data import TrainLoader, prepare_data, tokenizer_and_split, val_batches

    run_dir = Path(run_dir)
    tc, dc = config.train, config.data
    precision = tc.precision if tc.precision != "auto" else ("bf16" if torch.cuda.is_available() else "fp32")
    # cpu=True on a machine without CUDA makes `accelerate launch --multi_gpu` start gloo processes there.
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    if tc.batch_size % (world * tc.grad_accum):
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by processes x grad_accum = {world * tc.grad_accum}")

    resume_from = None
    if accelerator.is_main_process:
        resume_from = prepare_run_dir(run_dir, resume, overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    accelerator.wait_for_everyone()
    if resume and resume_from is None:
        resume_from = latest_checkpoint(run_dir)

    torch.manual_seed(tc.seed)
    tokenizer, split_docs = tokenizer_and_split(dc, run_dir, is_main=accelerator.is_main_process,
                                                wait=accelerator.wait_for_everyone)
    data = prepare_data(dc, tokenizer, split_docs) if accelerator.is_main_process else None
    del split_docs  # the corpus in memory: the shards now hold it
    accelerator.wait_for_everyone()
    if data is None:
        data = prepare_data(dc, tokenizer)  # a cache hit: the main process wrote it
    token_bytes = None if dc.tokenizer == "bytes" else torch.as_tensor(tokenizer.token_bytes())

    model = model_for_run(config)
    routing_stages = model.num_stages - 1
    targets = tc.ratio_targets or default_ratio_targets(routing_stages)
    optimizer = torch.optim.AdamW(
        model.param_groups(tc.lr, tc.weight_decay, tc.lr_multipliers), lr=tc.lr, betas=tuple(tc.betas),
        # fused on GPU (a few kernels for all parameters, as the step benchmarks time it); on CPU the plain
        # per-parameter loop. Both are elementwise: the same result on any number of processes.
        fused=torch.cuda.is_available(), foreach=False,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, tc.max_steps, tc.schedule, tc.warmup_fraction, tc.decay_fraction, tc.min_lr_fraction))
    micro_rows = tc.batch_size // tc.grad_accum
    loader = TrainLoader(data.train, dc.seq_len, micro_rows, seed=tc.seed, rank=rank, world_size=world, packing=dc.packing)
    start_step = 0
    if resume_from is not None:
        state = load_checkpoint_state(resume_from, model, optimizer)
        schedule.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        start_step = state["step"]
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    def reduce_sum(t):
        return accelerator.reduce(t, reduction="sum") if world > 1 else t


    def validation():
        return evaluate(raw_model, (
            send_to_device(b, accelerator.device)
            for b in val_batches(data.val, dc.seq_len, micro_rows, max_batches=tc.eval_batches, packing=dc.packing)
        ), token_bytes)

    metrics = MetricsWriter(run_dir, enabled=accelerator.is_main_process)
    snippet = data.val.doc(0)[:1024].tobytes() if dc.tokenizer == "bytes" and data.val.num_docs else b""
    initial = None
    if start_step == 0:
        initial = validation()
        metrics.write(dict(step=0, processes=world, **initial))
    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not (progress and accelerator.is_main_process), desc="train")
    last_eval, window_start, window_tokens = initial, time.perf_counter(), 0
    batches = iter(loader)
    step = start_step
    while step < tc.max_steps:
        for micro in range(tc.grad_accum):
            batch = send_to_device(next(batches), accelerator.device)
            sync = micro == tc.grad_accum - 1
            with accelerator.no_sync(model) if not sync else nullcontext():
                loss, ce, ratio, routing = forward_loss(model, batch, targets, tc.ratio_loss_weight, reduce_sum, world)
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1}; the last good checkpoint is kept in {run_dir}/checkpoints")
                accelerator.backward(loss / tc.grad_accum)
            window_tokens += batch["input_ids"].numel() * world
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        if step % tc.log_every == 0 or step == tc.max_steps:
            elapsed = time.perf_counter() - window_start
            # over the whole global batch: each process's terms are its share, scaled by the process count
            loss_, ce_, ratio_ = (reduce_sum(torch.stack([loss, ce, ratio]).detach()) / world).tolist()
            record = dict(step=step, loss=loss_, ce=ce_, ratio_loss=ratio_,
                          lr=schedule.get_last_lr()[0], bytes_per_s=window_tokens / elapsed)
            if routing:
                record["bytes_per_chunk"] = bytes_per_chunk(chunk_counts(batch, routing))
            if torch.cuda.is_available():  # every process's peak so far, in GiB (a collective: all ranks log)
                peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=accelerator.device)
                record["peak_gib"] = [round(x, 2) for x in (accelerator.gather(peak) if world > 1 else peak).tolist()]
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", **({"B/chunk": "/".join(f"{x:.1f}" for x in record["bytes_per_chunk"])} if routing else {}))
            window_start, window_tokens = time.perf_counter(), 0
        if step % tc.eval_every == 0 or step == tc.max_steps:
            last_eval = validation()
            metrics.write(dict(step=step, **last_eval))
            bar.set_postfix(val_bpb=f"{last_eval['val_bpb']:.3f}")
            if snippet and routing_stages and accelerator.is_main_process:
                _write_boundaries(raw_model, snippet, run_dir / "boundaries" / f"step_{step:06d}.html")
        if (step % tc.checkpoint_every == 0 or step == tc.max_steps) and accelerator.is_main_process:
            save_checkpoint(run_dir, step, raw_model, optimizer, {"loader": loader.state_dict(), "scheduler": schedule.state_dict()}, tc.keep_checkpoints)
        accelerator.wait_for_everyone()
    bar.close()
    metrics.close()
    return TrainResult(run_dir, step, last_eval and last_eval["val_bpb"], initial and initial["val_bpb"],
                       (last_eval or {}).get("bytes_per_chunk", []))


def _write_boundaries(model, snippet: bytes, path: Path) -> None:
    try:
        from hnet.analysis import write_boundary_snapshot
    except ImportError:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_boundary_snapshot(model, snippet, path)


def load_run_config(path: str | Path, overrides: list[str] = (), max_steps: int | None = None) -> RunConfig:
    data = read_json(path)
    if max_steps is not None:
        overrides = [*overrides, f"train.max_steps={max_steps}"]
    if overrides:
        data = apply_overrides(data, list(overrides), source=f"{path} (--set)")
    return RunConfig.from_dict(data, str(path))
