"""One sandbox: a process forked for one candidate, which loads it from the source text the judge checked
and runs it as the judge asks. It decides nothing: it returns raw outputs, launch counts, layouts and
timings, and the judge (another process, which never imports candidate code) draws every conclusion.

Requests (JSON frames, see wire.py): arena, load, call, grad, time, batch, bench, ceilings, warm, baselines,
prepare, compile, stop.
"""
from __future__ import annotations

import hashlib
import linecache
import os
import random
import sys
import tempfile
import time
import traceback
import types

from . import containment, wire
from .arena import Arena, describe, rebuild

# the live state of this sandbox, set by serve(); one candidate per process
STATE: dict = {}


def _device_info(device: str) -> dict:
    import torch
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, arch=f"sm_{props.major}{props.minor}", sm_count=props.multi_processor_count)
    else:
        info.update(name="cpu", arch="interpreter", sm_count=4)
    return info


def load_candidate(source: str):
    """Execute the candidate's text as a module with the restricted builtins; its entry is looked up later."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    filename = f"{containment.CANDIDATE_PREFIX}{digest}>"
    lines = source.splitlines(keepends=True)
    # Triton reads a kernel's source through linecache; an entry without mtime is never re-validated
    linecache.cache[filename] = (len(source), None, lines, filename)
    module = types.ModuleType("candidate")
    module.__dict__["__builtins__"] = containment.candidate_builtins()
    module.__file__ = filename
    sys.modules["candidate"] = module  # Triton's JIT looks a kernel's module up for its globals
    code = compile(source, filename, "exec", dont_inherit=True)
    from .guard import TorchGuard

    with TorchGuard(None):
        exec(code, module.__dict__)
    return module


def _classify(exc: BaseException, phase: str) -> tuple[str, str]:
    import torch

    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0][:400] if text else type(exc).__name__
    lowered = str(exc).lower()
    if containment.REFUSALS:
        return "escape", containment.REFUSALS[0]
    if type(exc).__name__ == "BaselineError":
        return "baseline", line  # PyTorch's own op failed: the judge's problem, not the candidate's
    if isinstance(exc, SyntaxError):
        return "syntax_error", f"line {exc.lineno}: {exc.msg}"
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in lowered \
            or "can't allocate memory" in lowered:
        return "out_of_memory", line
    if any(s in lowered for s in ("illegal memory access", "illegal address", "cuda error", "misaligned address",
                                  "unspecified launch failure")):
        return "illegal_address", line
    module = type(exc).__module__ or ""
    if (phase == "compile" and module.startswith("triton")) or "CompilationError" in type(exc).__name__:
        return "compile_error", line
    cause = exc.__cause__
    tb = cause.__traceback__ if cause is not None else None
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is not None and os.sep.join(("triton", "language")) in last:
        # the interpreter wraps the language's semantic checks that the compiler would reject
        return "compile_error", line
    return "exception", line


def _sync() -> None:
    import torch

    if STATE["device"] == "cuda":
        torch.cuda.synchronize()


def _as_bytes(t):
    return t.detach().contiguous().reshape(-1).view(__import__("torch").uint8)


def _inputs(args: list[dict], reuse: bool) -> tuple:
    """Rebuild the call's arguments from the arena: tensors on this device, in storages of their own."""
    import torch

    arena: Arena = STATE["arena"]
    previous = STATE.get("inputs") if reuse else None
    built = []
    for i, arg in enumerate(args):
        if "value" in arg:
            built.append(arg["value"])
            continue
        meta = arg["tensor"]
        raw = arena.view(arg["offset"], meta["storage_nbytes"])
        if previous is not None and type(previous[i]) is torch.Tensor and \
                previous[i].untyped_storage().nbytes() == meta["storage_nbytes"]:
            # the same storages refilled in place: a result cached by address is now stale
            old = previous[i]
            storage = torch.empty(0, dtype=torch.uint8, device=old.device).set_(old.untyped_storage(), 0,
                                                                                 (old.untyped_storage().nbytes(),))
            storage.copy_(raw)
            built.append(old)
            continue
        device_raw = raw.to(STATE["device"], copy=True)
        built.append(rebuild(device_raw, meta))
    STATE["inputs"] = built
    return tuple(built)


def _call(request: dict) -> dict:
    import torch

    from .guard import TorchGuard, overlaps, poison_free_memory

    spec = STATE["spec"]
    entry = STATE["entry"]
    inputs = _inputs(request["inputs"], bool(request.get("reuse")))
    if request.get("prime"):
        with torch.no_grad():
            spec.eager(*inputs)  # its result, freed, is what an unwritten output would otherwise hold
    poison = request.get("poison")
    if poison is not None:
        poison_free_memory(sum(r["nbytes"] for r in request["outputs"]), STATE["device"], float(poison))
    counter = STATE["launches"]
    before = counter.count
    started = time.perf_counter()
    with TorchGuard(None if poison is None else float(poison)):
        out = entry(*inputs)
    _sync()
    seconds = time.perf_counter() - started
    launches = counter.count - before
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    previous = STATE.get("previous_outputs", [])
    reply_outs = _write_tensors(outs[:8], request["outputs"], {"inputs": inputs}, previous)
    _write_back(inputs, request.get("after", []))
    # kept alive until the next call: an output that reuses their storage was returned twice
    STATE["previous_outputs"] = [o for o in outs if type(o) is torch.Tensor]
    return {"kind": "called", "launches": launches, "count": len(outs) if isinstance(out, (tuple, list)) else None,
            "outputs": reply_outs, "seconds": seconds}


def _write_tensors(values: list, regions: list, others: dict[str, tuple], previous: list) -> list[dict]:
    """Each value's layout, the storages it shares (with each group of `others`, with the values before it,
    with the previous call's results), and its bytes written into its region when they fit."""
    import torch

    from .guard import overlaps

    metas = []
    for k, o in enumerate(values):
        if type(o) is not torch.Tensor:
            # never call a method of an object that is not exactly a tensor: it could run anything
            metas.append({"type": "None" if o is None else type(o).__qualname__[:80]})
            continue
        meta = {"type": "Tensor", **describe(o), "device": o.device.type,
                "overlaps_outputs": [j for j in range(k) if type(values[j]) is torch.Tensor and overlaps(o, values[j])],
                "overlaps_previous": any(overlaps(o, p) for p in previous)}
        for group, tensors in others.items():
            meta[f"overlaps_{group}"] = [i for i, a in enumerate(tensors) if type(a) is torch.Tensor and overlaps(o, a)]
        region = regions[k] if k < len(regions) else None
        if region is not None and o.numel() * o.element_size() == region["nbytes"]:
            STATE["arena"].view(region["offset"], region["nbytes"]).copy_(_as_bytes(o).cpu())
            meta["written"] = True
        metas.append(meta)
    return metas


def _write_back(tensors: tuple, regions: list) -> None:
    """The whole storages of the call's tensors, as they are now, into the judge's regions."""
    import torch

    for arg, region in zip(tensors, regions):
        if region is not None and type(arg) is torch.Tensor:
            raw = torch.empty(0, dtype=torch.uint8, device=arg.device).set_(
                arg.untyped_storage(), 0, (arg.untyped_storage().nbytes(),))
            STATE["arena"].view(region["offset"], region["nbytes"]).copy_(raw.cpu())


def _grad(request: dict) -> dict:
    """One forward and backward: the entry called on inputs whose floating tensors require a gradient, then
    autograd asked for their gradients given the judge's output gradients. A candidate whose outputs need
    no gradient is forward-only; the judge decides what that means."""
    import torch

    from .guard import TorchGuard, guarded_grad, poison_free_memory

    inputs = _inputs(request["inputs"], bool(request.get("reuse")))
    for t in inputs:
        if type(t) is torch.Tensor and t.is_floating_point():
            t.requires_grad_(True)
    wanted = [t for t in inputs if type(t) is torch.Tensor and t.requires_grad]
    poison = request.get("poison")
    guard_poison = None if poison is None else float(poison)
    counter = STATE["launches"]
    before = counter.count
    with torch.enable_grad(), TorchGuard(guard_poison):
        out = STATE["entry"](*inputs)
    _sync()
    forward_launches = counter.count - before
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    differentiable = [(k, o) for k, o in enumerate(outs[:8]) if type(o) is torch.Tensor and o.requires_grad]
    if not differentiable:
        return {"kind": "graded", "differentiable": False, "launches": forward_launches}
    dys = []
    for spec in request["grad_outputs"]:
        if spec is None:
            dys.append(None)
            continue
        raw = STATE["arena"].view(spec["offset"], spec["tensor"]["storage_nbytes"]).to(STATE["device"], copy=True)
        dys.append(rebuild(raw, spec["tensor"]))
    pairs = [(o, dys[k]) for k, o in differentiable if k < len(dys) and dys[k] is not None]
    if poison is not None:
        poison_free_memory(sum(r["nbytes"] for r in request["grads"]), STATE["device"], float(poison))
    before = counter.count
    with TorchGuard(guard_poison):
        grads = guarded_grad([o for o, _ in pairs], wanted, [dy for _, dy in pairs])
    _sync()
    backward_launches = counter.count - before
    previous = STATE.get("previous_outputs", [])
    metas = _write_tensors(list(grads), request["grads"], {"inputs": inputs, "outputs": outs, "dys": dys},
                           previous)
    _write_back(inputs, request.get("after", []))
    _write_back(tuple(dys), request.get("dys_after", []))
    STATE["previous_outputs"] = [g for g in grads if type(g) is torch.Tensor]
    return {"kind": "graded", "differentiable": True, "launches": forward_launches,
            "backward_launches": backward_launches, "grads": metas}


def _shape(name: str):
    spec = STATE["spec"]
    for shape in spec.shapes + spec.interpreter_shapes:
        if shape.name == name:
            return shape
    raise ValueError(f"unknown shape {name!r}")


def _guarded(fn):
    from .guard import TorchGuard

    def call(*args):
        with TorchGuard(None):
            return fn(*args)
    return call


def _guarded_run(run):
    """A forward+backward's `guarded` (timing.ForwardBackward): the whole of it under the guard."""
    return _guarded(run)()


def _time(request: dict) -> dict:
    import torch

    from .timing import TimingSettings, time_shape

    settings = TimingSettings(**request["timing"])
    results = []
    for (shape_name, dtype_key), regions in zip(request["shapes"], request["outputs"]):
        shape = _shape(shape_name)
        # forward+backward as well when asked, the backward under the guard like the forward
        guard = _guarded_run if request.get("backward") else None
        result, last_out = time_shape(_guarded(STATE["entry"]), STATE["spec"], shape, dtype_key, settings,
                                      request["seed"], guard)
        outs = list(last_out) if isinstance(last_out, (tuple, list)) else [last_out]
        written = []
        for o, region in zip(outs, regions):
            ok = type(o) is torch.Tensor and o.numel() * o.element_size() == region["nbytes"]
            if ok:
                STATE["arena"].view(region["offset"], region["nbytes"]).copy_(_as_bytes(o).cpu())
            written.append(ok)
        result["written"] = written
        results.append(result)
    return {"kind": "timed", "shapes": results}


def _rotating_inputs(request: dict):
    from kernels import DTYPES

    from .timing import TimingSettings, input_set_count

    spec = STATE["spec"]
    shape = _shape(request["shape"])
    dtype = DTYPES[request["dtype"]]
    settings = TimingSettings(**request.get("timing", {}))
    n = input_set_count(spec.bytes_moved(shape, dtype), settings)
    rng = random.Random(request["seed"])
    return [spec.make_inputs(shape, dtype, rng.randrange(2**31), "cuda") for _ in range(n)], settings


def _batch(request: dict) -> dict:
    """k back-to-back calls queued behind a GPU busy-wait; the judge times the whole request itself."""
    import torch

    key = (request["shape"], request["dtype"], request["seed"])
    if STATE.get("batch_key") != key:
        STATE["batch_inputs"] = _rotating_inputs(request)[0]
        STATE["batch_key"] = key
    sets = STATE["batch_inputs"]
    fn = _guarded(STATE["entry"])
    with torch.no_grad():
        fn(*sets[0])
        torch.cuda.synchronize()
        torch.cuda._sleep(int(request["sleep_cycles"]))
        started = time.perf_counter()
        for i in range(int(request["k"])):
            fn(*sets[i % len(sets)])
        enqueue = time.perf_counter() - started
        torch.cuda.synchronize()
    return {"kind": "batched", "enqueue_s": enqueue}


def _bench(request: dict) -> dict:
    import torch

    from .timing import Rotating, _bench as bench

    sets, settings = _rotating_inputs(request)
    if request.get("backward"):
        from .timing import ForwardBackward, gradient_sets

        fn = Rotating(ForwardBackward(_guarded(STATE["entry"]), _guarded_run),
                      gradient_sets(STATE["spec"], sets, request["seed"]))
        fn()
        return {"kind": "benched", "ms": bench(fn, settings)}
    fn = Rotating(_guarded(STATE["entry"]), sets)
    with torch.no_grad():
        fn()
        ms = bench(fn, settings)
    return {"kind": "benched", "ms": ms}


def _prepare(request: dict) -> dict:
    from .timing import prepare_timing

    if "entry" not in STATE:
        return {"kind": "failure", "class": "protocol", "detail": "a prepare request before the candidate was loaded"}
    for shape_name, dtype_key in request["shapes"]:
        prepare_timing(STATE["spec"], _shape(shape_name), dtype_key, bool(request["backward"]), int(request["seed"]),
                       _guarded(STATE["entry"]), _guarded_run)
    return {"kind": "prepared"}


def _compile_only() -> None:
    """From here on a launch `kernel[grid](...)` compiles the kernel (into this sandbox's Triton cache) and
    runs nothing: Triton's warm-up path. Autotuned kernels compile every config."""
    from triton.runtime.jit import KernelInterface

    def compiling(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=True, **kwargs)
    KernelInterface.__getitem__ = compiling
    STATE["compile_only"] = True


def _compile(request: dict) -> dict:
    """A compile-ahead sandbox: the candidate called at one shape, dtype and input variant, forward or forward
    and backward, with its kernels compiled and never run. Its outputs are garbage and nobody reads them; what
    counts is the Triton cache it leaves, from which the judge copies the candidate's own kernels into the
    sandbox that checks it."""
    import torch

    from kernels import DTYPES

    from .timing import ForwardBackward, gradient_sets

    if "entry" not in STATE:
        return {"kind": "failure", "class": "protocol", "detail": "a compile request before the candidate was loaded"}
    if not STATE.get("compile_only"):
        _compile_only()
    spec = STATE["spec"]
    seed = int(request["seed"])
    inputs = spec.make_inputs(_shape(request["shape"]), DTYPES[request["dtype"]], seed, STATE["device"])
    if request.get("variant"):
        inputs = spec.variants[request["variant"]](inputs, seed)
    if request.get("backward"):
        ForwardBackward(_guarded(STATE["entry"]), _guarded_run)(
            *gradient_sets(spec, [inputs], seed)[0])
    else:
        with torch.no_grad():
            _guarded(STATE["entry"])(*inputs)
    _sync()
    return {"kind": "compiled"}


BASELINES_FILE = "baselines.bin"  # where a warm sandbox leaves torch.compile's caches, in its own folder


def _warm(request: dict) -> dict:
    """Compile torch.compile's baseline at the timed shapes and save every cache that made (torch's
    portable cache artifacts: graphs, generated Triton kernels, autotuning choices) for the judge. Only in
    a sandbox that has loaded no candidate: what it saves is loaded into candidates' sandboxes."""
    import torch
    from torch._dynamo.utils import counters

    from kernels import get_spec

    from .timing import compile_baselines

    if "entry" in STATE:
        return {"kind": "failure", "class": "protocol", "detail": "a warm request after a candidate was loaded"}
    STATE["spec"] = get_spec(request["op"])
    for shape_name, dtype_key in request["shapes"]:
        compile_baselines(STATE["spec"], _shape(shape_name), dtype_key, STATE["device"], bool(request["backward"]),
                          int(request["seed"]))
    saved = torch.compiler.save_cache_artifacts()
    data = saved[0] if saved else b""
    with open(BASELINES_FILE, "wb") as out:  # the cwd is this sandbox's folder
        out.write(data)
    return {"kind": "warmed", "file": BASELINES_FILE, "bytes": len(data),
            "cache_hits": int(counters["inductor"]["fxgraph_cache_hit"]),
            "cache_misses": int(counters["inductor"]["fxgraph_cache_miss"])}


def _baselines(request: dict) -> dict:
    """Load a warm sandbox's caches into this one's own cache folders, before any candidate code runs:
    torch.compile's baseline then finds its graphs and kernels compiled, and no candidate can change what
    another sandbox loads (the file is outside every candidate's writable folder)."""
    import torch

    if "entry" in STATE:
        return {"kind": "failure", "class": "protocol", "detail": "baselines offered after a candidate was loaded"}
    try:
        with open(request["path"], "rb") as stored:
            data = stored.read()
        info = torch.compiler.load_cache_artifacts(data) if data else None
    except Exception as exc:  # the judge's cache, not the candidate's doing: the baseline compiles cold
        return {"kind": "baselines", "artifacts": 0, "error": f"{type(exc).__name__}: {exc}"[:300]}
    # CacheInfo lists the artifacts by kind (torch versions that return nothing count as none)
    kinds = getattr(info, "artifacts", None) or {}
    return {"kind": "baselines", "artifacts": sum(len(v) for v in kinds.values())}


def _ceilings(request: dict) -> dict:
    from .timing import TimingSettings, measure_ceilings

    return {"kind": "ceilings", "ceilings": measure_ceilings(TimingSettings())}


def _handle(request: dict) -> dict:
    kind = request.get("kind")
    if kind == "arena":
        STATE["arena"].remap()
        return {"kind": "ok"}
    if kind == "load":
        from kernels import get_spec

        STATE["spec"] = get_spec(request["op"])
        module = load_candidate(request["source"])
        entry = module.__dict__.get(STATE["spec"].entry)
        if not callable(entry):
            return {"kind": "failure", "class": "exception",
                    "detail": f"the candidate defines no callable {STATE['spec'].entry}()"}
        STATE["entry"] = entry
        _sync()  # whatever the candidate's top-level code launched ends inside the judge's turn
        return {"kind": "loaded"}
    handlers = {"call": _call, "grad": _grad, "time": _time, "batch": _batch, "bench": _bench, "ceilings": _ceilings,
                "warm": _warm, "baselines": _baselines, "prepare": _prepare, "compile": _compile}
    if kind not in handlers:
        return {"kind": "failure", "class": "protocol", "detail": f"unknown request {kind!r}"}
    return handlers[kind](request)


def serve(sock, device: str, arena_fd: int, limits: dict) -> None:
    """The sandbox's life: contain itself, then answer the judge's requests until told to stop."""
    os.setpgid(0, 0)
    containment.set_parent_death_signal()
    folder = tempfile.mkdtemp(prefix="sandbox-", dir=limits["base"])
    os.chdir(folder)
    for name in ("HOME", "TMPDIR", "TEMP", "TMP"):
        os.environ[name] = folder
    os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    tempfile.tempdir = folder
    namespaces = containment.enter_namespaces(tuple(limits["read_only"])) if limits["namespaces"] else "off"
    containment.apply_limits(limits["cpu_seconds"], limits["address_space"] if device == "cpu" else None,
                             limits["file_size"])
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 baselines stay float32
    torch.backends.cudnn.allow_tf32 = False
    if device == "cuda":
        torch.cuda.init()  # first initialised here, in the child: a forked CUDA context is unusable
    from .guard import LaunchCounter

    STATE.update(device=device, arena=Arena(fd=arena_fd), launches=LaunchCounter().install())
    info = _device_info(device)
    containment.install_audit_hook((folder,))
    wire.send(sock, {"kind": "ready", "device": info, "namespaces": namespaces, "folder": folder})
    while True:
        try:
            request, _ = wire.receive(sock, time.monotonic() + 10**7)
        except wire.WireError:
            return
        if request.get("kind") == "stop":
            return
        phase = request.get("phase", request.get("kind", ""))
        try:
            reply = _handle(request)
        except BaseException as exc:  # a candidate may raise anything; classify it, never die of it
            cls, detail = _classify(exc, phase)
            reply = {"kind": "failure", "class": cls, "detail": detail,
                     "traceback": traceback.format_exc(limit=8)[-4000:]}
        reply["refusals"] = containment.REFUSALS[:20]
        wire.send(sock, reply)
