"""A fork server: one process holding imported torch and Triton (CUDA untouched), which forks a fresh
sandbox for every candidate, so that nothing a candidate does survives it and a new one costs a fork,
not an interpreter start.

The judge starts it with a scrubbed environment (`python -m evaluators.forkserver FD DEVICE`) and asks
over a control socket. For each sandbox the server makes a socket pair and a stderr pipe, forks, and
passes the judge its ends. It is a child subreaper: whatever a sandbox leaves behind (a child that called
setsid, a grandchild) is reparented to it and killed when the sandbox ends. It dies with the judge
(parent-death signal) and its sandboxes die with it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time

from . import containment, wire


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # the field after the state is the parent pid
            found.append(int(entry))
    return found


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.WEXITSTATUS(status)}"


class Server:
    def __init__(self, control: socket.socket, device: str, limits: dict):
        self.control = control
        self.device = device
        self.limits = limits
        self.live: dict[int, str] = {}    # pid -> its folder prefix (under limits["base"])
        self.ended: dict[int, str] = {}   # pid -> how it ended

    def spawn(self, arena_fd: int) -> None:
        judge_end, child_end = socket.socketpair()
        err_read, err_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                self.control.close()
                judge_end.close()
                os.close(err_read)
                os.dup2(err_write, 2)
                os.dup2(err_write, 1)
                sys.stdout = sys.stderr
                from .sandbox import serve

                serve(child_end, self.device, arena_fd, self.limits)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 70
            finally:
                os._exit(code if "code" in locals() else 70)
        child_end.close()
        os.close(err_write)
        os.close(arena_fd)
        self.live[pid] = ""
        wire.send(self.control, {"kind": "spawned", "pid": pid}, fds=(judge_end.fileno(), err_read))
        judge_end.close()
        os.close(err_read)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.live:
                del self.live[pid]
                self.ended[pid] = _exit_text(status)
                self._sweep()

    def _sweep(self) -> None:
        # orphans reparented to this subreaper that are not sandboxes: leftovers of an ended one
        for pid in _children():
            if pid not in self.live:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for entry in os.listdir(self.limits["base"]):
            path = os.path.join(self.limits["base"], entry)
            if entry.startswith("sandbox-") and not any(self._owns(pid, path) for pid in self.live):
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _owns(pid: int, path: str) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/cwd") == path
        except OSError:
            return True  # unknown: keep its folder until it is gone

    def kill(self, pid: int) -> str:
        if pid in self.live:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while pid in self.live and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.005)
        return self.ended.pop(pid, "had ended")

    def serve(self) -> None:
        wire.send(self.control, {"kind": "ready", "pid": os.getpid()})
        while True:
            try:
                request, fds = wire.receive(self.control, time.monotonic() + 5.0, fds_wanted=1)
            except wire.WireError as exc:
                if exc.kind == "timeout":
                    self.reap()
                    continue
                break
            self.reap()
            kind = request.get("kind")
            if kind == "spawn" and fds:
                self.spawn(fds[0])
            elif kind == "kill":
                wire.send(self.control, {"kind": "killed", "how": self.kill(int(request["pid"]))})
            elif kind == "stop":
                break
        for pid in list(self.live):
            self.kill(pid)


def main(fd: int, device: str, limits_json: str) -> None:
    containment.set_parent_death_signal()
    containment.set_child_subreaper()
    os.dup2(2, 1)  # nothing of ours may write on the judge's stdout (`evolve eval --json` owns it)
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("the CPU fork server must start with TRITON_INTERPRET=1 (Triton reads it at import)")
    limits = json.loads(limits_json)
    # everything a sandbox needs, imported once here so a fork inherits it warm; CUDA stays untouched
    import torch  # noqa: F401
    import triton  # noqa: F401
    import triton.language  # noqa: F401

    import kernels  # noqa: F401

    from . import arena, guard, sandbox, timing  # noqa: F401
    if device == "cpu":
        import triton.runtime.interpreter  # noqa: F401
    else:
        # every GPU sandbox loads torch.compile's caches and compiles its baseline: without these here each
        # one spent seconds importing them (CUDA stays untouched: torch answers is_available through NVML)
        import torch._dynamo  # noqa: F401
        import torch._inductor.codecache  # noqa: F401
        import torch._inductor.compile_fx  # noqa: F401
        if torch.cuda.is_initialized():
            raise SystemExit("importing torch.compile initialised CUDA in the fork server; its sandboxes could not")
    control = socket.socket(fileno=fd)
    Server(control, device, limits).serve()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
