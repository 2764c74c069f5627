"""The `hnet` command. Each sub-command is a thin layer over a function of the package.

Errors a user can cause (bad config, missing file, ...) end with a one-line message and exit status 2;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys


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
    # Imports are local so that `hnet --help` stays fast and a sub-command loads only what it uses.
    if args.command == "train":
        from hnet.training import train_from_cli

        train_from_cli(args)
    elif args.command == "convert":
        from hnet.models import load_checkpoint

        load_checkpoint(args.checkpoint, args.config).save_pretrained(args.out)
        print(f"wrote {args.out}/config.json and {args.out}/model.safetensors")
    else:
        module = {
            "eval": "hnet.eval",
            "compare": "hnet.eval",
            "inspect": "hnet.chunking.inspect",
            "generate": "hnet.generation",
            "tokenizer": "hnet.data",
        }[args.command]
        import importlib

        getattr(importlib.import_module(module), f"{args.command}_from_cli")(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if args.debug:
            raise
        print(f"hnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
