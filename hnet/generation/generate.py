"""Sampling bytes from a model: prefill the prompts, then decode every row one byte a step.

Batching. The prompts, of any lengths, are prefilled together: packed into one sequence, each continuing
its own row of the cache (`prefill`), without padding. Decoding then steps all rows together, each at its
own position; inside an H-Net every row runs the main network, whose state only the rows that start a
chunk update (see `HNet.step`), so every row computes exactly what it would alone.

Speed. A step is `decode_step`: the model's step, the choice of the next byte and the stop check, all on
the device. With cuda_graphs it is replayed as a CUDA graph (`hnet.generation.graphs`) over static buffers, the
batch padded to a bucket (1, 2, 4, ..., 64, then multiples of 64) so that graphs are reused; the host
reads the new bytes back only every `read_every` steps. Eager steps are the reference: on CPU, with
HNET_REFERENCE=1, or cuda_graphs=False; they run the same code and choose the same bytes.

Stopping. A row stops after `max_new_bytes` or once its new bytes end with one of the `stop` sequences,
which is kept in the output (so a caller can tell a stop from running out of bytes); the check runs on
the device at every step, so a stop is exact whenever the host reads, and a stopped row's cache stays
as it was. No byte stops a row by itself: the official generate.py ends at byte 255 (pass stop=b"\\xff"
for its checkpoints), and our loader starts every document with BOS 254, so a model trained here ends
one with b"\\xfe".

`stream_ids` is the plain eager loop over ids, for models that read ids rather than bytes (the BPE
baseline, in lm-eval's generate_until): each prompt prefilled alone, one host read a step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hnet.constants import BOS
from hnet.generation.cache import clear_, reserve, select_rows
from hnet.generation.decode import NOTHING, DecodeState, decode_step, emit
from hnet.generation.prefill import PREFILL_BYTES, prefill
from hnet.generation.sampling import Sampling, check_sampling, sample
from hnet.ops.dispatch import reference_requested
from hnet.ops.packed import bucketed_length

READ_EVERY_CUDA = 16  # steps between host reads on CUDA (on CPU every step: there is nothing to overlap)


def bucket(rows: int) -> int:
    """The batch size a batch of `rows` rows is padded to: a power of two up to 64, then a multiple of 64."""
    return 1 << (rows - 1).bit_length() if rows <= 64 else -(-rows // 64) * 64


class Decoder:
    """Generation over one model: the rows of a batch, each a text that grows (a conversation), their
    inference cache, and the decoding step, replayed as CUDA graphs or run eagerly.

        decoder = Decoder(model)
        decoder.start([b"Once upon", b"H-Net"])      # the prompts, prefilled (BOS first)
        first = decoder.generate(64, stop=b"\\n")     # each row's new bytes
        decoder.extend([b" then", b" and"])           # after what each row has generated
        second = decoder.generate(64)                 # goes on from the cache

    cuda_graphs: None = on CUDA unless HNET_REFERENCE=1. read_every: steps between host reads (None: 16
    on CUDA, 1 elsewhere). prefill_bytes: at most so many bytes a prefill forward. buckets: pad the batch
    to `bucket(rows)` rows (None: on CUDA, eager or not, so that both draw the same random numbers). The
    buffers and graphs of a batch size are kept for the next `start` of the same size.
    """

    def __init__(self, model, cuda_graphs: bool | None = None, read_every: int | None = None,
                 prefill_bytes: int = PREFILL_BYTES, buckets: bool | None = None):
        self.model = model
        self.device = model.embeddings.weight.device
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and not reference_requested()
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a model on CUDA, not on {self.device.type}")
        self.cuda_graphs = cuda_graphs
        self.read_every = read_every or (READ_EVERY_CUDA if self.device.type == "cuda" else 1)
        if self.read_every < 1:
            raise ValueError(f"read_every must be >= 1, got {read_every}")
        self.prefill_bytes = prefill_bytes
        self.buckets = self.device.type == "cuda" if buckets is None else buckets
        self.generator = torch.Generator(self.device)
        self.state: DecodeState | None = None
        self.graphed = None
        self.rows = 0  # the real rows; the state may have more (a bucket)
        self.pending: list[bytes] = []  # per row, bytes generated but not yet fed (the last one chosen)
        self.logits = None  # (state rows, vocab): after each row's last fed byte, when nothing is pending

    @torch.no_grad()
    def start(self, prompts: list[bytes]) -> None:
        """New rows, one per prompt: BOS and the prompt prefilled into a fresh cache."""
        _check_prompts(prompts)
        if not prompts:
            raise ValueError("start takes at least one prompt")
        rows = bucket(len(prompts)) if self.buckets else len(prompts)
        if self.state is None or self.state.live.shape[0] != rows:
            cache = self.model.allocate_inference_cache(rows, 0)  # attention caches grow as the prefill needs
            self.state = DecodeState.allocate(cache, rows, bucketed_length(1), 1, self.device)
            self.graphed = None
        else:
            clear_(self.state.cache)
        self.rows = len(prompts)
        self.pending = [b""] * rows
        texts = [bytes([BOS]) + bytes(p) for p in prompts] + [b""] * (rows - len(prompts))
        self.logits = prefill(self.model, self.state.cache, texts, self.prefill_bytes)

    @torch.no_grad()
    def extend(self, texts: list[bytes]) -> None:
        """More bytes after each row: the row's conversation goes on after what it generated."""
        _check_prompts(texts)
        if self.state is None or len(texts) != self.rows:
            raise ValueError(f"extend takes one text per row ({self.rows} rows; start first), got {len(texts)}")
        new = [p + bytes(t) for p, t in zip(self.pending, texts)] + self.pending[self.rows:]
        logits = prefill(self.model, self.state.cache, new, self.prefill_bytes)
        fed = torch.tensor([len(n) > 0 for n in new], device=self.device)
        self.logits = torch.where(fed[:, None], logits, self.logits)
        self.pending = [b""] * len(self.pending)

    @torch.no_grad()
    def prepare(self, max_new_bytes: int, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, stop=None, seed: int | None = None, forced=None):
        """Set up a run of max_new_bytes (>= 1) bytes: the first is chosen, from the logits after each row's
        last byte; returns the step that chooses each next one (a graph's replay, or the eager step), which
        writes into `state.out`. `stream` drives it; a benchmark may time it step by step (and then `start`
        anew: only `stream` keeps track of the bytes chosen but not yet fed)."""
        if max_new_bytes < 1:
            raise ValueError(f"max_new_bytes must be >= 1 for a run, got {max_new_bytes}")
        if self.state is None:
            raise ValueError("nothing to continue: start the rows first")
        sampling = Sampling(temperature, top_k, top_p)
        stops = _stop_list(stop)
        if any(self.pending):
            self.extend([b""] * self.rows)
        state = self._state_for(max_new_bytes, stops)
        reserve(state.cache, max_new_bytes)
        state.start(self.rows, stops, None if forced is None else torch.as_tensor(forced, device=self.device))
        self.generator.manual_seed(torch.randint(0, 2**62, ()).item() if seed is None else seed)
        emit(state, self.logits, sampling, self.generator)
        self.pending = [b""] * len(self.pending)  # until the run ends: see `stream`
        return self._step(sampling)

    @torch.no_grad()
    def stream(self, max_new_bytes: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, stop=None, seed: int | None = None, forced=None) -> Iterator[list[bytes]]:
        """Yields, at every host read, each row's new bytes since the last read (b"" for a row that has
        stopped). forced (rows, max_new_bytes): bytes to take instead of sampling (teacher forcing)."""
        if max_new_bytes < 0:
            raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
        if max_new_bytes == 0:
            Sampling(temperature, top_k, top_p)
            _stop_list(stop)
            return
        step = self.prepare(max_new_bytes, temperature, top_k, top_p, stop, seed, forced)
        state, read_from, steps = self.state, 0, 1
        try:
            for j in range(max_new_bytes):
                if j > 0:
                    step()
                    steps += 1
                if (j + 1) % self.read_every and j + 1 < max_new_bytes:
                    continue
                read = torch.cat([state.out[: self.rows, read_from:j + 1], state.live[: self.rows, None].long()], dim=1)
                read = read.tolist()
                read_from = j + 1
                yield [bytes(b for b in row[:-1] if b != NOTHING) for row in read]
                if not any(row[-1] for row in read):
                    break
        finally:  # also when the caller stops reading: what the device did is what the rows hold
            self.pending = self.last_chosen(steps) + self.pending[self.rows:]

    def last_chosen(self, steps: int) -> list[bytes]:
        """Each real row's last byte chosen in the run's first `steps` steps (b"" if none): chosen, not fed."""
        chosen = self.state.out[: self.rows, :steps].tolist()
        return [bytes([b for b in row if b != NOTHING][-1:]) for row in chosen]

    def generate(self, max_new_bytes: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, stop=None, seed: int | None = None, forced=None) -> list[bytes]:
        """Each row's new bytes (see `stream`)."""
        out = [bytearray() for _ in range(self.rows)]
        for new in self.stream(max_new_bytes, temperature, top_k, top_p, stop, seed, forced):
            for o, n in zip(out, new):
                o += n
        return [bytes(o) for o in out]

    def _state_for(self, max_new_bytes: int, stops: list[bytes]) -> DecodeState:
        """The state, with room for max_new_bytes and the longest stop (else new buffers, the same cache)."""
        state = self.state
        width = max([1, *map(len, stops)])
        if state.out.shape[1] < max_new_bytes or state.recent.shape[1] < width:
            rows = state.live.shape[0]
            capacity = max(bucketed_length(max_new_bytes), state.out.shape[1])
            width = max(width, state.recent.shape[1])
            self.state = DecodeState.allocate(state.cache, rows, capacity, width, self.device)
        return self.state

    def _step(self, sampling: Sampling):
        """One decoding step over the state: a graph's replay, or the eager step."""
        if not self.cuda_graphs:
            return lambda: decode_step(self.model, self.state, sampling, self.generator)
        from hnet.generation.graphs import GraphedSteps  # CUDA only: the CPU path never imports it

        if self.graphed is None or self.graphed.key != GraphedSteps.key_of(self.state, sampling, self.generator):
            self.graphed = None  # its memory first
            self.graphed = GraphedSteps(self.model, self.state, sampling, self.generator)
        return self.graphed.step


def _check_prompts(prompts) -> None:
    if isinstance(prompts, (bytes, bytearray, str)) or not all(isinstance(p, (bytes, bytearray)) for p in prompts):
        raise ValueError("prompts must be a list of bytes")


def _stop_list(stop) -> list[bytes]:
    stops = [bytes(stop)] if isinstance(stop, (bytes, bytearray)) else [bytes(s) for s in stop or []]
    if any(not s for s in stops):
        raise ValueError("a stop sequence must not be empty")
    return stops


def stream(model, prompts, max_new_bytes: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, stop=None, seed: int | None = None, **decoder) -> Iterator[list[bytes]]:
    """Yields, at every host read, the new bytes of every row since the last (b"" for a row that has
    stopped). decoder: Decoder's options (cuda_graphs, read_every, prefill_bytes, buckets)."""
    _check_prompts(prompts)
    Sampling(temperature, top_k, top_p)
    _stop_list(stop)  # arguments checked before any work
    if max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
    if not prompts or max_new_bytes == 0:
        return
    d = Decoder(model, **decoder)
    d.start(prompts)
    yield from d.stream(max_new_bytes, temperature, top_k, top_p, stop, seed)


def generate(model, prompts, max_new_bytes: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop=None, seed: int | None = None, **decoder) -> list[bytes]:
    """The new bytes of each prompt (without the prompt).

    prompts: a list of bytes (BOS 254 is prepended to each). temperature 0 (or top_k=1) is greedy.
    stop: bytes or a list of them; a row ends with the first one it generates (kept in its output).
    seed: makes sampling reproducible (a torch.Generator on the model's device).
    decoder: Decoder's options (cuda_graphs, read_every, prefill_bytes, buckets).
    """
    out = [bytearray() for _ in prompts]
    for new in stream(model, prompts, max_new_bytes, temperature, top_k, top_p, stop, seed, **decoder):
        for o, n in zip(out, new):
            o += n
    return [bytes(o) for o in out]


@torch.inference_mode()
def stream_ids(model, rows, max_new: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, stops=(), seed: int | None = None) -> Iterator[list[int | None]]:
    """The loop over ids: rows are id lists as the model reads them (BOS included, if any) and stops are
    id sequences. Yields, at each step, the new id of every row (None for a row that has stopped). A
    caller may stop iterating at any step (a BPE model's stop strings are found in decoded text)."""
    check_sampling(temperature, top_k, top_p)
    if max_new < 0:
        raise ValueError(f"the number of new ids must be >= 0, got {max_new}")
    stops = [list(s) for s in stops]
    if any(not s for s in stops):
        raise ValueError("a stop sequence must not be empty")
    if any(not row for row in rows):
        raise ValueError("each row must hold at least one id (BOS)")
    if not rows or max_new == 0:
        return

    device = model.embeddings.weight.device
    cache = model.allocate_inference_cache(len(rows), max(map(len, rows)) + max_new)
    logits = torch.cat([
        model(torch.tensor([list(row)], device=device), cache=select_rows(cache, slice(i, i + 1))).logits[:, -1]
        for i, row in enumerate(rows)
    ])
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    generated = [[] for _ in rows]
    live = [True] * len(rows)
    for step in range(max_new):
        ids = sample(logits, temperature, top_k, top_p, generator)
        new = []
        for i, token in enumerate(ids.tolist()):
            new.append(token if live[i] else None)
            if live[i]:
                generated[i].append(token)
                live[i] = not any(generated[i][-len(s):] == s for s in stops)
        yield new
        if step == max_new - 1 or not any(live):
            return
        logits = model.step(ids, cache, mask=torch.tensor(live, device=device)).logits
