"""One training loop for every model (H-Net and baselines), on accelerate: CPU, one GPU or several, the
processes sharing the run through DDP or FSDP (`hnet.training.parallel`). The step itself
(`hnet.training.step.train_step`) and the optimizer (`hnet.training.optim`) are shared with the
benchmarks."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hnet.chunking.diagnostics import CollapseMonitor, routing_diagnostics, routing_sums
from hnet.config import RunConfig, apply_overrides, flat_fields, read_run_json
from hnet.constants import IGNORE_INDEX, LN2
from hnet.models import checkpoint_problem
from hnet.training.checkpoint import (latest_checkpoint, load_checkpoint_state, newest_intact_checkpoint, save_checkpoint,
                                     save_sharded_checkpoint)
from hnet.training.lock import LOCK_NAME, RunLock
from hnet.training.metrics import MetricsWriter, bytes_per_chunk, chunk_counts
from hnet.training.model import model_for_run
from hnet.training.optim import build_optimizer, build_schedule, ratio_loss_scale
from hnet.training.parallel import shard_model
from hnet.training.step import Objective, TrainingError, run_batch, train_step

STRUCTURE_SNIPPET_BYTES = 8192  # validation bytes the structure scores are drawn on at each evaluation


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_bpb: float | None
    initial_val_bpb: float | None
    bytes_per_chunk: list[float]


@torch.no_grad()
def evaluate(model, batches, token_bytes=None) -> dict:
    """Validation bits per byte: total NLL in bits over the raw bytes the scored tokens cover."""
    model.eval()
    nll, n_bytes, chunks = 0.0, 0, None
    for batch in batches:
        out = run_batch(model, batch)
        labels = batch["labels"].view(-1)
        nll += F.cross_entropy(out.logits.view(-1, out.logits.shape[-1]).float(), labels, ignore_index=IGNORE_INDEX,
                               reduction="sum").item()
        scored = labels[labels != IGNORE_INDEX]
        n_bytes += int(scored.numel() if token_bytes is None else token_bytes[scored.cpu()].sum())
        if out.routing:
            counts = chunk_counts(batch, out.routing)
            chunks = counts if chunks is None else chunks + counts
    model.train()
    result = {"val_bpb": nll / LN2 / max(n_bytes, 1), "val_bytes": n_bytes}
    if chunks is not None:
        result["bytes_per_chunk"] = bytes_per_chunk(chunks)
    return result


# What a resumed run may change: how far it trains, when it logs, evaluates and checkpoints, and where the
# shard cache lives (the shards' content does not depend on it). The learning rate and its schedule only
# with `allow_lr_change`: they change what the optimizer does next.
RESUME_MAY_CHANGE = ("train.max_steps", "train.eval_every", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "data.cache_dir")
RESUME_LR_FIELDS = ("train.lr", "train.schedule", "train.warmup_fraction", "train.decay_fraction",
                    "train.min_lr_fraction")


def resume_changes(run_dir: Path, config: RunConfig, allow_lr_change: bool = False) -> dict:
    """{field: [stored, new]} for the fields where `config` differs from the run's run.json; an error
    listing the fields that a resume may not change."""
    stored = flat_fields(RunConfig.from_json(run_dir / "run.json").to_dict())
    new = flat_fields(config.to_dict())
    changed = {k: [stored.get(k), new.get(k)] for k in sorted(stored.keys() | new.keys()) if stored.get(k) != new.get(k)}
    allowed = RESUME_MAY_CHANGE + (RESUME_LR_FIELDS if allow_lr_change else ())
    refused = [k for k in changed if k not in allowed]
    if refused:
        listed = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in refused)
        hint = (" (pass --allow-lr-change to apply a new learning rate or schedule)"
                if set(refused) <= set(RESUME_LR_FIELDS) else "")
        raise ValueError(f"{run_dir}: --resume with a config that differs from the run's run.json in {listed}; "
                         f"a resume may change only {', '.join(allowed)}{hint}")
    return changed


def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool, overwrite: bool,
                    allow_lr_change: bool = False) -> tuple[Path | None, dict]:
    """Refuse to clobber a run that has a checkpoint; return the checkpoint to resume from, if any, and the
    config fields the resume changes. Writes nothing until every check has passed."""
    existing = latest_checkpoint(run_dir) if run_dir.exists() else None
    if resume:
        if existing is None:
            raise ValueError(f"{run_dir}: --resume given, but the run directory has no checkpoint")
        changes = resume_changes(run_dir, config, allow_lr_change)
        intact = newest_intact_checkpoint(run_dir)
        if intact is None:
            raise ValueError(f"{run_dir}: --resume given, but no checkpoint is intact ({checkpoint_problem(existing)}); "
                             "start again with --overwrite")
        return intact, changes
    if existing is not None or (run_dir / "metrics.jsonl").exists():
        if not overwrite:
            raise FileExistsError(f"{run_dir}: the run directory already holds a run; pass --resume or --overwrite")
        for entry in run_dir.iterdir():  # all but the lock this process holds
            if entry.name != LOCK_NAME:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return None, {}


def apply_schedule_change(schedule, fresh_base_lrs: list[float]) -> None:
    """After loading a checkpoint's scheduler state: make the new config's base rates and schedule (the
    lambdas are always the new config's) the ones in force from this step on."""
    schedule.base_lrs = list(fresh_base_lrs)
    for group, base, rule in zip(schedule.optimizer.param_groups, fresh_base_lrs, schedule.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * rule(schedule.last_epoch)
    schedule._last_lr = [g["lr"] for g in schedule.optimizer.param_groups]


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True, allow_lr_change: bool = False) -> TrainResult:
    """Train `config` into `run_dir`, holding the run directory's lock throughout (the main process)."""
    from accelerate import Accelerator

    run_dir = Path(run_dir)
    tc = config.train
    # cpu=True on a machine without CUDA makes `accelerate launch --multi_gpu` start gloo processes there.
    accelerator = Accelerator(mixed_precision="bf16" if _precision(tc) == "bf16" else "no", cpu=not torch.cuda.is_available())
    world = accelerator.num_processes
    if tc.batch_size % (world * tc.grad_accum):
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by processes x grad_accum = {world * tc.grad_accum}")
    lock = RunLock(run_dir).acquire() if accelerator.is_main_process else None
    try:
        return _train(config, run_dir, accelerator, resume, overwrite, progress, allow_lr_change)
    finally:
        if lock is not None:
            lock.release(discard=not (run_dir / "run.json").exists())


def _precision(tc) -> str:
    return tc.precision if tc.precision != "auto" else ("bf16" if torch.cuda.is_available() else "fp32")


def _train(config: RunConfig, run_dir: Path, accelerator, resume: bool, overwrite: bool, progress: bool,
           allow_lr_change: bool) -> TrainResult:
    from accelerate.utils import send_to_device
    from tqdm.auto import tqdm

    from hnet.analysis.structure import structure_snippet
    from hnet.data import TrainLoader, prepare_data, tokenizer_and_split, val_batches
    from hnet.data.tokenizers import check_trained_with

    tc, dc = config.train, config.data
    world, rank = accelerator.num_processes, accelerator.process_index

    resume_from, changes = None, {}
    if accelerator.is_main_process:
        resume_from, changes = prepare_run_dir(run_dir, config, resume, overwrite, allow_lr_change)
    accelerator.wait_for_everyone()
    if resume and resume_from is None:  # another process: the main one's checks passed, take their results
        resume_from = newest_intact_checkpoint(run_dir)
        changes = resume_changes(run_dir, config, allow_lr_change)  # run.json is rewritten only after a barrier

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
    objective = Objective.of(tc, routing_stages)
    # FSDP on one process is the plain model (no process group to shard over), with sharded checkpoints.
    sharded = tc.distributed == "fsdp" and world > 1
    if sharded:  # before the optimizer, whose state then lives in shards beside the parameters'
        shard_model(model, accelerator.device, torch.bfloat16 if _precision(tc) == "bf16" else None)
    optimizer = build_optimizer(model, tc)
    schedule = build_schedule(optimizer, tc)
    micro_rows = tc.batch_size // tc.grad_accum
    loader = TrainLoader(data.train, dc.seq_len, micro_rows, seed=tc.seed, rank=rank, world_size=world, packing=dc.packing)
    start_step = 0
    if resume_from is not None:
        fresh_base_lrs = list(schedule.base_lrs)
        state = load_checkpoint_state(resume_from, model, optimizer)
        check_trained_with(tokenizer, state.get("tokenizer"), resume_from)
        schedule.load_state_dict(state["scheduler"])
        if changes:
            apply_schedule_change(schedule, fresh_base_lrs)
        loader.load_state_dict(state["loader"])
        start_step = state["step"]
    if accelerator.is_main_process:  # only once the checks have passed and the data and model are there
        tmp = run_dir / ".run.json.tmp"
        tmp.write_text(json.dumps(config.to_dict(), indent=1) + "\n")
        tmp.replace(run_dir / "run.json")  # whole or not at all
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    # A forward of a sharded model gathers every process's shards, so all processes take part in the ones
    # the main process alone would otherwise run (structure scores, boundary snapshots).
    forward_everywhere = sharded or accelerator.is_main_process

    def reduce_sum(t):
        return accelerator.reduce(t, reduction="sum") if world > 1 else t


    def validation():
        return evaluate(raw_model, (
            send_to_device(b, accelerator.device)
            for b in val_batches(data.val, dc.seq_len, micro_rows, max_batches=tc.eval_batches, packing=dc.packing)
        ), token_bytes)

    metrics = MetricsWriter(run_dir, enabled=accelerator.is_main_process)
    snippet = data.val.doc(0)[:1024].tobytes() if dc.tokenizer == "bytes" and data.val.num_docs else b""
    scored = b""  # the longer fixed snippet the structure scores are drawn on
    if routing_stages and dc.tokenizer == "bytes" and forward_everywhere:
        scored = structure_snippet((data.val.doc(i) for i in range(data.val.num_docs)), STRUCTURE_SNIPPET_BYTES)

    def evaluation(step, **extra):
        result = validation()
        if scored:
            result.update(structure_fields(raw_model, scored))
        metrics.write(dict(step=step, **extra, **result))
        return result

    if changes:
        metrics.write(dict(step=start_step, event="resume", changed=changes))
    monitor = CollapseMonitor(objective.targets)
    initial = None
    if start_step == 0:
        initial = evaluation(0, processes=world)
    # Passes over the training data: each row reads seq_len new ids of a stream of every document + its BOS.
    ids_per_step = tc.batch_size * dc.seq_len
    stream_ids = loader.epoch_len
    passes_planned = tc.max_steps * ids_per_step / stream_ids
    if start_step == 0:  # after the first evaluation, whose record comes first
        metrics.write(dict(step=0, train_split=dict(docs=data.train.num_docs, tokens=data.train.num_tokens,
                                                    bytes=data.train.num_bytes), passes_planned=passes_planned))
    if accelerator.is_main_process:
        print(f"training data: {data.train.num_bytes:,} bytes in {data.train.num_docs:,} documents; "
              f"{tc.max_steps} steps of {ids_per_step:,} ids read it {passes_planned:.2f} times", flush=True)
    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not (progress and accelerator.is_main_process), desc="train")
    last_eval, window_start, window_ids, window_bytes = initial, time.perf_counter(), 0, 0
    collapsed = [False] * routing_stages
    token_bytes_dev = None if token_bytes is None else token_bytes.to(accelerator.device)
    batches = iter(loader)
    step = start_step
    while step < tc.max_steps:
        micro_batches = [send_to_device(next(batches), accelerator.device) for _ in range(tc.grad_accum)]
        try:
            result = train_step(model, optimizer, micro_batches, objective, tc.grad_clip, accelerator, step=step + 1,
                                ratio_scale=ratio_loss_scale(step, tc), reduce_sum=reduce_sum, world_size=world)
        except TrainingError as e:
            raise TrainingError(f"{e}; the last good checkpoint is kept in {run_dir}/checkpoints") from None
        schedule.step()
        window_ids += result.tokens * world
        if token_bytes is not None:  # the bytes those ids cover (a BPE run); read back at the next log
            window_bytes = window_bytes + sum(token_bytes_dev[b["input_ids"]].sum() for b in micro_batches) * world
        step += 1
        bar.update(1)

        if step % tc.log_every == 0 or step == tc.max_steps:
            elapsed = time.perf_counter() - window_start
            last = result.last
            # over the whole global batch: each process's terms are its share, scaled by the process count
            loss_, ce_, *ratio_ = (reduce_sum(torch.cat([torch.stack([result.loss, last.ce]), last.ratio])) / world).tolist()
            n_bytes = window_ids if token_bytes is None else float(window_bytes)
            record = dict(step=step, loss=loss_, ce=ce_, ratio_loss=sum(ratio_), lr=schedule.get_last_lr()[0],
                          ids_per_s=window_ids / elapsed, bytes_per_s=n_bytes / elapsed,
                          passes=step * ids_per_step / stream_ids)
            if last.routing:
                record["bytes_per_chunk"] = bytes_per_chunk(chunk_counts(result.batch, last.routing))
                record["ratio_loss_scale"] = ratio_loss_scale(step - 1, tc)
                record.update(routing_diagnostics(reduce_sum(routing_sums(last.routing))))
                record["collapsed"] = monitor.update(record)
                for s, (now, before) in enumerate(zip(record["collapsed"], collapsed)):
                    if now and not before and accelerator.is_main_process:
                        bar.write(f"warning: step {step}: routing stage {s + 1} has collapsed: "
                                  f"{record['stage_bytes_per_chunk'][s]:.2f} positions per chunk against a target of "
                                  f"{objective.targets[s]:g}, boundary rate {record['boundary_rate'][s]:.3f}")
                collapsed = record["collapsed"]
            if torch.cuda.is_available():  # every process's peak so far, in GiB (a collective: all ranks log)
                peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=accelerator.device)
                record["peak_gib"] = [round(x, 2) for x in (accelerator.gather(peak) if world > 1 else peak).tolist()]
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", **({
                "B/chunk": "/".join(f"{x:.1f}" for x in record["bytes_per_chunk"]),
                "p~0.5": "/".join(f"{x:.0%}" for x in record["near_threshold"])} if last.routing else {}))
            window_start, window_ids, window_bytes = time.perf_counter(), 0, 0
        if step % tc.eval_every == 0 or step == tc.max_steps:
            last_eval = evaluation(step)
            bar.set_postfix(val_bpb=f"{last_eval['val_bpb']:.3f}")
            if snippet and routing_stages and forward_everywhere:
                _write_boundaries(raw_model, snippet, run_dir / "boundaries" / f"step_{step:06d}.html",
                                  write=accelerator.is_main_process)
        if step % tc.checkpoint_every == 0 or step == tc.max_steps:
            extra = {"loader": loader.state_dict(), "scheduler": schedule.state_dict(), "tokenizer": tokenizer.fingerprint}
            if tc.distributed == "fsdp":  # every process writes its shards
                save_sharded_checkpoint(run_dir, step, raw_model, optimizer, extra, tc.keep_checkpoints)
            elif accelerator.is_main_process:
                save_checkpoint(run_dir, step, raw_model, optimizer, extra, tc.keep_checkpoints)
        accelerator.wait_for_everyone()
    bar.close()
    metrics.close()
    return TrainResult(run_dir, step, last_eval and last_eval["val_bpb"], initial and initial["val_bpb"],
                       (last_eval or {}).get("bytes_per_chunk", []))


def structure_fields(model, text: bytes) -> dict:
    """`structure_scores` of the model on `text`, as metric fields: one list over the routing stages per
    score (None where a score is undefined)."""
    from hnet.analysis import extract_boundaries
    from hnet.analysis.structure import structure_scores

    per_stage = structure_scores(extract_boundaries(model, text))
    return {key: [stage.get(key) for stage in per_stage] for key in per_stage[0] if key != "boundary_rate"}


def _write_boundaries(model, snippet: bytes, path: Path, write: bool = True) -> None:
    """The boundary snapshot of `snippet`; without `write` only its forward (a sharded model's other processes)."""
    from hnet.analysis import extract_boundaries, write_boundary_snapshot

    write_boundary_snapshot(model, snippet, path) if write else extract_boundaries(model, snippet)


def load_run_config(path: str | Path, overrides: list[str] = (), max_steps: int | None = None) -> RunConfig:
    """A run config from a file or a preset name, with `--set` overrides and `--max-steps` applied."""
    data, path = read_run_json(path)
    if max_steps is not None:
        overrides = [*overrides, f"train.max_steps={max_steps}"]
    if overrides:
        data = apply_overrides(data, list(overrides), source=f"{path} (--set)")
    return RunConfig.from_dict(data, str(path))
