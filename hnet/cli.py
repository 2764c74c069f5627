"""The `hnet` command. Each sub-command is a thin layer over a function of the package.

Errors a user can cause (bad config, missing file, ...) end with a one-line message and exit status 2;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys


QUICKSTART_CONFIGS = [f"text/{name}_tiny" for name in ("hnet_1stage", "bpe_transformer", "transformer")]  # presets


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hnet", description="Byte-level H-Net language models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a run config")
    p.add_argument("config", help="a run config file, or a preset by name (text/hnet_1stage_tiny)")
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
    p.add_argument("--data", required=True, nargs="+", metavar="FILE_OR_CONFIG",
                   help="files, folders (every file under them) or run configs (their validation split): one row "
                        "each, and the total")
    p.add_argument("--out")
    p.add_argument("--window", type=int, help="ids per window (default: the run's seq_len, else 8192)")
    p.add_argument("--stride", type=int, help="ids between window starts (default: window / 2)")

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks (needs the extra: pip install 'hnet-lm[eval]')")
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--tasks", required=True, help="comma-separated task names or task YAML files")
    p.add_argument("--limit", type=_limit, help="items per task (a fraction below 1: that share of them)")
    p.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--include-path", action="append", metavar="DIR", help="a folder of task YAMLs (repeatable)")
    p.add_argument("--window", type=int, help="ids per window (default: the run's seq_len, else 8192)")
    p.add_argument("--stride", type=int, help="ids between rolling windows (default: window / 2)")
    p.add_argument("--log-samples", action="store_true", help="also write every scored sample (jsonl per task)")
    p.add_argument("--out", metavar="DIR", help="default: RUN/lm_eval/")

    p = sub.add_parser("export", help="a run's model as a Hub model folder (weights, model card, tokenizer)")
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--out", required=True, metavar="DIR")

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
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt (its exact bytes, also when they are not UTF-8)")
    prompt.add_argument("--prompt-file", metavar="FILE", help="the prompt: the bytes of FILE, as they are")
    prompt.add_argument("--batch", metavar="FILE", help="one prompt a line of FILE; JSON lines out, one a prompt")
    p.add_argument("--max-new-bytes", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="end a row once it generates STR (kept in the output; backslash escapes: '\\n'); repeatable")
    p.add_argument("--batch-size", type=int, default=64, help="with --batch: prompts decoded together")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each decoding step as a CUDA graph (the default on CUDA); --no-graphs: eager "
                        "steps, the reference")
    p.add_argument("--raw", action="store_true", help="write the generated bytes to stdout as they are, unescaped")
    p.add_argument("--out", metavar="FILE", help="also write the generated bytes, as they are, to FILE "
                                                "(with --batch: the JSON lines, instead of stdout)")

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


def _limit(value: str) -> int | float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"--limit {value}: must be > 0")
    return number if number < 1 else int(number)


def _eval(args) -> None:
    from hnet.eval import evaluate_path

    result, path = evaluate_path(args.model, args.data[0] if len(args.data) == 1 else args.data, args.out,
                                 args.window, args.stride)
    if len(result["rows"]) > 1:
        width = max(len(r["name"]) for r in result["rows"]) + 2
        print(f"{'data':{width}} {'bytes':>12} {'bits/byte':>10}")
        for r in result["rows"]:
            print(f"{r['name']:{width}} {r['bytes']:>12,} {r['bpb']:>10.4f}")
        print(f"{'total':{width}} {result['bytes']:>12,} {result['bpb']:>10.4f}")
    print(f"{result['bpb']:.4f} bits per byte over {result['bytes']} bytes ({result['documents']} documents); "
          f"wrote {path}")


def _lm_eval(args) -> None:
    try:
        import lm_eval  # noqa: F401  (the optional extra: say so before anything else runs)
    except ImportError:
        raise ValueError("lm-eval is not installed: pip install 'hnet-lm[eval]' (the optional extra that brings "
                         "lm-evaluation-harness)") from None
    from hnet.eval.harness import run_lm_eval

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model_args = {k: v for k, v in (("window", args.window), ("stride", args.stride)) if v is not None}
    _, json_path, md_path = run_lm_eval(args.model, tasks, args.limit, args.batch_size, args.out, args.include_path,
                                        args.num_fewshot, args.log_samples, **model_args)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


def _export(args) -> None:
    from hnet.eval.export import export_model

    out = export_model(args.model, args.out)
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


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
    """The continuation, streamed to stdout as it comes: escaped where it is not plain text (`show`), or
    the bytes themselves with --raw; --out FILE also gets the bytes themselves. With --batch FILE, every
    line of FILE is a prompt, decoded --batch-size at a time, and each gives a JSON line."""
    import codecs
    import os
    from pathlib import Path

    import torch

    from hnet.generation import Decoder, Utf8Stream
    from hnet.models import load_model

    if args.batch is not None and args.raw:
        raise ValueError("--raw writes one continuation's bytes: it does not go with --batch (JSON lines)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    stops = [codecs.escape_decode(os.fsencode(s))[0] for s in args.stop]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device=device).eval()
    if model.config.vocab_size != 256:
        raise ValueError(f"{args.model}: the model predicts {model.config.vocab_size} token ids (a BPE run), and "
                         "hnet generate samples byte-level models only")
    decoder = Decoder(model, cuda_graphs=args.graphs)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, stop=stops, seed=args.seed)
    if args.batch is not None:
        _generate_batch(decoder, Path(args.batch).read_bytes(), args.batch_size, args.max_new_bytes, sampling, args.out)
        return
    if args.prompt_file is not None:
        prompt = Path(args.prompt_file).read_bytes()
    else:
        prompt = os.fsencode(args.prompt)  # the argument's own bytes: not UTF-8 is fine too
    text, generated = Utf8Stream(), []
    out = sys.stdout.buffer if args.raw else None
    decoder.start([prompt])
    for new in decoder.stream(args.max_new_bytes, **sampling):
        generated.append(new[0])
        if out is not None:
            out.write(new[0])
            out.flush()
        else:
            sys.stdout.write(text.feed(new[0]))
            sys.stdout.flush()
    if out is None:
        sys.stdout.write(text.flush() + "\n")
    if args.out:
        Path(args.out).write_bytes(b"".join(generated))


def _generate_batch(decoder, data: bytes, batch_size: int, max_new_bytes: int, sampling: dict, out_path) -> None:
    """One JSON object a line of `data`, in order: the prompt and its completion as text (bytes that are not
    UTF-8 replaced by U+FFFD), the completion's exact bytes in hex, and why it ended: "stop" (it ends with
    a stop sequence) or "length" (max_new_bytes). Lines end at \\n (a \\r before it is dropped); a final
    newline ends the last line, not one more prompt."""
    import contextlib
    import json
    from pathlib import Path

    lines = [line.removesuffix(b"\r") for line in data.split(b"\n")]
    if lines[-1] == b"":
        lines.pop()
    with open(out_path, "w", encoding="utf-8") if out_path else contextlib.nullcontext(sys.stdout) as out:
        for start in range(0, len(lines), batch_size):
            prompts = lines[start:start + batch_size]
            decoder.start(prompts)
            completions = decoder.generate(max_new_bytes, **sampling)
            for prompt, completion in zip(prompts, completions):
                stopped = any(completion.endswith(s) for s in sampling["stop"])
                out.write(json.dumps({"prompt": prompt.decode("utf-8", errors="replace"),
                                      "completion": completion.decode("utf-8", errors="replace"),
                                      "completion_hex": completion.hex(), "finish": "stop" if stopped else "length"},
                                     ensure_ascii=False) + "\n")
            out.flush()
    if out_path:
        print(f"wrote {len(lines)} completions to {Path(out_path)}")


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


COMMANDS = {"train": _train, "quickstart": _quickstart, "eval": _eval, "lm-eval": _lm_eval, "export": _export,
            "compare": _compare, "inspect": _inspect, "generate": _generate, "convert": _convert, "tokenizer": _tokenizer}


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
