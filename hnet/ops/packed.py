"""Helpers for packed (varlen) batches: T positions of several sequences, delimited by cu_seqlens."""

import torch


def seq_idx_from_cu_seqlens(cu_seqlens, total: int):
    """(1, T) int32: the index of the packed sequence each position belongs to."""
    starts = torch.zeros(total, dtype=torch.int32, device=cu_seqlens.device)
    starts[cu_seqlens[1:-1].long()] = 1
    return torch.cumsum(starts, 0, dtype=torch.int32).unsqueeze(0)


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
