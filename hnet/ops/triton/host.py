"""The launchers' integer arithmetic, on the host. Since Triton 3.5 its own `cdiv` and `next_power_of_2` are
constexpr functions, which cost microseconds a call from Python; a launcher makes up to dozens of such calls
an op (its grid and its candidate block shapes), host time that bounds a prefill of one row, where every
launch waits on the host (the SSD's wrapper took 259 us of host time with them and 113 us without, on a
2-core CPU with the kernels stubbed out)."""


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The least power of 2 >= n (0 for n = 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
