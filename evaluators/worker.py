"""The worker process: loads one untrusted candidate at a time and runs the checks and timings on it.

It speaks to the parent over a socket pair: ("phase", name) when a phase starts, so the parent can apply
that phase's timeout, and ("result", dict) at the end. Anything that can take
the process down (a hang, a segfault, a sticky CUDA error) is the parent's to handle by killing it.
"""
from __future__ import annotations

import importlib.util
import os
import random
import sys
import tempfile
import time
import traceback
from typing import Any

LAUNCHES = None  # the LaunchCounter, set up by _install_launch_counter


def _block_network() -> None:
    # candidates may not reach the network; Triton's compiler still needs subprocesses, so only sockets go
    def hook(event: str, args: tuple) -> None:
        if event.startswith("socket.") and event not in ("socket.gethostname",):
            raise PermissionError(f"network access is not allowed in the evaluator ({event})")

    sys.addaudithook(hook)


def _install_launch_counter():
    """Count launches on Triton's own launch path (compiled and interpreted), before any candidate loads."""
    import triton.runtime.jit as jit

    from .correctness import LaunchCounter

    counter = LaunchCounter()
    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:
        pass
    for cls in classes:
        original = cls.run

        def counted(self, *args, __original=original, **kwargs):
            if not kwargs.get("warmup", False):
                counter.count += 1
            return __original(self, *args, **kwargs)

        cls.run = counted
    return counter


def _device_info(device: str) -> dict:
    import torch
    import triton

    info: dict[str, Any] = {"torch": torch.__version__, "triton": triton.__version__}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, arch=f"sm_{props.major}{props.minor}", sm_count=props.multi_processor_count)
    else:
        info.update(name="cpu", arch="interpreter", sm_count=4)
    return info


def _load(path: str):
    name = f"candidate_{abs(hash((path, time.time())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Triton's JIT looks its functions' module up for globals
    spec.loader.exec_module(module)
    return module


def _raised_by_triton_language(exc: BaseException) -> bool:
    cause = exc.__cause__
    tb = cause.__traceback__ if cause is not None else None
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and os.sep.join(("triton", "language")) in last


def _classify(exc: BaseException, phase: str) -> tuple[str, str, bool]:
    """(failure class, one-line detail, recycle the worker?) for an exception raised by a candidate."""
    import torch

    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0][:400] if text else type(exc).__name__
    lowered = str(exc).lower()
    if isinstance(exc, SyntaxError):
        return "syntax_error", f"line {exc.lineno}: {exc.msg}", False
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in lowered \
            or "can't allocate memory" in lowered:
        return "out_of_memory", line, True
    if "illegal memory access" in lowered or "illegal address" in lowered or "cuda error" in lowered \
            or "misaligned address" in lowered or "unspecified launch failure" in lowered:
        return "illegal_address", line, True
    module = type(exc).__module__ or ""
    if phase == "compile" and module.startswith("triton"):
        return "compile_error", line, False
    if _raised_by_triton_language(exc):
        # the interpreter wraps the language's semantic checks (a shape that is not a power of two, a
        # type mismatch) that the compiler would reject: a compile error in whichever call meets it
        return "compile_error", line, False
    if "CompilationError" in type(exc).__name__:
        return "compile_error", line, False
    return "exception", line, False


def evaluate(conn, task: dict, state: dict) -> dict:
    import torch

    from kernels import get_spec

    from .correctness import CorrectnessSuite
    from .timing import BaselineError, TimingSettings, summarise, time_shape
    from .verdict import CandidateFailure, Verdict

    spec = get_spec(task["op"])
    device = task["device"]
    rng = random.Random(task["seed"])
    started = time.perf_counter()
    verdict = Verdict(op=spec.name, status="accepted", failure=None, device=state["device"], candidate=task["path"])
    phase = "load"
    checks: list[dict] = []
    try:
        conn.send(("phase", "load"))
        module = _load(task["path"])
        entry = getattr(module, spec.entry, None)
        if not callable(entry):
            raise CandidateFailure("exception", f"the candidate defines no callable {spec.entry}()")
        suite = CorrectnessSuite(entry, spec, device, LAUNCHES, rng)
        shapes = spec.shapes_for(device)
        dtypes = tuple(task.get("dtypes") or spec.dtypes_for(device))
        pairs = [(d, s) for d in dtypes for s in shapes]
        for i, (dtype_key, shape) in enumerate(pairs):
            # the first call compiles the kernel: it runs under the compile timeout, the rest under the run one
            phase = "compile" if i == 0 else "check"
            if i < 2:
                conn.send(("phase", phase))
            try:
                checks.append(suite.check_shape(shape, dtype_key))
            except CandidateFailure as failure:
                checks.append({"shape": shape.name, "dims": dict(shape.dims), "dtype": dtype_key,
                               "passed": False, "failure": failure.failure_class, "detail": failure.detail})
                raise
        verdict.checks = checks
        if device == "cuda":
            phase = "time"
            conn.send(("phase", "time"))
            settings = TimingSettings(**task.get("timing", {}))
            per_shape = [time_shape(entry, spec, shape, dtype_key, task["ceilings"], settings, rng)
                         for shape in spec.timed_shapes() for dtype_key in task["timed_dtypes"]]
            verdict.timing = summarise(per_shape, task["ceilings"])
    except BaselineError as exc:
        return {"error": str(exc)}
    except CandidateFailure as failure:
        verdict = Verdict.failed(spec.name, failure.failure_class, failure.detail, checks=checks,
                                 device=state["device"], candidate=task["path"])
    except BaseException as exc:  # a candidate may raise anything; classify it, never die of it
        cls, detail, recycle = _classify(exc, phase)
        verdict = Verdict.failed(spec.name, cls, detail, checks=checks, device=state["device"], candidate=task["path"])
        verdict_dict = verdict.to_dict()
        verdict_dict["traceback"] = traceback.format_exc(limit=8)[-4000:]
        verdict_dict["seconds"] = time.perf_counter() - started
        return {"verdict": verdict_dict, "recycle": recycle}
    finally:
        if device == "cuda":
            try:
                torch.cuda.empty_cache()
            except Exception:
                pass
    verdict.seconds = time.perf_counter() - started
    return {"verdict": verdict.to_dict(), "recycle": False}


def main(conn, device: str) -> None:
    """Serve requests until told to stop; the parent started this process in its own session."""
    global LAUNCHES
    # a candidate's prints must not mix with the parent's output (e.g. `evolve eval --json` on stdout)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("the CPU worker must start with TRITON_INTERPRET=1 (Triton reads it at import)")
    os.chdir(tempfile.mkdtemp(prefix="evolve-worker-"))
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 references stay float32
    torch.backends.cudnn.allow_tf32 = False
    LAUNCHES = _install_launch_counter()
    state = {"device": _device_info(device)}
    _block_network()
    conn.send(("ready", state["device"]))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task["kind"] == "stop":
            return
        try:
            if task["kind"] == "evaluate":
                result = evaluate(conn, task, state)
            elif task["kind"] == "ceilings":
                from .timing import TimingSettings, measure_ceilings

                result = {"ceilings": measure_ceilings(TimingSettings())}
            elif task["kind"] == "ab":
                from .promotion import ab_rounds

                result = ab_rounds(conn, task, _load)
            else:
                result = {"error": f"unknown task {task['kind']!r}"}
        except BaseException as exc:  # keep the protocol alive; the parent decides what to do
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
        conn.send(("result", result))


if __name__ == "__main__":
    # python -m evaluators.worker FD DEVICE: FD is this end of a socket pair the parent passed down
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1])), sys.argv[2])
