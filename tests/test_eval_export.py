"""`hnet export`: a run as a Hub model folder whose card tells the run, and that evaluates as the run does."""

import json
import shutil
from pathlib import Path

import torch

import hnet
from hnet import HNetConfig, HNetForCausalLM
from hnet.cli import main
from hnet.data import Document, train_bpe

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. Café.\n".encode() * 4


def test_export_a_trained_run(tiny_trained_hnet, tmp_path):
    run = Path(shutil.copytree(tiny_trained_hnet, tmp_path / "run"))
    (tmp_path / "text.txt").write_bytes(TEXT)
    assert main(["eval", str(run), "--data", str(tmp_path / "text.txt")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "hub")]) == 0
    hub = tmp_path / "hub"
    assert sorted(p.name for p in hub.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "training_config.json"]
    card = (hub / "README.md").read_text()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in metrics if "val_bpb" in r][-1]
    for fact in ["library_name: hnet-lm", "# run", "## Training", "tinyshakespeare.txt", "| steps | 4 of 4 x 128 bytes |",
                 f"| validation bits per byte (step 4) | {last_eval['val_bpb']:.4f} |",
                 f"| bytes per chunk (per stage) | {last_eval['bytes_per_chunk'][0]:.4g} |",
                 "| boundaries: word_start_f1 |", "| hnet eval text |"]:
        assert fact in card, fact

    # the folder is the model: same logits, and the same bits per byte (window and BOS from training_config.json)
    ids = torch.tensor([[254, *TEXT[:100]]])
    with torch.no_grad():
        torch.testing.assert_close(hnet.load_model(hub)(ids).logits, hnet.load_model(run)(ids).logits, rtol=0, atol=0)
    assert main(["eval", str(hub), "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "hub.json")]) == 0
    from_run = json.loads((run / "eval" / "text.json").read_text())
    from_hub = json.loads((tmp_path / "hub.json").read_text())
    assert (from_hub["bpb"], from_hub["window"]) == (from_run["bpb"], from_run["window"]) == (from_run["bpb"], 128)
    assert main(["export", str(run), "--out", str(tmp_path / "hub")]) == 2  # never into a folder that holds files


def test_export_a_bpe_run_carries_its_tokenizer(tmp_path):
    """A run directory as `hnet train` leaves a BPE run (its tokenizer in RUN/tokenizer), without metrics yet."""
    run = tmp_path / "run"
    (tmp_path / "text.txt").write_bytes(TEXT)
    tokenizer = train_bpe([Document(TEXT * 10)], 300, run / "tokenizer")
    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig.from_dict({
        "arch_layout": ["T1"], "d_model": [32], "d_intermediate": [64], "vocab_size": tokenizer.vocab_size,
        "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [16], "window_size": [-1]}}))
    config = {"model_type": "isotropic", "model": model.config.to_dict(),
              "data": {"path": str(tmp_path / "text.txt"), "tokenizer": "bpe", "vocab_size": 300, "seq_len": 32}}
    (run / "run.json").write_text(json.dumps(config))
    model.save_weights(run / "checkpoints" / "step_000001")
    assert main(["export", str(run), "--out", str(tmp_path / "hub")]) == 0
    assert (tmp_path / "hub" / "tokenizer.model").read_bytes() == tokenizer.path.read_bytes()
    assert "sentencepiece BPE, 300 ids" in (tmp_path / "hub" / "README.md").read_text()
    for source, out in ((run, "run.json"), (tmp_path / "hub", "hub.json")):
        assert main(["eval", str(source), "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / out)]) == 0
    from_run, from_hub = (json.loads((tmp_path / f).read_text()) for f in ("run.json", "hub.json"))
    assert from_hub["tokens"] == from_run["tokens"] < len(TEXT) and from_hub["window"] == 32
    assert from_hub["bpb"] == from_run["bpb"]
