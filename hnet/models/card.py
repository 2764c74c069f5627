"""The model card (README.md) of a saved model folder: what a Hub model repo shows on its front page.

The YAML front matter is what the Hub reads (library, tags); the body says what the model is, how to
load it, and, for a model exported from a run, how it was trained and what it scored. The facts of a run
come from the caller as (label, value) rows: this module knows nothing of runs or data.
"""

from __future__ import annotations

from hnet.config import HNetConfig
from hnet.layers.isotropic import parse_layer_string


def model_kind(config: HNetConfig, fixed_rule: str | None = None) -> str:
    """A short description of the architecture, e.g. "1-stage H-Net" or "isotropic Transformer"."""
    if config.num_stages > 1:
        chunking = f" with boundaries from the fixed rule '{fixed_rule}'" if fixed_rule else ""
        return f"{config.num_stages - 1}-stage H-Net{chunking}"
    kinds = {kind for kind, _ in parse_layer_string(config.arch_layout[0])}
    return "isotropic " + ("Transformer" if kinds == {"attn"} else "Mamba-2" if kinds == {"mamba"} else
                           "hybrid of Mamba-2 and attention")


def model_card(config: HNetConfig, parameters: int, name: str = "H-Net", fixed_rule: str | None = None,
               training: list[tuple[str, str]] | None = None, tokenizer: bool = False) -> str:
    """Markdown with Hub front matter. training: the run's facts as (label, value) rows (None: no section).
    tokenizer: the folder holds tokenizer.model (a BPE model: it reads sentencepiece ids, not bytes)."""
    units = "sentencepiece BPE ids (tokenizer.model in this folder)" if tokenizer else "raw bytes (UTF-8 or any other)"
    tags = ["hnet-lm", "h-net", "text-generation"] + ([] if tokenizer else ["byte-level", "tokenizer-free"])
    lines = [
        "---",
        "library_name: hnet-lm",
        "pipeline_tag: text-generation",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
        f"# {name}",
        "",
        f"A {model_kind(config, fixed_rule)} language model over {units}, {parameters:,} parameters, built with "
        "hnet-lm (H-Net: Hwang, Wang, Gu, *Dynamic Chunking for End-to-End Hierarchical Sequence Modeling*, "
        "arXiv 2507.07955).",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| arch_layout | `{_flat(config.arch_layout)}` |",
        f"| d_model | {', '.join(map(str, config.d_model))} |",
        f"| vocab_size | {config.vocab_size} |",
        "",
        "## Use",
        "",
        "```python",
        "import hnet, torch",
        'model = hnet.load_model("PATH_OR_REPO_ID")   # this folder, or its Hub repo id (needs huggingface_hub)',
    ]
    if tokenizer:
        lines += ['# ids: sentencepiece.SentencePieceProcessor(model_file=".../tokenizer.model"), the bytes as latin-1',
                  "# text (hnet.data.BPETokenizer does this)"]
    else:
        lines += ['ids = torch.tensor([[254, *"To be, or not to be".encode()]])   # BOS 254 first',
                  "logits = model(ids).logits"]
    lines += ["```", "", "`hnet eval PATH --data FILE` gives its bits per byte on a text; "
              "`hnet lm-eval PATH --tasks ...` runs lm-evaluation-harness tasks on it.", ""]
    if training:
        lines += ["## Training", "", "| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in training], ""]
    return "\n".join(lines)


def _flat(layout) -> str:
    return "[" + ", ".join(_flat(x) if isinstance(x, list) else f'"{x}"' for x in layout) + "]"
