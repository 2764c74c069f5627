"""The headline study: learned chunking (H-Net) against BPE and raw bytes, one modality at a time.

    python scripts/study.py --data text --budget-bytes 10000000 --runs-dir runs/study
    python scripts/study.py --dry-run          # the whole grid at tiny size on a few kB, on CPU (CI)

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
target, and boundary statistics of the trained H-Net on validation text.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
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

REPO = Path(__file__).resolve().parents[1]

# bpe_transformer first: its tokenizer is what the H-Net's boundaries are compared with
GRID = {
    "text": ["bpe_transformer", "hnet_1stage", "hnet_2stage", "transformer", "mamba2", "hnet_space"],
    "dna": ["bpe_transformer", "hnet_1stage", "hnet_2stage", "transformer", "mamba2"],
    "protein": ["bpe_transformer", "hnet_1stage", "hnet_2stage", "transformer", "mamba2"],
}
BOUNDARY_RUN = "hnet_1stage"  # whose boundaries the section describes
SECOND_SEED = "hnet_1stage"  # repeated with seed 1 so the table shows the noise
EVALS_PER_RUN = 5
QUICK_SHAPE = ["data.seq_len=128", "train.batch_size=2"]  # --dry-run's batches


def run_configs(data: str, size: str, budget_bytes: int, data_overrides: list[str], quick: bool) -> dict[str, RunConfig]:
    configs = {}
    for model in GRID[data]:
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
        overrides = [f"train.max_steps={steps}", f"train.eval_every={max(1, steps // EVALS_PER_RUN)}",
                     f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 20)}", *data_overrides]
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
    asks for now (where the shard cache lives does not count); none for a run not started."""
    if not (run_dir / "run.json").is_file():
        return []
    a, b = flat_fields(RunConfig.from_json(run_dir / "run.json").to_dict()), flat_fields(wanted.to_dict())
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k != "data.cache_dir"]


def train_grid(configs: dict[str, RunConfig], runs_dir: Path, progress: bool, report_only: bool = False) -> None:
    for name, config in configs.items():
        run_dir = runs_dir / name
        changed = config_changes(run_dir, config)
        if not changed and evaluated_to_the_end(run_dir, config):
            print(f"{name}: finished earlier, skipped")
            continue
        if changed:
            print(f"{name}: the run there was trained with another config ({'; '.join(changed)})")
        if report_only:
            print(f"{name}: not finished, left out of the report")
            continue
        resume = not changed and run_dir.is_dir() and latest_checkpoint(run_dir) is not None
        print(f"{name}: training {config.train.max_steps} steps" + (" (resuming)" if resume else ""), flush=True)
        start = time.perf_counter()
        info = dict(device=device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
        try:
            result = train(config, run_dir, resume=resume, overwrite=not resume, progress=progress)
        except (TrainingError, torch.cuda.OutOfMemoryError) as e:  # one failed run must not cost the rest of the grid
            error = str(e).splitlines()[0]
            print(f"{name}: {error}", flush=True)
            (run_dir / "study.json").write_text(json.dumps(dict(info, error=error)))
            continue
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what a failed run held goes back before the next one
        seconds = time.perf_counter() - start
        print(f"{name}: val bpb {result.val_bpb:.4f} in {seconds:.0f} s", flush=True)
        (run_dir / "study.json").write_text(json.dumps(dict(info, seconds=round(seconds, 1))))
        if name == BOUNDARY_RUN:
            save_boundary_stats(runs_dir, config.data.kind)


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
    parser.add_argument("--budget-bytes", type=int, default=10_000_000, help="training bytes for every model")
    parser.add_argument("--runs-dir", help="default runs/study (a temporary folder with --dry-run)")
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, e.g. data.path=... where the corpus lives elsewhere")
    parser.add_argument("--docs", help="where results.md goes: default docs/ (a temporary folder with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny grid on a few kB of the bundled sample, CPU")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the section from the finished runs (e.g. runs brought back from a GPU machine)")
    args = parser.parse_args(argv)
    # the command that (re)produces the section: without --report-only it trains what is missing, then writes it
    command = "python scripts/study.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    if not args.dry_run:
        return study(args, command)
    with tempfile.TemporaryDirectory(prefix="hnet-study-") as tmp:  # a dry run leaves only what --docs names
        tmp = Path(tmp)
        args.size, args.budget_bytes = "tiny", 3 * 2 * 128
        args.runs_dir, args.docs = args.runs_dir or str(tmp / "runs"), args.docs or str(tmp / "docs")
        args.set = ["data.max_bytes=12000", f"data.cache_dir={tmp / 'cache'}", *args.set]
        return study(args, command)


def study(args, command: str) -> None:
    args.runs_dir, args.docs = args.runs_dir or "runs/study", args.docs or str(REPO / "docs")
    configs = run_configs(args.data, args.size, args.budget_bytes, args.set, quick=args.dry_run)
    runs_dir = Path(args.runs_dir)
    train_grid(configs, runs_dir, progress=not args.dry_run, report_only=args.report_only)
    write_section(args.data, runs_dir, configs, Path(args.docs), command)


if __name__ == "__main__":
    main()
