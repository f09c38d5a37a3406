"""Building blocks of the specs' input variants: adversarial distributions and layouts of an op's inputs.

A variant (`OpSpec.variants[name](inputs, seed) -> inputs`) takes what `make_inputs` returned and gives
new inputs of the same shapes, dtypes and device that stay inside the op's contract, so the spec's
reference and tolerances still decide the check. Random inputs of moderate size pass careless kernels
(a one-pass variance, a log-sum-exp without its max, a kernel that assumes rows are packed); a variant
is the input that tells them apart. Every variant draws from its own seed, so the judge can vary it per
call like the inputs themselves.
"""
from __future__ import annotations

import torch

# Exponent ranges (powers of two) of the `wide_range` variants, per dtype. float16: inside its normal
# range with room for a sum of two values (65504 is about 2**16). bfloat16 and float32: far past float16's
# range both ways, which catches a kernel that computes in float16 whatever its inputs; their squares
# are still far inside float32's.
WIDE_EXPONENTS: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (-12.0, 12.0),
    torch.bfloat16: (-20.0, 20.0),
    torch.float32: (-20.0, 20.0),
}


def generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def uniform(shape, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


def signs(shape, gen: torch.Generator, device) -> torch.Tensor:
    """+1 or -1, evenly."""
    return torch.randint(0, 2, shape, generator=gen, device=device).float() * 2.0 - 1.0


def log_uniform(shape, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    """2**u with u uniform in [lo, hi]: every binade in the range equally likely."""
    return torch.exp2(uniform(shape, lo, hi, gen, device))


def wide_values(shape, dtype: torch.dtype, gen: torch.Generator, device, shrink: float = 0.0) -> torch.Tensor:
    """Values of random sign whose magnitudes span the dtype's `WIDE_EXPONENTS` (less `shrink` binades
    at the top), in float32."""
    lo, hi = WIDE_EXPONENTS[dtype]
    return signs(shape, gen, device) * log_uniform(shape, lo, hi - shrink, gen, device)


def some_rows(m: int, fraction: float, gen: torch.Generator, device) -> torch.Tensor:
    """Indices of about `fraction` of m rows, at random places, never none."""
    count = max(1, int(m * fraction))
    return torch.randperm(m, generator=gen, device=device)[:count]


def draw_int(lo: int, hi: int, gen: torch.Generator, device) -> int:
    """One integer uniform in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen, device=device))


def row_strided(t: torch.Tensor, gen: torch.Generator, fill=float("nan"), lead_max: int = 8,
                pad_max: int = 64) -> torch.Tensor:
    """`t`'s values as a [M, N] view of a wider [M, lead + N + pad] buffer: rows farther apart than the width,
    often an odd number of elements apart and starting off 16-byte alignment, like a column slice of a
    wider tensor. The columns outside the view hold `fill` (NaN for floats; or `fill(shape)`, a tensor of
    the buffer's shape), so a kernel that reads past its row's width, or steps rows by the width instead
    of the stride, puts them into its output."""
    m, n = t.shape
    lead = draw_int(0, lead_max, gen, t.device)
    pad = draw_int(1, pad_max, gen, t.device)
    if callable(fill):
        buf = fill((m, lead + n + pad)).to(t.dtype)
    else:
        buf = torch.full((m, lead + n + pad), fill, dtype=t.dtype, device=t.device)
    view = buf[:, lead:lead + n]
    view.copy_(t)
    return view


def copies(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Fresh copies of the inputs a variant leaves as they are: a variant's inputs share no storage with
    the inputs it was made from, so the judge may check them side by side."""
    return tuple(t.clone() for t in tensors)


# ----------------------------------------------------------------------------- rows for the normalisations

# Spread (standard deviation) of the `large_mean` rows, per dtype. The means are 320 to 448 of either sign,
# inside one binade of every dtype, so a sum of two inputs can be kept exact where a variant needs it.
# float32: the mean is 80 to 180 spreads. A one-pass E[x^2] - E[x]^2 in float32 misses the tolerance there
# by tens of times, while a two-pass float32 kernel stays within half of it (0.2 in the interpreter, 0.42
# on an H200): the two-pass error grows as mean/spread (the rounding of the mean), the one-pass error as
# its square. Narrower rows would fail honest kernels too: at 400 spreads a plain two-pass float32
# LayerNorm on the CPU misses the tolerance.
# float16: 2 to 4 ulps (0.25 at these means), 300 to 900 spreads, where a one-pass in float32 misses even
# float16's tolerance. bfloat16 cannot hold a row much narrower than its ulp (2 here): 1 to 2 ulps wide,
# and no float32 arithmetic is wrong at bfloat16's precision on them.
LARGE_MEAN_SPREAD: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2.5, 4.0),
    torch.float16: (0.5, 1.0),
    torch.bfloat16: (2.0, 4.0),
}
# magnitudes of the large-mean rows: inside [256, 512) with room for a residual of up to 36
LARGE_MEAN_BOUNDS = (292.0, 476.0)
LARGE_MEAN_RESIDUAL = 36.0


def large_mean_rows(m: int, n: int, dtype: torch.dtype, gen: torch.Generator, device) -> torch.Tensor:
    """[m, n] float32 rows whose means (320 to 448, either sign) dwarf their spread (`LARGE_MEAN_SPREAD`),
    each element's magnitude within `LARGE_MEAN_BOUNDS`."""
    sign = signs((m, 1), gen, device)
    mean = uniform((m, 1), 320.0, 448.0, gen, device)
    spread = uniform((m, 1), *LARGE_MEAN_SPREAD[dtype], gen, device)
    x = mean + spread * torch.randn((m, n), generator=gen, device=device)
    return sign * x.clamp(*LARGE_MEAN_BOUNDS)


def binade_grid(dtype: torch.dtype) -> float:
    """The spacing of the dtype's values in [256, 512), where the large-mean rows live."""
    return torch.finfo(dtype).eps * 256.0


def constant_rows_split(m: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the `constant_rows` variants: about a quarter of m made constant and another quarter nearly
    constant, at random places; at least one constant row."""
    rows = some_rows(m, 0.5, gen, device)
    half = (len(rows) + 1) // 2
    return rows[:half], rows[half:]


def small_constants(count: int, gen: torch.Generator, device) -> torch.Tensor:
    """[count, 1] values of +-1/16 or +-1/8: exact in every dtype, and small because a kernel's mean of a
    constant row may be an ulp or two off the constant (a reciprocal multiply, an approximate division),
    which 1/sqrt(eps) amplifies in the output: at |c| <= 1/8 and eps = 1e-6 that stays under half of
    float32's tolerance, where a constant of 4 would fail an honest kernel."""
    k = torch.randint(1, 3, (count, 1), generator=gen, device=device).float()
    return signs((count, 1), gen, device) * k / 16.0


def flat_rows(count: int, n: int, eps: float, gen: torch.Generator, device) -> torch.Tensor:
    """[count, n] rows around a small constant with a variance of 1/4 to 4 times eps: eps changes their
    output by a factor of 1.1 to 2.2, so a kernel that drops it, or uses another value, is wrong there
    without any NaN to give it away."""
    spread = (eps ** 0.5) * uniform((count, 1), 0.5, 2.0, gen, device)
    return small_constants(count, gen, device) + spread * torch.randn((count, n), generator=gen, device=device)


def wide_row_scales(m: int, dtype: torch.dtype, gen: torch.Generator, device, shrink: float = 0.0) -> torch.Tensor:
    """[m, 1] row scales over the dtype's `WIDE_EXPONENTS`, leaving room for `wide_rows`' own spread of
    2**+-3 and a normal draw (and `shrink` more binades at the top)."""
    lo, hi = WIDE_EXPONENTS[dtype]
    return log_uniform((m, 1), lo + 3.0, hi - 5.0 - shrink, gen, device)


def wide_rows(scale: torch.Tensor, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """[m, n] float32 rows of normal draws times `scale`, each element further scaled by 2**-3 .. 2**3."""
    m = scale.shape[0]
    return scale * torch.randn((m, n), generator=gen, device=device) * log_uniform((m, n), -3.0, 3.0, gen, device)
