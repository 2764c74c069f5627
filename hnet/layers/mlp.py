from torch import nn

from hnet.ops.dispatch import swiglu_mlp


class SwiGLU(nn.Module):
    """fc2(silu(gate) * value); fc1's output is [value, gate] in that order (the official layout)."""

    def __init__(self, d_model: int, d_intermediate: int, multiple_of: int = 128, device=None, dtype=None):
        super().__init__()
        hidden = (d_intermediate + multiple_of - 1) // multiple_of * multiple_of
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, d_model, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        return swiglu_mlp(x, self.fc1.weight, self.fc2.weight)  # fc2(swiglu(fc1(x)))
