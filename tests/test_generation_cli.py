"""`hnet generate --batch FILE` end to end: a tiny trained run, prompts one a line, JSON lines out."""

import json

import torch

from hnet.cli import main
from hnet.config import RunConfig
from hnet.generation import Decoder
from hnet.models import load_model
from hnet.training import train
from tiny_runs import tiny_hnet

PROMPTS = [b"ROMEO:", b"", "caf\u00e9 \u6771".encode(), b"To be, or not\r", b"\xff\xfe bytes that are not UTF-8"]


def test_batch_file_gives_json_lines_in_order(tmp_path, capsys):
    torch.manual_seed(0)
    train(RunConfig.from_dict(tiny_hnet(tmp_path, max_steps=2, eval_every=2, checkpoint_every=2)), tmp_path / "run",
          progress=False)
    prompts = [p.removesuffix(b"\r") for p in PROMPTS]  # a \r before the newline is no part of the line
    decoder = Decoder(load_model(tmp_path / "run").eval())

    def batches(stops):  # what the command should give: the same batches of 2, the same seed
        out = []
        for start in range(0, len(prompts), 2):
            decoder.start(prompts[start:start + 2])
            out += decoder.generate(24, seed=3, stop=stops)
        return out

    stop = batches([])[0][4:6]  # a stop the first prompt meets at its 6th byte
    expected = batches([stop, b"\n"])
    (tmp_path / "prompts.txt").write_bytes(b"\n".join(PROMPTS) + b"\n")
    args = ["generate", str(tmp_path / "run"), "--batch", str(tmp_path / "prompts.txt"), "--max-new-bytes", "24",
            "--seed", "3", "--batch-size", "2", "--stop", "".join(f"\\x{b:02x}" for b in stop), "--stop", "\\n"]
    assert main([*args, "--out", str(tmp_path / "out.jsonl")]) == 0
    assert "wrote 5 completions" in capsys.readouterr().out
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["prompt"] for line in lines] == [p.decode("utf-8", errors="replace") for p in prompts]
    assert [bytes.fromhex(line["completion_hex"]) for line in lines] == expected
    assert [line["completion"] for line in lines] == [e.decode("utf-8", errors="replace") for e in expected]
    assert [line["finish"] for line in lines] == ["stop" if e.endswith((stop, b"\n")) else "length" for e in expected]
    assert lines[0]["finish"] == "stop" and len(expected[0]) <= 6

    assert main(args) == 0  # to stdout, the same lines
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines


def test_batch_refuses_raw_output(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a\n")
    assert main(["generate", str(tmp_path / "no-model"), "--batch", str(tmp_path / "p.txt"), "--raw"]) == 2
    assert "--raw" in capsys.readouterr().err
