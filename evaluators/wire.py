"""The judge's side of every conversation with a sandbox: length-prefixed JSON frames, nothing else.

A sandbox runs untrusted code, so whatever it sends may be crafted: nothing received is ever unpickled,
every frame has a size cap, and every receive has a deadline that holds even when a frame arrives only in
part (the socket is read without blocking, byte counts checked, JSON parsed with its depth bounded).
Bulk data (tensor bytes) never travels in frames: it lies in shared-memory arenas the judge owns.
"""
from __future__ import annotations

import json
import math
import select
import socket
import struct
import time
from typing import Any

_LENGTH = struct.Struct(">Q")
MAX_FRAME = 4 << 20  # a header: metadata and numbers, never tensor data


class WireError(Exception):
    """A frame could not be received: `kind` is "timeout", "closed" or "protocol"."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def send(sock: socket.socket, message: dict, fds: tuple[int, ...] = ()) -> None:
    body = json.dumps(message, allow_nan=True, separators=(",", ":")).encode()
    data = _LENGTH.pack(len(body)) + body
    try:
        if fds:
            # the descriptors ride on the first byte; the receiver asks for them when the header says so
            sent = socket.send_fds(sock, [data[:1]], list(fds))
            data = data[sent:]
        sock.sendall(data)
    except OSError as exc:
        raise WireError("closed", f"the peer is gone ({exc.strerror or exc})") from None


def _read(sock: socket.socket, n: int, deadline: float, fds_wanted: int = 0) -> tuple[bytes, list[int]]:
    chunks: list[bytes] = []
    fds: list[int] = []
    got = 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WireError("timeout", "no complete message before the deadline")
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            continue
        try:
            if fds_wanted and not fds:
                chunk, fds, _, _ = socket.recv_fds(sock, 1, fds_wanted)
            else:
                chunk = sock.recv(min(n - got, 1 << 20))
        except BlockingIOError:
            continue
        except OSError as exc:
            raise WireError("closed", f"the connection broke ({exc.strerror or exc})") from None
        if not chunk:
            raise WireError("closed", "the peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks), fds


def _depth_ok(text: bytes, limit: int = 32) -> bool:
    # json.loads recurses per nesting level: a frame of 100k brackets must not reach the parser
    depth = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def receive(sock: socket.socket, deadline: float, fds_wanted: int = 0,
            max_frame: int = MAX_FRAME) -> tuple[dict, list[int]]:
    """One frame: (header, file descriptors passed with it). Raises WireError."""
    head, fds = _read(sock, _LENGTH.size, deadline, fds_wanted)
    (length,) = _LENGTH.unpack(head)
    if length > max_frame:
        raise WireError("protocol", f"a frame of {length} bytes is over the {max_frame}-byte cap")
    body, _ = _read(sock, length, deadline)
    if not _depth_ok(body):
        raise WireError("protocol", "a frame nests deeper than any message of the protocol")
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError("protocol", f"a frame is not JSON ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise WireError("protocol", "a frame is not a JSON object")
    return message, fds


# ---------------------------------------------------------------- reading untrusted fields

def field(message: dict, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    """message[key], checked to be of `kind` (bools are not ints here); a WireError otherwise."""
    if key not in message:
        if optional:
            return None
        raise WireError("protocol", f"the message lacks {key!r}")
    value = message[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise WireError("protocol", f"{key!r} is a bool")
    if not isinstance(value, kinds) or (value is None and not optional):
        raise WireError("protocol", f"{key!r} is {type(value).__name__}, expected "
                                    f"{' or '.join(k.__name__ for k in kinds)}")
    return value


def number(message: dict, key: str, low: float = 0.0, high: float = math.inf) -> float:
    value = field(message, key, (int, float))
    if not (math.isfinite(value) and low <= value <= high):
        raise WireError("protocol", f"{key!r} = {value!r} is outside [{low}, {high}]")
    return float(value)
