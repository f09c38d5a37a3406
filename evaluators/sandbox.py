"""Worker processes with hard timeouts: untrusted candidates never run in the main process.

A worker is a fresh interpreter (`python -m evaluators.worker`; never a thread, never a fork of a process
that may hold CUDA, and it does not re-import the caller's main module) in its own process group. Each request carries per-phase deadlines; a worker that misses one, dies, or reports a
sticky device error is killed with its whole group and replaced on the next request.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Timeouts:
    start: float = 180.0     # spawning the worker and importing torch and triton
    load: float = 60.0       # importing the candidate module
    compile: float = 300.0   # the first call: Triton compiles (or the interpreter starts) the kernel
    check: float = 600.0     # every correctness check after the first
    time: float = 900.0      # timing against eager and torch.compile, torch.compile's own compile included
    task: float = 900.0      # tasks without phases (ceilings, A/B rounds)


class WorkerLost(Exception):
    """The worker hung past a deadline or died; it has been killed."""

    def __init__(self, failure_class: str, detail: str):
        super().__init__(detail)
        self.failure_class = failure_class
        self.detail = detail


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Worker:
    def __init__(self, device: str, timeouts: Timeouts):
        parent_sock, child_sock = socket.socketpair()
        project_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
        # Triton reads this when first imported, which happens while the worker's package loads
        if device == "cpu":
            env["TRITON_INTERPRET"] = "1"
        else:
            env.pop("TRITON_INTERPRET", None)
        # torch.compile's baseline compiles in-process: no compile-worker pool to leave behind on a kill
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "evaluators.worker", str(child_sock.fileno()), device],
            pass_fds=(child_sock.fileno(),), env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.timeouts = timeouts
        message = self._receive(time.monotonic() + timeouts.start, "start")
        if message[0] != "ready":
            self.kill()
            raise WorkerLost("crash", f"worker sent {message[0]!r} instead of ready")
        self.device_info: dict = message[1]

    def _receive(self, deadline: float, phase: str) -> tuple:
        remaining = deadline - time.monotonic()
        try:
            ready = remaining > 0 and self.conn.poll(remaining)
        except (EOFError, OSError):
            ready = True  # fall through to recv, which reports the death
        if not ready:
            self.kill()
            raise WorkerLost("timeout", f"{phase} phase exceeded its time limit; worker killed")
        try:
            return self.conn.recv()
        except (EOFError, OSError, ConnectionResetError):
            code = self._wait(5)
            self.kill()
            raise WorkerLost("crash", f"worker {_describe_exit(code)} during the {phase} phase") from None

    def request(self, task: dict, on_message: Callable[[tuple], None] | None = None) -> dict:
        try:
            self.conn.send(task)
        except (BrokenPipeError, OSError):
            self.kill()
            raise WorkerLost("crash", "worker was gone before the request") from None
        phase = "load" if task["kind"] == "evaluate" else "task"
        deadline = time.monotonic() + getattr(self.timeouts, phase)
        while True:
            message = self._receive(deadline, phase)
            kind = message[0]
            if kind == "phase":
                phase = message[1]
                deadline = time.monotonic() + getattr(self.timeouts, phase)
            elif kind == "result":
                return message[1]
            if on_message is not None:
                on_message(message)

    def _wait(self, seconds: float) -> int | None:
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Kill the worker and everything it started (compiler subprocesses share its group)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._wait(10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send({"kind": "stop"})
            self._wait(10)
        except (BrokenPipeError, OSError):
            pass
        self.kill()


class WorkerPool:
    """One live worker at a time (timing needs the GPU to itself), replaced whenever it is lost."""

    def __init__(self, device: str, timeouts: Timeouts | None = None):
        self.device = device
        self.timeouts = timeouts or Timeouts()
        self._worker: Worker | None = None
        self.replaced = 0

    def worker(self) -> Worker:
        if self._worker is None or not self._worker.alive():
            if self._worker is not None:
                self._worker.kill()
                self.replaced += 1
            self._worker = Worker(self.device, self.timeouts)
        return self._worker

    @property
    def started(self) -> bool:
        return self._worker is not None and self._worker.alive()

    @property
    def device_info(self) -> dict:
        return self.worker().device_info

    def request(self, task: dict, on_message: Callable[[tuple], None] | None = None) -> dict[str, Any]:
        worker = self.worker()
        try:
            result = worker.request(task, on_message)
        except WorkerLost:
            self._worker = None
            self.replaced += 1
            raise
        if result.get("recycle"):
            # a sticky CUDA error poisons the context for every later candidate: start afresh
            worker.kill()
            self._worker = None
            self.replaced += 1
        return result

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
