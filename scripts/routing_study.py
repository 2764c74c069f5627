"""The routing recipe study: which setting makes a small H-Net's learned boundaries follow the structure of
its data, at budgets a user can afford.

    python scripts/routing_study.py --runs-dir .runs/routing --budget-bytes 100000000 --parallel 5 \
        --text-data .data/books --dna-data .data/bacteria.fa.gz          # on one GPU: five arms at a time
    python scripts/routing_study.py --runs-dir .runs/routing --report    # docs/results.md's section + plots
    python scripts/routing_study.py --dry-run                            # tiny arms on CPU: checks the code

Each arm is the `small` text 1-stage preset (hnet/configs/text/hnet_1stage_small.json) with a few fields
changed (ARMS), trained by `hnet train` on the same bytes per optimizer step (8 x 8192, as micro-batches of
`--micro-rows` sequences so that several arms share one GPU's memory) for `--budget-bytes` training
bytes; besides them the 2-stage text preset (does its second stage collapse?) and the DNA 1-stage preset
(codon-frame structure). Small models
leave most of a GPU idle, so the arms run as parallel processes on one GPU: each `small` arm peaks at 10-13 GiB
with `--micro-rows 4`, so an H100 (80 GB) holds 5-6 at once (ten ran out of memory) and an H200 about ten;
five together trained at ~740K bytes/s in all on an H100, against 240-330K for one alone. A run's metrics (routing
diagnostics at every log step, structure scores on its validation snippet at every evaluation) are all the
report needs: checkpoints are deleted when a run ends, so the runs directory travels. An arm whose
metrics already hold its last evaluation is skipped; one cut short is reported at the bytes it reached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT_1STAGE = "text/hnet_1stage"  # presets as hnet/configs/<this>_<size>.json

# name: (preset, overrides, why)
ARMS = {
    "base": (TEXT_1STAGE, [], "the preset: the paper's alpha 0.03, N = 6"),
    "base_seed1": (TEXT_1STAGE, ["train.seed=1"], "the preset, another seed: the noise between runs"),
    "alpha0.05": (TEXT_1STAGE, ["train.ratio_loss_weight=0.05"], "alpha 0.05 (reported to give word-like boundaries at ~20M parameters)"),
    "alpha0.1": (TEXT_1STAGE, ["train.ratio_loss_weight=0.1"], "alpha 0.1"),
    "target4": (TEXT_1STAGE, ["train.ratio_targets=[4.0]"], "N = 4: closer to the ~4.5 bytes of an English word and its space"),
    "router_lr4": (TEXT_1STAGE, ["train.router_lr_multiplier=4.0"], "the routing module's lr x4"),
    "band4-8": (TEXT_1STAGE, ["train.ratio_loss_bands=[[4.0,8.0]]"], "the band ratio loss: free between 4 and 8 bytes per chunk"),
    "band6-12": (TEXT_1STAGE, ["train.ratio_loss_bands=[[6.0,12.0]]"],
                 "the band with the target as its floor: band4-8 settled at its lower edge, so this one should not cost compute"),
    "batch4x": (TEXT_1STAGE, [],
                "4x the sequences per optimizer step (the paper's step is 2M bytes), the same bytes in all"),
    "2stage": ("text/hnet_2stage", [], "the 2-stage preset: N = (3, 3)"),
    "dna": ("dna/hnet_1stage", [], "DNA, 1-stage preset"),
}
BATCH_SCALE = {"batch4x": 4}  # arms that multiply the preset's sequences per optimizer step
EVALS = 8  # evaluations per run, so curves have points
MICRO_ROWS = 4  # sequences per micro-batch (--micro-rows): fewer lets more arms share a GPU's memory
DRY_RUN = ["data.seq_len=128", "train.eval_batches=2", "data.max_bytes=100000"]
DRY_RUN_MODEL = {"arch_layout": ["m1", ["T1"], "m1"], "d_model": [32, 64], "d_intermediate": [0, 128], "vocab_size": 256,
                 "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 8, "expand": 2},
                 "attn_cfg": {"num_heads": [1, 2], "rotary_emb_dim": [16, 16], "window_size": [-1, -1]}}


def arm_config(name: str, budget_bytes: int, data_paths: dict[str, str | None], dry_run: bool,
               micro_rows: int = MICRO_ROWS, size: str = "small") -> dict:
    """The run config dict of an arm: its preset, its overrides, the study's budget and cadence."""
    from hnet.config import RunConfig, apply_overrides, read_json

    preset, overrides, _ = ARMS[name]
    raw = read_json(REPO / "hnet" / "configs" / f"{preset}_{size}.json")
    if dry_run:
        raw = apply_overrides(raw, DRY_RUN)
        raw["model"] = DRY_RUN_MODEL
        raw["data"].update(path={"text": "package:tinyshakespeare.txt", "dna": "package:ecoli_genome_sample.fa"}[raw["data"]["kind"]],
                           source={"text": "text", "dna": "fasta"}[raw["data"]["kind"]], split="tail")
    elif data_paths.get(raw["data"]["kind"]):
        path = data_paths[raw["data"]["kind"]]
        raw["data"]["path"] = path
        if raw["data"]["source"] == "datasets" and not path.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            raw["data"]["source"] = "text"  # a folder of one .txt(.gz) per document
    raw = apply_overrides(raw, overrides)
    raw["train"]["batch_size"] *= BATCH_SCALE.get(name, 1)
    batch = raw["train"]["batch_size"]
    raw["train"]["grad_accum"] = max(1, batch // micro_rows) if not dry_run else 1
    bytes_per_step = batch * raw["data"]["seq_len"]
    steps = max(EVALS, budget_bytes // bytes_per_step)
    raw["train"].update(max_steps=steps, eval_every=max(1, steps // EVALS), log_every=max(1, steps // 80),
                        checkpoint_every=steps, keep_checkpoints=1)
    RunConfig.from_dict(raw, f"arm {name}")  # refuse a bad arm before anything runs
    return raw


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def finished(run_dir: Path, config: dict) -> bool:
    saved = run_dir / "arm.json"
    if not saved.is_file() or json.loads(saved.read_text()) != config:
        return False
    return any("val_bpb" in r and r["step"] >= config["train"]["max_steps"] for r in read_metrics(run_dir / "run"))


def train_arms(names: list[str], runs_dir: Path, budget_bytes: int, parallel: int, data_paths: dict, dry_run: bool,
               micro_rows: int = MICRO_ROWS, size: str = "small") -> None:
    """Each arm as its own `hnet train` process, `parallel` at a time; the shard caches are prepared
    first, one process per corpus, so the arms do not race to write them."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for name in names:
        config = arm_config(name, budget_bytes, data_paths, dry_run, micro_rows, size)
        run_dir = runs_dir / name
        if finished(run_dir, config):
            print(f"{name}: finished earlier, skipped")
            continue
        todo.append((name, config, run_dir))
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    prepared = set()
    for name, config, run_dir in todo:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "arm.json").write_text(json.dumps(config))
        corpus = json.dumps(config["data"], sort_keys=True)
        if corpus not in prepared:
            prepared.add(corpus)
            subprocess.run([sys.executable, "-c", "import sys; from hnet.config import RunConfig; "
                            "from hnet.data import prepare_data; prepare_data(RunConfig.from_json(sys.argv[1]).data)",
                            str(run_dir / "arm.json")], env=env, check=True)
    running: list[tuple[str, subprocess.Popen, Path, float]] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < parallel:
            name, config, run_dir = queue.pop(0)
            log = open(run_dir / "log.txt", "w")
            cmd = [sys.executable, "-m", "hnet.cli", "train", str(run_dir / "arm.json"), "--out", str(run_dir / "run"),
                   "--overwrite"]
            running.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), run_dir, time.time()))
            print(f"{name}: started ({config['train']['max_steps']} steps)", flush=True)
        time.sleep(0.5 if dry_run else 10)
        for item in list(running):
            name, proc, run_dir, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            shutil.rmtree(run_dir / "run" / "checkpoints", ignore_errors=True)  # the metrics are the result
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {run_dir / 'log.txt'})"
            print(f"{name}: {status} in {time.time() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------- report

def arm_curves(run_dir: Path) -> dict:
    """What the report draws from one arm's metrics: per evaluation, training bytes, val bpb and the
    structure scores; per log step, the routing diagnostics."""
    config = json.loads((run_dir / "arm.json").read_text())
    bytes_per_step = config["train"]["batch_size"] * config["data"]["seq_len"]
    records = read_metrics(run_dir / "run")
    evals = [r for r in records if "val_bpb" in r]
    logs = [r for r in records if "loss" in r and "boundary_rate" in r]
    return {"config": config, "bytes_per_step": bytes_per_step, "evals": evals, "logs": logs,
            "kind": config["data"]["kind"], "target": config["train"].get("ratio_targets")}


def stage_value(record: dict, key: str, stage: int = 0):
    value = record.get(key)
    return value[stage] if isinstance(value, list) and len(value) > stage else None


def summary_row(name: str, c: dict) -> dict:
    last, log = (c["evals"][-1] if c["evals"] else {}), (c["logs"][-1] if c["logs"] else {})
    stages = len(log.get("boundary_rate", [])) or 1
    fmt = lambda key, d=last: "/".join("-" if stage_value(d, key, s) is None else f"{stage_value(d, key, s):.3f}" for s in range(stages))  # noqa: E731
    row = {"arm": name, "what": ARMS.get(name.split("@")[0], ("", [], ""))[2],
           "training bytes": f"{last.get('step', 0) * c['bytes_per_step'] / 1e6:.3g}M",
           "val bpb": f"{last['val_bpb']:.4f}" if "val_bpb" in last else "-",
           "positions per chunk": "/".join(f"{x:.2f}" for x in log.get("stage_bytes_per_chunk", [])),
           "p within 0.05 of 0.5": fmt("near_threshold", log),
           "collapsed": "/".join("yes" if x else "no" for x in log.get("collapsed", [])),
           "ever collapsed": "/".join("yes" if any(stage_value(r, "collapsed", s) for r in c["logs"]) else "no" for s in range(stages))}
    if c["kind"] == "text":
        row.update({"word-start F1": fmt("word_start_f1"), "random F1": fmt("word_start_f1_random"),
                    "space-before-word F1": fmt("space_start_f1"), "its random F1": fmt("space_start_f1_random"),
                    "whitespace rate": fmt("whitespace_rate"), "letter rate": fmt("letter_rate")})
    elif c["kind"] == "dna":
        row.update({f"codon pos {k} rate": fmt(f"codon_position_{k}_rate") for k in (1, 2, 3)})
    return row


def markdown_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def plot_curves(curves: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    text = {n: c for n, c in curves.items() if c["kind"] == "text"}
    def over_random(key):
        def value(r):
            random = stage_value(r, f"{key}_f1_random")
            return (stage_value(r, f"{key}_f1") or 0) / random if random else None
        return value

    panels = [
        ("f1_vs_bytes.png", "word-start F1 / random, stage 1", over_random("word_start"), "evals"),
        ("space_f1_vs_bytes.png", "space-before-word F1 / random, stage 1", over_random("space_start"), "evals"),
        ("bpb_vs_bytes.png", "validation bits per byte", lambda r: r.get("val_bpb"), "evals"),
        ("near_threshold_vs_bytes.png", "p within 0.05 of 0.5, stage 1",
         lambda r: stage_value(r, "near_threshold"), "logs"),
        ("positions_per_chunk_vs_bytes.png", "positions per chunk (stage 1)",
         lambda r: stage_value(r, "stage_bytes_per_chunk"), "logs"),
    ]
    paths = []
    for filename, ylabel, value, series in panels:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for name, c in text.items():
            points = [(r["step"] * c["bytes_per_step"] / 1e6, value(r)) for r in c[series]]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o" if series == "evals" else None, markersize=3, label=name)
        if "f1" in filename:
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.axhline(2.0, color="gray", linestyle="--", linewidth=0.8)
        ax.set(xlabel="training bytes (millions)", ylabel=ylabel, yscale="log" if "per_chunk" in filename else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=110)
        plt.close(fig)
        paths.append(out / filename)
    # the 2-stage arm: positions per chunk of each stage against its target, to show a collapse
    two = {n: c for n, c in curves.items() if c["logs"] and len(c["logs"][0]["boundary_rate"]) > 1}
    if two:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for name, c in two.items():
            for s in range(len(c["logs"][0]["boundary_rate"])):
                xs = [r["step"] * c["bytes_per_step"] / 1e6 for r in c["logs"]]
                line, = ax.plot(xs, [stage_value(r, "stage_bytes_per_chunk", s) for r in c["logs"]], label=f"{name} stage {s + 1}")
                if c["target"]:
                    ax.axhline(c["target"][s], color=line.get_color(), linestyle="--", linewidth=0.8)
        ax.set(xlabel="training bytes (millions)", ylabel="positions per chunk (target dashed)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "two_stage_positions_per_chunk.png", dpi=110)
        plt.close(fig)
        paths.append(out / "two_stage_positions_per_chunk.png")
    return paths


def collect_arms(runs_dirs: list[Path]) -> dict[str, dict]:
    """The arms of several runs directories (studies at different budgets), in ARMS's order; an arm
    already seen in an earlier directory is named `name@<budget>M` (base@40M)."""
    found = []
    for runs_dir in runs_dirs:
        for p in sorted(runs_dir.iterdir()):
            if (p / "arm.json").is_file():
                c = arm_curves(p)
                budget = c["config"]["train"]["max_steps"] * c["bytes_per_step"] / 1e6
                name = p.name if p.name not in {n for n, _ in found} else f"{p.name}@{budget:.3g}M"
                found.append((name, c))
    order = list(ARMS)
    found.sort(key=lambda item: order.index(item[0].split("@")[0]) if item[0].split("@")[0] in ARMS else len(order))
    return dict(found)


def write_report(runs_dirs: Path | list[Path], doc: Path, command: str, findings: str | None) -> str:
    """The study's section of `doc` (between `<!-- section: routing -->`, or `routing_tiny`, and the next marker),
    with its table and plots; the rest of the file is kept."""
    runs_dirs = [runs_dirs] if isinstance(runs_dirs, Path) else list(runs_dirs)
    curves = collect_arms(runs_dirs)
    wheres = [(d, json.loads((d / "device.json").read_text()) if (d / "device.json").is_file() else {}) for d in runs_dirs]
    size = wheres[0][1].get("size", "small")
    name = "routing" if size == "small" else f"routing_{size}"
    marker = f"<!-- section: {name} -->"
    paths = plot_curves(curves, doc.parent / name)  # the figures beside the document, a folder per section
    base = next(iter(curves.values()))["config"]
    corpus = base["data"]["path"]
    text_rows = [summary_row(n, c) for n, c in curves.items() if c["kind"] == "text"]
    other_rows = [summary_row(n, c) for n, c in curves.items() if c["kind"] != "text"]
    rel = lambda p: os.path.relpath(p, doc.parent)  # noqa: E731
    trained = [f"{f'`{d.name}`: ' if len(wheres) > 1 else ''}trained {w.get('date', '?')} on {w.get('device', '?')}, "
               f"torch {w.get('torch', '?')}; {w.get('parallel', '?')} arms at once"
               + (" on the one GPU." if "CPU" not in w.get("device", "") else ".") for d, w in wheres]
    section = "\n".join([
        marker,
        "## Chunking that finds structure: the routing recipe study" + ("" if size == "small" else f" ({size} presets)"),
        "",
        f"Command: `{command}`",
        "",
        *[f"- {t}" if len(trained) > 1 else t for t in trained],
        "",
        f"Every arm: the `{size}` preset, {base['train']['batch_size']} x {base['data']['seq_len']} bytes per optimizer "
        f"step unless said otherwise, on `{corpus}`. Scores at the last evaluation reached, on the run's fixed 8,192-byte "
        "validation snippet (`hnet.analysis.structure`); routing diagnostics at the last log step. A random F1 is "
        "what boundaries placed at random at the same rate would score.",
        "",
        markdown_table(text_rows),
        "",
        *([markdown_table(other_rows), ""] if other_rows else []),
        *[f"![{p.stem}]({rel(p)})" for p in paths],
        "",
        *([findings, ""] if findings else []),
    ])
    old = doc.read_text() if doc.is_file() else ""
    start = old.find(marker)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        end = old.find("<!-- section:", start + 1)
        new = old[:start] + section + ("\n" + old[end:] if end >= 0 else "")
    doc.write_text(new.rstrip("\n") + "\n")
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", nargs="+", default=[".runs/routing"],
                        help="where the arms train; for --report, several: studies at other budgets")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of: " + ", ".join(ARMS))
    parser.add_argument("--budget-bytes", type=int, default=100_000_000)
    parser.add_argument("--parallel", type=int, default=5, help="arms trained at once (5 fit an H100)")
    parser.add_argument("--micro-rows", type=int, default=MICRO_ROWS, help="sequences per micro-batch")
    parser.add_argument("--size", default="small", choices=["small", "tiny"],
                        help="the presets' size: tiny trains on a CPU, on the bundled sample")
    parser.add_argument("--text-data", help="the books: a .jsonl(.gz) or a folder of one .txt(.gz) per book")
    parser.add_argument("--dna-data", help="a FASTA(.gz) of genomes")
    parser.add_argument("--report", action="store_true", help="write the section of --doc from the runs, no training")
    parser.add_argument("--doc", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--findings", help="a file whose text ends the section (the reading of the figures)")
    parser.add_argument("--dry-run", action="store_true", help="two tiny arms on CPU, in a temporary folder")
    args = parser.parse_args(argv)
    names = args.arms.split(",")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    if args.dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(tmp) / "runs"
            train_arms(["base", "band4-8"], runs, EVALS * 8 * 128, 2, {}, dry_run=True)
            print(write_report(runs, Path(tmp) / "results.md", "--dry-run", None))
        return
    runs_dirs = [Path(d) for d in args.runs_dir]
    if not args.report:
        if len(runs_dirs) > 1:
            parser.error("training takes one --runs-dir")
        runs_dir = runs_dirs[0]
        import torch

        runs_dir.mkdir(parents=True, exist_ok=True)
        (runs_dir / "device.json").write_text(json.dumps({
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "parallel": args.parallel, "size": args.size}))
        train_arms(names, runs_dir, args.budget_bytes, args.parallel,
                   {"text": args.text_data, "dna": args.dna_data}, dry_run=False, micro_rows=args.micro_rows,
                   size=args.size)
    args_given = list(argv if argv is not None else sys.argv[1:])
    if args.findings:  # the reading of the figures is not part of how they were made
        del args_given[args_given.index("--findings"):args_given.index("--findings") + 2]
    command = "python scripts/routing_study.py " + " ".join(args_given)
    findings = Path(args.findings).read_text().strip() if args.findings else None
    write_report(runs_dirs, Path(args.doc), command, findings)


if __name__ == "__main__":
    main()
