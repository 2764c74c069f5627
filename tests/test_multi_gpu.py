"""The multi-GPU benchmark runs on 2 CPU processes (gloo), so the script is ready when GPUs are."""

import pytest

from tiny_runs import load_benchmark


@pytest.mark.slow
def test_multi_gpu_dry_run_matches_one_process_and_moves_checkpoints(capsys):
    script = load_benchmark("multi_gpu")
    summary = script.main(["--dry-run"])
    out = capsys.readouterr().out
    assert "| step | loss, 1 process | loss, 2 processes | difference |" in out
    assert summary["loss_gap_max"] < 1e-4  # the same global batch: the global loss agrees
    assert all(abs(d) < 1e-4 for d in summary["moved_minus_straight"]) and len(summary["moved_minus_straight"]) == 2
    assert summary["noise_gap_max"] < 1e-4  # on the CPU two identical runs are identical
    assert set(summary["bytes_per_s"]) == {1, 2, "2_weak"} and all(v > 0 for v in summary["bytes_per_s"].values())
