import numpy as np
import pytest
import torch

from hnet.data import IGNORE_INDEX, TokenSplit, TrainLoader, val_batches

BOS = 254
# Known lengths, a one-token document, and a document full of BOS-valued bytes that are not starts.
DOCS = [np.arange(1, 6), np.array([7]), np.arange(10, 22), np.array([254, 1, 254, 254, 2]), np.arange(30, 33),
        np.arange(40, 49), np.array([254]), np.arange(50, 70)]


def make_split(docs=DOCS):
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return TokenSplit(np.concatenate(docs).astype(np.uint8), offsets, np.diff(offsets), BOS)


def reference_rows(docs, seed, seq_len, num_rows):
    """The rule written out naively: shuffled epochs back to back, BOS before each document."""
    stream, is_start, epoch = [], [], 0
    while len(stream) < num_rows * seq_len + 1:
        for i in np.random.default_rng(seed + epoch).permutation(len(docs)):
            stream += [BOS, *docs[i].tolist()]
            is_start += [True] + [False] * len(docs[i])
        epoch += 1
    return [(stream[r * seq_len:(r + 1) * seq_len + 1], is_start[r * seq_len:(r + 1) * seq_len + 1])
            for r in range(num_rows)]


def reference_batch(rows, seq_len):
    inputs = [row[:seq_len] for row, _ in rows]
    labels = [[IGNORE_INDEX if start[j + 1] else row[j + 1] for j in range(seq_len)] for row, start in rows]
    cu = [b * seq_len + j for b, (_, start) in enumerate(rows) for j in range(seq_len) if j == 0 or start[j]]
    return torch.tensor(inputs), torch.tensor(labels), torch.tensor(cu + [len(rows) * seq_len], dtype=torch.int32)


@pytest.mark.parametrize("seq_len, batch_size", [(8, 2), (5, 3), (64, 2)])  # 64: a row spans epochs
def test_batches_match_the_reference_packing(seq_len, batch_size):
    loader = TrainLoader(make_split(), seq_len, batch_size, seed=3)
    rows = reference_rows(DOCS, 3, seq_len, 12 * batch_size)
    for step in range(12):
        batch = next(loader)
        inputs, labels, cu = reference_batch(rows[step * batch_size:(step + 1) * batch_size], seq_len)
        assert torch.equal(batch["input_ids"], inputs)
        assert torch.equal(batch["labels"], labels)
        assert torch.equal(batch["cu_seqlens"], cu)
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64
        assert batch["cu_seqlens"].dtype == torch.int32 and bool((batch["cu_seqlens"].diff() > 0).all())
    assert loader.epoch >= 1


def test_bos_valued_bytes_are_not_document_starts():
    seq_len, batch_size = 16, 4
    batch = next(TrainLoader(make_split(), seq_len, batch_size, seed=0))
    flat = batch["input_ids"].flatten()
    starts = set(batch["cu_seqlens"].tolist()) - {b * seq_len for b in range(batch_size + 1)}
    assert starts and all(flat[s] == BOS for s in starts)
    assert len(starts) < int((flat == BOS).sum())  # more 254s than document starts
    # Inside a row, a label is masked exactly where the next input is a document start.
    masked = {b * seq_len + j + 1 for b, j in (batch["labels"] == IGNORE_INDEX).nonzero().tolist() if j + 1 < seq_len}
    assert masked == starts


def test_separator_packing_has_no_cu_seqlens():
    a = next(TrainLoader(make_split(), 8, 2, seed=0))
    b = next(TrainLoader(make_split(), 8, 2, seed=0, packing="separator"))
    assert b["cu_seqlens"] is None
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_determinism_and_seed():
    def take(seed):
        loader = TrainLoader(make_split(), 8, 2, seed)
        return torch.stack([next(loader)["input_ids"] for _ in range(6)])

    assert torch.equal(take(1), take(1))
    assert not torch.equal(take(1), take(2))


def test_resume_gives_the_identical_next_batches():
    loader = TrainLoader(make_split(), 8, 2, seed=5)
    for _ in range(7):
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(5)]
    resumed = TrainLoader(make_split(), 8, 2, seed=5)
    resumed.load_state_dict(state)
    for want, got in zip(expected, [next(resumed) for _ in range(5)]):
        assert all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(ValueError, match="seed"):
        TrainLoader(make_split(), 8, 2, seed=6).load_state_dict(state)


def test_rank_shards_partition_the_global_batch():
    single = TrainLoader(make_split(), 8, 4, seed=0)
    ranks = [TrainLoader(make_split(), 8, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        whole, parts = next(single), [next(r) for r in ranks]
        assert [p["input_ids"].shape[0] for p in parts] == [2, 2]
        assert torch.equal(torch.cat([p["input_ids"] for p in parts]), whole["input_ids"])
        assert torch.equal(torch.cat([p["labels"] for p in parts]), whole["labels"])
    with pytest.raises(ValueError, match="batch_size"):
        TrainLoader(make_split(), 8, 3, seed=0, world_size=2)


@pytest.mark.parametrize("seq_len, batch_size", [(7, 3), (16, 2), (200, 4)])
def test_val_scores_every_token_exactly_once(seq_len, batch_size):
    split = make_split()
    batches = list(val_batches(split, seq_len, batch_size))
    labels = torch.cat([b["labels"].flatten() for b in batches])
    assert labels[labels != IGNORE_INDEX].tolist() == np.concatenate(DOCS).tolist()
    first = batches[0]
    assert first["input_ids"][0, 0] == BOS and first["input_ids"][0, 1:6].tolist() == [1, 2, 3, 4, 5]
    for b in batches:
        assert b["cu_seqlens"][-1] == b["input_ids"].numel() and bool((b["cu_seqlens"].diff() > 0).all())
    assert len(list(val_batches(split, seq_len, batch_size, max_batches=1))) == 1
