"""Routing diagnostics, collapse detection and structure scores: by hand, and in a tiny training run."""

import json
import math

import numpy as np
import pytest
import torch
from handmade_routing import handmade_model
from tiny_runs import tiny_hnet

import hnet.chunking.routing as routing_module
from hnet.analysis.structure import random_f1, structure_scores, structure_snippet
from hnet.analysis.boundaries import extract_boundaries
from hnet.chunking.diagnostics import CollapseMonitor, routing_diagnostics, routing_sums
from hnet.chunking.routing import routing_output
from hnet.config import RunConfig
from hnet.training import train


def test_diagnostics_of_a_handmade_routing_output():
    p = torch.tensor([[1.0, 0.2, 0.52, 0.57, 0.46, 0.0]])  # boundaries at 0, 2, 3; 0.52 and 0.46 near 0.5
    d = routing_diagnostics(routing_sums([routing_output(p)]))
    mean = 2.75 / 6
    std = math.sqrt((1 + 0.04 + 0.52**2 + 0.57**2 + 0.46**2) / 6 - mean**2)
    expected = {"boundary_rate": 0.5, "mean_prob": mean, "prob_std": std, "near_threshold": 2 / 6,
                "stage_bytes_per_chunk": 2.0}
    for key, value in expected.items():
        assert d[key] == [pytest.approx(value, rel=1e-6)], key  # p is float32
    # the ratio loss's F and G are the rate and the mean probability; sums over two halves add up
    halves = routing_sums([routing_output(p[:, :3])]) + routing_sums([routing_output(p[:, 3:])])
    assert routing_diagnostics(halves) == {k: [pytest.approx(v[0], rel=1e-12)] for k, v in d.items()}


def test_collapse_fires_after_patience_and_clears():
    monitor = CollapseMonitor([6.0], patience=3)

    def step(per_chunk, rate=0.1):
        return monitor.update({"stage_bytes_per_chunk": [per_chunk], "boundary_rate": [rate]})

    assert [step(x) for x in (6.5, 1.6, 23.0, 8.0)] == [[False]] * 4  # within [1.5, 24]
    assert [step(x) for x in (30.0, 500.0, 1e4, 1e4)] == [[False], [False], [True], [True]]
    assert step(7.0) == [False]  # back on target
    assert [step(2.0, rate=1.0) for _ in range(3)][-1] == [True]  # every position a boundary
    two = CollapseMonitor([3.0, 3.0], patience=1)
    assert two.update({"stage_bytes_per_chunk": [3.1, 400.0], "boundary_rate": [0.3, 0.002]}) == [False, True]


def test_structure_scores_of_boundaries_at_word_starts():
    """The handmade model's stage 1 begins a chunk after every whitespace: word starts exactly."""
    text = b"To be, or not to be: that is the question. Whether tis nobler in the mind"
    stage1 = structure_scores(extract_boundaries(handmade_model(routing_stages=1), text))[0]
    assert stage1["word_start_precision"] == stage1["word_start_recall"] == stage1["word_start_f1"] == 1.0
    assert stage1["space_start_f1"] == 0.0  # chunks begin after the spaces, not at them
    assert stage1["whitespace_rate"] == 0.0 and 0 < stage1["letter_rate"] < 0.5
    words = len(text.split())
    assert stage1["word_start_f1_random"] == pytest.approx(random_f1(words, words, len(text)))
    assert random_f1(10, 20, 100) == pytest.approx(2 * 0.2 * 0.1 / 0.3)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_diagnostics_in_a_tiny_run(tmp_path, capsys):
    train(RunConfig.from_dict(tiny_hnet(tmp_path, max_steps=6, log_every=2, eval_every=3)), tmp_path / "run",
          progress=False)
    records = read_metrics(tmp_path / "run")
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    for r in logged:
        assert len(r["boundary_rate"]) == len(r["near_threshold"]) == len(r["collapsed"]) == 1
        assert 0 < r["boundary_rate"][0] <= 1 and 0 <= r["near_threshold"][0] <= 1
        assert r["stage_bytes_per_chunk"][0] == pytest.approx(1 / r["boundary_rate"][0])
        assert r["collapsed"] == [False]
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    for r in evals:  # structure scores on the validation snippet at every evaluation
        assert 0 <= r["word_start_f1"][0] <= 1 and 0 < r["word_start_f1_random"][0] < 1
    assert "collapsed" not in capsys.readouterr().out


def test_a_forced_collapse_is_reported(tmp_path, capsys, monkeypatch):
    """A router that makes every position a boundary: flagged after 3 log steps, with a warning."""
    real = routing_module.routing_output
    monkeypatch.setattr(routing_module, "routing_output", lambda p, mask=None: real(torch.ones_like(p), mask))
    train(RunConfig.from_dict(tiny_hnet(tmp_path, max_steps=4, eval_every=4)), tmp_path / "run", progress=False)
    logged = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["collapsed"] for r in logged] == [[False], [False], [True], [True]]
    assert logged[-1]["boundary_rate"] == [1.0]
    assert capsys.readouterr().out.count("warning: step 3: routing stage 1 has collapsed") == 1


def test_structure_scores_of_boundaries_at_the_space_before_each_word():
    """Chunks that begin at the space before a word (" word", as GPT-2's BPE): no word start at all, every
    space-before-word."""
    from hnet.analysis.boundaries import StageBoundaries, Boundaries

    text = b"to be or not to be"
    starts = np.array([0, 2, 5, 8, 12, 15])
    offsets = np.arange(len(text))
    stage = StageBoundaries(1, offsets, np.isin(offsets, starts).astype(np.float32), np.isin(offsets, starts))
    scores = structure_scores(Boundaries(text, [stage]))[0]
    assert scores["space_start_precision"] == pytest.approx(5 / 6) and scores["space_start_f1"] == pytest.approx(10 / 11)
    assert scores["word_start_f1"] == pytest.approx(2 * (1 / 6) * (1 / 6) / (2 / 6))  # only offset 0 is a word start
    assert scores["space_start_f1_random"] == pytest.approx(random_f1(6, 5, len(text)))


def test_the_structure_snippet_is_prose_from_the_middle_of_a_document():
    book = b"TITLE\n\n    Contents\n" + bytes(range(65, 91)) * 100 + b"\nTHE END"
    middle = structure_snippet([b"short", np.frombuffer(book, dtype=np.uint8)], 1000)
    start = (len(book) - 1000) // 2
    assert middle == book[start:start + 1000]  # the first document that holds 1000 bytes, its middle
    assert structure_snippet([b"ab", np.frombuffer(b"cd", dtype=np.uint8)], 4) == b"ab\ncd"[:4]  # none that long
