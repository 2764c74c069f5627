"""`hnet convert`: an official .pt (a plain state dict) to our model directory, and nothing else."""

import pytest
import torch

from hnet import HNetConfig, HNetForCausalLM, load_model
from hnet.cli import main
from test_config import TINY


def tiny_official(tmp_path):
    """A random model and its config file, as an official checkpoint comes with one."""
    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig.from_dict(TINY)).eval()
    model.config.to_json(tmp_path / "config.json")
    return model


class OpensAFile:
    """Unpickling this calls open(path, "w"): a stand-in for code a malicious checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_convert_then_load_model_gives_the_same_logits(tmp_path):
    model = tiny_official(tmp_path)
    torch.save(model.state_dict(), tmp_path / "official.pt")
    assert main(["convert", str(tmp_path / "official.pt"), "--config", str(tmp_path / "config.json"),
                 "--out", str(tmp_path / "converted")]) == 0
    loaded = load_model(tmp_path / "converted")
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("payload, message", [
    ("code", "not a plain tensor checkpoint"),  # refused by torch.load(weights_only=True), never run
    ("not_tensors", "expected a flat state dict of tensors"),  # loads, but is not a state dict
])
def test_convert_refuses_a_pt_that_is_not_plain_tensors(tmp_path, capsys, payload, message):
    marker = tmp_path / "was_opened"
    state = tiny_official(tmp_path).state_dict()
    state["extra"] = OpensAFile(marker) if payload == "code" else {"step": 3}
    torch.save(state, tmp_path / "bad.pt")
    status = main(["convert", str(tmp_path / "bad.pt"), "--config", str(tmp_path / "config.json"),
                   "--out", str(tmp_path / "out")])
    assert status == 2 and message in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()
