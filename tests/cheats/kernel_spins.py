"""Never returns: the kernel itself loops forever (its counter never reaches the bound)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _spin(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + cols, mask=cols < N, other=0.0)
    i = 0
    while i >= 0:
        i = (i + 1) % 1024
    tl.store(Y + cols, x, mask=cols < N)


def layer_norm(x, weight, bias, eps):
    y = torch.empty_like(x)
    _spin[(1,)](x, y, x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
    return y
