"""Divides by the row's range minus itself: computes NaN in every row, unlike memory it never wrote."""
import torch
import triton
import triton.language as tl


@triton.jit
def _nan_rows(X, W, B, Y, stride, stride_y, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    zero = tl.sum(x, axis=0) - tl.sum(x, axis=0)
    y = (x - tl.sum(x, axis=0) / N) * (zero / zero)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


def layer_norm(x, weight, bias, eps):
    y = torch.empty_like(x)
    _nan_rows[(x.shape[0],)](x, weight, bias, y, x.stride(0), y.stride(0), x.shape[1], eps,
                             BLOCK=triton.next_power_of_2(x.shape[1]))
    return y
