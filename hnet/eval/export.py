"""`hnet export RUN --out DIR`: a run's model as a folder that a Hub model repo holds as it is.

DIR gets what `save_pretrained` writes (config.json, model.safetensors, README.md, and tokenizer.model for
a BPE run) with a model card that tells the run: its data, steps, validation bits per byte and boundary
statistics at the exported checkpoint, and the `hnet eval` and lm-eval results found in the run; plus
training_config.json, the run's config, from which `hnet eval` and `hnet lm-eval` take the window and BOS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hnet.eval.run_files import TRAINING_CONFIG, read_harness_results, read_metrics, run_config, run_dir_of

# metrics.jsonl fields of an evaluation that are not boundary statistics
NOT_BOUNDARY_FIELDS = {"step", "time", "val_bpb", "val_bytes", "bytes_per_chunk"}


def _numbers(value) -> str:
    values = value if isinstance(value, list) else [value]
    return ", ".join("n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)


def run_facts(run: Path, step: int | None) -> list[tuple[str, str]]:
    """The model card's training rows: the run's data and recipe, and what it measured up to `step`."""
    from hnet.eval.compare import model_kind

    config = run_config(run)
    data, train = config.data, config.train
    paths = data.path if isinstance(data.path, list) else [data.path]
    records = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    step = step if step is not None else max((r["step"] for r in records), default=0)
    evals = [r for r in records if "val_bpb" in r and r["step"] <= step]
    last = evals[-1] if evals else {}
    tokenizer = "raw bytes" if data.tokenizer == "bytes" else f"sentencepiece BPE, {config.model.vocab_size} ids"
    unit = "bytes" if data.tokenizer == "bytes" else "tokens"
    rows = [
        ("model", model_kind(config)),
        ("data", f"{data.kind}: {', '.join(Path(str(p)).name for p in paths)} (source {data.source})"),
        ("held out", f"split '{data.split}', " + (f"about {data.val_bytes:,} bytes" if data.val_bytes
                                                   else f"fraction {data.val_fraction}")),
        ("tokenizer", tokenizer),
        ("steps", f"{step:,} of {train.batch_size * train.grad_accum} x {data.seq_len} {unit}"),
        (f"training {unit}", f"{step * train.batch_size * train.grad_accum * data.seq_len:,}"),
    ]
    if last:
        rows.append((f"validation bits per byte (step {last['step']})", f"{last['val_bpb']:.4f}"))
    if last.get("bytes_per_chunk"):
        rows.append(("bytes per chunk (per stage)", _numbers(last["bytes_per_chunk"])))
    for name, value in last.items():
        if name not in NOT_BOUNDARY_FIELDS:
            rows.append((f"boundaries: {name}", _numbers(value)))
    for path in sorted((run / "eval").glob("*.json")):
        result = json.loads(path.read_text())
        rows.append((f"hnet eval {path.stem}", f"{result['bpb']:.4f} bits per byte over {result['bytes']:,} bytes"))
    for task, metrics in read_harness_results(run).items():
        rows += [(f"lm-eval {task}", ", ".join(f"{m} {v:.4g}" for m, v in metrics.items()))]
    return rows


def export_model(model_path, out) -> Path:
    """The model of a run (its latest checkpoint), a checkpoint or a model folder, saved to `out` as a Hub
    model folder with its card. Returns `out`."""
    from hnet.data import run_tokenizer_model
    from hnet.models import load_from_dir, model_dir
    from hnet.models.card import model_card
    from hnet.models.weights import TOKENIZER_FILE

    out = Path(out)
    checkpoint = model_dir(model_path)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: the folder exists and is not empty; give a new one")
    model = load_from_dir(checkpoint)
    run = run_dir_of(model_path)
    tokenizer_file = checkpoint / TOKENIZER_FILE if (checkpoint / TOKENIZER_FILE).is_file() else None
    facts = None
    if run is not None:
        config = run_config(run)
        state = checkpoint / "state.json"
        step = json.loads(state.read_text()).get("step") if state.is_file() else None
        facts = run_facts(run, step)
        if config.data.tokenizer != "bytes":
            tokenizer_file = run_tokenizer_model(run)
    fixed_rule = getattr(getattr(model, "routing", None), "rule", None)
    parameters = sum(p.numel() for p in model.parameters())
    card = model_card(model.config, parameters, run.name if run else Path(model_path).name, fixed_rule,
                      facts, tokenizer=tokenizer_file is not None)
    model.save_pretrained(out, card=card, tokenizer_file=tokenizer_file)
    training_config = run / "run.json" if run is not None else checkpoint / TRAINING_CONFIG
    if training_config.is_file():
        shutil.copyfile(training_config, out / TRAINING_CONFIG)
    return out
