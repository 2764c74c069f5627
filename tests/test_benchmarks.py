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


def test_train_step_unfused_rows_floor_and_glue(capsys, monkeypatch):
    """--unfused adds the rows with Mamba-2's mixer op by op, --keep-states those keeping the scan's states;
    --glue lists the glue ops of a step by call site; --saved what its forward keeps for the backward, by
    module; the floor columns stay empty off CUDA (no measured ceilings)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    load_benchmark("train_step").main(["--device", "cpu", "--quick", "--config", "hnet/configs/text/hnet_1stage_tiny.json",
                                       "--no-reference", "--no-transformer", "--unfused", "--keep-states", "--glue", "5",
                                       "--saved", "40"])
    out = capsys.readouterr().out
    assert "| model | params | batch | ms/step | floor ms | x floor |" in out
    assert "| hnet_1stage_tiny fast, mixer unfused | 2.3M | 2 x 128 |" in out
    assert "| hnet_1stage_tiny fast, states kept | 2.3M | 2 x 128 |" in out
    glue = out.split("glue of one hnet_1stage_tiny fast step:")[1]
    assert "| op | where | calls | MiB written |" in glue and "backward of" in glue
    saved = out.split("saved for the backward in one hnet_1stage_tiny fast step:")[1].split("\n\n")[0]
    total = float(saved.split(" GiB saved for the backward")[0].strip())
    by_module = {row.split(" | ")[0][2:]: float(row.split(" | ")[1]) for row in saved.strip().splitlines()[3:]}
    assert {"backbone.encoder.layers.*.mixer", "backbone.main_network.main_network.layers.*.mlp", "lm_head"} <= set(by_module)
    assert sum(by_module.values()) == pytest.approx(total, abs=0.002)  # every module within 40 rows


def test_step_floor_of_the_1stage_L_step():
    """The floor's counts against benchmarks/RESULTS.md (session 10): 64.15 TFLOP of matmuls over 11,264 padded
    chunks, 27.2 GB for the optimizer and clipping, 8.2 GB of casts, 40.6 GB for the 55 residual norms, and
    the Mamba-2 mixers at their least, a little under that section's ~82 KB a position and layer."""
    from hnet.config import HNetConfig
    from hnet.eval.floor import mamba2_mixer_bytes, step_floor
    from golden import REFERENCE

    path = REFERENCE / "configs" / "hnet_1stage_L.json"
    if not path.exists():
        pytest.skip("../shared/reference is not beside the repo")
    floor = step_floor(HNetConfig.from_json(path), 8, 8192, 679_405_312, [65536 / 11264])
    assert abs(floor.matmul_tflop - 64.15) < 0.01
    assert {k: round(v, 1) for k, v in floor.traffic_gb.items() if k != "mamba2"} == {
        "optimizer": 27.2, "casts": 8.2, "add_norms": 40.6}
    assert 75_000 < mamba2_mixer_bytes(2048, 128, 24) < 82_000
    # causal attention over whole rows of 8192 bytes: 22 layers x 4 d (c + 1) / 2 per chunk, x 3
    assert abs(floor.attention_tflop - 3 * 22 * 4 * 1536 * (8192 / (65536 / 11264) + 1) / 2 * 11264 / 1e12) < 1e-6
    assert floor.ms(715, 4226) == pytest.approx(sum(floor.parts_ms(715, 4226).values()))


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


def test_official_side_by_side_standins():
    """The side-by-side's stand-ins for the official code's compiled entry points compute what they stand for
    (the script itself needs the fetched official code and runs on a GPU; this needs neither)."""
    import torch.nn.functional as F

    from hnet.ops.conv1d import causal_conv1d
    from hnet.ops.norm import add_rms_norm
    from hnet.ops.rotary import apply_rotary, rotary_tables

    sbs = load_benchmark("official_side_by_side")
    gen = torch.Generator().manual_seed(0)
    # causal_conv1d's forward and backward, (b, d, l) as mamba_ssm hands them, dx into a given buffer
    x, w, b = torch.randn(2, 6, 20, generator=gen), torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
    seq_idx = torch.cat([torch.zeros(2, 9), torch.ones(2, 11)], 1).int()
    leaves = [t.clone().requires_grad_() for t in (x.transpose(1, 2), w, b)]
    ref = causal_conv1d(*leaves, seq_idx=seq_idx)
    assert torch.allclose(sbs.conv_fwd(x, w, b, seq_idx, None, None, True), ref.detach().transpose(1, 2), atol=1e-6)
    dout = torch.randn(2, 6, 20, generator=gen)
    expected = torch.autograd.grad(ref, leaves, dout.transpose(1, 2))
    dx = torch.empty(2, 6, 20)
    got = sbs.conv_bwd(x, w, b, dout, seq_idx, None, None, dx, False, True)
    assert got[0] is dx and torch.allclose(dx, expected[0].transpose(1, 2), atol=1e-5)
    assert torch.allclose(got[1], expected[1], atol=1e-5) and torch.allclose(got[2], expected[2], atol=1e-5)
    # rotary over packed sequences (positions restart), in place, and its conjugate undoes it
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    qk = torch.randn(12, 4, 8, generator=gen)
    cos, sin = rotary_tables(torch.arange(12), 6)
    pos = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6])
    rotated = sbs.apply_rotary(qk.clone(), cos, sin, cu_seqlens=cu, max_seqlen=7, inplace=True)
    assert torch.allclose(rotated, apply_rotary(qk, cos[pos], sin[pos]), atol=1e-6)
    assert torch.allclose(sbs.apply_rotary(rotated, cos, sin, cu_seqlens=cu, conjugate=True), qk, atol=1e-5)
    # attention per packed sequence: causal, and with a window of 2 keys back
    qkv = torch.randn(12, 3, 2, 8, generator=gen)
    for window in (-1, 2):
        out = sbs.flash_attn_varlen_qkvpacked_func(qkv, cu, 7, causal=True, window_size=(window, -1))
        for a, e in ((0, 5), (5, 12)):
            q, k, v = (t.transpose(0, 1) for t in qkv[a:e].unbind(1))
            i = torch.arange(e - a)
            allowed = (i[None, :] <= i[:, None]) & ((i[None, :] >= i[:, None] - window) if window >= 0 else True)
            assert torch.allclose(out[a:e], F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(0, 1),
                                  atol=1e-6)
    # flash_attn's RMSNorm module: the pre-norm residual step and the final norm
    norm = sbs.RMSNorm(8)
    h, r = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    y, summed = norm(h, residual=r, prenorm=True, residual_in_fp32=True)
    y_ref, summed_ref = add_rms_norm(h, r, norm.weight)
    assert torch.equal(summed, summed_ref) and torch.allclose(y, y_ref, atol=1e-6)
    assert torch.allclose(norm(h), add_rms_norm(h, None, norm.weight)[0], atol=1e-6)



def test_host_ops_of_a_prefill_and_a_forward(capsys, tmp_path):
    """The counts of benchmarks/host_ops.py: a fresh row's prefill runs the forward's Triton kernels, no more,
    and its attention layers launch nothing beyond the forward's (their caches are written by the rotation,
    and advanced after the stack): two more layers, the same difference."""
    import json

    paths = []
    for layers in (1, 3):
        paths.append(tmp_path / f"T{layers}.json")
        paths[-1].write_text(json.dumps({"arch_layout": ["m1", [f"T{layers}"], "m1"], "d_model": [32, 48],
                                         "d_intermediate": [0, 96], "attn_cfg": {"num_heads": [2, 2], "rotary_emb_dim": [16, 16],
                                                                      "window_size": [-1, -1]}}))
    load_benchmark("host_ops").main(["--config", *map(str, paths), "--bytes", "40", "--ops", "3"])
    out = capsys.readouterr().out
    cells = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| T")]
    rows = {(c[0], c[1]): [int(x) for x in c[2:]] for c in cells}
    extra = []
    for name in ("T1", "T3"):
        (_, fwd_launching, fwd_triton), (_, launching, triton) = rows[name, "forward"], rows[name, "prefill"]
        assert triton == fwd_triton > 0
        extra.append(launching - fwd_launching)
    assert extra[0] == extra[1] and rows["T3", "forward"][1] > rows["T1", "forward"][1]
    assert "launching ops (prefill, forward)" in out
