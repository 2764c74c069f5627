"""Hub-ready folders: save_pretrained writes weights, a model card and (BPE) the tokenizer; hnet.load_model
reads the folder back, or a Hub repo id through huggingface_hub's snapshot_download."""

import pytest
import torch

import hnet
from hnet import HNetConfig, HNetForCausalLM
from hnet.data import Document, train_bpe

from tiny_runs import HNET_MODEL

IDS = torch.tensor([[254, *"To be, or not to be: café".encode()]])


def tiny(config=HNET_MODEL) -> HNetForCausalLM:
    torch.manual_seed(0)
    return HNetForCausalLM(HNetConfig.from_dict(config)).eval()


def same_logits(a, b):
    with torch.no_grad():
        torch.testing.assert_close(a(IDS).logits, b(IDS).logits, rtol=0, atol=0)


def test_a_saved_folder_holds_a_model_card_and_loads_back(tmp_path):
    model = tiny()
    folder = tmp_path / "tiny-hnet"
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: hnet-lm\n") and "# tiny-hnet" in card
    assert "1-stage H-Net" in card and f"{sum(p.numel() for p in model.parameters()):,} parameters" in card
    same_logits(model, hnet.load_model(folder))


def test_a_bpe_model_folder_carries_its_tokenizer(tmp_path):
    tokenizer = train_bpe([Document(b"To be, or not to be, that is the question. " * 40)], 300, tmp_path / "tok")
    model = tiny({"arch_layout": ["T1"], "d_model": [32], "d_intermediate": [64], "vocab_size": tokenizer.vocab_size,
                  "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [16], "window_size": [-1]}})
    model.save_pretrained(tmp_path / "bpe", tokenizer_file=tokenizer.path)
    assert (tmp_path / "bpe" / "tokenizer.model").read_bytes() == tokenizer.path.read_bytes()
    assert "sentencepiece BPE ids" in (tmp_path / "bpe" / "README.md").read_text()
    same_logits(model, hnet.load_model(tmp_path / "bpe"))


def test_a_repo_id_is_a_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    model = tiny()
    model.save_pretrained(tmp_path / "snapshot")
    asked = []
    def download(repo_id):
        asked.append(repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    same_logits(model, hnet.load_model("someone/tiny-hnet"))
    assert asked == ["someone/tiny-hnet"]

    def offline(repo_id):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="someone/tiny-hnet: no such run or model directory, nor a Hub repo.*no network"):
        hnet.load_model("someone/tiny-hnet")
