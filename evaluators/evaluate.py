"""The evaluator as the rest of the program sees it: a candidate file in, a Verdict out.

The file is read once; the static policy checks that text, and the same text (never the path, which
could be swapped in between) is what a fresh sandbox loads. The judge (this process) decides every check.
Device ceilings are measured once per device and software stack, in a sandbox, and cached on disk.
"""
from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from kernels import OpSpec, get_spec

from . import wire
from .baselines import BaselineCaches, SharedBaselines
from .compile_ahead import CompileAhead, kernel_names
from .gradients import GradientJudge
from .judge import Judge, JudgeError, fresh_seed, sandbox_reply, untrusted
from .promotion import ABDecision, decide
from .sandboxes import ForkServer, Sandbox, SandboxLost, Timeouts
from .static import check_candidate
from .timing import TimingSettings
from .verdict import CandidateFailure, Verdict


class PhaseClock:
    """Seconds spent in each phase of one evaluation, for the verdict: where a judge's time goes."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.current: str | None = None
        self.since = time.perf_counter()

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.phases[self.current] = self.phases.get(self.current, 0.0) + now - self.since
        self.current, self.since = phase, now

    def stop(self) -> dict[str, float]:
        self.enter("")
        self.phases.pop("", None)
        return {name: round(seconds, 3) for name, seconds in self.phases.items()}


@dataclass(frozen=True)
class EvaluatorSettings:
    device: str                                  # "cuda" or "cpu" (resolved, never "auto")
    timeouts: Timeouts = field(default_factory=Timeouts)
    timing: TimingSettings = field(default_factory=TimingSettings)
    timed_dtypes: tuple[str, ...] = ("bfloat16",)
    ceilings_cache: Path | None = None
    promotion_margin: float = 0.02
    ab_rounds: int = 10
    namespaces: bool = True                      # Linux namespaces around each sandbox, where available
    # check (and on a GPU time) the backward of a differentiable candidate; off for an inference-only search
    backward: bool = True
    # op -> the shapes to time, the headline first (a target's choice); other ops time their spec's
    timed_shapes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # on a GPU, compile torch.compile's baseline once per op, in a sandbox that loads no candidate, and load
    # its caches into every candidate's sandbox: each timing then skips most of the baseline's compile
    warm_baselines: bool = True
    # a folder that keeps those caches across runs, per device, software, op, timed shapes and dtypes: a
    # later run, bench or eval loads them and runs no warm sandbox for the op (None: made per run)
    baselines_cache: Path | None = None
    # on a GPU, sandboxes per candidate that compile its kernels for the checks ahead of the sandbox that
    # checks it (evaluators/compile_ahead.py); 0: the checking sandbox compiles everything itself
    compile_ahead: int = 2
    # the seconds a candidate's checking sandbox may work in all, waits for the GPU's turn excluded (a search's
    # limit: one candidate whose kernels are a thousand times slower than eager would hold its population's step
    # for many minutes within each request's own timeout); None: only those timeouts
    candidate_seconds: float | None = None
    # promotion's re-timing and A/B rounds, where a search times its candidates with fewer samples (`timing`):
    # the challenger a ranking picks is then measured in full; None: `timing`
    promotion_timing: TimingSettings | None = None


def _partial(backward: dict | None, checks: list[dict]) -> dict | None:
    """The backward block of a verdict that failed: the backward checks made so far, if any were."""
    if backward is not None:
        return backward
    return {"checks": checks, "deterministic": None, "timing": None} if checks else None


def read_source(path: Path) -> str:
    """The candidate's text; a leading byte-order mark is not part of it. UnicodeDecodeError if not UTF-8."""
    return path.read_bytes().decode("utf-8").removeprefix("\ufeff")


def visible_gpu(index: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry of this process's GPU `index` (its own list, where it has one)."""
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[index] if index < len(listed) else str(index)


class Evaluator(BaselineCaches):
    def __init__(self, settings: EvaluatorSettings, skip_static: bool = False, turns=None, gpu: int | None = None,
                 baselines: SharedBaselines | None = None):
        # skip_static exists for the tests of the layers behind the static policy; no setting reaches it
        self.settings = settings
        # pool.GpuTurns when other evaluators share this GPU: checks may overlap, timing runs alone
        self.turns = turns
        # on a host with several GPUs: the index of this evaluator's. Its sandboxes see that card alone and
        # the judge's own work (inputs, references) runs on it, never on a card another evaluator times on
        self.gpu = gpu
        self._skip_static = skip_static
        self._server: ForkServer | None = None
        self._stopped = False  # stop(): no fork server starts again
        self._ceilings: dict | None = None
        self._device: dict | None = None
        self._warm: dict[str, tuple[ForkServer, str | None]] = {}  # op -> (its fork server, cache file or None)
        # a pool's workers on one GPU share one warm per op (each warm is an exclusive turn on the card)
        self.baselines = baselines
        self.sandboxes_started = 0

    # ------------------------------------------------------------ infrastructure

    def spec(self, op: str) -> OpSpec:
        """The op's spec as this evaluator judges it: with the timed shapes its settings choose."""
        spec = get_spec(op)
        names = self.settings.timed_shapes.get(op)
        return spec.with_timed(names) if names else spec

    def _fork_server(self) -> ForkServer:
        if self._stopped:
            raise SandboxLost("crash", "the evaluator has stopped")
        if self._server is None or not self._server.alive():
            if self._server is not None:
                self._server.close()
            pinned = visible_gpu(self.gpu) if self.gpu is not None and self.settings.device == "cuda" else None
            self._server = ForkServer(self.settings.device, self.settings.timeouts, self.settings.namespaces, pinned)
        return self._server

    def _on_own_gpu(self):
        """The judge's CUDA work in this thread goes to this evaluator's GPU for the duration."""
        if self.gpu is None or self.settings.device != "cuda":
            return nullcontext()
        import torch

        return torch.cuda.device(self.gpu)

    def _turn(self, exclusive: bool):
        if self.turns is None:
            return nullcontext()
        return self.turns.exclusive() if exclusive else self.turns.shared()

    def _preemptible_turn(self, preempt: Callable[[], None]):
        return nullcontext() if self.turns is None else self.turns.preemptible(preempt)

    def _load(self, sandbox: Sandbox, op: str, source: str, turn: bool = True) -> None:
        """The candidate's top-level code runs here and may launch work: inside the GPU's turn, like a check
        (a compile-ahead helper loads inside the turn it holds already)."""
        with self._turn(exclusive=False) if turn else nullcontext():
            sandbox_reply(sandbox.request({"kind": "load", "op": op, "source": source},
                                          self.settings.timeouts.load), "loaded")

    def _sandbox(self) -> Sandbox:
        self.sandboxes_started += 1
        return self._fork_server().spawn()

    @property
    def device_info(self) -> dict:
        if self._device is None:
            import torch
            import triton

            info = {"torch": torch.__version__, "triton": triton.__version__}
            if self.settings.device == "cuda":
                props = torch.cuda.get_device_properties(0)
                info.update(name=props.name, arch=f"sm_{props.major}{props.minor}",
                            sm_count=props.multi_processor_count)
            else:
                info.update(name="cpu", arch="interpreter", sm_count=4)
            self._device = info
        return self._device

    def ceilings(self) -> dict | None:
        """Measured copy GB/s and bf16 matmul TFLOP/s of this GPU; None on the CPU interpreter."""
        if self.settings.device != "cuda":
            return None
        if self._ceilings is None:
            info = self.device_info
            key = f"{info['name']}|torch {info['torch']}|triton {info['triton']}"
            cache = self.settings.ceilings_cache
            stored = json.loads(cache.read_text()) if cache and cache.exists() else {}
            if key not in stored:
                sandbox = self._sandbox()
                try:
                    reply = sandbox_reply(sandbox.request({"kind": "ceilings"}, self.settings.timeouts.task),
                                          "ceilings")
                finally:
                    sandbox.close()
                ceilings = {k: float(reply["ceilings"][k]) for k in ("copy_gbps", "matmul_tflops")}
                stored[key] = {**ceilings, "method": str(reply["ceilings"].get("method", "")),
                               "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
                if cache:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps(stored, indent=2))
            self._ceilings = stored[key]
        return self._ceilings

    # ------------------------------------------------------------ one candidate

    def _static_failure(self, op: str, source: str) -> tuple[str, str] | None:
        violations = [] if self._skip_static else check_candidate(source, get_spec(op).entry)
        if not violations:
            return None
        if {v.rule for v in violations} == {"syntax"}:
            return "syntax_error", violations[0].detail
        return "static", violations[0].detail + (f" (+{len(violations) - 1} more)" if len(violations) > 1 else "")

    def evaluate(self, op: str, path: Path, on_message: Callable[[tuple], None] | None = None,
                 dtypes: tuple[str, ...] | None = None) -> Verdict:
        started = time.perf_counter()
        path = Path(path)
        try:
            source = read_source(path)
        except UnicodeDecodeError as exc:
            return Verdict.failed(op, "syntax_error", f"the file is not UTF-8 text (byte {exc.start})",
                                  device=self.device_info, candidate=str(path))
        return self.evaluate_source(op, source, str(path), on_message, dtypes, started)

    def evaluate_source(self, op: str, source: str, name: str = "<source>",
                        on_message: Callable[[tuple], None] | None = None, dtypes: tuple[str, ...] | None = None,
                        started: float | None = None) -> Verdict:
        with self._on_own_gpu():
            return self._evaluate_source(op, source, name, on_message, dtypes, started)

    def _evaluate_source(self, op: str, source: str, name: str, on_message: Callable[[tuple], None] | None,
                         dtypes: tuple[str, ...] | None, started: float | None) -> Verdict:
        started = time.perf_counter() if started is None else started
        spec = self.spec(op)
        device = self.device_info
        found = self._static_failure(op, source)
        if found:
            return Verdict.failed(op, *found, device=device, candidate=name, seconds=time.perf_counter() - started)
        ceilings = self.ceilings()
        self._fork_server()  # a fork server that cannot start is the evaluator's failure, raised as such
        checks: list[dict] = []
        backward_checks: list[dict] = []
        backward = None
        sandbox = None
        ahead: CompileAhead | None = None
        compiled_ahead = None
        clock = PhaseClock()
        try:
            if self._warms_baselines() and op not in self._warm:  # its own phase, before a sandbox is held
                clock.enter("warm")
                if on_message:
                    on_message(("phase", "warm"))
                self.baseline_cache(op)
            clock.enter("start")
            sandbox = self._sandbox()
            if self.settings.candidate_seconds:
                sandbox.limit(self.settings.candidate_seconds)
            device = {**device, "sandbox": sandbox.namespaces}
            clock.enter("load")
            if on_message:
                on_message(("phase", "load"))
            baselines_loaded = self._offer_baselines(sandbox, op)
            self._load(sandbox, op, source)
            judge = Judge(spec, sandbox, self.settings.device, random.Random(fresh_seed()), self.settings.timeouts,
                          turn=lambda: self._turn(exclusive=False))
            checked_dtypes = tuple(dtypes or spec.dtypes_for(self.settings.device))
            differentiable = self.settings.backward and spec.has_backward
            # both plans drawn first, so that the compile-ahead sandboxes know the order of the checks
            plan = judge.plan(checked_dtypes)
            backward_plan = judge.plan(checked_dtypes) if differentiable else []
            ahead = self._compile_ahead(op, source, sandbox, spec, plan, backward_plan, differentiable)
            clock.enter("check")
            if on_message:
                on_message(("phase", "check"))
            gradients = None
            # each check takes the GPU's shared turn for itself (Judge.turn)
            judge.run_checks(checked_dtypes, checks, plan, reached=ahead.reached if ahead else None)
            if differentiable:
                clock.enter("backward")
                if on_message:
                    on_message(("phase", "backward"))
                gradients = GradientJudge(judge)
                backward = gradients.run(checked_dtypes, backward_checks, backward_plan,
                                         reached=(lambda i: ahead.reached(len(plan) + i)) if ahead else None)
                if backward is None:
                    gradients = None
            timing = None
            if self.settings.device == "cuda":
                timing = self._time(judge, gradients, backward, ceilings, clock, on_message,
                                    prepare_alone=not baselines_loaded, ahead=ahead)
            verdict = Verdict(op=op, status="accepted", failure=None, checks=checks, timing=timing, device=device,
                              candidate=name, backward=backward)
        except CandidateFailure as failure:
            verdict = Verdict.failed(op, failure.failure_class, failure.detail, checks=checks, device=device,
                                     candidate=name, backward=_partial(backward, backward_checks))
        except SandboxLost as lost:
            verdict = Verdict.failed(op, lost.failure_class, lost.detail, checks=checks, device=device, candidate=name,
                                     backward=_partial(backward, backward_checks))
        except JudgeError:
            raise
        finally:
            if ahead is not None:
                compiled_ahead = ahead.stop()
            if sandbox is not None:
                sandbox.close()
        verdict.compiled_ahead = compiled_ahead
        if sandbox is not None and not verdict.accepted:
            verdict.stderr = sandbox.stderr.text()[-4000:]
        verdict.seconds = time.perf_counter() - started
        verdict.phases = clock.stop()
        return verdict

    def _compile_ahead(self, op: str, source: str, sandbox: Sandbox, spec: OpSpec, plan: list, backward_plan: list,
                       differentiable: bool) -> CompileAhead | None:
        """On a GPU, the helpers that compile the candidate's kernels for the checks of `plan`, then
        `backward_plan`, then the timed shapes, into the checking sandbox's Triton cache; None where there
        are none (the interpreter compiles nothing)."""
        count = self.settings.compile_ahead if self.settings.device == "cuda" else 0
        if count <= 0 or not sandbox.folder:
            return None
        cases = ([(shape.name, dtype, variant, False) for dtype, shape, variant, _ in plan]
                 + [(shape.name, dtype, variant, True) for dtype, shape, variant, _ in backward_plan]
                 + [(shape.name, dtype, None, differentiable) for shape in spec.timed_shapes()
                    for dtype in self.settings.timed_dtypes])

        return CompileAhead(self._sandbox, cases, count, Path(sandbox.folder) / "triton", kernel_names(source),
                            self._preemptible_turn, self.settings.timeouts.compile, fresh_seed(),
                            load=lambda helper: self._load(helper, op, source, turn=False)).start()

    def _time(self, judge: Judge, gradients: GradientJudge | None, backward: dict | None, ceilings: dict,
              clock: PhaseClock, on_message: Callable[[tuple], None] | None, prepare_alone: bool = False,
              ahead: CompileAhead | None = None) -> dict:
        """The timing of a checked candidate, holding the GPU alone only while it measures: the work before
        (torch.compile's tracing, the candidate's compilation at the timed shapes) and the re-checks after
        share the card with other workers' checks. With `prepare_alone` (no stored baseline was loaded, so
        torch.compile would autotune its kernels by timing them) the preparation holds the card alone too.
        The compile-ahead sandboxes are stopped before anything is measured."""
        settings, headline = self.settings, judge.spec.headline_shape()
        clock.enter("prepare")
        if ahead is not None:  # the timed shapes' cases come last: a helper may be compiling one of them
            ahead.reached_all()
        with self._turn(exclusive=prepare_alone):
            judge.prepare_timing(settings.timed_dtypes, backward=gradients is not None)
        if ahead is not None:
            ahead.stop()
        clock.enter("time")
        if on_message:
            on_message(("phase", "time"))
        with self._turn(exclusive=True):
            timing = judge.time(settings.timed_dtypes, ceilings, settings.timing, final_check=False,
                                backward=gradients is not None)
        clock.enter("recheck")
        with self._turn(exclusive=False):
            judge.recheck_after_timing(settings.timed_dtypes[0])
            if gradients is not None:
                backward["timing"] = judge.backward_timing
                gradients.check_shape(headline, settings.timed_dtypes[0], None, repeat=True, refill=False)
        return timing

    # ------------------------------------------------------------ promotion, GPU only

    @property
    def _promotion_timing(self) -> TimingSettings:
        return self.settings.promotion_timing or self.settings.timing

    def _loaded(self, op: str, path: Path, baselines: bool) -> Sandbox:
        source = read_source(Path(path))
        found = self._static_failure(op, source)
        if found:
            raise CandidateFailure(*found)
        return self._sandbox_with(op, source, baselines)

    def _sandbox_with(self, op: str, source: str, baselines: bool) -> Sandbox:
        """A fresh sandbox with the (already checked) source loaded, offered the baseline's caches first
        where `baselines`."""
        sandbox = self._sandbox()
        try:
            if baselines:
                self._offer_baselines(sandbox, op)
            self._load(sandbox, op, source)
        except BaseException:
            sandbox.close()
            raise
        return sandbox

    def retime(self, op: str, path: Path) -> Verdict:
        """A promotion candidate timed again in a fresh sandbox, with every timing cross-check."""
        if self.settings.device != "cuda":
            raise RuntimeError("timing needs a GPU")
        with self._on_own_gpu():
            return self._retime(op, path)

    def _retime(self, op: str, path: Path) -> Verdict:
        spec = self.spec(op)
        sandbox = None
        try:
            sandbox = self._loaded(op, path, baselines=True)
            judge = Judge(spec, sandbox, "cuda", random.Random(fresh_seed()), self.settings.timeouts)
            backward = None
            if self.settings.backward and spec.has_backward:
                # one backward check says whether it is differentiable, and that its backward is still right
                gradients = GradientJudge(judge)
                checks = [gradients.check_shape(spec.headline_shape(), self.settings.timed_dtypes[0], None,
                                                repeat=True, refill=False)]
                if checks[0] is not None:
                    backward = {"checks": checks, "deterministic": gradients.deterministic, "timing": None}
            timing = judge.time(self.settings.timed_dtypes[:1], self.ceilings(), self._promotion_timing,
                                backward=backward is not None)
            if backward is not None:
                backward["timing"] = judge.backward_timing
            return Verdict(op=op, status="accepted", failure=None, timing=timing, device=self.device_info,
                           candidate=str(path), backward=backward)
        except (CandidateFailure, SandboxLost) as failure:
            return Verdict.failed(op, failure.failure_class, failure.detail, device=self.device_info,
                                  candidate=str(path))
        finally:
            if sandbox is not None:
                sandbox.close()

    def ab(self, op: str, challenger: Path, incumbent: Path, backward: bool = False) -> ABDecision:
        """Interleaved A/B rounds at the op's headline shape and first timed dtype, each kernel in its own
        fresh sandbox, so neither can reach the other; of forward+backward with `backward`."""
        if self.settings.device != "cuda":
            raise RuntimeError("A/B timing needs a GPU")
        with self._on_own_gpu():
            return self._ab(op, challenger, incumbent, backward)

    def _ab(self, op: str, challenger: Path, incumbent: Path, backward: bool) -> ABDecision:
        spec = self.spec(op)
        sandboxes: dict[str, Sandbox] = {}
        try:
            for role, path in (("challenger", challenger), ("incumbent", incumbent)):
                sandboxes[role] = self._loaded(op, path, baselines=False)  # a bench times no baseline
            seed = fresh_seed()
            # forward+backward in a training search: both carry a checked backward (graph._promotion races
            # only such pairs there)
            request = {"kind": "bench", "shape": spec.headline_shape().name, "dtype": self.settings.timed_dtypes[0],
                       "seed": seed, "timing": asdict(self._promotion_timing), "backward": backward}
            ratios = []
            for r in range(self.settings.ab_rounds):
                order = ("challenger", "incumbent") if r % 2 == 0 else ("incumbent", "challenger")
                ms = {}
                for role in order:
                    reply = sandbox_reply(sandboxes[role].request(request, self.settings.timeouts.task), "benched")
                    with untrusted(f"the {role}'s time"):
                        ms[role] = wire.number(reply, "ms", low=1e-9)
                ratios.append(ms["incumbent"] / ms["challenger"])
        finally:
            for sandbox in sandboxes.values():
                sandbox.close()
        return decide(ratios, self.settings.promotion_margin)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def stop(self) -> None:
        """Close for good, from another thread than the one judging: its candidate's sandbox is killed, and
        neither that thread nor a compile-ahead helper starts another fork server, which would judge on."""
        self._stopped = True
        self.close()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
