"""`hnet convert`: an official .pt (a plain state dict) to our model directory, and nothing else."""

import pytest
import torch

from golden import GOLDEN, load_case
from hnet import load_model
from hnet.cli import main


class OpensAFile:
    """Unpickling this calls open(path, "w"): a stand-in for code a malicious checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_convert_then_load_model_gives_the_same_logits(tmp_path):
    model, inputs = load_case("tiny_2stage")
    torch.save(model.state_dict(), tmp_path / "official.pt")
    assert main(["convert", str(tmp_path / "official.pt"), "--config", str(GOLDEN / "tiny_2stage" / "config.json"),
                 "--out", str(tmp_path / "converted")]) == 0
    loaded = load_model(tmp_path / "converted")
    with torch.no_grad():
        assert torch.equal(loaded(inputs["input_ids"], mask=inputs["mask"]).logits,
                           model(inputs["input_ids"], mask=inputs["mask"]).logits)


@pytest.mark.parametrize("payload, message", [
    ("code", "not a plain tensor checkpoint"),  # refused by torch.load(weights_only=True), never run
    ("not_tensors", "expected a flat state dict of tensors"),  # loads, but is not a state dict
])
def test_convert_refuses_a_pt_that_is_not_plain_tensors(tmp_path, capsys, payload, message):
    marker = tmp_path / "was_opened"
    state = load_case("tiny_1stage")[0].state_dict()
    state["extra"] = OpensAFile(marker) if payload == "code" else {"step": 3}
    torch.save(state, tmp_path / "bad.pt")
    status = main(["convert", str(tmp_path / "bad.pt"), "--config", str(GOLDEN / "tiny_1stage" / "config.json"),
                   "--out", str(tmp_path / "out")])
    assert status == 2 and message in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()
