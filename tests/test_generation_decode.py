"""The decoding step on the device: the masked inner stages equal a step that branches on the host, bit for
bit; stops are exact whatever the host's read interval; a stopped row keeps its cache; the edge cases of
max_new_bytes; the batch-size buckets of the CUDA graphs, run eagerly."""

import pytest
import torch

from golden import CASES, load_case, requires_golden
from hnet.generation import Decoder, generate, prefill
from hnet.generation.cache import tensors
from hnet.models.hnet import HNet
from test_generation import PROMPTS, random_model


pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(cache) -> dict:
    return {name: t.clone() for name, t in tensors(cache)}


def branching_step(stage: HNet, x, cache, rows: list[bool]):
    """`HNet.step` as a host would branch it: every layer steps every row unmasked, and afterwards the rows
    not in `rows` get their cache back; an inner stage runs only if some row starts a chunk, and keeps what
    it did for those rows only; the EMA is updated row by row where a chunk starts."""
    before = snapshot(cache)
    d_in = x.shape[-1]
    x = stage._pad(x)
    if stage.is_innermost:
        h, routing = stage.main_network.step(x, cache.main_network), []
    else:
        h = stage.encoder.step(x, cache.encoder)
        residual = stage._residual(h)
        routing = [stage.routing_module.step(h, cache.routing)]
        starts = [r and b for r, b in zip(rows, routing[0].boundary_mask.tolist())]
        if any(starts):
            z, inner = branching_step(stage.main_network, h, cache.main_network, starts)
            routing += inner
            p = routing[0].boundary_prob[:, 1].float().clamp(1e-4, 1 - 1e-4)[:, None]
            last = cache.dechunk.last_value
            for i in (i for i, s in enumerate(starts) if s):
                last[i] = p[i] * z[i].float() + (1 - p[i]) * last[i]
        h = (cache.dechunk.last_value + residual).to(h.dtype)
        h = stage.decoder.step(h, cache.decoder)
    for name, t in tensors(cache):
        for i in (i for i, r in enumerate(rows) if not r):
            t[i] = before[name][i]
    return h[..., :d_in], routing


def golden_rows(case):
    """Four rows of the golden texts at different offsets, prefilled to different lengths."""
    model, inputs = load_case(case)
    ids, lengths = inputs["input_ids"], inputs["mask"].sum(1).tolist()
    texts = [ids[0, :lengths[0]], ids[1, :lengths[1]], ids[0, 9:lengths[0]], ids[1, 30:lengths[1]]]
    return model, texts


@requires_golden
@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_masked_inner_stages_equal_the_branching_step_bit_for_bit(case):
    model, texts = golden_rows(case)
    prompt_lengths, steps = [23, 5, 31, 12], 40
    caches = [model.allocate_inference_cache(4, 128) for _ in range(2)]
    for cache in caches:
        prefill(model, cache, [bytes(t[:n].tolist()) for t, n in zip(texts, prompt_lengths)])
    masked, branching = caches
    mixed = [0] * (model.num_stages - 1)  # steps where some rows start a chunk and others not, per stage
    for j in range(steps):
        ids = torch.stack([t[n + j] for t, n in zip(texts, prompt_lengths)])
        out = model.step(ids, masked)
        h, _ = branching_step(model.backbone, model.embeddings(ids), branching, [True] * 4)
        assert torch.equal(out.logits, model.lm_head(h)), f"step {j}: logits"
        for name, t in tensors(masked):
            assert torch.equal(t, dict(tensors(branching))[name]), f"step {j}: {name}"
        outer_started = torch.ones(4, dtype=torch.bool)
        for s, r in enumerate(out.routing):
            b = r.boundary_mask & outer_started
            mixed[s] += bool(b.any() and not b.all())
            outer_started = b
    assert all(m >= 3 for m in mixed), mixed


@torch.no_grad()
def test_a_stopped_row_keeps_its_cache_bit_for_bit():
    model = random_model("2stage")
    cache = model.allocate_inference_cache(3, 64)
    prefill(model, cache, [b"\xfeab", b"\xfecdef", b"\xfe"])
    live = torch.tensor([True, False, True])
    before = snapshot(cache)
    for j in range(12):
        model.step(torch.tensor([97 + j, 98, 99 + j]), cache, mask=live)
    for name, t in tensors(cache):
        assert torch.equal(t[1], before[name][1]), name


def free_run(model, prompts, n=40, **options):
    """Seeded sampling: a random model's bytes do not repeat (greedy ones soon do), so a stop taken from
    them ends where it was taken; the draws do not depend on which rows have stopped."""
    return generate(model, prompts, n, seed=5, **options)


def until_stop(text: bytes, stops: list[bytes]) -> bytes:
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[:min(ends)] if ends else text


@pytest.mark.parametrize("read_every", [1, 4, 16])
def test_a_stop_between_host_reads_is_exact(read_every):
    """Stops ending at step 5 (inside the read interval 4..8) and at step 11 (begun before the read at 8):
    nothing after a stop comes back, whatever the read interval; the other row runs on."""
    model = random_model("1stage_hybrid")
    prompts = [b"ab", b"xyz", b"q"]
    free = free_run(model, prompts)
    stops = [free[0][3:6], free[1][6:12]]
    out = free_run(model, prompts, stop=stops, read_every=read_every)
    assert out == [until_stop(f, stops) for f in free]
    assert out[0] == free[0][:6] and out[1] == free[1][:12] and out[2] == free[2]


def test_a_stopped_row_cache_holds_what_it_read():
    """After a stop, a row's cache holds its prompt and what it generated but the last byte (chosen, not yet
    fed), as if exactly those bytes had been prefilled: it did not move after the stop."""
    model = random_model("2stage")
    free = free_run(model, [b"ab", b"zz"])
    decoder = Decoder(model, read_every=8)
    decoder.start([b"ab", b"zz"])
    out = decoder.generate(40, seed=5, stop=free[0][6:9])
    assert out[0] == free[0][:9] and decoder.pending[0] == free[0][8:9] and out[1] == free[1]
    reference = model.allocate_inference_cache(1, 64)
    prefill(model, reference, [b"\xfeab" + free[0][:8]])
    mine = {name: t[0] for name, t in tensors(decoder.state.cache)}
    theirs = {name: t[0] for name, t in tensors(reference)}
    for name, t in theirs.items():
        if name.endswith(".k") or name.endswith(".v"):  # the slots of the row's positions (or of its ring)
            filled = int(theirs[name[:-2] + ".seqlen"])
            t, mine[name] = t[:, :filled], mine[name][:, :filled]
        assert (mine[name].float() - t.float()).abs().max() < 1e-5, name


def test_every_row_stops_early():
    model = random_model("2stage")
    prompts = [b"a", b"bb", b"ccc"]
    free = free_run(model, prompts)
    stops = [f[2:4] for f in free]
    decoder = Decoder(model, read_every=4)
    decoder.start(prompts)
    reads = list(decoder.stream(200, seed=5, stop=stops))
    out = [b"".join(r[i] for r in reads) for i in range(3)]
    assert out == [until_stop(f, stops) for f in free] and max(map(len, out)) <= 4
    assert len(reads) == 1 and int(decoder.state.count) == 4  # the host stopped at its first read


def test_max_new_bytes_0_and_1():
    model = random_model("1stage_hybrid")
    assert generate(model, PROMPTS, 0) == [b""] * len(PROMPTS)
    first = [f[:1] for f in generate(model, PROMPTS, 5, temperature=0)]
    assert generate(model, PROMPTS, 1, temperature=0) == first
    assert generate(model, PROMPTS, 1, temperature=0, stop=first[0]) == first  # a stop on the only byte
    decoder = Decoder(model)
    decoder.start(PROMPTS)
    assert list(decoder.stream(0)) == [] and decoder.pending == [b""] * len(PROMPTS)


@pytest.mark.parametrize("name", ["2stage", "1stage_hybrid"])
def test_bucketed_batch_and_read_interval_change_nothing(name):
    """The CUDA graphs' layout run eagerly: 3 rows padded to a bucket of 4, reads every 5 steps. Greedy
    bytes are the plain decode's, and each row's what it decodes alone; seeded draws are the same at any
    read interval (a padded batch draws other random numbers than an unpadded one)."""
    model = random_model(name)
    prompts = PROMPTS[1:]
    plain = generate(model, prompts, 30, temperature=0)
    assert generate(model, prompts, 30, temperature=0, buckets=True, read_every=5) == plain
    assert plain == [generate(model, [p], 30, temperature=0)[0] for p in prompts]
    sampled = generate(model, prompts, 30, seed=3, top_p=0.9, buckets=True)
    assert generate(model, prompts, 30, seed=3, top_p=0.9, buckets=True, read_every=5) == sampled


def test_a_conversation_goes_on_from_its_cache():
    """start, generate, extend, generate: the second answer is the one a fresh decode of the whole text gives."""
    model = random_model("2stage")
    decoder = Decoder(model, read_every=3)
    decoder.start([b"Hello", b"Hi"])
    first = decoder.generate(10, temperature=0)
    decoder.extend([b" and then", b""])
    second = decoder.generate(12, temperature=0)
    again = generate(model, [b"Hello" + first[0] + b" and then", b"Hi" + first[1]], 12, temperature=0)
    assert second == again
    third = decoder.generate(5, temperature=0)  # no new text: goes on from the last byte
    assert third == [g[12:] for g in generate(model, [b"Hello" + first[0] + b" and then", b"Hi" + first[1]], 17,
                                               temperature=0)]


def test_teacher_forcing_takes_the_given_bytes():
    model = random_model("1stage_hybrid")
    forced = torch.tensor([list(b"forced text"), list(b"other bytes")])
    decoder = Decoder(model)
    decoder.start([b"a", b"b"])
    assert decoder.generate(11, forced=forced) == [b"forced text", b"other bytes"]


class NoHostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Fails on every op that hands a tensor's value to the host or sizes its output by one: on CUDA each
    is a sync with the host, which a CUDA graph cannot hold (`.item()`, `bool(t)`, `int(t)` all go through
    _local_scalar_dense; a boolean mask as an index is a nonzero). `.tolist()` and `.numpy()`, which read
    CPU memory without an op, fail too while it is on."""

    READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
             "aten::unique_consecutive", "aten::unique_dim", "aten::repeat_interleave", "aten::nonzero_numpy"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in self.READS or (name == "aten::index" and any(
                i is not None and i.dtype == torch.bool for i in args[1])):
            raise AssertionError(f"a host read in a decoding step: {name}")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self.patch = pytest.MonkeyPatch()
        for method in ("tolist", "numpy"):
            self.patch.setattr(torch.Tensor, method, _refuse(method))
        return super().__enter__()

    def __exit__(self, *exc):
        self.patch.undo()
        return super().__exit__(*exc)


def _refuse(method):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a host read in a decoding step: Tensor.{method}")
    return refuse


@pytest.mark.parametrize("name", ["2stage", "1stage_hybrid", "isotropic_m2T1"])
@torch.no_grad()
def test_a_decoding_step_reads_nothing_back_to_the_host(name):
    """decode_step (what a CUDA graph captures) over a bucketed batch with a stopped row, top-k and top-p
    sampling and stop sequences: no op in it reads a value to the host."""
    from hnet.generation.decode import decode_step
    from hnet.generation.sampling import Sampling

    model = random_model(name)
    decoder = Decoder(model, buckets=True)
    decoder.start([b"abc", b"a longer prompt", b"x"])  # 3 rows in a bucket of 4
    decoder.prepare(10, top_k=40, top_p=0.9, stop=[b"\x00\x01", b"z"], seed=0)
    decoder.state.live[1] = False
    with NoHostReads():
        for _ in range(4):
            decode_step(model, decoder.state, Sampling(1.0, 40, 0.9), decoder.generator)
    assert int(decoder.state.count) == 5


def test_the_host_read_detector_catches_the_branching_step():
    """The detector is not blind: the step as it was, with `if boundary.any()` at each stage, fails."""
    model = random_model("2stage")
    cache = model.allocate_inference_cache(2, 16)
    prefill(model, cache, [b"\xfeab", b"\xfecd"])
    with pytest.raises(AssertionError, match="host read"), NoHostReads(), torch.no_grad():
        branching_step(model.backbone, model.embeddings(torch.tensor([101, 102])), cache, [True, True])
