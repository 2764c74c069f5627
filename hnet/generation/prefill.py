"""Prefill: new bytes into the rows of an inference cache, packed, in pieces.

Each forward packs one piece of every row that still has bytes to read (the others take an empty
piece) into a single (1, T) sequence with cu_seqlens, and the model continues every row of the cache
from where it is (`HNetForCausalLM.forward` with a cache). A forward reads at most `max_bytes` bytes,
so a long prompt, or many, take several forwards: a prompt longer than one forward's memory works, and a
conversation goes on from its cache. No padding is computed, and the fast kernels run as in training
(Triton scans and convolutions, flash attention over the packed sequences, on CUDA).
"""

from __future__ import annotations

import torch

from hnet.chunking.routing import RoutingCache
from hnet.generation.cache import layer_caches
from hnet.layers.attention import KVCache
from hnet.layers.mamba2 import Mamba2Cache

PREFILL_BYTES = 16384  # per forward: activations of a few GB at the L models' widths


@torch.no_grad()  # not inference_mode: the caches it fills are used outside it too
def prefill(model, cache, rows: list[bytes], max_bytes: int = PREFILL_BYTES):
    """rows: the new bytes of each row of the cache (b"": none). Returns the logits after each row's last
    new byte, (len(rows), vocab) float32, zeros for a row without new bytes."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    device = model.embeddings.weight.device
    logits = None  # made at the first forward where not every row ends
    read = [0] * len(rows)
    while any(r < len(row) for r, row in zip(read, rows)):
        budget, pieces = max_bytes, []
        for i, row in enumerate(rows):  # rows in order, each as much as the budget leaves
            take = min(len(row) - read[i], budget)
            pieces.append(row[read[i]:read[i] + take])
            read[i] += take
            budget -= take
        lengths = torch.tensor([len(p) for p in pieces])
        cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        ended = [i for i, (p, row) in enumerate(zip(pieces, rows)) if p and read[i] == len(row)]
        mark_empty(cache)
        # The bytes, cu_seqlens and the last positions in one copy to the device; frombuffer: a list of 8192
        # ints into a tensor alone took ~1 ms of host time.
        T, n = int(cu[-1]), len(pieces)
        ids = torch.frombuffer(bytearray(b"".join(pieces)), dtype=torch.uint8).long()
        sent = torch.cat([ids, cu, cu[1:][ended] - 1]).to(device)
        out = model(sent[None, :T], cu_seqlens=sent[T:T + n + 1], cache=cache, logits_at=sent[T + n + 1:])
        if logits is None and len(ended) == len(rows):  # every row ends here: the usual single forward
            logits = out.logits[0].float()
            continue
        if logits is None:
            logits = torch.zeros(len(rows), model.config.vocab_size, device=device)
        logits[ended] = out.logits[0].float()
    return torch.zeros(len(rows), model.config.vocab_size, device=device) if logits is None else logits


def mark_empty(cache) -> None:
    """Tell every layer's cache, and every stage's routing cache, whether it holds nothing yet, for the next
    prefill forward: one host read for the whole model, where each Mamba-2 layer and each stack of attention
    layers would otherwise make its own (a fresh cache takes the forward's paths), and a few ops for all the
    caches together."""
    caches = list(layer_caches(cache, (KVCache, Mamba2Cache, RoutingCache)))  # one walk of the tree
    kv, ssm, routing = ([c for c in caches if isinstance(c, kind)] for kind in (KVCache, Mamba2Cache, RoutingCache))
    flags = []
    if kv:
        flags.append(torch.stack([c.seqlen for c in kv]).eq(0).all(dim=1))
    if ssm:  # each state's largest magnitude, in one op for them all: 0 where it is all zeros (NaN is not)
        largest = torch._foreach_norm([t for c in ssm for t in (c.ssm_state, c.conv_state)], float("inf"))
        flags.append(torch.stack(largest).view(-1, 2).eq(0).all(dim=1))
    if routing:
        flags.append(~torch.stack([c.has_seen_tokens for c in routing]).any(dim=1))
    if flags:
        for c, empty in zip(kv + ssm + routing, torch.cat(flags).tolist()):
            c.empty = empty
