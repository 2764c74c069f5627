"""Write the baseline presets, each sized to the forward FLOPs per byte of the 1-stage H-Net preset of
its data kind and size, and the table of what every preset costs (hnet/configs/README.md).

    python scripts/presets.py [--configs configs]

Beside each hnet/configs/<data>/hnet_1stage_<size>.json it writes transformer, mamba2, hybrid and
bpe_transformer presets (and hnet_space for text), with the same data, batch, steps and learning rate.
Reading the `small` corpora and training their tokenizers takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hnet.config import RunConfig
from hnet.eval.baselines import size_baseline
from hnet.eval.flops import flops_per_byte

DATA_KINDS = ("text", "dna", "protein")
SIZES = ("tiny", "small")
BPE_VOCAB = {"tiny": 2048, "small": 8192}

README_HEAD = """# Presets

`hnet/configs/<data>/<model>_<size>.json`: `tiny` trains on a CPU in minutes on the bundled samples; `small` is
for one GPU on the corpora of `../shared/data/large`. The H-Net presets set the budget; the baselines
(`transformer`, `mamba2`, `hybrid`, `bpe_transformer`; `hnet_space` for text) are written by
`python scripts/presets.py`, sized with `hnet.eval.baselines.size_baseline` to the forward FLOPs per
byte of `hnet_1stage` of the same data and size, with its data, batch size, steps and learning rate.

Forward FLOPs per byte are counted by `hnet.eval.flops` (Chinchilla-style: 2 per multiply-add of every
matrix product, attention over the whole context, the chunked SSD scan as computed; training is about
3x). They depend on how many bytes each inner token stands for, which the table gives ("at"): the H-Nets
at their ratio-loss targets N (what they reach once routing has converged; `hnet compare` reports the
measured figure), `hnet_space` (`model_type: hnet_fixed`, the same model as `hnet_1stage` with
boundaries at space-like bytes and no ratio loss) at the space rule's bytes per chunk on the training
split, and the BPE Transformer at the bytes per token of the training split under the tokenizer its run
trains (the same vocabulary, split and seed); its `seq_len` in tokens holds the H-Net's bytes per
sequence, so all presets of a data kind and size read the same bytes per batch.

The routing recipe. The H-Net presets keep the paper's ratio-loss weight (alpha 0.03), the targets N of the
table below and none of the routing options (`ratio_loss_bands`, the warmups, `router_lr_multiplier`). In
the routing recipe study on the `tiny` presets (`docs/results.md`), only 4x the sequences per optimizer
step gave boundaries that follow words, placed at the space before each word, and it cost bits per byte at
equal bytes. In the `small` study on a GPU (40M bytes an arm so far), the preset's boundaries start at word
starts 1.68x as often as random ones; the band loss `train.ratio_loss_bands=[[4.0,8.0]]` puts chunk starts
on the space before a word at 2.8x random, but settles at 4.3 bytes per chunk (20% more FLOPs per byte,
which would unmatch the comparisons below) for slightly worse bits per byte. Add it with `--set` when you
want chunks at spaces. A preset changes when the study finds a setting that gives structure without the cost.

"""


@dataclass
class Preset:
    config: dict  # the run config as written
    run: RunConfig  # the same, parsed (and so validated) once
    flops_per_byte: float
    at: str  # the bytes per chunk or token it is costed at

    @classmethod
    def from_config(cls, config: dict, flops_per_byte: float, at: str) -> "Preset":
        return cls(config, RunConfig.from_dict(config), flops_per_byte, at)


def hnet_preset(path: Path) -> Preset:
    data = json.loads(path.read_text())
    config = RunConfig.from_dict(data, str(path))
    targets = config.train.ratio_targets
    flops = flops_per_byte(config.model, config.data.seq_len, list(np.cumprod(targets)))
    return Preset(data, config, flops, "/".join(f"{n:g}" for n in targets) + " bytes/chunk (N)")


def space_bytes_per_chunk(docs, bos_id: int) -> float:
    from hnet.chunking.fixed import space_boundaries

    chunks = 0
    for doc in docs:
        ids = torch.from_numpy(np.frombuffer(bytes([bos_id]) + doc.text, dtype=np.uint8).astype(np.int64))
        chunks += int(space_boundaries(ids[None]).sum())
    return sum(len(d.text) + 1 for d in docs) / chunks


def bpe_bytes_per_token(train_docs, vocab_size: int) -> float:
    """Of the training split, with the tokenizer the run will train (sentencepiece is seeded): what
    `hnet compare` uses to turn the run's tokens into bytes."""
    from hnet.data import train_bpe

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_bpe(train_docs, vocab_size, tmp)
        tokens = sum(len(tokenizer.encode(d.text)) for d in train_docs)
    return sum(len(d.text) for d in train_docs) / tokens


def baseline_presets(reference: Preset, size: str) -> dict[str, Preset]:
    from hnet.data import read_split

    data, config = reference.config, reference.run
    seq_len, target = config.data.seq_len, reference.flops_per_byte
    train = {k: v for k, v in data["train"].items() if k not in ("lr_multipliers", "ratio_targets")}
    train_docs = read_split(config.data)[0]
    out = {}
    for kind in ("transformer", "mamba2", "hybrid"):
        model = size_baseline(kind, target, seq_len, config.model)
        out[kind] = Preset.from_config({"model_type": "isotropic", "model": model.to_dict(), "data": data["data"], "train": train},
                                   flops_per_byte(model, seq_len), "1 byte/token")

    vocab = BPE_VOCAB[size]
    bpt = bpe_bytes_per_token(train_docs, vocab)
    tokens = max(8, round(seq_len / bpt / 8) * 8)
    model = size_baseline("transformer", target, tokens, config.model, vocab_size=vocab, bytes_per_token=bpt)
    out["bpe_transformer"] = Preset.from_config(
        {"model_type": "isotropic", "model": model.to_dict(),
         "data": dict(data["data"], tokenizer="bpe", vocab_size=vocab, seq_len=tokens), "train": train},
        flops_per_byte(model, tokens, (), bpt), f"{bpt:.2f} bytes/token")

    if config.data.kind == "text":
        n = space_bytes_per_chunk(train_docs, config.data.bos_id)
        out["hnet_space"] = Preset.from_config(
            {"model_type": "hnet_fixed", "fixed_boundaries": "space", "model": data["model"], "data": data["data"],
             "train": dict(train, ratio_loss_weight=0.0, lr_multipliers=data["train"]["lr_multipliers"])},
            flops_per_byte(config.model, seq_len, [n]), f"{n:.2f} bytes/chunk")
    return out


def table_row(data_kind: str, size: str, name: str, preset: Preset, target: float) -> str:
    from hnet.models import HNetForCausalLM

    model = preset.run.model
    params = sum(p.numel() for p in HNetForCausalLM(model, device="meta").parameters())
    layout = json.dumps(model.arch_layout).replace('"', "")
    return (f"| {data_kind} | {size} | {name} | {layout} | {'/'.join(map(str, model.d_model))} | {params / 1e6:.2f}M | "
            f"{preset.flops_per_byte / 1e6:.2f}M | {preset.flops_per_byte / target:.2f} | {preset.at} |")


def write_presets(configs: Path) -> None:
    rows = ["| data | size | model | layout | width | parameters | forward FLOPs/byte | vs hnet_1stage | at |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for data_kind in DATA_KINDS:
        for size in SIZES:
            presets = {f"hnet_{s}stage": hnet_preset(configs / data_kind / f"hnet_{s}stage_{size}.json")
                       for s in (1, 2)}
            baselines = baseline_presets(presets["hnet_1stage"], size)
            for name, preset in baselines.items():
                (configs / data_kind / f"{name}_{size}.json").write_text(json.dumps(preset.config, indent=2) + "\n")
            target = presets["hnet_1stage"].flops_per_byte
            rows += [table_row(data_kind, size, name, p, target) for name, p in {**presets, **baselines}.items()]
    (configs / "README.md").write_text(README_HEAD + "\n".join(rows) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/presets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="hnet/configs", type=Path)
    write_presets(parser.parse_args(argv).configs)


if __name__ == "__main__":
    main()
