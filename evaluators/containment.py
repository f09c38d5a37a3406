"""What holds a candidate inside its sandbox process, installed before the candidate's first line runs.

Layers, each closing what the others might miss:
- the process: Linux namespaces where the machine allows them (no network; the project and everything
  outside the sandbox's folder read-only), rlimits, a parent-death signal, its own process group;
- the interpreter: an audit hook that refuses sockets, process creation and signals, writes outside the
  sandbox's folder, and - when the candidate's own code asks - imports, exec, ctypes and type patching;
- the module: the candidate runs with builtins that cannot import beyond the allow-list or open files;
- torch: a function mode that refuses every torch computation called from the candidate's code (only
  allocation and description pass), so torch can never do the op's work beside a dummy launch; under the
  interpreter this covers the bodies of @triton.jit functions too, which run there as plain Python.
Every refusal is recorded: the judge rejects a candidate that tried, even if it caught the error.
"""
from __future__ import annotations

import builtins
import ctypes
import os
import resource
import signal
import sys
from pathlib import Path

CANDIDATE_PREFIX = "<candidate "  # co_filename of every line of candidate code: "<candidate 1a2b3c4d>"
ALLOWED_IMPORTS = frozenset({"torch", "triton", "triton.language", "math", "typing", "__future__"})
# programs Triton's compiler runs (ptxas for PTX, a C compiler for its launcher, ldconfig to find libcuda)
# (and `file`, which platform.architecture() runs for the compiler's host checks)
ALLOWED_TOOLS = frozenset({"ptxas", "ptxas-blackwell", "cc", "gcc", "clang", "x86_64-linux-gnu-gcc",
                           "aarch64-linux-gnu-gcc", "ldconfig", "ldconfig.real", "cuobjdump", "nvdisasm", "file",
                           "ld", "objdump", "uname", "nvcc"})

# events refused whoever raises them: a sandbox needs none of these to compile, check or time a kernel
_ALWAYS_REFUSED = ("socket.", "os.system", "os.exec", "os.spawn", "os.fork", "os.forkpty", "os.kill",
                   "os.killpg", "pty.spawn", "signal.pthread_kill", "os.setuid", "os.setgid", "os.chroot",
                   "os.putenv", "os.unsetenv", "sys.setprofile", "sys.settrace", "sys.addaudithook")
# events refused when candidate code is the caller: torch and Triton do these in their own right
_REFUSED_FROM_CANDIDATE = ("import", "exec", "compile", "ctypes.", "object.__setattr__", "object.__delattr__",
                           "_thread.start_new_thread", "os.posix_spawn", "sys._getframe", "sys._current_frames",
                           "function.__new__", "code.__new__", "builtins.input", "open", "os.listdir",
                           "os.scandir", "glob.glob", "marshal.", "pickle.", "gc.get_")
_PATH_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
                "os.chown": (0,), "os.symlink": (0, 1), "os.link": (0, 1), "os.truncate": (0,),
                "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (0, 1)}
_WATCHED = ("subprocess.Popen", *_ALWAYS_REFUSED, *_REFUSED_FROM_CANDIDATE, *_PATH_EVENTS)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

REFUSALS: list[str] = []  # what the candidate (or code it called) was refused, for the judge


def _is_candidate(code_filename: str) -> bool:
    return code_filename.startswith(CANDIDATE_PREFIX)


def candidate_on_stack(skip: int = 2) -> bool:
    frame = sys._getframe(skip)
    while frame is not None:
        if _is_candidate(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False


def candidate_is_caller(skip: int = 2) -> bool:
    """The first frame outside the import machinery, ctypes and this module is candidate code."""
    frame = sys._getframe(skip)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith("<frozen importlib") or name == __file__ or "ctypes" in name):
            return _is_candidate(name)
        frame = frame.f_back
    return False


class AuditPolicy:
    def __init__(self, writable: tuple[str, ...]):
        self.writable = tuple(os.path.realpath(p) for p in writable)
        self.busy = False  # the hook's own frame walks raise events too: those pass unexamined

    def _inside(self, path) -> bool:
        if isinstance(path, int):
            return True  # an fd already open: its opening was checked
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real == "/dev/null" or any(real == root or real.startswith(root + os.sep) for root in self.writable)

    def refuse(self, event: str, why: str) -> None:
        REFUSALS.append(f"{event}: {why}"[:300])
        raise PermissionError(f"refused in the evaluator's sandbox: {event} ({why})")

    def __call__(self, event: str, args: tuple) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            self._check(event, args)
        finally:
            self.busy = False

    def _check(self, event: str, args: tuple) -> None:
        # the process's own work with no candidate code on the stack (the eager and torch.compile
        # baselines, their compilers) is not held to the candidate's limits: a function the candidate
        # defined always carries its file name, so whatever it set up to run later is still seen here
        if not event.startswith(_WATCHED) or not candidate_on_stack(3):
            return
        if event == "subprocess.Popen":
            executable, argv = args[0], args[1]
            program = executable or (argv[0] if argv else "")
            name = os.path.basename(os.fsdecode(program)) if program else ""
            if name not in ALLOWED_TOOLS or candidate_is_caller():
                self.refuse(event, f"running {name or program!r}")
            return
        if event.startswith(_ALWAYS_REFUSED) and event != "socket.gethostname":
            self.refuse(event, "not available to candidates")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and not self._inside(path):
                self.refuse(event, f"writing {path!r} outside the sandbox's folder")
        elif event in _PATH_EVENTS:
            for index in _PATH_EVENTS[event]:
                if index < len(args) and not self._inside(args[index]):
                    self.refuse(event, f"{args[index]!r} is outside the sandbox's folder")
        if event.startswith(_REFUSED_FROM_CANDIDATE) and candidate_is_caller():
            if event == "import" and args and str(args[0]) in ALLOWED_IMPORTS:
                return
            self.refuse(event, "called from candidate code")


# ---------------------------------------------------------------- the candidate's builtins

_BUILTINS_REMOVED = frozenset({
    "open", "exec", "eval", "compile", "globals", "locals", "vars", "getattr", "setattr", "delattr",
    "breakpoint", "input", "help", "exit", "quit", "memoryview", "__loader__", "__spec__", "copyright",
    "credits", "license", "type", "object", "super", "classmethod", "property", "id", "hash", "dir",
    "__debug__", "aiter", "anext", "BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
})


def _restricted_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level != 0 or name not in ALLOWED_IMPORTS:
        REFUSALS.append(f"import {name}: outside the allow-list")
        raise ImportError(f"import of {name!r} refused: a candidate imports only torch, triton, "
                          "triton.language, math and typing")
    if name == "typing" and fromlist:
        import typing
        for item in fromlist:
            if not (item[:1].isupper() or item in ("cast", "overload")) or isinstance(
                    getattr(typing, item, None), type(typing)):
                REFUSALS.append(f"from typing import {item}")
                raise ImportError(f"from typing import {item} refused")
    return builtins.__import__(name, globals, locals, fromlist, level)


def candidate_builtins() -> dict:
    allowed = {k: v for k, v in vars(builtins).items() if k not in _BUILTINS_REMOVED}
    allowed["__import__"] = _restricted_import
    return allowed


# ---------------------------------------------------------------- the process

_libc = None


def _libc_call(name: str, *args) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return getattr(_libc, name)(*args)


def set_parent_death_signal() -> None:
    PR_SET_PDEATHSIG = 1
    _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def set_child_subreaper() -> None:
    PR_SET_CHILD_SUBREAPER = 36
    _libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def enter_namespaces(read_only: tuple[str, ...]) -> str:
    """A user namespace with no network and `read_only` folders remounted read-only; what took effect.

    Best effort: machines that refuse unprivileged namespaces still get every other layer."""
    CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
    MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
    uid, gid = os.getuid(), os.getgid()
    if _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        return f"none (unshare: {os.strerror(ctypes.get_errno())})"
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as exc:
        return f"network only (uid map: {exc.strerror})"
    if _libc_call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return "network only (mount namespace not private)"
    done = []
    for folder in read_only:
        path = os.fsencode(folder)
        if _libc_call("mount", path, path, None, MS_BIND | MS_REC, None) == 0 and \
                _libc_call("mount", None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) == 0:
            done.append(folder)
    return "network, read-only " + (", ".join(done) if done else "nothing")


def apply_limits(cpu_seconds: int, address_space: int | None, file_size: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    if address_space:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    # the compiler's own children count; candidates start none (the audit hook refuses them)
    try:
        running = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
        resource.setrlimit(resource.RLIMIT_NPROC, (running + 64, running + 64))
    except (OSError, ValueError):
        pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over the cap fails to write, never kills


def install_audit_hook(writable: tuple[str, ...]) -> None:
    sys.addaudithook(AuditPolicy(writable))
