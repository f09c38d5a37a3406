"""The judge's handles on sandboxes: a fork server started once, and one fresh sandbox per candidate.

Everything here runs in the judge's process and treats the sandbox as hostile: every request has a
deadline, every reply is a capped JSON frame, stderr is drained into a bounded buffer, and a sandbox
that misses a deadline or breaks the protocol is killed with everything it started.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import wire
from .arena import Arena

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STDERR_CAP = 64 << 10
# variables a sandbox may see: what torch, Triton and CUDA need to run; never keys, tokens or the
# caller's paths (HOME and the temp folders are the sandbox's own)
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
             "CUDA_PATH", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
             "TRITON_PTXAS_PATH", "TRITON_LIBCUDA_PATH", "TRITON_CUDART_PATH", "TRITON_CUOBJDUMP_PATH",
             "TRITON_NVDISASM_PATH", "CC", "OMP_NUM_THREADS", "VIRTUAL_ENV")


@dataclass(frozen=True)
class Timeouts:
    start: float = 180.0     # starting the fork server (importing torch and triton) or forking a sandbox
    load: float = 60.0       # executing the candidate module
    compile: float = 300.0   # the first call: Triton compiles (or the interpreter starts) the kernel
    check: float = 600.0     # every correctness call after the first
    time: float = 900.0      # timing against eager and torch.compile, torch.compile's own compile included
    task: float = 900.0      # requests without phases (ceilings, A/B rounds)

    def __post_init__(self) -> None:
        # a limit of zero would blame every honest candidate for the evaluator's own setting
        for name, value in self.__dict__.items():
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"the {name} timeout must be a positive number of seconds, not {value!r}")


class SandboxLost(Exception):
    """A sandbox missed a deadline, died or broke the protocol; it has been killed."""

    def __init__(self, failure_class: str, detail: str):
        super().__init__(detail)
        self.failure_class = failure_class
        self.detail = detail


def scrubbed_env(device: str, visible_gpu: str | None = None) -> dict:
    """The environment of a fork server and its sandboxes; `visible_gpu` pins them to one GPU (its entry for
    CUDA_VISIBLE_DEVICES), so that each sees only the card its evaluator judges on, as cuda:0."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    if visible_gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_gpu
    paths = [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    # torch.compile's baseline compiles in the sandbox itself: no compile workers to leave behind
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # Triton reads it at import, in the fork server
    else:
        # torch.cuda.is_available() asked before a fork (torch.compile's imports ask it) must not initialise
        # the CUDA driver, or no forked sandbox could use the GPU
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    return env


class _Drain(threading.Thread):
    """Reads a sandbox's stderr to its end, keeping the first STDERR_CAP bytes and counting the rest."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd = fd
        self.kept = bytearray()
        self.dropped = 0
        self.start()

    def run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    break
                room = STDERR_CAP - len(self.kept)
                self.kept += chunk[:max(room, 0)]
                self.dropped += max(len(chunk) - max(room, 0), 0)
        except OSError:
            pass
        finally:
            os.close(self.fd)

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        return text + (f"\n[{self.dropped} more bytes dropped]" if self.dropped else "")


class ForkServer:
    def __init__(self, device: str, timeouts: Timeouts, namespaces: bool = True, visible_gpu: str | None = None):
        self.device = device
        self.timeouts = timeouts
        self.base = tempfile.mkdtemp(prefix=f"evolve-sandboxes-{os.getpid()}-")
        _sweep_stale_folders()
        limits = {"base": self.base, "namespaces": namespaces, "read_only": [str(PROJECT_ROOT)],
                  "cpu_seconds": int(sum((timeouts.load, timeouts.compile, timeouts.check, timeouts.time))) + 60,
                  "address_space": 24 << 30, "file_size": 1 << 30}
        judge_end, server_end = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "evaluators.forkserver", str(server_end.fileno()), device, json.dumps(limits)],
            pass_fds=(server_end.fileno(),), env=scrubbed_env(device, visible_gpu), cwd=self.base,
            start_new_session=True,
            stdin=subprocess.DEVNULL)
        server_end.close()
        self.control = judge_end
        self.lock = threading.Lock()
        try:
            hello, _ = wire.receive(self.control, time.monotonic() + timeouts.start)
        except wire.WireError as exc:
            self.close()
            raise SandboxLost("crash", f"the fork server did not start: {exc.detail}") from None
        if hello.get("kind") != "ready":
            self.close()
            raise SandboxLost("crash", "the fork server did not say ready")

    def spawn(self) -> "Sandbox":
        arena = Arena()
        with self.lock:
            try:
                wire.send(self.control, {"kind": "spawn"}, fds=(arena.fd,))
                reply, fds = wire.receive(self.control, time.monotonic() + self.timeouts.start, fds_wanted=2)
            except wire.WireError as exc:
                arena.close()
                raise SandboxLost("crash", f"the fork server is gone: {exc.detail}") from None
        if len(fds) != 2:
            arena.close()
            raise SandboxLost("crash", "the fork server passed no sandbox")
        return Sandbox(self, int(reply["pid"]), socket.socket(fileno=fds[0]), fds[1], arena)

    def kill(self, pid: int) -> str:
        with self.lock:
            try:
                wire.send(self.control, {"kind": "kill", "pid": pid})
                reply, _ = wire.receive(self.control, time.monotonic() + 30)
                return str(reply.get("how", "was killed"))
            except wire.WireError:
                return "was lost with the fork server"

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        try:
            wire.send(self.control, {"kind": "stop"})
            self.process.wait(10)
        except (wire.WireError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.control.close()
        shutil.rmtree(self.base, ignore_errors=True)


def _sweep_stale_folders() -> None:
    """Folders of judges that were killed before they could remove them (their pid is in the name)."""
    root = Path(tempfile.gettempdir())
    for folder in root.glob("evolve-sandboxes-*-*"):
        try:
            pid = int(folder.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


class Sandbox:
    def __init__(self, server: ForkServer, pid: int, sock: socket.socket, stderr_fd: int, arena: Arena):
        self.server = server
        self.pid = pid
        self.sock = sock
        self.arena = arena
        self.stderr = _Drain(stderr_fd)
        self.ended: str | None = None
        # a compile-ahead sandbox is killed from the judge's thread while its own thread waits on a reply
        self._ending = threading.Lock()
        self._budget: float | None = None  # seconds of requests left (a search's limit per candidate)
        self._budget_s = 0.0
        hello = self.request({"kind": "hello"}, server.timeouts.start, expect_reply=False)
        if hello.get("kind") != "ready":
            self.kill()
            raise SandboxLost("protocol", "the sandbox did not say ready")
        self.device = wire.field(hello, "device", dict)
        self.namespaces = str(hello.get("namespaces", ""))[:200]
        self.folder = str(hello.get("folder", ""))

    def limit(self, seconds: float) -> None:
        """From now on the sandbox's requests may take `seconds` in all, each still within its own timeout.
        Only time inside a request counts: a wait for the GPU's turn is not the candidate's."""
        self._budget = self._budget_s = float(seconds)

    def request(self, message: dict, timeout: float, expect_reply: bool = True) -> dict:
        """Send (unless this is the greeting) and wait for the reply; SandboxLost on any breach."""
        phase = message.get("phase", message["kind"])
        started = time.monotonic()
        limit = timeout if self._budget is None else min(timeout, max(self._budget, 0.0))
        try:
            if expect_reply:
                wire.send(self.sock, message)
            reply, _ = wire.receive(self.sock, started + limit)
        except wire.WireError as exc:
            if exc.kind == "timeout":
                self.kill()
                if limit < timeout:
                    raise SandboxLost("timeout", f"the candidate's sandbox used up its {self._budget_s:g} s in all "
                                                 f"during the {phase} phase; sandbox killed") from None
                raise SandboxLost("timeout", f"the {phase} phase exceeded its time limit ({timeout:g} s); "
                                             "sandbox killed") from None
            if exc.kind == "protocol":
                self.kill()
                raise SandboxLost("protocol", f"during the {phase} phase: {exc.detail}") from None
            how = self.kill()
            raise SandboxLost("crash", f"the sandbox {how} during the {phase} phase") from None
        finally:
            if self._budget is not None:
                self._budget -= time.monotonic() - started
        return reply

    def grow(self, total: int) -> None:
        if self.arena.reserve(total):
            self.request({"kind": "arena"}, 60)

    def kill(self) -> str:
        with self._ending:
            if self.ended is None:
                self.ended = self.server.kill(self.pid)
                self.sock.close()
                self.stderr.join(5)
                self.arena.close()
            return self.ended

    def close(self) -> None:
        if self.ended is None:
            try:
                wire.send(self.sock, {"kind": "stop"})
            except wire.WireError:
                pass
        self.kill()
