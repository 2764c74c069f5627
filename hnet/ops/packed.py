"""Helpers for packed (varlen) batches: T positions of several sequences, delimited by cu_seqlens."""

import torch


def seq_idx_from_cu_seqlens(cu_seqlens, total: int):
    """(1, T) int32: the index of the packed sequence each position belongs to."""
    # index_fill_, not starts[idx] = 1: the assignment copies its value from host memory, a sync per call.
    # One slot past the end, for empty sequences at the end (prefill), whose start is `total`.
    starts = torch.zeros(total + 1, dtype=torch.int32, device=cu_seqlens.device)
    starts.index_fill_(0, cu_seqlens[1:-1].long(), 1)
    return torch.cumsum(starts[:total], 0, dtype=torch.int32).unsqueeze(0)


def positions_in_sequence(cu_seqlens, total: int):
    """(T,) int64: each packed position's index inside its own sequence."""
    if cu_seqlens.shape[0] == 2:  # one sequence (from 0, as cu_seqlens are): nothing to repeat
        return torch.arange(total, device=cu_seqlens.device)
    starts = torch.repeat_interleave(cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1], output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


def unpack(x, cu_seqlens, max_len: int | None = None):
    """Packed (T, ...) -> right-padded rows (num_seqs, max_len, ...) and the bool mask of real positions.
    max_len: the longest sequence, if known (else read from cu_seqlens: a host sync)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if max_len is None:
        max_len = int(lengths.max())
    pos = torch.arange(max_len, device=x.device)
    valid = pos[None, :] < lengths[:, None]
    index = (cu_seqlens[:-1, None] + pos[None, :]).clamp(max=x.shape[0] - 1)
    return x[index.long()], valid


def bucketed_length(n: int) -> int:
    """n rounded up to a multiple of 1/16 of the largest power of two <= n, or of 128 below 2048: at most
    n/16 or 127 more.

    The stacks inside an H-Net see as many positions as the router made chunks, a count that changes
    from batch to batch, and each new matrix shape makes cuBLAS choose its kernel on the host again
    (0.23 ms of host time per matmul in the profile of benchmarks/RESULTS.md). Rounded lengths repeat.
    """
    step = max(128, 1 << max(n.bit_length() - 5, 0))
    return -(-n // step) * step


def pad_packed(x, cu_seqlens, length: int):
    """Packed (1, T, ...) + cu_seqlens -> (1, length, ...) with the positions past T in one extra sequence of
    zeros, so they reach no real position (attention and the scans reset per sequence)."""
    pad = length - x.shape[1]
    if pad <= 0:
        return x, cu_seqlens
    x = torch.cat((x, x.new_zeros(1, pad, *x.shape[2:])), dim=1)
    return x, torch.cat((cu_seqlens, cu_seqlens.new_full((1,), length)))


def sequence_of_position(cu_seqlens, total: int):
    """(T,) int64: the number of the packed sequence each position belongs to (empty sequences, whose
    start repeats the next one's, own no position; seq_idx_from_cu_seqlens counts only changes)."""
    return torch.searchsorted(cu_seqlens[1:].long(), torch.arange(total, device=cu_seqlens.device), right=True)


def as_packed(x):
    """Rows (B, L, ...) -> one packed row (1, B * L, ...) and its cu_seqlens (B + 1,), one sequence a row."""
    B, L = x.shape[:2]
    return x.reshape(1, B * L, *x.shape[2:]), torch.arange(B + 1, device=x.device) * L


def continued_sequences(cu_seqlens):
    """For a prefill, where packed sequence i continues row i of a cache: (rows, first, last), each (n,)
    int64, the rows whose sequence is not empty and the packed positions of its first and last element
    (a host sync: the count of such rows sizes them)."""
    cu = cu_seqlens.long()
    rows = torch.nonzero(cu[1:] > cu[:-1]).squeeze(1)
    return rows, cu[rows], cu[rows + 1] - 1
