"""Shared memory between the judge and one sandbox: the only way tensor bytes cross between them.

The judge owns the arena (a memfd it created and may grow), lays out each call's input storages, the
regions the sandbox writes outputs into, and the regions it copies the inputs back into after the call.
A region is described by plain numbers; a tensor is rebuilt on either side from bytes plus metadata
(dtype, shape, strides, storage offset), never from a pickled object.
"""
from __future__ import annotations

import mmap
import os

import torch

DTYPES_BY_NAME = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool)}
ALIGN = 256


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Arena:
    """A growable shared byte buffer, as a flat uint8 tensor."""

    def __init__(self, size: int = 1 << 20, fd: int | None = None):
        self.fd = fd if fd is not None else os.memfd_create("evolve-arena", os.MFD_CLOEXEC)
        if fd is None:
            os.ftruncate(self.fd, size)
        self.size = os.fstat(self.fd).st_size
        self._map()
        self.cursor = 0

    def _map(self) -> None:
        self.mm = mmap.mmap(self.fd, self.size)
        self.bytes = torch.frombuffer(self.mm, dtype=torch.uint8)

    def _unmap(self) -> None:
        del self.bytes
        try:
            self.mm.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with it

    def remap(self) -> None:
        """The other side grew the file: map the new size."""
        size = os.fstat(self.fd).st_size
        if size != self.size:
            self._unmap()
            self.size = size
            self._map()

    def reserve(self, total: int) -> bool:
        """Make room for `total` bytes; True when the file grew (the sandbox must remap)."""
        if total <= self.size:
            return False
        self._unmap()
        self.size = max(total, 2 * self.size)
        os.ftruncate(self.fd, self.size)
        self._map()
        return True

    def view(self, offset: int, nbytes: int) -> torch.Tensor:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError(f"region {offset}+{nbytes} outside the arena of {self.size} bytes")
        return self.bytes[offset:offset + nbytes]

    def close(self) -> None:
        self._unmap()
        os.close(self.fd)


def layout(sizes: list[int]) -> tuple[list[int], int]:
    """Offsets of consecutive aligned regions of `sizes` bytes, and the total."""
    offsets, cursor = [], 0
    for size in sizes:
        offsets.append(cursor)
        cursor += -(-size // ALIGN) * ALIGN
    return offsets, cursor


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of t's whole storage, as uint8, on t's device."""
    storage = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage, 0, (storage.nbytes(),))


def describe(t: torch.Tensor) -> dict:
    return {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "strides": list(t.stride()),
            "storage_offset": t.storage_offset(), "storage_nbytes": t.untyped_storage().nbytes()}


def rebuild(raw: torch.Tensor, meta: dict) -> torch.Tensor:
    """A tensor of meta's layout over `raw` (uint8 storage bytes, any device)."""
    dtype = dtype_of(meta["dtype"])
    itemsize = torch.empty(0, dtype=dtype).element_size()
    flat = raw.view(dtype) if raw.numel() % itemsize == 0 else raw[: raw.numel() // itemsize * itemsize].view(dtype)
    return flat.as_strided(meta["shape"], meta["strides"], meta["storage_offset"])
