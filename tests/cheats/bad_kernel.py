"""Does not compile: tiles the row with tl.arange over N itself, which is not a power of two."""
import torch
import triton
import triton.language as tl


@triton.jit
def _layer_norm_row(X, W, B, Y, stride_x, stride_y, eps, N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, N)
    x = tl.load(X + row * stride_x + cols).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = x - mean
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    w = tl.load(W + cols).to(tl.float32)
    b = tl.load(B + cols).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (xc * rstd * w + b).to(Y.dtype.element_ty))


def layer_norm(x, weight, bias, eps):
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _layer_norm_row[(M,)](x, weight, bias, y, x.stride(0), y.stride(0), eps, N=N)
    return y
