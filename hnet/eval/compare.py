"""`hnet compare RUN... --out DIR`: one table and two plots over several runs.

Per run, from run.json and metrics.jsonl: data kind, model kind, parameters, forward FLOPs per byte (at
the bytes per chunk measured at the last evaluation, or the bytes per token of its training split),
training bytes, bytes per chunk per stage or bytes per token, the last validation bpb, wall-clock and
throughput. Training FLOPs = 3 x forward FLOPs per byte x bytes, the FLOPs per byte of an H-Net taken
at the bytes per chunk logged for each stretch of training (its chunks, and so its cost, change as the
routing learns). Where runs hold `hnet lm-eval` results (RUN/lm_eval/), the report adds their table
(report.md's "lm-eval" section, harness.csv).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hnet.config import RunConfig, default_ratio_targets
from hnet.eval.flops import TRAIN_FLOPS_PER_FORWARD, flops_per_byte
from hnet.eval.run_files import bytes_per_token, read_harness_results, read_metrics, run_config
from hnet.layers.isotropic import parse_layer_string


@dataclass
class RunSummary:
    run: str
    data: str
    model: str
    parameters: int
    flops_per_byte: float
    training_bytes: float
    training_flops: float
    bytes_per_chunk: list[float]
    bytes_per_token: float
    val_bpb: float | None
    steps: int
    wall_clock_s: float
    bytes_per_s: float | None
    curve: list[tuple[float, float, float]] = field(default_factory=list)  # (training bytes, training FLOPs, val bpb)
    # the routing's records, with their training bytes: the metrics fields of `hnet.chunking.diagnostics`
    # at log steps, and the structure scores of `hnet.analysis.structure` at evaluations
    routing_logs: list[dict] = field(default_factory=list)
    structure_evals: list[dict] = field(default_factory=list)
    ratio_targets: list[float] = field(default_factory=list)
    harness: dict = field(default_factory=dict)  # {task: {metric: value}} of `hnet lm-eval` runs found in RUN/lm_eval


def model_kind(config: RunConfig) -> str:
    if config.model_type == "hnet":
        return f"hnet_{config.model.num_stages - 1}stage"
    if config.model_type == "hnet_fixed":
        return f"hnet_{config.fixed_boundaries}"
    kinds = {kind for kind, _ in parse_layer_string(config.model.arch_layout[0])}
    name = "hybrid" if len(kinds) > 1 else "transformer" if kinds == {"attn"} else "mamba2"
    return f"bpe_{name}" if config.data.tokenizer == "bpe" else name


def _wall_clock(records: list[dict]) -> float:
    """Seconds of training: the clock restarts at each resume, so add up the segments."""
    total, last = 0.0, 0.0
    for t in (r["time"] for r in records if "time" in r):
        if t < last:
            total += last
        last = t
    return total + last


def _by_step(records) -> list[dict]:
    """One record per step, the last written: a run resumed from an earlier checkpoint logs its steps again."""
    return sorted({r["step"]: r for r in records}.values(), key=lambda r: r["step"])


def summarize(run_dir: str | Path) -> RunSummary:
    from hnet.models import HNetForCausalLM

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise ValueError(f"{run_dir}: not a run directory (no run.json)")
    config = run_config(run_dir)
    records = read_metrics(run_dir)
    trained, evals = _by_step(r for r in records if "loss" in r), _by_step(r for r in records if "val_bpb" in r)
    bpt = bytes_per_token(run_dir, config)
    seq_len, routing_stages = config.data.seq_len, config.model.num_stages - 1
    bytes_per_step = config.train.batch_size * seq_len * bpt

    default_bpc = list(np.cumprod(config.train.ratio_targets or [1.0] * routing_stages)) if routing_stages else []
    last_eval = evals[-1].get("bytes_per_chunk") if evals else None
    last_train = next((r["bytes_per_chunk"] for r in reversed(trained) if "bytes_per_chunk" in r), None)
    bpc = last_eval or last_train or default_bpc

    def fpb(chunks):
        return flops_per_byte(config.model, seq_len, chunks if routing_stages else (), bpt)

    steps, flops = [0], [0.0]
    for r in trained:
        cost = fpb(r.get("bytes_per_chunk", bpc))
        flops.append(flops[-1] + TRAIN_FLOPS_PER_FORWARD * (r["step"] - steps[-1]) * bytes_per_step * cost)
        steps.append(r["step"])
    last_step = steps[-1]
    curve = [(r["step"] * bytes_per_step, float(np.interp(r["step"], steps, flops)), r["val_bpb"]) for r in evals]
    # runs logged before `ids_per_s` existed wrote ids per second under the name bytes_per_s
    throughput = [r["bytes_per_s"] * (1 if "ids_per_s" in r else bpt) for r in trained if "bytes_per_s" in r]
    return RunSummary(
        run=run_dir.name, data=config.data.kind, model=model_kind(config),
        parameters=sum(p.numel() for p in HNetForCausalLM(config.model, device="meta").parameters()),
        flops_per_byte=fpb(bpc), training_bytes=last_step * bytes_per_step, training_flops=flops[-1],
        bytes_per_chunk=[float(x) for x in bpc], bytes_per_token=bpt, val_bpb=evals[-1]["val_bpb"] if evals else None,
        steps=last_step, wall_clock_s=_wall_clock(records),
        bytes_per_s=float(np.mean(throughput)) if throughput else None, curve=curve,
        routing_logs=[dict(r, training_bytes=r["step"] * bytes_per_step) for r in trained if "near_threshold" in r],
        structure_evals=[dict(r, training_bytes=r["step"] * bytes_per_step) for r in evals if "word_start_f1" in r],
        ratio_targets=list(config.train.ratio_targets or default_ratio_targets(routing_stages)) if routing_stages else [],
        harness=read_harness_results(run_dir),
    )


COLUMNS = ("run", "data", "model", "parameters", "flops_per_byte", "training_bytes", "training_flops",
           "bytes_per_chunk", "bytes_per_token", "val_bpb", "steps", "wall_clock_s", "bytes_per_s")


def _cell(name: str, value) -> str:
    if value is None:
        return ""
    if name == "bytes_per_chunk":
        return "/".join(f"{x:.2f}" for x in value)
    if name in ("val_bpb", "bytes_per_token"):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(summaries: list[RunSummary], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for s in summaries:
            row = asdict(s)
            writer.writerow([_cell(c, row[c]) for c in COLUMNS])
    plots = plot_curves(summaries, out) + plot_routing(summaries, out)
    lines = [
        "# Comparison", "",
        "Validation bits per byte = total NLL in bits / raw bytes of the same text (a BPE model's token NLL over "
        "the bytes its tokens cover, which slightly favours BPE). FLOPs per byte: forward, counted per layer by "
        "`hnet.eval.flops` at the measured bytes per chunk (H-Net) or bytes per token (BPE); training FLOPs = 3 x "
        "forward x training bytes.", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS),
    ]
    for s in summaries:
        row = asdict(s)
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in COLUMNS) + " |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    lines += harness_table(summaries, out)
    (out / "report.md").write_text("\n".join(lines) + "\n")


def harness_table(summaries: list[RunSummary], out: Path) -> list[str]:
    """The lm-eval results found in the runs (`hnet lm-eval`), one column per task and metric, as report.md
    lines; the same table in harness.csv. Nothing where no run has any."""
    columns = sorted({(task, metric) for s in summaries for task, metrics in s.harness.items() for metric in metrics})
    if not columns:
        return []
    cells = [[s.run, *(_harness_cell(s.harness.get(t, {}).get(m)) for t, m in columns)] for s in summaries]
    with open(out / "harness.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *(f"{t}/{m}" for t, m in columns)])
        writer.writerows(cells)
    return ["", "## lm-eval", "",
            "Results of `hnet lm-eval` found in each run's lm_eval/ folder (the latest of each task and metric).", "",
            "| run | " + " | ".join(f"{t} {m}" for t, m in columns) + " |", "|" + " --- |" * (len(columns) + 1),
            *["| " + " | ".join(row) + " |" for row in cells]]


def _harness_cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"  # a word perplexity of an untrained model is huge


def plot_curves(summaries: list[RunSummary], out: Path) -> list[Path]:
    """Validation bpb against training bytes and against training FLOPs, one panel per data kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({s.data for s in summaries})
    paths = []
    for axis, label in ((0, "training bytes"), (1, "training FLOPs")):
        fig, panels = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
        for panel, kind in zip(panels[0], kinds):
            for s in (s for s in summaries if s.data == kind):
                points = [(p[axis], p[2]) for p in s.curve if p[axis] > 0]  # step 0 has no place on a log axis
                if points:
                    x, y = zip(*points)
                    panel.plot(x, y, marker="o", markersize=3, label=f"{s.run} ({s.model})")
            panel.set(xscale="log", xlabel=label, ylabel="validation bits per byte", title=kind)
            panel.grid(alpha=0.3)
            panel.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"bpb_vs_{'bytes' if axis == 0 else 'flops'}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_routing(summaries: list[RunSummary], out: Path) -> list[Path]:
    """Beside bpb, for the runs that logged routing diagnostics: stage 1's word-start F1 against its random
    baseline at the same rate (dashed), the share of boundary probabilities within 0.05 of 0.5, and each
    stage's positions per chunk against its target (dotted); x is training bytes."""
    routed = [s for s in summaries if s.routing_logs]
    if not routed:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (f1, near, per_chunk) = plt.subplots(1, 3, figsize=(16, 4))
    for s in routed:
        scored = [r for r in s.structure_evals if r["word_start_f1"][0] is not None]
        if scored:
            x = [r["training_bytes"] for r in scored]
            line, = f1.plot(x, [r["word_start_f1"][0] for r in scored], marker="o", markersize=3, label=s.run)
            f1.plot(x, [r["word_start_f1_random"][0] for r in scored], linestyle="--", color=line.get_color())
        x = [r["training_bytes"] for r in s.routing_logs]
        for stage in range(len(s.ratio_targets)):
            label = s.run if len(s.ratio_targets) == 1 else f"{s.run} stage {stage + 1}"
            near.plot(x, [r["near_threshold"][stage] for r in s.routing_logs], label=label)
            line, = per_chunk.plot(x, [r["stage_bytes_per_chunk"][stage] for r in s.routing_logs], label=label)
            per_chunk.axhline(s.ratio_targets[stage], linestyle=":", color=line.get_color())
    f1.set(xlabel="training bytes", ylabel="word-start F1, stage 1 (random at the same rate: dashed)")
    near.set(xlabel="training bytes", ylabel="share of p within 0.05 of 0.5")
    per_chunk.set(xlabel="training bytes", ylabel="positions per chunk (target: dotted)", yscale="log")
    for panel in (f1, near, per_chunk):
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7)
    fig.tight_layout()
    path = out / "routing_vs_bytes.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def compare_runs(run_dirs, out) -> list[RunSummary]:
    summaries = [summarize(r) for r in run_dirs]
    names = [s.run for s in summaries]
    for s, run_dir in zip(summaries, run_dirs):
        if names.count(s.run) > 1:  # the same folder name under different parents: tell them apart
            s.run = str(run_dir)
    write_report(summaries, Path(out))
    return summaries
