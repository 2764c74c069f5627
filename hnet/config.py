"""Configs as typed dataclasses, validated on load.

`HNetConfig` is the official model format (goombalab/hnet `configs/*.json`), read and written unchanged.
The run config (data + training) is ours. Every error a user can cause is a `ValueError` that names the
field, the value and the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from hnet.constants import BOS
from hnet.layers.isotropic import LAYER_RE, LAYOUT_RE

# The allowed values of the run config's fields that other modules check too.
TOKENIZERS = ("bytes", "bpe")
PACKINGS = ("cu_seqlens", "separator")
DISTRIBUTED = ("ddp", "fsdp")  # how several processes share a run (`hnet.training.parallel`)
FIXED_RULES = ("space", "bpe")  # hnet_fixed's boundary rules
MAMBA_HEADDIM = 64  # mamba_ssm Mamba2 default, used by every official config


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def from_dict(cls, data: Any, source: str = "<dict>", prefix: str = ""):
    """Build dataclass `cls` from `data`, refusing unknown fields and values of the wrong type."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ValueError(f"{source}: field '{where}' must be an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise ValueError(
                f"{source}: unknown field '{prefix}{key}' (value {value!r}); known fields: {', '.join(known)}"
            )
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{source}: missing field '{prefix}{name}'")
            continue
        value, tp = data[name], hints[name]
        if dataclasses.is_dataclass(tp):
            value = from_dict(tp, value, source, f"{prefix}{name}.")
        elif not _type_ok(value, tp):
            raise ValueError(f"{source}: field '{prefix}{name}' has value {value!r}, expected {_type_name(tp)}")
        kwargs[name] = value
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(obj) -> dict:
    """Dataclass to a JSON-ready dict, leaving out optional fields that are None."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        if value is None and f.default is None:
            continue
        out[f.name] = value
    return out


def flat_fields(d: dict, prefix: str = "") -> dict:
    """{"train.lr": 0.001, ...}: a nested config dict with dotted field names, as errors name fields."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------------
# Model config: the official format


@dataclass
class SSMConfig:
    chunk_size: int = 256
    d_conv: int = 4
    d_state: int = 128
    expand: int = 2


@dataclass
class AttnConfig:
    num_heads: list[int] = field(default_factory=list)
    rotary_emb_dim: list[int] = field(default_factory=list)
    window_size: list[int] = field(default_factory=list)


@dataclass
class HNetConfig:
    """One H-Net (or, with a flat layout like ["T12"], an isotropic model) in the official JSON format."""

    arch_layout: list
    d_model: list[int]
    d_intermediate: list[int]
    vocab_size: int = 256
    ssm_cfg: SSMConfig = field(default_factory=SSMConfig)
    attn_cfg: AttnConfig = field(default_factory=AttnConfig)
    tie_embeddings: bool = False

    @property
    def num_stages(self) -> int:
        """Number of nesting levels: 1 for an isotropic model, 2 for a 1-stage H-Net, 3 for 2-stage."""
        return layout_depth(self.arch_layout)

    def stage_layout(self, stage: int) -> list:
        layout = self.arch_layout
        for _ in range(stage):
            layout = layout[1]
        return layout

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "HNetConfig":
        cfg = from_dict(cls, data, source)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> "HNetConfig":
        return cls.from_dict(read_json(path), str(path))

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=4) + "\n")

    def validate(self, source: str = "<dict>") -> None:
        def bad(name, value, why):
            raise ValueError(f"{source}: field '{name}' has value {value!r}: {why}")

        depth = check_layout(self.arch_layout, source)
        per_stage = {
            "d_model": self.d_model,
            "d_intermediate": self.d_intermediate,
            "attn_cfg.num_heads": self.attn_cfg.num_heads,
            "attn_cfg.rotary_emb_dim": self.attn_cfg.rotary_emb_dim,
            "attn_cfg.window_size": self.attn_cfg.window_size,
        }
        uses_attn = [any(k in "tT" for k in _stage_letters(self.stage_layout(s))) for s in range(depth)]
        for name, values in per_stage.items():
            if name.startswith("attn_cfg") and not any(uses_attn) and not values:
                continue
            if len(values) != depth:
                bad(name, values, f"arch_layout has {depth} stage(s), so it needs {depth} entries")
        for s in range(depth):
            d = self.d_model[s]
            if d <= 0:
                bad("d_model", self.d_model, f"stage {s} width must be positive")
            if s > 0 and d < self.d_model[s - 1]:
                bad("d_model", self.d_model, "widths must not shrink toward the inner stages")
            if any(k in "mM" for k in _stage_letters(self.stage_layout(s))) and (
                (self.ssm_cfg.expand * d) % MAMBA_HEADDIM
            ):
                bad("d_model", self.d_model, f"stage {s}: expand*d_model must be divisible by the Mamba-2 head size {MAMBA_HEADDIM}")
            if any(k in "MT" for k in _stage_letters(self.stage_layout(s))) and self.d_intermediate[s] <= 0:
                bad("d_intermediate", self.d_intermediate, f"stage {s} has MLP layers, so it needs a positive width")
            if uses_attn[s]:
                heads = self.attn_cfg.num_heads[s]
                if heads <= 0 or d % heads:
                    bad("d_model", self.d_model, f"stage {s} width is not divisible by attn_cfg.num_heads {heads}")
                rot = self.attn_cfg.rotary_emb_dim[s]
                if rot < 0 or rot % 2 or rot > d // heads:
                    bad("attn_cfg.rotary_emb_dim", self.attn_cfg.rotary_emb_dim, f"stage {s}: must be even and at most the head size {d // heads}")
                if self.attn_cfg.window_size[s] < -1:
                    bad("attn_cfg.window_size", self.attn_cfg.window_size, "use -1 for no window")
        if self.vocab_size <= 0:
            bad("vocab_size", self.vocab_size, "must be positive")
        for name in ("chunk_size", "d_conv", "d_state", "expand"):
            if getattr(self.ssm_cfg, name) <= 0:
                bad(f"ssm_cfg.{name}", getattr(self.ssm_cfg, name), "must be positive")


def _stage_letters(layout: list) -> list[str]:
    strings = [layout[0]] if len(layout) == 1 else [layout[0], layout[2]]
    return [k for s in strings for k, _ in LAYER_RE.findall(s)]


def check_layout(layout: Any, source: str = "<dict>", path: str = "arch_layout") -> int:
    """Check the nested layout grammar and return its depth (number of stages)."""

    def bad(why):
        raise ValueError(f"{source}: field '{path}' has value {layout!r}: {why}")

    if not isinstance(layout, list) or len(layout) not in (1, 3):
        bad("each level must be a list of 1 (innermost) or 3 (encoder, inner, decoder) entries")
    strings = [layout[0]] if len(layout) == 1 else [layout[0], layout[2]]
    for s in strings:
        if not isinstance(s, str) or not LAYOUT_RE.match(s):
            bad(f"{s!r} is not a layer string like 'm4', 'T22' or 'm4T1'")
        if any(int(count) == 0 for _, count in LAYER_RE.findall(s)):
            bad(f"{s!r} names a block of zero layers; every level needs at least one layer")
    if len(layout) == 1:
        return 1
    return 1 + check_layout(layout[1], source, path)


def layout_depth(layout: list) -> int:
    return 1 if len(layout) == 1 else 1 + layout_depth(layout[1])


# ---------------------------------------------------------------------------------------------------
# Run config: data + training (ours). Paths inside are relative to the working directory, except that
# a path starting with "package:" names a file bundled in the `hnet/samples/` folder of the package, and
# that a preset's relative paths are relative to the folder that holds the package (the repository root
# of a clone), so a preset reads the same files from any working directory.

PRESETS_DIR = Path(__file__).resolve().parent / "configs"  # hnet/configs/<data>/<model>_<size>.json
PATH_FIELDS = (("data", "path"), ("data", "val_path"), ("data", "tokenizer_path"), (None, "fixed_tokenizer_path"))


def find_config(name: str | Path) -> Path:
    """A run config by path, or a preset by name: "text/hnet_1stage_tiny" (".json" may be given)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS_DIR / path.with_suffix(".json") if path.suffix in ("", ".json") else None
    if preset is not None and preset.is_file():
        return preset
    kinds = ", ".join(sorted(p.name for p in PRESETS_DIR.iterdir() if p.is_dir())) if PRESETS_DIR.is_dir() else ""
    raise ValueError(f"{name}: config file does not exist, and it is not a preset name like "
                     f"text/hnet_1stage_tiny (presets: {PRESETS_DIR}/{{{kinds}}}/*.json)")


def read_run_json(name: str | Path) -> tuple[dict, Path]:
    """The JSON of a run config found by `find_config`, with a preset's relative paths made absolute."""
    path = find_config(name)
    data = read_json(path)
    if path.resolve().is_relative_to(PRESETS_DIR) and isinstance(data, dict):
        root = PRESETS_DIR.parent.parent
        for group, key in PATH_FIELDS:
            node = data.get(group) if group else data
            if not isinstance(node, dict) or key not in node:
                continue
            value = node[key]
            anchored = [_anchor(v, root) for v in value] if isinstance(value, list) else _anchor(value, root)
            node[key] = anchored
    return data, path


def _anchor(value, root: Path):
    if not isinstance(value, str) or not value or value.startswith("package:") or Path(value).is_absolute():
        return value
    return str(root / value)


@dataclass
class DataConfig:
    kind: str = "text"  # text | dna | protein: what the bytes are (reports group by it)
    source: str = "text"  # text (file or folder, raw bytes) | datasets (jsonl/json/parquet/csv) | fasta
    path: Union[str, list[str]] = ""  # file(s) or folder(s); .gz is read directly
    # validation file(s) or folder(s) of their own (a corpus split by its maker, e.g. by package): then all of
    # `path` trains and split / val_fraction / val_bytes / split_seed are not used
    val_path: Union[str, list[str], None] = None
    text_field: str = "text"  # column read by the `datasets` source
    alphabet: Optional[str] = None  # fasta: "dna" | "protein" | the allowed letters (default by `kind`)
    dna_lowercase: str = "upper"  # fasta dna: "upper" (soft-masked repeats -> upper case) | "keep"
    dna_n_runs: str = "keep"  # fasta dna: "keep" | "collapse" (a run of N -> one N) | "drop"
    split: str = "documents"  # documents (whole documents held out) | tail (the end of every document)
    val_fraction: float = 0.05
    val_bytes: Optional[int] = None  # if set, hold out about this many bytes instead of a fraction
    split_seed: int = 0
    max_bytes: Optional[int] = None  # read at most this many bytes of the source (quick runs)
    tokenizer: str = "bytes"  # bytes | bpe
    tokenizer_path: Optional[str] = None  # sentencepiece model for bpe (default: RUN_DIR/tokenizer)
    vocab_size: int = 4096  # bpe vocabulary when the tokenizer is trained by the run
    seq_len: int = 8192  # tokens per sequence
    packing: str = "cu_seqlens"  # cu_seqlens (per-document resets) | separator (one stream, BOS between)
    bos_id: int = BOS  # prepended to every document, as the official generate.py does
    cache_dir: Optional[str] = None  # shard cache; default $HNET_CACHE or ~/.cache/hnet-lm


def _refuse(source: str, name: str, value, why: str):
    """The run config's one error form: the file, the field, its value and what is wrong."""
    raise ValueError(f"{source}: field '{name}' has value {value!r}; {why}")


def default_ratio_targets(num_routing_stages: int) -> list[float]:
    """Target bytes per chunk N of each routing stage when a run names none: the paper's text settings,
    N = 6 for one stage, (3, 3) for two."""
    return [6.0] if num_routing_stages == 1 else [3.0] * num_routing_stages


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 8  # sequences per optimizer step, all processes together
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 6.25e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    lr_multipliers: Optional[list[float]] = None  # per stage, outermost first (H-Net only)
    schedule: str = "wsd"  # wsd (warmup-stable-decay) | cosine
    warmup_fraction: float = 0.1
    decay_fraction: float = 0.2
    min_lr_fraction: float = 0.0
    grad_clip: float = 1.0
    ratio_targets: Optional[list[float]] = None  # target bytes per chunk N per routing stage
    # Routing recipe (docs/results.md, "Chunking that finds structure", says what each did at our scale).
    ratio_loss_weight: Union[float, list[float]] = 0.03  # alpha (the paper's 0.03), or one per routing stage
    # per routing stage, null or [low, high] bytes per chunk around its target: penalise only leaving the band
    ratio_loss_bands: Optional[list[Optional[list[float]]]] = None
    ratio_loss_warmup_steps: int = 0  # alpha ramps linearly from 0 over these first steps
    router_lr_multiplier: float = 1.0  # the routing modules' lr relative to their stage's
    router_warmup_steps: int = 0  # the routing modules' lr ramps linearly from 0 over these first steps
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    # several processes: ddp (each holds the whole model and optimizer; single-file checkpoints) | fsdp
    # (parameters, gradients and optimizer state sharded over the processes; sharded checkpoints)
    distributed: str = "ddp"


@dataclass
class RunConfig:
    model: HNetConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_type: str = "hnet"  # hnet | isotropic | hnet_fixed (boundaries from a rule)
    fixed_boundaries: str = "space"  # hnet_fixed: space (SpaceByte's space-like bytes) | bpe (token starts)
    fixed_tokenizer_path: Optional[str] = None  # hnet_fixed with bpe: the sentencepiece model whose tokens start chunks

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "RunConfig":
        cfg = from_dict(cls, data, source)
        cfg.model.validate(source)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        """From a file, or a preset by name (`find_config`)."""
        data, found = read_run_json(path)
        return cls.from_dict(data, str(found))

    def to_dict(self) -> dict:
        return to_dict(self)

    def validate(self, source: str = "<dict>") -> None:
        choices = {
            "data.kind": ("text", "dna", "protein"),
            "data.source": ("text", "datasets", "fasta"),
            "data.dna_lowercase": ("upper", "keep"),
            "data.dna_n_runs": ("keep", "collapse", "drop"),
            "data.split": ("documents", "tail"),
            "data.tokenizer": TOKENIZERS,
            "data.packing": PACKINGS,
            "train.schedule": ("wsd", "cosine"),
            "train.precision": ("auto", "fp32", "bf16"),
            "train.distributed": DISTRIBUTED,
            "model_type": ("hnet", "isotropic", "hnet_fixed"),
            "fixed_boundaries": FIXED_RULES,
        }
        for name, allowed in choices.items():
            value = self
            for part in name.split("."):
                value = getattr(value, part)
            if value not in allowed:
                _refuse(source, name, value, f"expected one of {', '.join(allowed)}")
        self._validate_model_type(source)
        positive = ["data.seq_len", "train.batch_size", "train.grad_accum", "train.max_steps", "train.eval_every",
                    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints"]
        for name in positive:
            group, attr = name.split(".")
            value = getattr(getattr(self, group), attr)
            if value <= 0:
                _refuse(source, name, value, "must be positive")
        self._validate_numbers(source)
        if not 0.0 < self.data.val_fraction < 1.0:
            _refuse(source, "data.val_fraction", self.data.val_fraction, "must be in (0, 1)")
        routing_stages = self.model.num_stages - 1
        for name in ("lr_multipliers", "ratio_targets"):
            value = getattr(self.train, name)
            if value is not None and len(value) != (self.model.num_stages if name == "lr_multipliers" else routing_stages):
                raise ValueError(
                    f"{source}: field 'train.{name}' has value {value!r}; the model has {self.model.num_stages} "
                    f"stage(s), {routing_stages} of them routing"
                )
        if self.train.ratio_targets is not None and any(n <= 1 for n in self.train.ratio_targets):
            _refuse(source, "train.ratio_targets", self.train.ratio_targets, "each N must be > 1")
        self._validate_routing_recipe(source, routing_stages)

    def _validate_numbers(self, source: str) -> None:
        """Every number finite (JSON lets NaN and Infinity through), and each in the range it means."""
        for group in ("data", "train"):
            for f in dataclasses.fields(getattr(self, group)):
                value = getattr(getattr(self, group), f.name)
                flat = value if isinstance(value, list) else [value]
                flat = [y for x in flat for y in (x if isinstance(x, list) else [x])]
                if any(isinstance(x, float) and not math.isfinite(x) for x in flat):
                    _refuse(source, f"{group}.{f.name}", value, "must be a finite number")
        tc, dc = self.train, self.data
        if tc.lr <= 0:
            _refuse(source, "train.lr", tc.lr, "must be positive")
        if tc.weight_decay < 0:
            _refuse(source, "train.weight_decay", tc.weight_decay, "must be >= 0")
        if len(tc.betas) != 2 or not all(0 <= b < 1 for b in tc.betas):
            _refuse(source, "train.betas", tc.betas, "two numbers in [0, 1)")
        if tc.lr_multipliers is not None and any(m <= 0 for m in tc.lr_multipliers):
            _refuse(source, "train.lr_multipliers", tc.lr_multipliers, "each must be positive")
        for name in ("warmup_fraction", "decay_fraction", "min_lr_fraction"):
            if not 0 <= getattr(tc, name) <= 1:
                _refuse(source, f"train.{name}", getattr(tc, name), "must be in [0, 1]")
        if tc.warmup_fraction + tc.decay_fraction > 1:
            _refuse(source, "train.decay_fraction", tc.decay_fraction, f"warmup_fraction + decay_fraction must be at most 1 "
                f"(warmup_fraction is {tc.warmup_fraction})")
        if tc.grad_clip < 0:
            _refuse(source, "train.grad_clip", tc.grad_clip, "must be >= 0 (0: no clipping)")
        if tc.seed < 0:
            _refuse(source, "train.seed", tc.seed, "must be >= 0")
        if tc.eval_batches <= 0:
            _refuse(source, "train.eval_batches", tc.eval_batches, "must be positive")
        for name in ("val_bytes", "max_bytes"):
            if getattr(dc, name) is not None and getattr(dc, name) <= 0:
                _refuse(source, f"data.{name}", getattr(dc, name), "must be positive (or left out)")
        if dc.vocab_size <= 0:
            _refuse(source, "data.vocab_size", dc.vocab_size, "must be positive")

    def _validate_routing_recipe(self, source: str, routing_stages: int) -> None:
        tc = self.train

        def bad(name, why):
            _refuse(source, f"train.{name}", getattr(tc, name), why)

        weights = tc.ratio_loss_weight if isinstance(tc.ratio_loss_weight, list) else [tc.ratio_loss_weight]
        if isinstance(tc.ratio_loss_weight, list) and len(weights) != routing_stages:
            bad("ratio_loss_weight", f"one weight per routing stage: the model has {routing_stages}")
        if any(w < 0 for w in weights):
            bad("ratio_loss_weight", "weights must be >= 0")
        for name in ("ratio_loss_warmup_steps", "router_warmup_steps"):
            if getattr(tc, name) < 0:
                bad(name, "must be >= 0")
        if tc.router_lr_multiplier <= 0:
            bad("router_lr_multiplier", "must be positive")
        if tc.ratio_loss_bands is not None:
            if len(tc.ratio_loss_bands) != routing_stages:
                bad("ratio_loss_bands", f"one entry (null or [low, high]) per routing stage: the model has {routing_stages}")
            targets = tc.ratio_targets or default_ratio_targets(routing_stages)
            for band, n in zip(tc.ratio_loss_bands, targets):
                if band is not None and not (len(band) == 2 and 1 < band[0] <= n <= band[1]):
                    bad("ratio_loss_bands", f"a band is [low, high] with 1 < low <= target ({n:g}) <= high")

    def _validate_model_type(self, source: str) -> None:
        """The layout depth, tokenizer and vocabulary that each model_type needs."""
        stages, layout = self.model.num_stages, self.model.arch_layout
        if self.model_type == "isotropic" and stages != 1:
            _refuse(source, "model.arch_layout", layout, "model_type 'isotropic' needs a 1-level layout like [\"T8\"]")
        if self.model_type == "hnet" and stages < 2:
            _refuse(source, "model.arch_layout", layout, "model_type 'hnet' needs 2 or more levels like [\"m4\", [\"T8\"], \"m4\"] "
                "(a flat layout is model_type 'isotropic')")
        if self.model_type == "hnet_fixed":
            if stages != 2:
                _refuse(source, "model.arch_layout", layout, "model_type 'hnet_fixed' takes one chunking stage (2 levels), "
                    "as the rule gives the outer boundaries only")
            if self.train.ratio_loss_weight != 0:
                _refuse(source, "train.ratio_loss_weight", self.train.ratio_loss_weight, "must be 0 for model_type 'hnet_fixed' "
                    "(its boundaries come from a rule, not from the routing module)")
            if self.fixed_boundaries == "bpe" and not self.fixed_tokenizer_path:
                _refuse(source, "fixed_tokenizer_path", self.fixed_tokenizer_path,
                    "fixed_boundaries 'bpe' needs a sentencepiece model")
        if self.model_type != "isotropic" and self.data.tokenizer != "bytes":
            _refuse(source, "data.tokenizer", self.data.tokenizer, f"model_type '{self.model_type}' reads bytes; a BPE baseline is "
                "model_type 'isotropic'")
        # The embedding must fit the ids exactly: a larger one wastes FLOPs and parameters, a smaller one fails.
        # A BPE model read from data.tokenizer_path is checked against that file when the model is built.
        expected = 256 if self.data.tokenizer == "bytes" else None if self.data.tokenizer_path else self.data.vocab_size
        if expected is not None and self.model.vocab_size != expected:
            _refuse(source, "model.vocab_size", self.model.vocab_size, f"data.tokenizer '{self.data.tokenizer}' has {expected} ids"
                + (" (data.vocab_size)" if self.data.tokenizer == "bpe" else ""))


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply `key.sub=value` overrides (value parsed as JSON, else kept as a string) to a config dict."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"{source}: '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{source}: field '{key}' does not name a config field")
        node[parts[-1]] = value
    return data
