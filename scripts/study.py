"""The headline study: learned chunking (H-Net) against BPE and raw bytes, one modality at a time.

    python scripts/study.py --data text --budget-bytes 10000000 --runs-dir runs/study
    python scripts/study.py --dry-run          # the whole grid at tiny size on a few kB, on CPU (CI)
    python scripts/study.py --data code --size scale --processes 8 --budget-bytes 2000000000 \
        --runs-dir runs/scale/code --background --follow 540          # docs/scale.md: 8 GPUs, in the background

For the modality, every model of the grid (the `hnet/configs/<data>/<model>_<size>.json` presets, sized to
matched forward FLOPs per byte) trains through the normal loop on exactly `--budget-bytes` training bytes
(the same number of steps of the same bytes per batch); one configuration repeats with a second seed.
Runs already finished in the runs directory are skipped, so a later session picks up where one stopped.
A run counts as finished once its metrics hold the final evaluation, checkpoint or not: the files a
report needs (run.json, metrics.jsonl, study.json with the device, the BPE tokenizer, and
boundary_stats.json of the 1-stage H-Net, written right after it trains) are small, so a runs directory
without its `checkpoints/` can travel from a GPU machine to another, or back to a laptop, and the report
can be written there. The modality's section of `docs/results.md` is (re)written from those files: the
table and plots of `hnet compare`, the bytes-per-chunk trajectory of each H-Net stage against its
target, and boundary statistics of the trained H-Net on validation text, and a table of how each run
was trained: processes, bytes/s, the scaling efficiency against one GPU, passes over the training data.

With `--processes N` every run trains on N processes (`accelerate launch`, DDP or FSDP as the preset's
`train.distributed` says), one model after another on all GPUs; after each, a short run on one GPU at the
same rows per GPU (`--scaling-steps`) gives the scaling efficiency. `--background` detaches the grid from
the command (its log: RUNS_DIR/study.log), and `--follow SECONDS` prints that log as it grows and then
where each run stands, so that a command of limited length starts the grid or looks in on it; calling
the same command again goes on where the grid stands (finished runs are skipped, an unfinished one
resumes from its last checkpoint). `--only` trains some runs of the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hnet.config import PRESETS_DIR, RunConfig, apply_overrides, flat_fields, read_json
from hnet.eval.compare import compare_runs
from hnet.eval.run_files import read_metrics
from hnet.models import latest_checkpoint, load_model
from hnet.training import TrainingError, train
from hnet.training.launch import launch_env, train_command

REPO = Path(__file__).resolve().parents[1]

# bpe_transformer first: its tokenizer is what the H-Net's boundaries are compared with
GRID = {
    "text": ["bpe_transformer", "hnet_1stage", "hnet_2stage", "transformer", "mamba2", "hnet_space"],
    "code": ["bpe_transformer", "hnet_1stage", "hnet_2stage", "transformer", "mamba2", "hnet_space"],
    "dna": ["bpe_transformer", "hnet_1stage", "hnet_2stage", "transformer", "mamba2"],
    "protein": ["bpe_transformer", "hnet_1stage", "hnet_2stage", "transformer", "mamba2"],
}
SLOWEST = "hnet_2stage"  # at `scale` it trains first: a budget it cannot finish in a lease shows at once
BOUNDARY_RUN = "hnet_1stage"  # whose boundaries the section describes
SECOND_SEED = "hnet_1stage"  # repeated with seed 1 so the table shows the noise
EVALS_PER_RUN = 5
QUICK_SHAPE = ["data.seq_len=128", "train.batch_size=2"]  # --dry-run's batches
# what the grid may change in a run without making it another run (it trains the same model on the same bytes)
IGNORED_CHANGES = ("data.cache_dir", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every")
LOG_NAME, PID_NAME = "study.log", "study.pid"
STARTED: dict[Path, subprocess.Popen] = {}  # grids this process started (their end is seen by poll, not kill)


def grid_order(data: str, size: str) -> list[str]:
    """The grid's models in training order: at `scale` the slowest first, then the BPE Transformer (the
    1-stage H-Net's boundaries are compared with its tokenizer), then the rest."""
    models = GRID[data]
    if size != "scale":
        return models
    return [SLOWEST, *[m for m in models if m != SLOWEST]]


def run_configs(data: str, size: str, budget_bytes: int, data_overrides: list[str], quick: bool,
                checkpoints: int = 1) -> dict[str, RunConfig]:
    configs = {}
    for model in grid_order(data, size):
        preset = PRESETS_DIR / data / f"{model}_{size}.json"
        raw = read_json(preset)
        bpe = raw["data"].get("tokenizer") == "bpe"
        if quick:
            raw = apply_overrides(raw, [*QUICK_SHAPE, "train.eval_batches=2",
                                        *(["data.vocab_size=400", "model.vocab_size=400"] if bpe else [])])
        # a BPE preset's seq_len counts tokens, sized to hold the H-Net's bytes per sequence: count H-Net bytes
        byte_preset = read_json(PRESETS_DIR / data / f"hnet_1stage_{size}.json") if bpe else raw
        if quick:
            byte_preset = apply_overrides(byte_preset, QUICK_SHAPE)
        bytes_per_step = byte_preset["train"]["batch_size"] * byte_preset["data"]["seq_len"]
        steps = max(1, budget_bytes // bytes_per_step)
        logs = 100 if size == "scale" else 20  # at scale a log every ~10 s, so that a run's rate shows early
        overrides = [f"train.max_steps={steps}", f"train.eval_every={max(1, steps // EVALS_PER_RUN)}",
                     f"train.checkpoint_every={max(1, steps // checkpoints)}", f"train.log_every={max(1, steps // logs)}",
                     *data_overrides]
        configs[model] = RunConfig.from_dict(apply_overrides(raw, overrides, f"{preset} (study)"), str(preset))
    seeded = RunConfig.from_dict(apply_overrides(configs[SECOND_SEED].to_dict(), ["train.seed=1"]), "seed 1")
    configs[f"{SECOND_SEED}_seed1"] = seeded
    return configs


def finished(run_dir: Path, config: RunConfig) -> bool:
    """The run was trained with this very config (a run of another budget or preset is not a result of
    this grid) and its metrics hold its final evaluation (its checkpoints may have been left behind)."""
    return not config_changes(run_dir, config) and evaluated_to_the_end(run_dir, config)


def evaluated_to_the_end(run_dir: Path, config: RunConfig) -> bool:
    if not (run_dir / "metrics.jsonl").is_file():
        return False
    return any("val_bpb" in r and r["step"] >= config.train.max_steps for r in read_metrics(run_dir))


def config_changes(run_dir: Path, wanted: RunConfig) -> list[str]:
    """'field: saved -> wanted' for every field where the run's run.json differs from the config the grid
    asks for now (where the shard cache lives, how often it checkpoints and logs do not count); none for a
    run not started."""
    if not (run_dir / "run.json").is_file():
        return []
    a, b = flat_fields(RunConfig.from_json(run_dir / "run.json").to_dict()), flat_fields(wanted.to_dict())
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in IGNORED_CHANGES]


def train_grid(configs: dict[str, RunConfig], runs_dir: Path, progress: bool, report_only: bool = False,
               processes: int = 1, scaling_steps: int = 0, only: list[str] | None = None, heldout: str | None = None) -> None:
    for name, config in configs.items():
        run_dir = runs_dir / name
        changed = config_changes(run_dir, config)
        if not changed and evaluated_to_the_end(run_dir, config):
            print(f"{name}: finished earlier, skipped")
            continue
        if changed:
            print(f"{name}: the run there was trained with another config ({'; '.join(changed)})")
        if report_only or (only and name not in only):
            print(f"{name}: not finished, left out of " + ("the report" if report_only else "this call (--only)"))
            continue
        resume = not changed and run_dir.is_dir() and latest_checkpoint(run_dir) is not None
        print(f"{name}: training {config.train.max_steps} steps on {processes} process(es)" + (" (resuming)" if resume else ""),
              flush=True)
        start = time.perf_counter()
        info = dict(device=device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"), processes=processes)
        try:
            if processes > 1:
                launch_run(config, run_dir, processes, resume, runs_dir / ".logs" / f"{name}.log")
                val_bpb = [r["val_bpb"] for r in read_metrics(run_dir) if "val_bpb" in r][-1]
            else:
                val_bpb = train(config, run_dir, resume=resume, overwrite=not resume, progress=progress).val_bpb
        except (TrainingError, torch.cuda.OutOfMemoryError, LaunchError) as e:  # one failed run must not cost the rest of the grid
            error = str(e).splitlines()[0]
            print(f"{name}: {error}", flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "study.json").write_text(json.dumps(dict(info, error=error)))
            continue
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what a failed run held goes back before the next one
        seconds = time.perf_counter() - start
        info.update(seconds=round(seconds, 1), **throughput(run_dir, config))
        print(f"{name}: val bpb {val_bpb:.4f} in {seconds:.0f} s; {describe(info)}", flush=True)
        (run_dir / "study.json").write_text(json.dumps(info))
        if processes > 1 and scaling_steps:
            one = one_gpu_rate(config, runs_dir, name, processes, scaling_steps)
            efficiency = info["bytes_per_s"] / (processes * one) if one and info["bytes_per_s"] else None
            info.update(bytes_per_s_1gpu=one, scaling_efficiency=efficiency)
            if efficiency is not None:
                print(f"{name}: one GPU at {config.train.batch_size // processes} rows: {one:,.0f} bytes/s; "
                      f"scaling efficiency on {processes}: {efficiency:.2f}", flush=True)
            (run_dir / "study.json").write_text(json.dumps(info))
        if heldout:
            info["heldout_bpb"] = heldout_bpb(config, run_dir, heldout, runs_dir / ".logs" / f"{name}_heldout.json")
            print(f"{name}: {info['heldout_bpb']:.4f} bits per byte on {heldout}", flush=True)
            (run_dir / "study.json").write_text(json.dumps(info))
        if name == BOUNDARY_RUN:
            save_boundary_stats(runs_dir, config.data.kind)


def heldout_bpb(config: RunConfig, run_dir: Path, data_path: str, config_file: Path) -> float:
    """`hnet eval` of the trained run on `data_path` (the code corpus's held-out package): a config whose
    validation side is that corpus. The result also goes to RUN/eval/heldout.json."""
    from hnet.eval import evaluate_path

    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(apply_overrides(config.to_dict(), [
        f"data.path={data_path}", f"data.val_path={data_path}"]), indent=1))
    result, _ = evaluate_path(run_dir, config_file, run_dir / "eval" / "heldout.json", progress=False)
    return result["bpb"]


class LaunchError(RuntimeError):
    """A run started on several processes ended with an error (its log says which)."""


def launch_run(config: RunConfig, run_dir: Path, processes: int, resume: bool, log: Path,
               gpus: str | None = None) -> None:
    """Train `config` into `run_dir` on `processes` processes (`accelerate launch`); its output goes to `log`.
    `gpus`: CUDA_VISIBLE_DEVICES for it. A LaunchError names the error it ended with."""
    log.parent.mkdir(parents=True, exist_ok=True)
    config_file = log.with_suffix(".json")  # the run's config as the grid resolved it
    config_file.write_text(json.dumps(config.to_dict(), indent=1))
    extra = {"TQDM_MININTERVAL": "30"}  # the progress bar in a log file: a line every 30 s, not every step
    if gpus is not None:
        extra["CUDA_VISIBLE_DEVICES"] = gpus
    cmd = train_command(config_file, run_dir, processes, resume)
    # torchelastic's folders, deleted after the run
    with tempfile.TemporaryDirectory(prefix=f".tmp_{log.stem}", dir=log.parent) as tmp, open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=launch_env(Path(tmp), **extra))
    if code:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if "error" in line.lower() and not line.startswith("$")), None)
        raise LaunchError(f"exit status {code}: {said or 'no error line'} (log: {log})")


def steady_rate(records: list[dict], max_steps: int) -> float | None:
    """bytes/s of a run's training (its metrics records), past its first fifth: the median of its log
    windows (a window that holds an evaluation or a checkpoint is slow, the median passes over it)."""
    rates = [r["bytes_per_s"] for r in records if "bytes_per_s" in r and r["step"] > max_steps // 5]
    return statistics.median(rates) if rates else None


def throughput(run_dir: Path, config: RunConfig) -> dict:
    """bytes/s and the passes over the training data, from the run's metrics."""
    records = read_metrics(run_dir)
    data = next((r for r in records if "train_split" in r), {})
    passes = [r["passes"] for r in records if "passes" in r]
    return {"bytes_per_s": steady_rate(records, config.train.max_steps), "train_bytes": data.get("train_split", {}).get("bytes"),
            "passes": passes[-1] if passes else data.get("passes_planned")}


def describe(info: dict) -> str:
    rate = f"{info['bytes_per_s']:,.0f} bytes/s" if info.get("bytes_per_s") else "bytes/s not logged"
    passes = f"{info['passes']:.2f} passes over the training data" if info.get("passes") is not None else ""
    return ", ".join(x for x in (f"{rate} on {info.get('processes', 1)} process(es)", passes) if x)


def one_gpu_rate(config: RunConfig, runs_dir: Path, name: str, processes: int, steps: int) -> float | None:
    """bytes/s of `steps` steps on one GPU at the rows per GPU of the N-process run (the same batch per
    GPU: what the scaling efficiency compares with), in runs_dir/.throughput/NAME without checkpoints."""
    rows = max(1, config.train.batch_size // processes)
    one = RunConfig.from_dict(apply_overrides(config.to_dict(), [
        f"train.batch_size={rows * config.train.grad_accum}", f"train.max_steps={steps}", f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 6)}", "train.eval_batches=1"]), "one GPU")
    run_dir = runs_dir / ".throughput" / name
    try:
        launch_run(one, run_dir, 1, False, runs_dir / ".logs" / f"{name}_1gpu.log", gpus="0" if torch.cuda.is_available() else None)
    except LaunchError as e:
        print(f"{name}: the one-GPU run failed: {e}", flush=True)
        return None
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return steady_rate(read_metrics(run_dir), steps)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"


def plot_bytes_per_chunk(run_dirs: list[Path], out: Path) -> Path | None:
    """Each H-Net stage's bytes per chunk at every evaluation, against its target N (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for run_dir in run_dirs:
        config = RunConfig.from_json(run_dir / "run.json")
        records = [r for r in read_metrics(run_dir) if "val_bpb" in r and "bytes_per_chunk" in r]
        if config.model_type != "hnet" or not records:
            continue
        targets = config.train.ratio_targets or []
        for stage in range(len(records[0]["bytes_per_chunk"])):
            # the ratio loss targets each stage's compression over the stage before: cumulative = product
            target = float(torch.tensor(targets[: stage + 1]).prod()) if targets else None
            line, = ax.plot([r["step"] for r in records], [r["bytes_per_chunk"][stage] for r in records],
                            marker="o", markersize=3, label=f"{run_dir.name} stage {stage + 1}")
            if target:
                ax.axhline(target, color=line.get_color(), linestyle="--", linewidth=0.8)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="step", ylabel="bytes per chunk (cumulative)", yscale="log",
           title="routing: bytes per chunk vs target (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "bytes_per_chunk.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_boundary_stats(runs_dir: Path, data: str, max_bytes: int = 8192) -> dict:
    """Boundary statistics of the trained 1-stage H-Net on the start of its validation split, written to
    its run directory as boundary_stats.json (the report reads them there, with or without checkpoints)."""
    from hnet.analysis import boundary_stats, extract_boundaries
    from hnet.data import BPETokenizer, prepare_data, tokenizer_for_run

    run_dir = runs_dir / BOUNDARY_RUN
    config = RunConfig.from_json(run_dir / "run.json")
    data_split = prepare_data(config.data, tokenizer_for_run(config.data, run_dir))
    text = data_split.val.doc(0)[:max_bytes].tobytes()
    model = load_model(run_dir).eval()
    bpe_dir = runs_dir / "bpe_transformer" / "tokenizer"
    tokenizer = BPETokenizer(bpe_dir / "tokenizer.model") if (bpe_dir / "tokenizer.model").is_file() else None
    stats = boundary_stats(extract_boundaries(model, text), tokenizer=tokenizer)
    for stage in stats["stages"]:
        stage["bytes_per_chunk"].pop("histogram", None)
    saved = {"text_bytes": len(text), "token_agreement": tokenizer is not None, "stages": stats["stages"]}
    if data == "protein":
        saved["record_starts"] = record_start_rates(model, data_split.val, max_bytes)
    (run_dir / "boundary_stats.json").write_text(json.dumps(saved, indent=1))
    return saved


def boundary_section(runs_dir: Path, data: str) -> list[str]:
    path = runs_dir / BOUNDARY_RUN / "boundary_stats.json"
    saved = json.loads(path.read_text()) if path.is_file() else save_boundary_stats(runs_dir, data)
    against = "; token agreement against the `bpe_transformer` run's tokenizer" if saved["token_agreement"] else ""
    lines = [f"Boundary statistics of `{BOUNDARY_RUN}` on the first {saved['text_bytes']:,} bytes of validation text "
             f"(`hnet.analysis.boundary_stats`{against}):", "", "```json", json.dumps(saved["stages"], indent=1), "```"]
    if "record_starts" in saved:
        starts = saved["record_starts"]
        rows = [f"| {k} | {v['bytes']} | {v['boundaries']} | {v['rate']:.3f} |" for k, v in starts["by_offset"].items() if v["bytes"]]
        lines += ["", f"Stage-1 boundary rate by residue offset from the start of each of the first {starts['records']} "
                  f"validation records ({starts['residues']:,} residues):", "", "| offset | residues | boundaries | rate |",
                  "| --- | ---: | ---: | ---: |", *rows]
        if "by_residue" in starts:  # runs from before it was kept have the one-record figures of the JSON only
            rows = [f"| {k} | {v['bytes']} | {v['boundaries']} | {v['rate']:.3f} |" for k, v in starts["by_residue"].items()]
            lines += ["", "Stage-1 boundary rate by residue over the same records:", "",
                      "| residue | count | boundaries | rate |", "| --- | ---: | ---: | ---: |", *rows]
    return lines


def record_start_rates(model, val, max_bytes: int) -> dict:
    """Protein: the boundary rate by residue offset from the start of each record, over whole validation
    records (each run alone, as it is trained), written as one FASTA text for `protein_stats`."""
    import numpy as np

    from hnet.analysis import extract_boundaries
    from hnet.analysis.stats import protein_stats

    fasta, starts, used = b"", [], 0
    for i in range(val.num_docs):
        record = val.doc(i).tobytes()
        if used and used + len(record) > max_bytes:
            break
        first = len(fasta) + 2  # after ">\n"
        starts += [first + s for s in extract_boundaries(model, record).stages[0].starts]
        fasta += b">\n" + record + b"\n"
        used += len(record)
    is_start = np.zeros(len(fasta), dtype=bool)
    is_start[starts] = True
    stats = protein_stats(fasta, is_start)
    return {"records": fasta.count(b">"), "residues": used, "by_offset": stats["rate_by_offset_from_record_start"],
            "by_residue": stats["rate_by_residue"]}


def where_trained(infos: dict[str, dict]) -> list[str]:
    """Date, device and torch of every run, from the study.json each run wrote when it finished training."""
    seen: dict[tuple, list[str]] = {}
    for name, info in infos.items():
        key = (info.get("date", "?"), info.get("device", "?"), info.get("torch", "?"))
        seen.setdefault(key, []).append(name)
    if len(seen) == 1:
        (date, device, version), = seen
        return [f"Trained {date} on {device}, torch {version}."]
    return [f"- {', '.join(names)}: trained {date} on {device}, torch {version}" for (date, device, version), names in seen.items()]


def training_table(infos: dict[str, dict]) -> list[str]:
    """How each run was trained, from its study.json: processes, bytes/s (the median log window past the
    first fifth), one GPU's bytes/s at the same rows per GPU and the scaling efficiency, the training
    split's size and the passes over it."""
    def number(value, form):
        return "" if value is None else format(value, form)

    rows = [f"| {name} | {info.get('processes', 1)} | {number(info.get('bytes_per_s'), ',.0f')} | "
            f"{number(info.get('bytes_per_s_1gpu'), ',.0f')} | {number(info.get('scaling_efficiency'), '.2f')} | "
            f"{number(info.get('train_bytes'), ',')} | {number(info.get('passes'), '.2f')} | "
            f"{number(info.get('heldout_bpb'), '.4f')} |" for name, info in infos.items()]
    return ["How each run was trained (bytes/s: the median logging window past the first fifth of the steps; one GPU:",
            "a short run at the same rows per GPU; passes: training ids read / ids in the training split; held-out:",
            "bits per byte on the corpus given to --heldout, e.g. the code corpus's held-out package):", "",
            "| run | processes | bytes/s | one GPU, bytes/s | scaling efficiency | training split, bytes | passes over it | held-out bpb |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows]


def study_info(run_dir: Path) -> dict:
    path = run_dir / "study.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_section(data: str, runs_dir: Path, configs: dict[str, RunConfig], docs: Path, command: str) -> None:
    out = docs / data
    infos = {name: study_info(runs_dir / name) for name in configs}
    current = {name for name in configs if not config_changes(runs_dir / name, configs[name])}
    failed = {name: infos[name]["error"] for name in configs if name in current and "error" in infos[name]}
    done = [name for name in configs if name in current and name not in failed
            and evaluated_to_the_end(runs_dir / name, configs[name])]
    missing = [name for name in configs if name not in failed and name not in done]
    run_dirs = [runs_dir / name for name in done]
    if not run_dirs:
        raise SystemExit(f"{runs_dir}: no finished run of the {data} grid, nothing to report")
    summaries = compare_runs(run_dirs, out)
    trajectory = plot_bytes_per_chunk(run_dirs, out)
    report = (out / "report.md").read_text().split("\n", 2)[2]  # without its title
    report = report.replace("](bpb_vs", f"]({data}/bpb_vs")
    lines = [f"<!-- section: {data} -->", f"## {data}", "", f"Command: `{command}`", "", *where_trained({name: infos[name] for name in done}), "",
             report.strip(), ""]
    if failed or missing:
        lines += ["Runs of the grid without a result (left out of the table):", "",
                  *[f"- {name}: {error}" for name, error in failed.items()],
                  *[f"- {name}: not trained yet" for name in missing], ""]
    lines += training_table({name: infos[name] for name in done}) + [""]
    if trajectory:
        lines += [f"![bytes per chunk]({data}/{trajectory.name})", ""]
    try:
        lines += boundary_section(runs_dir, data)
    except (FileNotFoundError, ValueError) as e:  # no 1-stage run, or neither its stats nor its checkpoint
        lines += [f"(no boundary statistics: {e})"]
    lines += ["", f"<!-- end: {data} -->"]
    results = docs / "results.md"
    existing = results.read_text() if results.exists() else "# Results of the headline study\n\nWritten by `scripts/study.py`; each section from its runs' metrics files.\n"
    pattern = re.compile(rf"<!-- section: {data} -->.*?<!-- end: {data} -->", re.S)
    section = "\n".join(lines)
    existing = pattern.sub(lambda _: section, existing) if pattern.search(existing) else existing.rstrip() + "\n\n" + section + "\n"
    results.write_text(existing)
    best = min((s for s in summaries if s.val_bpb is not None), key=lambda s: s.val_bpb, default=None)
    print(f"wrote {results} ({data}: {len(summaries)} runs; lowest val bpb {best.val_bpb:.4f} by {best.run})" if best else f"wrote {results}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(GRID), default="text")
    parser.add_argument("--budget-bytes", type=float, default=10_000_000,
                        help="training bytes for every model (2e9 is taken)")
    parser.add_argument("--runs-dir", help="default runs/study (a temporary folder with --dry-run)")
    parser.add_argument("--size", choices=["tiny", "small", "scale"], default="small")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, e.g. data.path=... where the corpus lives elsewhere")
    parser.add_argument("--docs", help="where results.md goes: default docs/ (a temporary folder with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny grid on a few kB of the bundled sample, CPU")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the section from the finished runs (e.g. runs brought back from a GPU machine)")
    parser.add_argument("--processes", type=int, default=1,
                        help="train every run on N processes (accelerate launch; N GPUs, or N CPU processes without one)")
    parser.add_argument("--scaling-steps", type=int, default=30,
                        help="with --processes N: steps of the one-GPU run that gives the scaling efficiency (0: none)")
    parser.add_argument("--checkpoints", type=int, default=1, help="checkpoints a run writes (the last at its end)")
    parser.add_argument("--only", nargs="+", metavar="RUN", help="train only these runs of the grid")
    parser.add_argument("--heldout", metavar="PATH", help="after training, each run's bits per byte on these files "
                        "(e.g. .data/code/heldout, the code corpus's held-out package)")
    parser.add_argument("--background", action="store_true",
                        help="run the grid detached from this command, logging to RUNS_DIR/study.log")
    parser.add_argument("--follow", type=float, metavar="SECONDS",
                        help="print RUNS_DIR/study.log as it grows for up to SECONDS, then where each run stands")
    parser.add_argument("--stop", action="store_true", help="end the grid running in the background, its runs with it")
    args = parser.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    if args.processes < 1:
        parser.error(f"--processes {args.processes}: must be at least 1")
    args.budget_bytes = int(args.budget_bytes)
    # the command that (re)produces the section: without --report-only it trains what is missing, then writes it
    command = "python scripts/study.py " + " ".join(detached_argv(argv, drop_report_only=True))
    if args.stop:
        if args.runs_dir is None:
            parser.error("--stop needs --runs-dir")
        return stop(Path(args.runs_dir))
    if args.background or args.follow is not None:
        if args.runs_dir is None:
            parser.error("--background and --follow need --runs-dir (where the log and the runs stay)")
        log = Path(args.runs_dir) / LOG_NAME
        # from where a grid started now writes, else the end of what came before
        position = max(0, log.stat().st_size - (0 if args.background else 4000)) if log.is_file() else 0
        if args.background and not start_in_background(Path(args.runs_dir), detached_argv(argv)):
            position = max(0, position - 4000)
        return follow(Path(args.runs_dir), args.follow or 0.0, args, position)
    if not args.dry_run:
        return study(args, command)
    with tempfile.TemporaryDirectory(prefix="hnet-study-") as tmp:  # a dry run leaves only what --docs names
        return study(dry_run_settings(args, Path(tmp)), command)


def dry_run_settings(args, tmp: Path):
    """--dry-run: the tiny grid on 768 bytes a run of the first 12 kB, its files under `tmp` unless named."""
    args.size, args.budget_bytes = "tiny", 3 * 2 * 128
    args.runs_dir, args.docs = args.runs_dir or str(tmp / "runs"), args.docs or str(tmp / "docs")
    args.set = ["data.max_bytes=12000", f"data.cache_dir={tmp / 'cache'}", *args.set]
    return args


def study(args, command: str) -> None:
    args.runs_dir, args.docs = args.runs_dir or "runs/study", args.docs or str(REPO / "docs")
    configs = run_configs(args.data, args.size, args.budget_bytes, args.set, quick=args.dry_run, checkpoints=args.checkpoints)
    unknown = sorted(set(args.only or ()) - set(configs))
    if unknown:
        raise SystemExit(f"--only {' '.join(unknown)}: not a run of the {args.data} grid ({', '.join(configs)})")
    runs_dir = Path(args.runs_dir)
    train_grid(configs, runs_dir, progress=not args.dry_run, report_only=args.report_only, processes=args.processes,
               scaling_steps=args.scaling_steps, only=args.only, heldout=args.heldout)
    write_section(args.data, runs_dir, configs, Path(args.docs), command)


def detached_argv(argv: list[str], drop_report_only: bool = False) -> list[str]:
    """The arguments without --background and --follow SECONDS (and --report-only if asked)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--background" or (drop_report_only and a == "--report-only"):
            continue
        elif a == "--follow":
            skip = True
        elif not a.startswith("--follow="):
            out.append(a)
    return out


def running_pid(runs_dir: Path) -> int | None:
    """The pid of the grid running in the background for this runs directory, if it still runs."""
    if runs_dir.resolve() in STARTED:
        child = STARTED[runs_dir.resolve()]
        return child.pid if child.poll() is None else None
    try:
        pid = int((runs_dir / PID_NAME).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def start_in_background(runs_dir: Path, argv: list[str]) -> bool:
    """The grid in a process session of its own (it outlives this command), unless one runs already."""
    pid = running_pid(runs_dir)
    if pid is not None:
        print(f"the grid is running already (pid {pid}); following it", flush=True)
        return False
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / LOG_NAME, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} python scripts/study.py {' '.join(argv)}\n")
        log.flush()
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, env=launch_env())
    (runs_dir / PID_NAME).write_text(str(child.pid))
    STARTED[runs_dir.resolve()] = child
    print(f"started the grid in the background (pid {child.pid}); log: {runs_dir / LOG_NAME}", flush=True)
    return True


def stop(runs_dir: Path) -> None:
    """The background grid is the leader of its own process session: its group holds its runs' processes."""
    pid = running_pid(runs_dir)
    if pid is None:
        print("no grid is running in the background here")
        return
    os.killpg(pid, signal.SIGTERM)
    print(f"stopped the grid (process group {pid}); its unfinished run resumes from its last checkpoint next time")


def follow(runs_dir: Path, seconds: float, args, position: int = 0) -> None:
    """Print the log from `position` as it grows, for up to `seconds` or until the grid ends; then where
    each run stands."""
    log, deadline = runs_dir / LOG_NAME, time.monotonic() + seconds
    while True:
        if log.is_file():
            with open(log, "rb") as f:
                f.seek(position)
                chunk = f.read()
                position += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if running_pid(runs_dir) is None or time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    pid = running_pid(runs_dir)
    print(f"\n--- the grid is {'running (pid ' + str(pid) + ')' if pid else 'not running'}; where each run stands:")
    if args.dry_run:  # the grid the background process trains (where its shards went does not count)
        args = dry_run_settings(args, runs_dir)
    configs = run_configs(args.data, args.size, args.budget_bytes, args.set, quick=args.dry_run, checkpoints=args.checkpoints)
    for name, config in configs.items():
        print(f"  {name}: {standing(runs_dir / name, config)}")


def standing(run_dir: Path, config: RunConfig) -> str:
    if not (run_dir / "metrics.jsonl").is_file():
        return "not started"
    info = study_info(run_dir)
    if "error" in info:
        return f"failed: {info['error']}"
    if evaluated_to_the_end(run_dir, config):
        return "finished" + (f"; {describe(info)}" if info else "")
    records = [r for r in read_metrics(run_dir) if "bytes_per_s" in r]
    if not records:
        return "started"
    last = records[-1]
    left = (config.train.max_steps - last["step"]) * config.train.batch_size * config.data.seq_len
    eta = f"; about {left / last['ids_per_s'] / 60:.1f} minutes to go" if last.get("ids_per_s") else ""
    return (f"step {last['step']} of {config.train.max_steps}, {last['bytes_per_s']:,.0f} bytes/s, "
            f"{last.get('passes', 0):.2f} passes{eta}")


if __name__ == "__main__":
    main()
