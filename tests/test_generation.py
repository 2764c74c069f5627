"""Cached decoding equals the parallel forward and the official decode trace; `generate` batches rows
of any length exactly as if each ran alone; sampling is reproducible; `hnet generate` streams UTF-8."""


import pytest
import torch
from safetensors.torch import load_file

from golden import CASES, GOLDEN, load_case, requires_golden
from hnet import HNetConfig, HNetForCausalLM
from hnet.cli import main
from hnet.generation import show_bytes
from hnet.generation.cache import select_rows


pytestmark = pytest.mark.usefixtures("one_thread")


def config(layout, d_model, d_intermediate, num_heads, window_size):
    return {
        "arch_layout": layout, "d_model": d_model, "d_intermediate": d_intermediate,
        "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 16, "expand": 2},
        "attn_cfg": {"num_heads": num_heads, "rotary_emb_dim": [16] * len(d_model), "window_size": window_size},
    }


CONFIGS = {  # windows shorter than the sequences, at the byte stage and at an inner stage
    "2stage": config(["m1", ["t1m1", ["T1"], "m1t1"], "m1"], [32, 64, 96], [0, 0, 128], [1, 2, 3], [-1, 9, -1]),
    "1stage_hybrid": config(["m1t1", ["M1T1"], "t1M1"], [32, 64], [128, 128], [1, 2], [7, -1]),
    "isotropic_m2T1": config(["m2T1"], [64], [128], [2], [5]),
    "isotropic_T2": config(["T2"], [64], [128], [2], [-1]),
}


def random_model(name, seed=0):
    """A tiny model in fp32, its weights perturbed (as the goldens do) so that every path matters."""
    torch.manual_seed(seed)
    model = HNetForCausalLM(HNetConfig.from_dict(CONFIGS[name])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@torch.no_grad()
def decode(model, ids, prefill: int):
    """Logits at every position of ids (L,), prefilling `prefill` bytes and stepping the rest; and the
    routing of each step."""
    cache = model.allocate_inference_cache(1, len(ids))
    logits = [model(ids[None, :prefill], cache=cache).logits[0]]
    routing = []
    for j in range(prefill, len(ids)):
        out = model.step(ids[j:j + 1], cache)
        logits.append(out.logits)
        routing.append(out.routing)
    return torch.cat(logits), routing


@pytest.mark.parametrize("name", [*(pytest.param(c, marks=requires_golden) for c in CASES), *CONFIGS])
def test_steps_equal_the_parallel_forward(name):
    if name in CASES:  # official weights on the golden text
        model, inputs = load_case(name)
        ids = inputs["input_ids"][0, :85]
    else:
        model = random_model(name)
        ids = torch.cat([torch.tensor([254]), torch.randint(0, 256, (39,), generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        full = model(ids[None])
    for r in full.routing:  # decisions far from the threshold: float noise cannot flip them
        assert (r.boundary_prob[..., 1] - 0.5).abs().min() > 1e-4
    for prefill in (1, 5, 23):
        logits, _ = decode(model, ids, prefill)
        assert (logits - full.logits[0]).abs().max() < 1e-4, f"prefill {prefill}"


@pytest.mark.parametrize("official_bf16_dechunk", [False, True], ids=["dechunk_fp32", "official_default"])
@requires_golden
@pytest.mark.parametrize("case", CASES)
def test_decode_matches_the_official_trace(case, official_bf16_dechunk):
    """../shared/reference README 5.4: prefill 23 bytes of sequence 0, then step through byte 84."""
    model, inputs = load_case(case)
    model.set_official_bf16_dechunk(official_bf16_dechunk)
    golden = load_file(str(GOLDEN / case / "decode.safetensors"))
    prefix = "default." if official_bf16_dechunk else ""
    logits, routing = decode(model, inputs["input_ids"][0, :85], prefill=23)
    if not official_bf16_dechunk:  # the default prefill is the default forward, checked in test_golden
        assert (logits[:23] - golden["prefill_logits"]).abs().max() < 1e-4
    # The step EMA is fp32 in both modes; after a bf16 prefill the trace still matches tightly.
    assert (logits[23:] - golden[f"{prefix}step_logits"]).abs().max() < 1e-4
    for s in range(model.num_stages - 1):
        # The official inner stage steps only after an outer boundary; ours steps always, masked.
        steps = [r[s] for r in routing if all(bool(r[j].boundary_mask.all()) for j in range(s))]
        assert torch.equal(torch.cat([r.boundary_mask for r in steps]), golden[f"{prefix}stage{s}.step_boundary_mask"])
        p = torch.cat([r.boundary_prob[:, 1] for r in steps])
        assert (p - golden[f"{prefix}stage{s}.step_boundary_prob"]).abs().max() < 2e-6


PROMPTS = [b"", b"H-Net", "na\u00efve caf\u00e9 \u6771\u4eac".encode(), b"Dynamic chunking learns boundaries.\n" * 2]


@pytest.mark.parametrize("name", ["2stage", "1stage_hybrid"])
def test_batch_of_different_lengths_equals_each_prompt_alone(name):
    model = random_model(name)
    batch = model.generate(PROMPTS, 40, temperature=0)
    alone = [model.generate([p], 40, temperature=0)[0] for p in PROMPTS]
    assert batch == alone
    assert all(len(out) == 40 for out in batch)


@pytest.mark.parametrize("name", ["2stage", "1stage_hybrid"])
def test_batched_steps_equal_the_parallel_forward_row_by_row(name):
    """Logits, not just argmaxes (greedy output of a random model soon repeats one byte): rows of
    different lengths fed random bytes, stepped together, each at its own position and boundaries."""
    model = random_model(name)
    rows = [torch.tensor([254, *p]) for p in PROMPTS]
    new = torch.randint(0, 256, (len(rows), 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model.allocate_inference_cache(len(rows), max(map(len, rows)) + 20)
        for i, r in enumerate(rows):
            model(r[None], cache=select_rows(cache, slice(i, i + 1)))
        stepped = torch.stack([model.step(new[:, j], cache).logits for j in range(20)], dim=1)
        for i, r in enumerate(rows):
            full = model(torch.cat([r, new[i]])[None]).logits[0, len(r):]
            assert (stepped[i] - full).abs().max() < 1e-4


def test_stop_sequence_ends_a_row_and_is_kept():
    model = random_model("1stage_hybrid")
    free = model.generate([b"ab", b"xyz"], 30, temperature=0)
    stop = free[0][10:12]
    end = free[0].index(stop) + len(stop)
    stopped = model.generate([b"ab", b"xyz"], 30, temperature=0, stop=[stop, b"\x00\x01\x02"])
    assert stopped[0] == free[0][:end]
    assert stopped[1] == free[1]  # the other row runs on


def test_seed_makes_sampling_reproducible_and_top_k_1_is_greedy():
    model = random_model("2stage")
    sampled = model.generate(PROMPTS[:2], 24, temperature=1.0, seed=7)
    assert sampled == model.generate(PROMPTS[:2], 24, temperature=1.0, seed=7)
    assert sampled != model.generate(PROMPTS[:2], 24, temperature=1.0, seed=8)
    greedy = model.generate(PROMPTS[:2], 24, temperature=0)
    assert model.generate(PROMPTS[:2], 24, temperature=1.0, top_k=1, seed=3) == greedy
    assert model.generate(PROMPTS[:2], 24, temperature=0.7, top_p=1e-6, seed=3) == greedy


@pytest.mark.parametrize("name", ["isotropic_m2T1", "isotropic_T2"])
def test_generate_on_an_isotropic_model(name):
    model = random_model(name)
    batch = model.generate([b"abc", b"a much longer prompt than that"], 20, temperature=0)
    assert batch == [model.generate([p], 20, temperature=0)[0] for p in (b"abc", b"a much longer prompt than that")]
    assert [len(b) for b in batch] == [20, 20]


def test_generate_rejects_bad_arguments():
    model = random_model("1stage_hybrid")
    for kwargs, field in [({"prompts": b"abc"}, "list of bytes"), ({"temperature": -1}, "temperature"),
                          ({"top_k": 0}, "top_k"), ({"top_p": 0}, "top_p"), ({"stop": [b""]}, "stop")]:
        args = {"prompts": [b"abc"], "max_new_bytes": 4, **kwargs}
        with pytest.raises(ValueError, match=field):
            model.generate(**args)
    assert model.generate([b"a", b"b"], 0) == [b"", b""]


def test_cli_streams_valid_utf8(tmp_path, capsys):
    model = random_model("1stage_hybrid")
    model.save_pretrained(tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--prompt", "caf\u00e9", "--max-new-bytes", "64", "--seed", "1"]) == 0
    expected = model.generate(["caf\u00e9".encode()], 64, seed=1)[0]
    assert capsys.readouterr().out == show_bytes(expected) + "\n"


def test_cli_raw_bytes_prompt_file_and_out(tmp_path, capfdbinary):
    model = random_model("1stage_hybrid")
    model.save_pretrained(tmp_path / "m")
    prompt = b"a\x00\xff\\xff"  # NUL, an invalid byte, and the four characters \xff
    (tmp_path / "prompt.bin").write_bytes(prompt)
    expected = model.generate([prompt], 64, seed=1)[0]
    args = ["generate", str(tmp_path / "m"), "--max-new-bytes", "64", "--seed", "1"]
    assert main([*args, "--prompt-file", str(tmp_path / "prompt.bin"), "--raw", "--out", str(tmp_path / "out.bin")]) == 0
    assert capfdbinary.readouterr().out == expected
    assert (tmp_path / "out.bin").read_bytes() == expected
    # --prompt takes the argument's own bytes, as the shell passed them (Python holds 0xff as U+DCFF)
    assert main([*args, "--prompt", "a\x00\udcff\\xff"]) == 0
    assert capfdbinary.readouterr().out.decode() == show_bytes(expected) + "\n"


def test_cli_refuses_a_bpe_model_naming_why(tmp_path, capsys):
    torch.manual_seed(0)
    HNetForCausalLM(HNetConfig.from_dict({
        "arch_layout": ["T1"], "d_model": [32], "d_intermediate": [64], "vocab_size": 400,
        "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [16], "window_size": [-1]}})).save_pretrained(tmp_path / "bpe")
    assert main(["generate", str(tmp_path / "bpe"), "--prompt", "To be", "--out", str(tmp_path / "out.bin")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "400 token ids (a BPE run)" in err and "byte-level models only" in err
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("name", ["2stage", "1stage_hybrid"])
def test_steps_through_the_kernels_equal_the_reference(name):
    """The decoding step on the Triton path (the interpreter here; CUDA's path) against the reference: the
    rotary, SSD-state and cache-attention kernels, rows masked at some steps."""
    from hnet.generation.cache import tensors
    from hnet.ops.dispatch import kernel_path

    model = random_model(name)
    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([True, False, True])
    out = {}
    for path in ("reference", "unfused"):
        with kernel_path(path), torch.no_grad():
            cache = model.allocate_inference_cache(3, 16)
            logits = [model.step(ids[:, t], cache, mask=mask if t % 3 == 1 else None).logits for t in range(12)]
        out[path] = torch.stack(logits), dict(tensors(cache))
    advanced = torch.stack([mask if t % 3 == 1 else torch.ones(3, dtype=torch.bool) for t in range(12)])
    # A row that does not advance has no meaningful output (the kernel does not read its cache).
    torch.testing.assert_close(out["unfused"][0][advanced], out["reference"][0][advanced], rtol=1e-4, atol=1e-4)
    for key, value in out["reference"][1].items():
        torch.testing.assert_close(out["unfused"][1][key], value, rtol=1e-4, atol=1e-4, msg=key)
