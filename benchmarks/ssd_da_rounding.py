"""What bf16 rounding does to the SSD's dA, in a float64 emulation on the CPU (no GPU needed).

    python benchmarks/ssd_da_rounding.py --batch 1 --seq-len 8192

The gradient on each chunk's last cumulative sum through the state the chunk adds, <dS_out, S_out>, is
cancelled again, step by step, by ddt's state part dt_j W_j x_j . (B_j dS_out): in exact arithmetic the
two leave sum_{j<k} at position k. The Triton backward rounds to bf16 where its kernels do: the chunk states
are built from bf16(W_j dt_j B_j), the state part from bf16(dS_out). Taking <dS_out, S_out> from the stored
states (the old scheme) leaves their rounding difference at every step of the chunk, and the cumulative
sums carry it into dA; summing it from the very terms it cancels (the kernels now) does not. Inputs as the
GPU test's real-shape case (24 heads of 64, state 128, chunk 256); prints dA's relative error each way.
"""

import argparse

import torch
import torch.nn.functional as F

from hnet.ops.ssd import ssd_chunked


def bf16(t):
    return t.to(torch.bfloat16).double()


def dA_errors(b: int, l: int) -> tuple[float, float]:
    """dA's relative error from the S_out terms' rounding: (old scheme, the kernels' scheme)."""
    h, p, n, Q = 24, 64, 128, 256
    gen = torch.Generator().manual_seed(0)
    x, B = bf16(torch.randn(b, l, h, p, generator=gen)), bf16(torch.randn(b, l, 1, n, generator=gen))
    C = bf16(torch.randn(b, l, 1, n, generator=gen) * n**-0.5)
    dt = F.softplus(torch.randn(b, l, h, generator=gen, dtype=torch.float64) - 2)
    A = -torch.exp(torch.rand(h, generator=gen, dtype=torch.float64) * 2)
    dy = bf16(torch.randn(b, l, h, p, generator=gen))
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
    dA_exact = torch.autograd.grad(ssd_chunked(*leaves, Q), leaves[2], dy)[0]

    c = l // Q
    X, dY = (t.view(b, c, Q, h, p).transpose(2, 3) for t in (x, dy))  # (b, c, h, Q, p)
    Bh, Ch = (t.view(b, c, Q, 1, n).transpose(2, 3).expand(b, c, h, Q, n) for t in (B, C))
    dtc = dt.view(b, c, Q, h).transpose(2, 3)  # (b, c, h, Q)
    s = torch.cumsum(dtc * A[None, None, :, None], -1)
    W, carry = torch.exp(s[..., -1:] - s), torch.exp(s[..., -1])
    S_out = torch.einsum("bchj,bchjp,bchjn->bchpn", W * dtc, X, Bh)
    S_out_stored = torch.einsum("bchjp,bchjn->bchpn", X, bf16(Bh * (W * dtc)[..., None]))
    dS_from_y = (dY * torch.exp(s)[..., None]).transpose(-1, -2) @ Ch
    dS_out, grad = torch.empty_like(S_out), torch.zeros_like(S_out[:, 0])
    for k in reversed(range(c)):
        dS_out[:, k] = grad
        grad = dS_from_y[:, k] + carry[:, k, :, None, None] * grad

    def dA_part(state_term, last):  # the S_out terms' share of dA: ds = -dt t, ds[-1] += last, reverse cumsum
        ds = -dtc * state_term
        ds[..., -1] += last
        return (ds.flip(-1).cumsum(-1).flip(-1) * dtc).sum((0, 1, 3))

    term = W * (X * (Bh @ dS_out.transpose(-1, -2))).sum(-1)
    term_bf16 = W * (X * (Bh @ bf16(dS_out).transpose(-1, -2))).sum(-1)
    exact = dA_part(term, (dS_out * S_out).sum((-1, -2)))
    old = dA_part(term_bf16, (dS_out * S_out_stored).sum((-1, -2)))
    new = dA_part(term_bf16, (term_bf16 * dtc).sum(-1))
    scale = dA_exact.norm()
    return ((old - exact).norm() / scale).item(), ((new - exact).norm() / scale).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=8192, help="a multiple of the chunk (256)")
    args = parser.parse_args()
    old, new = dA_errors(args.batch, args.seq_len)
    print(f"batch {args.batch} x {args.seq_len}: relative error of dA from the S_out terms' rounding")
    print(f"  <dS_out, S_out> from the stored chunk states:     {old:.2e}")
    print(f"  <dS_out, S_out> from ddt's state terms (kernels): {new:.2e}")


if __name__ == "__main__":
    main()
