"""Write the baseline presets, each sized to the forward FLOPs per byte of the 1-stage H-Net preset of
its data kind and size, and the table of what every preset costs (hnet/configs/README.md).

    python scripts/presets.py [--configs hnet/configs] [--sizes tiny small scale]

Beside each hnet/configs/<data>/hnet_1stage_<size>.json it writes transformer, mamba2, hybrid and
bpe_transformer presets (and hnet_space for text and code), with the same data, batch, steps and learning
rate. The `tiny` and `small` H-Nets are written by hand; the `scale` H-Nets are written here too
(`SCALE_HNETS`), with the README's lease arithmetic for them (`lease_section`). Reading the corpora and
training their tokenizers takes a few minutes; `scale` reads the corpora under .data/ (docs/scale.md, step 1).
A size left out of --sizes keeps its presets and its rows of the README table.
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

SIZES = ("tiny", "small", "scale")
FAMILIES = {"text": SIZES, "dna": SIZES, "protein": ("tiny", "small"), "code": ("scale",)}  # data -> sizes
BPE_VOCAB = {"tiny": 2048, "small": 8192, "scale": 16384}
TABLE_HEADER = ["| data | size | model | layout | width | parameters | forward FLOPs/byte | vs hnet_1stage | at |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
LEASE_MARK = "## The `scale` size and the lease"

# The `scale` H-Nets: between `small` and the paper's L (d 1024/1536, T22), sized by `lease_section` so that
# the slowest (hnet_2stage) trains its data's budget (SCALE_BUDGET_BYTES) in one ~25-minute lease of 8 H100s.
# Global batch 64 x 8192 bytes: 8 rows per GPU, the `small` presets' per-GPU batch. The main network has L's
# head size (64). DNA's main network runs at N = 3 (the paper's), twice the chunks of text's N = 6, so it is
# shallower (T8, and m2 in the 2-stage's middle) and its budget smaller; its corpus is small anyway.
SCALE_BUDGET_BYTES = {"code": 2_000_000_000, "text": 2_000_000_000, "dna": 1_500_000_000}
SCALE_BATCH = 64
_SSM = {"chunk_size": 256, "d_conv": 4, "d_state": 128, "expand": 2}
_TRAIN = {"batch_size": SCALE_BATCH, "eval_every": 500, "eval_batches": 16, "log_every": 25, "checkpoint_every": 500,
          "keep_checkpoints": 2, "distributed": "ddp"}


def _hnet(data_kind: str, outer: str, targets: list, lr: float, main: str = "T12", middle: str = "m4") -> dict:
    """A scale H-Net over byte-level stacks `outer` (m4 for text and code, m3t1 for DNA as the small DNA
    presets), 1-stage with one target, 2-stage with two (`middle`: the second stage's encoder and decoder
    besides their attention layer)."""
    one = len(targets) == 1
    model = {
        "arch_layout": [outer, [main], outer] if one else [outer, [f"T1{middle}", [main], f"{middle}T1"], outer],
        "d_model": [768, 1024] if one else [768, 768, 1024],
        "d_intermediate": [0, 2816] if one else [0, 2048, 2816],
        "vocab_size": 256, "ssm_cfg": dict(_SSM),
        "attn_cfg": {"num_heads": [12, 16] if one else [12, 12, 16], "rotary_emb_dim": [32] * (2 if one else 3),
                     "window_size": [1023, -1] if one else [1023, 1023, -1]},
        "tie_embeddings": False,
    }
    steps = SCALE_BUDGET_BYTES[data_kind] // (SCALE_BATCH * 8192)
    return {"model": model, "train": dict(_TRAIN, max_steps=steps, lr=lr, ratio_targets=targets,
                                          lr_multipliers=[2.0, 1.0] if one else [2.0, 1.5, 1.0])}


SCALE_DATA = {  # paths under the repository root: docs/scale.md, step 1, puts the corpora there
    "code": {"kind": "text", "source": "text", "path": ".data/code/train", "val_path": ".data/code/validation",
             "seq_len": 8192},
    "text": {"kind": "text", "source": "text", "path": ".data/text/books", "split": "documents", "val_fraction": 0.02,
             "seq_len": 8192},
    "dna": {"kind": "dna", "source": "fasta", "path": ".data/dna/bacteria.fa.gz", "split": "tail", "val_fraction": 0.02,
            "seq_len": 8192},
}
# text and code at the small presets' targets; lr between the small presets' and L's 6.25e-4, the 2-stage
# lower as the small 2-stage's; DNA as the small DNA presets (targets 3 and 2/2, higher lr).
SCALE_HNETS = {
    ("code", "hnet_1stage"): _hnet("code", "m4", [6.0], 8e-4), ("code", "hnet_2stage"): _hnet("code", "m4", [3.0, 3.0], 6e-4),
    ("text", "hnet_1stage"): _hnet("text", "m4", [6.0], 8e-4), ("text", "hnet_2stage"): _hnet("text", "m4", [3.0, 3.0], 6e-4),
    ("dna", "hnet_1stage"): _hnet("dna", "m3t1", [3.0], 1.5e-3, main="T8"),
    ("dna", "hnet_2stage"): _hnet("dna", "m3t1", [2.0, 2.0], 1e-3, main="T8", middle="m2"),
}

README_HEAD = """# Presets

`hnet/configs/<data>/<model>_<size>.json`: `tiny` trains on a CPU in minutes on the bundled samples; `small` is
for one GPU on the corpora of `../shared/data/large`; `scale` is for 8 GPUs (one model a lease, below) on
the corpora under `.data/` (docs/scale.md): `code`, built on the GPU machine from its installed Python
sources, and `text` and `dna`, carried there compressed. The H-Net presets set the budget; the baselines
(`transformer`, `mamba2`, `hybrid`, `bpe_transformer`; `hnet_space` for text and code) are written by
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
table below and none of the routing options (`ratio_loss_bands`, the warmups, `router_lr_multiplier`).
The routing recipe study on the `small` presets (`docs/results.md`, one H100, 40-100M bytes an arm) found
no setting whose chunk starts follow words at twice the rate of random ones. The preset's two seeds ended at
0.49x and 0.88x random at 100M bytes; alpha 0.05, N = 4 and the router's lr x4 at 1.2-1.4x; the bits per
byte of all five within 0.012, the spread of the seeds alone. The one setting with clear structure, the
band loss `train.ratio_loss_bands=[[4.0,8.0]]`, starts chunks on the space before a word at 2.8x random
(40M bytes) but settles at 4.3 bytes per chunk: 20% more FLOPs per byte, which would unmatch the
comparisons below, for no better bits per byte (N = 4 costs 25%). Add it with `--set` when you want chunks
at spaces. A preset changes when a study finds a setting that gives structure without the cost.

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

    if config.data.kind == "text":  # text and code
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


def write_scale_hnets(configs: Path) -> None:
    for (data_kind, name), spec in SCALE_HNETS.items():
        config = {"model": spec["model"], "data": SCALE_DATA[data_kind], "train": spec["train"]}
        RunConfig.from_dict(config, f"{data_kind}/{name}_scale")  # valid before it is written
        (configs / data_kind).mkdir(exist_ok=True)
        (configs / data_kind / f"{name}_scale.json").write_text(json.dumps(config, indent=2) + "\n")


# The lease arithmetic (README). Training FLOP rates the L-size models reached on one H200 (benchmarks/
# RESULTS.md, train_step.py, session 10, at the ratio-loss targets, eager): forward GFLOP/byte x 3 x bytes/s.
MEASURED_L_TFLOPS = {"hnet_1stage": 0.385 * 3 * 315_843 / 1e3, "hnet_2stage": 0.394 * 3 * 265_615 / 1e3,
                     "transformer": 0.376 * 3 * 705_003 / 1e3}
RATE_OF = {"hnet_1stage": "hnet_1stage", "hnet_2stage": "hnet_2stage", "hnet_space": "hnet_1stage",
           "mamba2": "hnet_1stage", "hybrid": "hnet_1stage", "transformer": "transformer", "bpe_transformer": "transformer"}
SCALE_DERATE = 0.5  # a model of ~40% of L's FLOPs on an H100 reaches about half of L's rate on an H200
GPUS, SCALING_EFFICIENCY, LEASE_TRAINING_S = 8, 0.85, 18 * 60


def lease_section(presets: dict[tuple[str, str], "Preset"]) -> str:
    rows = ["| data | model | forward GFLOP/byte | assumed TFLOP/s per GPU | bytes/s on 8 GPUs | budget | minutes for "
            f"the budget | bytes in {LEASE_TRAINING_S // 60} minutes |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (data_kind, name), preset in presets.items():
        tflops = MEASURED_L_TFLOPS[RATE_OF[name]] * SCALE_DERATE
        rate = GPUS * SCALING_EFFICIENCY * tflops * 1e12 / (3 * preset.flops_per_byte)
        budget = SCALE_BUDGET_BYTES[data_kind]
        rows.append(f"| {data_kind} | {name} | {preset.flops_per_byte / 1e9:.3f} | {tflops:.0f} | {rate / 1e6:.2f}M | "
                    f"{budget / 1e9:g}e9 | {budget / rate / 60:.1f} | {rate * LEASE_TRAINING_S / 1e9:.1f}e9 |")
    measured = ", ".join(f"{k} {v:.0f}" for k, v in MEASURED_L_TFLOPS.items())
    return f"""{LEASE_MARK}

`scale` sits between `small` and the paper's L: the H-Nets are d 768/1024 with a 12-layer main network
(1-stage: 0.152 GFLOP/byte at N = 6, 187M parameters; L is 0.385 and 679M) for text and code, and an 8-layer
one for DNA (N = 3 puts twice the chunks through it). Global batch 64 x 8192 bytes, 8 rows per GPU. The size
is set so that the slowest model, `hnet_2stage`, trains its data's budget (2e9 bytes of text or code,
1.5e9 of DNA: the `--budget-bytes` of docs/scale.md) within one ~25-minute lease of 8 H100s: about 2 minutes
to start the machine, 3 to build the code corpus and the shards and to tune the kernels, {LEASE_TRAINING_S // 60} of training, 2
for the final evaluation and the copy back. The arithmetic, per model:

    bytes/s on 8 GPUs = 8 x {SCALING_EFFICIENCY} x R / (3 x forward FLOPs per byte)

- R, the training FLOP rate per GPU: the rate the L-size model of the same family reached on one H200
  (benchmarks/RESULTS.md, `train_step.py`, at the ratio-loss targets; TFLOP/s: {measured}; Mamba-2, the
  hybrid and the space chunker taken at the 1-stage H-Net's, the BPE Transformer at the byte Transformer's)
  times {SCALE_DERATE}: an H100 moves memory at 3.0 TB/s against the H200's 4.3, and at 40% of L's FLOPs the
  byte-level Mamba-2 layers and norms, memory-bound, shrink with the outer width (768 against 1024), not
  with the FLOPs. This factor is an assumption until the lease measures it.
- {SCALING_EFFICIENCY}: the scaling efficiency at the same batch per GPU (2 H100s measured 0.87 on the `small`
  H-Net, benchmarks/RESULTS.md; 8 on one NVLink host taken a little lower).
- 3 x forward: training FLOPs per byte (`hnet.eval.flops`).

{chr(10).join(rows)}

The first minutes of each run print its bytes/s (the study's log); `scripts/study.py --processes 8` prints
the measured rate and the scaling efficiency against one GPU at 8 rows per GPU once each model is done.
Where a measured rate would not finish the budget inside the lease, lower `--budget-bytes` for the whole
grid (every model trains the same bytes).
"""


def write_presets(configs: Path, sizes=SIZES) -> None:
    readme = configs / "README.md"
    old = readme.read_text() if readme.is_file() else ""
    kept = {}  # (data, size) -> the rows of a size not written now
    for line in old.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 9 and cells[1] in SIZES and cells[1] not in sizes:
            kept.setdefault((cells[0], cells[1]), []).append(line)
    lease = old[old.index(LEASE_MARK):] if LEASE_MARK in old else ""
    if "scale" in sizes:
        write_scale_hnets(configs)
    rows, scale_presets = list(TABLE_HEADER), {}
    for data_kind, family_sizes in FAMILIES.items():
        for size in family_sizes:
            if size not in sizes:
                rows += kept.get((data_kind, size), [])
                continue
            presets = {f"hnet_{s}stage": hnet_preset(configs / data_kind / f"hnet_{s}stage_{size}.json")
                       for s in (1, 2)}
            baselines = baseline_presets(presets["hnet_1stage"], size)
            for name, preset in baselines.items():
                (configs / data_kind / f"{name}_{size}.json").write_text(json.dumps(preset.config, indent=2) + "\n")
            target = presets["hnet_1stage"].flops_per_byte
            rows += [table_row(data_kind, size, name, p, target) for name, p in {**presets, **baselines}.items()]
            if size == "scale":
                scale_presets.update({(data_kind, name): p for name, p in {**presets, **baselines}.items()})
    if scale_presets:
        lease = lease_section(scale_presets)
    readme.write_text(README_HEAD + "\n".join(rows) + "\n" + ("\n" + lease if lease else ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/presets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="hnet/configs", type=Path)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="the sizes to write (default: all)")
    args = parser.parse_args(argv)
    write_presets(args.configs, tuple(args.sizes))


if __name__ == "__main__":
    main()
