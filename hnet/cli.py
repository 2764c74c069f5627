"""The `hnet` command. Each sub-command is a thin layer over a function of the package.

Errors a user can cause (bad config, missing file, ...) end with a one-line message and exit status 2;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys


QUICKSTART_CONFIGS = [f"configs/text/{name}_tiny.json" for name in ("hnet_1stage", "bpe_transformer", "transformer")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hnet", description="Byte-level H-Net language models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a run config")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true")
    group.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-lr-change", action="store_true",
                   help="with --resume: apply a changed train.lr or schedule from the next step on")

    p = sub.add_parser("quickstart", help="train a tiny H-Net, BPE Transformer and byte Transformer, then compare")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--configs", nargs="+", default=QUICKSTART_CONFIGS, metavar="CONFIG")
    p.add_argument("--max-steps", type=int, help="override every config's train.max_steps")

    p = sub.add_parser("eval", help="bits per byte on held-out data")
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--data", required=True, metavar="FILE_OR_CONFIG")
    p.add_argument("--out")
    p.add_argument("--window", type=int, help="ids per window (default: the run's seq_len, else 8192)")
    p.add_argument("--stride", type=int, help="ids between window starts (default: window / 2)")

    p = sub.add_parser("compare", help="one report over several runs")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", required=True)

    p = sub.add_parser("inspect", help="show the learned chunk boundaries")
    p.add_argument("model", metavar="MODEL_OR_RUN")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--file")
    p.add_argument("--stage", default="all")
    p.add_argument("--format", choices=["term", "html", "json"], default="term")
    p.add_argument("--out")

    p = sub.add_parser("generate", help="sample bytes from a model")
    p.add_argument("model", metavar="MODEL_OR_RUN")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-bytes", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)

    p = sub.add_parser("convert", help="an official checkpoint to our model directory")
    p.add_argument("checkpoint", metavar="OFFICIAL.pt")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("tokenizer", help="train a sentencepiece BPE tokenizer on a config's training split")
    tok = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tok.add_parser("train")
    t.add_argument("--data", required=True, metavar="CONFIG")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True)
    return parser


def run(args: argparse.Namespace) -> None:
    COMMANDS[args.command](args)


# One function per sub-command: argparse in, plain calls of the package out. Imports are local so that
# `hnet --help` stays fast and a sub-command loads only what it uses.


def _train(args) -> None:
    from hnet.training import load_run_config, train

    config = load_run_config(args.config, args.set, args.max_steps)
    if args.allow_lr_change and not args.resume:
        raise ValueError("--allow-lr-change applies to --resume only")
    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, allow_lr_change=args.allow_lr_change)
    lines = [f"run directory: {result.run_dir}"]
    if result.initial_val_bpb is not None:
        lines.append(f"validation bits per byte: {result.initial_val_bpb:.3f} before training -> {result.val_bpb:.3f} after {result.step} steps")
    elif result.val_bpb is not None:
        lines.append(f"validation bits per byte: {result.val_bpb:.3f} after {result.step} steps")
    if result.bytes_per_chunk:
        lines.append("bytes per chunk (stage 1" + (", 2" if len(result.bytes_per_chunk) > 1 else "") + "): "
                     + ", ".join(f"{x:.2f}" for x in result.bytes_per_chunk))
    print("\n".join(lines))


def _quickstart(args) -> None:
    quickstart(args.configs, args.out, args.max_steps)


def _eval(args) -> None:
    from hnet.eval import evaluate_path

    result, path = evaluate_path(args.model, args.data, args.out, args.window, args.stride)
    print(f"{result['bpb']:.4f} bits per byte over {result['bytes']} bytes ({result['documents']} documents); "
          f"wrote {path}")


def _compare(args) -> None:
    from hnet.eval import compare_runs

    summaries = compare_runs(args.runs, args.out)
    print(f"compared {len(summaries)} runs; wrote {args.out}/report.md, report.csv, bpb_vs_bytes.png, bpb_vs_flops.png")


def _inspect(args) -> None:
    from hnet.analysis.inspect import inspect_boundaries, read_text
    from hnet.models import load_model

    text = read_text(args.text, args.file)
    inspect_boundaries(load_model(args.model), text, args.stage, args.format, args.out, name=str(args.model))


def _generate(args) -> None:
    """The continuation, streamed to stdout as it comes."""
    import torch

    from hnet.generation import Utf8Stream, stream
    from hnet.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device=device).eval()
    text = Utf8Stream()
    for new in stream(model, [args.prompt.encode()], args.max_new_bytes, args.temperature, args.top_k,
                      args.top_p, seed=args.seed):
        sys.stdout.write(text.feed(new[0]))
        sys.stdout.flush()
    sys.stdout.write(text.flush() + "\n")


def _convert(args) -> None:
    from hnet.models import load_checkpoint

    load_checkpoint(args.checkpoint, args.config).save_pretrained(args.out)
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors")


def _tokenizer(args) -> None:
    """`hnet tokenizer train`: BPE on the config's training split, measured on its validation split."""
    from hnet.config import RunConfig
    from hnet.data import read_split, train_bpe

    train, val = read_split(RunConfig.from_json(args.data).data)
    tokenizer = train_bpe(train, args.vocab_size, args.out)
    val_tokens = sum(len(tokenizer.encode(d.text)) for d in val)
    print(f"wrote {tokenizer.path}: {tokenizer.vocab_size} pieces from {len(train)} training documents; "
          f"validation: {sum(len(d.text) for d in val) / max(val_tokens, 1):.3f} bytes per token")


COMMANDS = {"train": _train, "quickstart": _quickstart, "eval": _eval, "compare": _compare, "inspect": _inspect,
            "generate": _generate, "convert": _convert, "tokenizer": _tokenizer}


def quickstart(configs: list[str], out: str, max_steps: int | None = None) -> None:
    """The toolkit's main job in small: train each config on the bundled sample (matched FLOPs per byte),
    then one comparison table. Each run directory is left for eval / inspect / generate."""
    from pathlib import Path

    from hnet.eval import compare_runs
    from hnet.training import load_run_config, train

    runs = []
    for config_path in configs:
        config = load_run_config(config_path, max_steps=max_steps)
        run_dir = Path(out) / Path(config_path).stem.removesuffix("_tiny")
        print(f"== {run_dir.name}: {config.train.max_steps} steps of {config.train.batch_size} x {config.data.seq_len} "
              f"{'tokens' if config.data.tokenizer == 'bpe' else 'bytes'} on {config.data.path}", flush=True)
        result = train(config, run_dir, overwrite=True)
        chunks = f", bytes per chunk {', '.join(f'{x:.2f}' for x in result.bytes_per_chunk)}" if result.bytes_per_chunk else ""
        print(f"   validation bits per byte {result.initial_val_bpb:.3f} before -> {result.val_bpb:.3f} after{chunks}")
        runs.append(run_dir)
    summaries = compare_runs(runs, Path(out) / "report")
    print(f"\n{'run':18} {'params':>10} {'FLOPs/byte':>11} {'train bytes':>12} {'val bpb':>8}  bytes/chunk or token")
    for s in summaries:
        unit = "/".join(f"{x:.2f}" for x in s.bytes_per_chunk) if s.bytes_per_chunk else f"{s.bytes_per_token:.2f}"
        print(f"{s.run:18} {s.parameters:>10,} {s.flops_per_byte:>11.3g} {s.training_bytes:>12,.0f} {s.val_bpb:>8.3f}  {unit}")
    print(f"\nreport: {Path(out) / 'report' / 'report.md'} (with plots); the runs are in {out}/, e.g.\n"
          f"  hnet inspect {runs[0]} --text TEXT\n  hnet generate {runs[0]} --prompt TEXT")


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause: bad values, and files that are missing, unreadable, damaged or that do not fit
    on the disk (OSError covers a full disk, a bad .gz, a permission). A bug still shows its traceback."""
    import pickle

    from hnet.training import TrainingError

    return ValueError, OSError, EOFError, pickle.UnpicklingError, TrainingError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except user_errors() as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"hnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
