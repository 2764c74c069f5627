"""The GPU benchmarks' code paths, at tiny sizes on CPU (where the fast path is the reference), so they
cannot rot between device sessions. Their figures mean nothing here."""

import pytest
import torch
from tiny_runs import load_benchmark


def test_train_step_table_and_profile(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    load_benchmark("train_step").main(["--device", "cpu", "--quick", "--config", "hnet/configs/text/hnet_1stage_tiny.json",
                                       "--profile", "5"])
    out = capsys.readouterr().out
    assert "| hnet_1stage_tiny fast | 2.3M | 2 x 128 |" in out and "(matched to hnet_1stage_tiny) |" in out
    profile = out.split("profile of one hnet_1stage_tiny fast step:")[1]
    assert "Self CPU time total" in profile and "profiled step:" in profile


def test_train_step_routed_at_targets(capsys, monkeypatch):
    """--routed-at-targets: the H-Net's boundaries fixed at one every 6th byte of each sequence (its target)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    load_benchmark("train_step").main(["--device", "cpu", "--quick", "--config", "hnet/configs/text/hnet_1stage_tiny.json",
                                       "--no-reference", "--no-transformer", "--routed-at-targets"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| hnet_1stage_tiny fast, routed"))
    bytes_per_chunk = float(row.rstrip(" |").split("|")[-1])
    assert 5.5 < bytes_per_chunk <= 6.0  # 6 but for the shorter last chunk of each sequence


def test_forward_table(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    load_benchmark("forward").main(["--device", "cpu", "--quick", "--config", "hnet/configs/text/hnet_2stage_tiny.json"])
    assert "| hnet_2stage_tiny reference | 3.4M | 2 x 128 |" in capsys.readouterr().out


def test_kernel_table_gradient_errors():
    """The kernels table's forward+backward error: each input gradient against float64 copies of the inputs."""
    pytest.importorskip("triton")
    kernels = load_benchmark("kernels")
    cases = {case[0]: case for case in kernels.op_cases(kernels.shapes(quick=True), torch.device("cpu"), torch.float32)}
    _, _, reference, inputs, truth, _ = cases["ssd_chunked"]
    (_, errors), (_, scaled) = kernels.errors_vs_float64(truth, inputs, (reference, lambda *t: reference(*t) * 1.01))
    assert len(errors) == 6 and max(errors) < 1e-5  # the float32 reference: x, dt, A, B, C, D
    assert all(abs(err - 0.01) < 1e-4 for err in scaled)  # every gradient 1% off


def test_ssd_da_rounding_emulation():
    """The emulation behind the SSD backward's choice: summing <dS_out, S_out> from ddt's state terms leaves
    dA far less of the bf16 rounding than taking it from the stored chunk states."""
    old, new = load_benchmark("ssd_da_rounding").dA_errors(1, 1024)
    assert new < old / 20 and new < 1e-3


def test_generate_table_and_prefill(capsys):
    """Every column of the decoding table (the eager path: the one on CPU), and the prefill row."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_benchmark("generate").main(["--device", "cpu", "--quick"])
    finally:
        torch.set_num_threads(threads)
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| quick")]
    decode, prefill = rows[:-1], rows[-1]
    assert [(r[1].strip(), r[2].strip(), r[3].strip()) for r in decode] == [
        (c, b, "eager") for c in ("64", "256") for b in ("1", "4")]
    for r in decode:
        median, p90, per_s, gpu = (float(x) for x in r[4:8])
        assert 0 < median <= p90 and per_s > 0 and gpu > 0
        stage1, stage2 = (float(x) for x in r[8].split("/"))
        assert 0 <= stage2 <= stage1 <= 1
    assert float(prefill[1]) > 0 and float(prefill[2]) > 0
