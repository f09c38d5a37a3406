"""Computes the row statistics with x.mean()/x.var() in torch and launches Triton only for the affine part."""
import torch
import triton
import triton.language as tl


@triton.jit
def _affine(X, MEAN, RSTD, W, B, Y, stride_x, stride_y, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + row)
    rstd = tl.load(RSTD + row)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, ((x - mean) * rstd * w + b).to(Y.dtype.element_ty), mask=mask)


def layer_norm(x, weight, bias, eps):
    M, N = x.shape
    xf = x.float()
    mean = xf.mean(dim=1)
    rstd = (xf.var(dim=1, unbiased=False) + eps).rsqrt()
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _affine[(M,)](x, mean, rstd, weight, bias, y, x.stride(0), y.stride(0), N, BLOCK_N=triton.next_power_of_2(N))
    return y
