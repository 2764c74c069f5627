"""Weights in and out: our directory format (config.json + model.safetensors, or the folder `model/` of
a sharded checkpoint that an FSDP run writes), official `.pt` files, and the optimizer parameter groups."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hnet.config import HNetConfig

CARD_FILE = "README.md"  # the model card, as a Hub model repo names it
TOKENIZER_FILE = "tokenizer.model"  # a BPE model's sentencepiece model, beside its weights
NO_DECAY_SUFFIXES = (".bias", ".A_log", ".D", ".dt_bias", "pad_dimension")
WEIGHTS_FILE = "model.safetensors"
SHARDED_WEIGHTS = "model"  # a torch.distributed.checkpoint folder: one file per writing process + .metadata
ONE_PROCESS_WARNING = "torch.distributed is .*single process"


def has_weights(directory: Path) -> bool:
    return (directory / WEIGHTS_FILE).is_file() or (directory / SHARDED_WEIGHTS / ".metadata").is_file()


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The whole state dict saved in `directory`, in this one process: model.safetensors, or the shards of
    `model/` put back together (whatever number of processes wrote them)."""
    if (directory / WEIGHTS_FILE).is_file():
        return load_file(str(directory / WEIGHTS_FILE))
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(directory / SHARDED_WEIGHTS))
    stored = reader.read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in stored.items()
             if isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():  # torch warns that it assumes one process, which we ask for
        warnings.filterwarnings("ignore", message=ONE_PROCESS_WARNING)
        dcp.load(state, storage_reader=reader, no_dist=True)  # no_dist: a reader never waits for other processes
    return state


class WeightsMixin:
    """save_weights / save_pretrained / from_pretrained / load_weights / param_groups for our model classes."""

    config: HNetConfig

    def save_weights(self, directory: str | Path, weights: bool = True) -> None:
        """What loading needs: config.json + model.safetensors (a training checkpoint holds only these);
        without `weights` config.json only (a sharded checkpoint writes its weights itself)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.to_json(directory / "config.json")
        if not weights:
            return
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as embeddings.weight
        save_file(state, str(directory / WEIGHTS_FILE))

    def save_pretrained(self, directory: str | Path, card: str | None = None, tokenizer_file=None) -> None:
        """A folder that a Hub model repo can hold as it is: the weights (`save_weights`), README.md (`card`,
        else a card made from the config) and, for a model over BPE ids, its tokenizer as tokenizer.model.
        `hnet.load_model` reads it back; `hnet.eval.export` makes one from a run, with the run's facts."""
        directory = Path(directory)
        self.save_weights(directory)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, directory / TOKENIZER_FILE)
        if card is None:
            from hnet.models.card import model_card

            fixed_rule = getattr(getattr(self, "routing", None), "rule", None)  # a fixed chunker's rule
            card = model_card(self.config, sum(p.numel() for p in self.parameters()), directory.name, fixed_rule,
                              tokenizer=tokenizer_file is not None)
        (directory / CARD_FILE).write_text(card)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *args, device=None, dtype=None):
        """A saved model; `args`: the constructor's further arguments (see `from_state_dict`)."""
        directory = Path(directory)
        for name, there in (("config.json", (directory / "config.json").is_file()), (WEIGHTS_FILE, has_weights(directory))):
            if not there:
                raise ValueError(f"{directory}: not a model directory (no {name})")
        return cls.from_state_dict(HNetConfig.from_json(directory / "config.json"), read_weights(directory), *args,
                                   source=str(directory), device=device, dtype=dtype)

    @classmethod
    def from_state_dict(cls, config: HNetConfig, state: dict, *args, source: str = "<state dict>", device=None, dtype=None):
        """A model of `config` (and `args`, the constructor's further arguments) holding the weights `state`.
        It is built on the meta device, so no memory goes to a random init, and in `dtype`, so that
        fp32-only weights stay fp32."""
        model = cls(config, *args, device="meta", dtype=dtype)
        model.load_weights(state, source=source)
        return model.to(device) if device else model

    def load_weights(self, state: dict, source: str = "<state dict>") -> None:
        """Load a state dict by the official key names; any missing, unexpected or misshapen key is an error
        that lists them all. Tensors keep the dtype of the model's parameters (fp32 stays fp32)."""
        expected = {k: v for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            expected.pop("lm_head.weight", None)
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        misshapen = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
        ]
        problems = [("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)]
        if any(items for _, items in problems):
            lines = [f"{source}: the weights do not fit the model config"]
            for label, items in problems:
                if items:
                    lines.append(f"  {label} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
            raise ValueError("\n".join(lines))
        on_meta = any(p.is_meta for p in self.parameters())
        converted = {k: state[k].to(expected[k].dtype) for k in expected}
        self.load_state_dict(converted, strict=not self.config.tie_embeddings, assign=on_meta)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight

    def param_groups(self, lr: float, weight_decay: float, lr_multipliers=None) -> list[dict]:
        """AdamW groups: lr scaled per stage (outermost first), no decay on biases, norms and SSM scalars."""
        multipliers = lr_multipliers or [1.0] * self.num_stages
        groups: dict[tuple, dict] = {}
        for name, param in self.named_parameters():  # a tied lm_head is listed once
            if not param.requires_grad:
                continue
            stage = self.stage_of(name)
            no_decay = name.endswith(NO_DECAY_SUFFIXES) or "norm" in name.rsplit(".", 2)[-2]
            key = (stage, no_decay)
            group = groups.setdefault(key, {
                "params": [], "names": [], "stage": stage,
                "lr": lr * multipliers[stage], "lr_multiplier": multipliers[stage],
                "weight_decay": 0.0 if no_decay else weight_decay,
            })
            group["params"].append(param)
            group["names"].append(name)
        return list(groups.values())


def load_checkpoint(pt_path: str | Path, config_path: str | Path, device=None, dtype=None):
    """An official H-Net `.pt` (a plain state dict) with its official config JSON."""
    from hnet.models.hnet import HNetForCausalLM

    pt_path = Path(pt_path)
    if not pt_path.is_file():
        raise ValueError(f"{pt_path}: checkpoint file does not exist")
    config = HNetConfig.from_json(config_path)
    try:
        state = torch.load(pt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with anything but tensors is refused by weights_only
        raise ValueError(f"{pt_path}: not a plain tensor checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{pt_path}: expected a flat state dict of tensors")
    return HNetForCausalLM.from_state_dict(config, state, source=str(pt_path), device=device, dtype=dtype)
