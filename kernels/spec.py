"""The contract every op declares: what it computes, on which shapes, how exactly, and how to search it.

An `OpSpec` is all the evaluator and the agents know about an op. It stands alone (no imports of the
rest of the project) because kernels/ ships as its own package.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


@dataclass(frozen=True)
class Shape:
    """One problem size. `dims` are the op's named sizes (e.g. M rows, N width)."""

    name: str
    dims: Mapping[str, int]
    # where the shape comes from: "gpt2", "shakespeare", "edge"; edge shapes are checked, never timed
    origin: str
    # timed on a GPU (the headline shapes); the rest are checked for correctness only
    timed: bool = False

    def __str__(self) -> str:
        return "x".join(str(v) for v in self.dims.values())


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass(frozen=True)
class TemplateSpace:
    """The knobs of an op's seed kernel. A point of the space renders to a self-contained candidate file.

    `params` maps each knob to its allowed values; `seed` is the point the op ships with; `render`
    bakes a point into candidate source.
    """

    params: Mapping[str, Sequence[Any]]
    seed: Mapping[str, Any]
    render: Callable[[Mapping[str, Any]], str]
    # maps points that launch the same kernel to one representative (a knob that another knob switches
    # off), so the search never spends a candidate on a duplicate
    canonical: Callable[[dict[str, Any]], dict[str, Any]] = lambda point: point
    # maps a lesson's suggestions, named in the terms of the toolchain it was learned with (e.g. cuTile's
    # K_LAT/V_LAT load latencies), onto this template's knobs; knobs it already names pass through
    translate: Callable[[dict[str, Any]], dict[str, Any]] = lambda suggests: suggests
    # the knobs of the backward kernels (the rest are the forward's): a point renders to a differentiable
    # candidate whose torch.autograd.Function launches the backward at these knobs
    backward_knobs: frozenset[str] = frozenset()

    def forward_point(self, point: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in point.items() if k not in self.backward_knobs}

    def backward_point(self, point: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in point.items() if k in self.backward_knobs}

    def forward_only(self) -> "TemplateSpace":
        """The space with every backward knob held at its seed value: the search of an inference-only run."""
        from dataclasses import replace

        held = {k: (v if k not in self.backward_knobs else (self.seed[k],)) for k, v in self.params.items()}
        return replace(self, params=held)

    def normalize(self, point: Mapping[str, Any]) -> dict[str, Any]:
        return self.canonical(dict(point))

    def knobs_for(self, suggests: Mapping[str, Any]) -> dict[str, Any]:
        """A rule's suggestions as values of this template's knobs; the rest are dropped."""
        return {k: v for k, v in self.translate(dict(suggests)).items() if k in self.params}

    def validate(self, point: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(point) - set(self.params)
        if unknown:
            raise ValueError(f"unknown template parameter(s): {', '.join(sorted(unknown))}")
        full = {**self.seed, **point}
        for name, value in full.items():
            if value not in self.params[name]:
                raise ValueError(f"{name}={value!r} is outside its values {list(self.params[name])}")
        return full

    def neighbours(self, point: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every point that differs from `point` in exactly one knob."""
        out = []
        for name, values in self.params.items():
            for value in values:
                if value != point[name]:
                    out.append({**point, name: value})
        return out

    def size(self) -> int:
        n = 1
        for values in self.params.values():
            n *= len(values)
        return n

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {name: rng.choice(list(values)) for name, values in self.params.items()}

    def all_points(self) -> list[dict[str, Any]]:
        names = list(self.params)
        return [dict(zip(names, combo)) for combo in itertools.product(*self.params.values())]

    def untried_point(self, rng: random.Random, tried: Callable[[dict[str, Any]], bool],
                      attempts: int = 2000) -> dict[str, Any] | None:
        """A random normalized point that `tried` rejects, or None when none is left. Random draws first:
        a forward and backward space holds millions of points, too many to list; a small space that the
        draws keep missing is listed."""
        for _ in range(attempts):
            point = self.normalize(self.sample(rng))
            if not tried(point):
                return point
        if self.size() > 200_000:
            return None
        untried = [p for p in (self.normalize(q) for q in self.all_points()) if not tried(p)]
        return rng.choice(untried) if untried else None


def row_tile_canonical(seed: Mapping[str, Any], chunk_knob: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The canonical map of the row-tiled templates (a whole row in one masked tile, or a chunked loop;
    optionally a persistent grid): the knobs that the others switch off are set to the seed's value."""

    def canonical(point: dict[str, Any]) -> dict[str, Any]:
        # the chunk width only matters for the chunked loop, programs per SM only for a persistent grid
        if point["SINGLE_TILE"]:
            point[chunk_knob] = seed[chunk_knob]
        if not point["PERSISTENT"]:
            point["PROGRAMS_PER_SM"] = seed["PROGRAMS_PER_SM"]
        # loading the next tile ahead exists only in the persistent single-tile loop
        if "PREFETCH" in point and not (point["SINGLE_TILE"] and point["PERSISTENT"]):
            point["PREFETCH"] = seed["PREFETCH"]
        # so do the early scale and shift in the single-tile paths
        if "SCALE_EARLY" in point and not point["SINGLE_TILE"]:
            point["SCALE_EARLY"] = seed["SCALE_EARLY"]
        # software pipelining needs a loop: the persistent grid's or the chunked one's
        if point["SINGLE_TILE"] and not point["PERSISTENT"]:
            point["NUM_STAGES"] = 1
        return point

    return canonical


@dataclass(frozen=True)
class OpSpec:
    name: str
    entry: str                      # entry function a candidate must define
    signature: str                  # its call signature, for humans and prompts
    description: str
    # make_inputs(shape, dtype, seed, device) -> tuple of entry arguments (fresh random data, never zeros)
    make_inputs: Callable[[Shape, torch.dtype, int, str], tuple]
    # reference(*inputs) -> output computed in float32 (float64 for float32 inputs), for checking
    reference: Callable[..., torch.Tensor]
    # eager(*inputs) -> PyTorch's own op in the inputs' dtype: the baseline we time and the layout we expect
    eager: Callable[..., torch.Tensor]
    shapes: tuple[Shape, ...]                    # GPU: NanoGPT shapes of both models plus edge shapes
    interpreter_shapes: tuple[Shape, ...]        # CPU interpreter: small shapes, same edge widths
    gpu_dtypes: tuple[str, ...]
    cpu_dtypes: tuple[str, ...]
    tolerances: Mapping[str, Tolerance]
    bytes_moved: Callable[[Shape, torch.dtype], int]
    flops: Callable[[Shape], int]
    bound: str                                   # "memory" or "compute": which ceiling the roofline uses
    has_backward: bool
    template: TemplateSpace
    # context(shape, sm_count) -> facts the rulebook's `when` clauses are matched against
    context: Callable[[Shape, int], dict[str, Any]]
    tags: tuple[str, ...] = field(default=())
    # further PyTorch implementations timed beside eager and torch.compile, by name (e.g. the attention
    # kernel alone, without the layout copies of the model's eager code), same inputs and outputs as eager
    baselines: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    # variants[name](inputs, seed) -> inputs: fresh inputs (what make_inputs returned) made adversarial or
    # laid out differently (large row means, constant rows, a wide dynamic range, rows farther apart than
    # their width), with the same shapes, dtypes and device and still inside the op's contract, so that
    # `reference` and `tolerances` decide the check as for plain inputs; the inputs given are left as they
    # were. Names are shared across ops where they mean the same; each op's module says what its own do.
    variants: Mapping[str, Callable[[tuple, int], tuple]] = field(default_factory=dict)
    # the backward's tolerances per dtype, where they differ from the evaluator's defaults for gradients
    grad_tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    # bytes moved and flops of the backward alone (the gradients of every floating input), for the
    # forward+backward timing's GB/s and TFLOP/s
    backward_bytes: Callable[[Shape, torch.dtype], int] | None = None
    backward_flops: Callable[[Shape], int] | None = None

    def shapes_for(self, device: str) -> tuple[Shape, ...]:
        return self.shapes if device == "cuda" else self.interpreter_shapes

    def dtypes_for(self, device: str) -> tuple[str, ...]:
        return self.gpu_dtypes if device == "cuda" else self.cpu_dtypes

    def timed_shapes(self) -> tuple[Shape, ...]:
        return tuple(s for s in self.shapes if s.timed)

    def with_timed(self, names: Sequence[str]) -> "OpSpec":
        """The spec with exactly these shapes timed, the first of them the headline (a target's choice);
        every shape is still checked."""
        from dataclasses import replace

        known = {s.name: s for s in self.shapes}
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(f"{self.name}: unknown shape(s) {', '.join(unknown) or '(none named)'}; its shapes: "
                             f"{', '.join(known)}")
        timed = [replace(known[n], timed=True) for n in names]
        rest = [replace(s, timed=False) for s in self.shapes if s.name not in names]
        return replace(self, shapes=tuple(timed + rest))

    def headline_shape(self) -> Shape:
        timed = self.timed_shapes()
        if not timed:
            raise ValueError(f"{self.name} declares no timed shape")
        return timed[0]
