"""Inside a sandbox: what the candidate's own code may ask of torch, and what the judge learns of a call.

`TorchGuard` is a torch function mode active whenever candidate code runs. A torch call whose caller is a
candidate frame passes only if it allocates or describes (the static policy's allow-list, enforced at run
time where the static types are unknown: `x - x.sum(1)` is refused here whatever `x` is). Allocations it
lets through come back filled with the judge's poison, so output the kernel never writes is found.
`LaunchCounter` counts launches on Triton's own launch path, compiled and interpreted.
"""
from __future__ import annotations

import os
import sys

import torch
from torch.overrides import TorchFunctionMode

from .containment import REFUSALS, _is_candidate

_ALLOCATE = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})
_ALLOCATE_FILLED = frozenset({"zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros",
                              "new_ones", "new_full", "arange"})
_DESCRIBE = frozenset({"stride", "size", "dim", "numel", "element_size", "is_contiguous", "contiguous", "view",
                       "reshape", "unsqueeze", "squeeze", "permute", "transpose", "t", "flatten", "expand",
                       "narrow", "select", "is_floating_point", "storage_offset", "detach", "requires_grad_",
                       "data_ptr",  # TMA alignment checks; a cache by address needs state the policy refuses
                       "__len__", "__getitem__", "apply", "dim_order", "get_device", "nelement", "ndimension",
                       "is_complex", "unflatten", "movedim", "as_strided", "unbind", "split", "chunk"})
_ATTRIBUTES = frozenset({"shape", "dtype", "device", "is_cuda", "is_cpu", "ndim", "requires_grad", "layout",
                         "is_leaf", "grad_fn", "itemsize", "nbytes", "is_sparse", "is_quantized", "is_meta",
                         "names"})


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _caller_is_candidate() -> bool:
    # the first frame outside torch's own Python (torch.functional.norm and friends dispatch from there)
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIR):
        frame = frame.f_back
    return frame is not None and _is_candidate(frame.f_code.co_filename)


def _name(func) -> str:
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):
        owner = getattr(func, "__self__", None)
        return f"{name}:{getattr(owner, '__name__', '')}"
    return name


class TorchGuard(TorchFunctionMode):
    def __init__(self, poison: float | None):
        super().__init__()
        self.poison = poison

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _caller_is_candidate():
            return func(*args, **kwargs)
        name = _name(func)
        if name.startswith("__get__:"):
            if name[8:] not in _ATTRIBUTES:
                self._refuse(f"reading tensor attribute {name[8:]!r}")
            return func(*args, **kwargs)
        if name == "__getitem__" and any(isinstance(i, torch.Tensor) for i in _flat(args[1:])):
            self._refuse("indexing a tensor with a tensor (a gather computed by torch)")
        if name in _ALLOCATE:
            out = func(*args, **kwargs)
            if self.poison is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
                out.fill_(self.poison)
            return out
        if name in _ALLOCATE_FILLED or name in _DESCRIBE:
            return func(*args, **kwargs)
        self._refuse(f"torch.{name or func} computes; candidate code may only allocate and describe tensors")

    @staticmethod
    def _refuse(why: str):
        REFUSALS.append(f"torch: {why}")
        raise PermissionError(f"refused in the evaluator's sandbox: {why}")


def _flat(items):
    for item in items:
        if isinstance(item, (tuple, list)):
            yield from _flat(item)
        else:
            yield item


class LaunchCounter:
    """Counts Triton kernel launches; installed on Triton's launch path before any candidate loads."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> "LaunchCounter":
        import triton.runtime.jit as jit

        classes = [jit.JITFunction]
        try:
            from triton.runtime.interpreter import InterpretedFunction

            classes.append(InterpretedFunction)
        except ImportError:
            pass
        counter = self
        for cls in classes:
            original = cls.run

            def counted(self, *args, __original=original, **kwargs):
                if not kwargs.get("warmup", False):
                    counter.count += 1
                return __original(self, *args, **kwargs)

            cls.run = counted
        return self


def guarded_grad(outputs: list, inputs: list, grad_outputs: list) -> tuple:
    """The gradients of `inputs` (None where unused), as torch.autograd.grad gives them, but from autograd's
    engine directly: torch.autograd.grad is itself a torch function, and a mode is off while it handles one,
    so under the guard the backward it runs, candidate code as much as the forward, would run unguarded."""
    from torch.autograd import Variable

    return Variable._execution_engine.run_backward(tuple(outputs), tuple(grad_outputs), False, False, tuple(inputs),
                                                   True, False)


def poison_free_memory(nbytes: int, device: str, value: float, copies: int = 4) -> None:
    """Fill freed blocks of the output's size with the poison, so the allocator hands poisoned memory back
    even to allocations the guard does not see (e.g. made inside torch for the candidate)."""
    numel = max(1, nbytes // 4)
    blocks = [torch.full((numel,), value, dtype=torch.float32, device=device) for _ in range(copies)]
    if device == "cuda":
        torch.cuda.synchronize()
    del blocks


def storage_span(t: torch.Tensor) -> tuple[int, int]:
    start = t.untyped_storage().data_ptr()
    return start, start + t.untyped_storage().nbytes()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, a1 = storage_span(a)
    b0, b1 = storage_span(b)
    return a0 < b1 and b0 < a1
