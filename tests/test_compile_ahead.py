"""Compile-ahead sandboxes: what the judge copies from a helper's Triton cache into the checking sandbox's
(only complete entries of the candidate's own kernels, plain files under Triton's names, never over an entry
that is there, within a byte budget), how the helpers share the checks' order, and that a helper lost or
stopped changes nothing but who compiled. The helpers' output is planted here as a hostile helper would leave
it; on the CPU the interpreter compiles nothing, so the GPU test (tests/test_gpu.py) runs the real thing."""
from __future__ import annotations

import json
import os
import random
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from evaluators import EvaluatorSettings
from evaluators.compile_ahead import HARVEST_BYTES, CompileAhead, harvest, kernel_names
from evaluators.evaluate import Evaluator
from evaluators.gradients import GradientJudge
from evaluators.judge import Judge, sandbox_reply
from evaluators.sandboxes import SandboxLost, Timeouts
from evaluators.verdict import CandidateFailure
from kernels import get_spec

ENTRY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST"  # Triton names entries in base32


def _entry(root: Path, kernel: str, entry: str = ENTRY, files: dict[str, bytes] | None = None,
           listed: dict[str, str] | None = None) -> Path:
    """A cache entry as Triton leaves it: the kernel's files and a group file listing their paths."""
    folder = root / entry
    folder.mkdir(parents=True)
    files = files if files is not None else {f"{kernel}.json": b"{}", f"{kernel}.cubin": b"\x7fELF kernel"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    listed = listed if listed is not None else {name: str(folder / name) for name in files}
    (folder / f"__grp__{kernel}.json").write_text(json.dumps({"child_paths": listed}))
    return folder


def _harvest(source: Path, destination: Path, names=("_kernel",), budget=HARVEST_BYTES) -> int:
    return harvest(source, destination, frozenset(names), set(), [budget])


def test_kernel_names_are_the_candidates_jit_functions_less_the_reserved():
    source = '''
import triton
from triton import jit

@triton.jit
def _fwd(X): pass

@jit
def _bwd(X): pass

@triton.autotune(configs=[], key=[])
@triton.jit(do_not_specialize=["n"])
def _tuned(X, n): pass

@triton.jit
def triton_poi_fused(X): pass

@triton.jit
def _copy_words_kernel(X): pass

def layer_norm(x): pass
'''
    assert kernel_names(source) == {"_fwd", "_bwd", "_tuned"}


def test_a_complete_entry_of_the_candidates_kernel_is_copied_with_its_paths_rewritten(tmp_path):
    source, destination = tmp_path / "helper", tmp_path / "checker"
    _entry(source, "_kernel")
    assert _harvest(source, destination) == 1
    group = json.loads((destination / ENTRY / "__grp___kernel.json").read_text())["child_paths"]
    assert group == {name: str(destination / ENTRY / name) for name in ("_kernel.json", "_kernel.cubin")}
    assert (destination / ENTRY / "_kernel.cubin").read_bytes() == b"\x7fELF kernel"
    assert not [p for p in destination.iterdir() if p.name.startswith(".")], "no partial entry left behind"


@pytest.mark.parametrize("kernel", ["triton_poi_fused_add_0", "_copy_words_kernel", "_not_the_candidates"])
def test_entries_of_kernels_not_the_candidates_are_never_copied(tmp_path, kernel):
    # torch.compile's kernels and the judge's copy kernel are compiled by the checking sandbox itself: an entry
    # planted under their names would replace the baseline or the ceiling the candidate is measured against
    source = tmp_path / "helper"
    _entry(source, kernel)
    defined = "" if kernel.startswith("_not") else f"@triton.jit\ndef {kernel}(X): pass\n"
    names = kernel_names(f"import triton\n{defined}@triton.jit\ndef _kernel(X): pass\n")
    assert names == {"_kernel"}
    assert _harvest(source, tmp_path / "checker", names=names) == 0
    assert not (tmp_path / "checker" / ENTRY).exists()


def test_a_symlinked_file_or_entry_is_never_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"the judge's file")
    source = tmp_path / "helper"
    folder = _entry(source, "_kernel")
    (folder / "_kernel.cubin").unlink()
    (folder / "_kernel.cubin").symlink_to(secret)
    assert _harvest(source, tmp_path / "checker") == 0
    other = tmp_path / "elsewhere"
    _entry(other, "_kernel", entry="OTHER")
    (source / "LINKED").symlink_to(other / "OTHER")
    assert _harvest(source, tmp_path / "checker") == 0
    assert not (tmp_path / "checker").exists() or not any((tmp_path / "checker").iterdir())


@pytest.mark.parametrize("listed", [
    {"_kernel.json": "/elsewhere/_kernel.json", "../../escape.cubin": "/x/../../escape.cubin"},  # a path out
    {"_kernel.json": "X/_kernel.json", "other.cubin": "X/other.cubin"},       # a file not of the kernel
    {"_kernel.json": "X/_kernel.json", "_kernel.cubin": "X/renamed.cubin"},   # a name and path that differ
    {"_kernel.cubin": "X/_kernel.cubin"},                                      # no metadata: not an entry
    {"_kernel.json": "X/_kernel.json", "_kernel.missing": "X/_kernel.missing"},  # a file that is not there
])
def test_a_group_file_listing_anything_but_the_kernels_own_files_is_refused(tmp_path, listed):
    source = tmp_path / "helper"
    files = {"_kernel.json": b"{}", "_kernel.cubin": b"x", "other.cubin": b"x", "renamed.cubin": b"x"}
    _entry(source, "_kernel", files=files, listed=listed)
    assert _harvest(source, tmp_path / "checker") == 0


def test_an_entry_the_checking_sandbox_has_is_never_overwritten(tmp_path):
    source, destination = tmp_path / "helper", tmp_path / "checker"
    _entry(source, "_kernel", files={"_kernel.json": b"{}", "_kernel.cubin": b"the helper's"})
    _entry(destination, "_kernel", files={"_kernel.json": b"{}", "_kernel.cubin": b"its own"})
    assert _harvest(source, destination) == 0
    assert (destination / ENTRY / "_kernel.cubin").read_bytes() == b"its own"


def test_the_byte_budget_bounds_what_is_copied(tmp_path):
    source = tmp_path / "helper"
    _entry(source, "_kernel", files={"_kernel.json": b"{}", "_kernel.cubin": b"x" * 1000})
    assert _harvest(source, tmp_path / "checker", budget=500) == 0


def test_an_unfinished_entry_is_taken_once_its_group_file_is_written(tmp_path):
    source, destination = tmp_path / "helper", tmp_path / "checker"
    folder = source / ENTRY
    folder.mkdir(parents=True)
    (folder / "_kernel.json").write_bytes(b"{}")
    seen: set[str] = set()
    names, budget = frozenset({"_kernel"}), [HARVEST_BYTES]
    assert harvest(source, destination, names, seen, budget) == 0
    (folder / "__grp___kernel.json").write_text(json.dumps({"child_paths": {"_kernel.json": str(folder / "_kernel.json")}}))
    assert harvest(source, destination, names, seen, budget) == 1
    assert harvest(source, destination, names, seen, budget) == 0, "each entry is copied once"


class FakeHelper:
    """A helper sandbox: answers compile requests (after `delay` s each), leaving one cache entry per case."""

    def __init__(self, root: Path, log: list, delay: float = 0.0, fail_after: int | None = None):
        self.folder = str(root)
        self.log, self.delay, self.fail_after = log, delay, fail_after
        self.killed = threading.Event()
        self.closed = False

    def request(self, message: dict, timeout: float) -> dict:
        if self.fail_after is not None and len([m for m in self.log if m[0] is self]) >= self.fail_after:
            raise SandboxLost("crash", "the sandbox was killed by SIGSEGV during the compile phase")
        self.log.append((self, message["shape"], message["dtype"], message["backward"]))
        if self.killed.wait(self.delay):
            raise SandboxLost("crash", "the sandbox was killed during the compile phase")
        entry = f"E{len(self.log)}{os.getpid()}{id(self) % 1000}"
        _entry(Path(self.folder) / "triton", "_kernel", entry=entry)
        return {"kind": "compiled"}

    def kill(self) -> str:
        self.killed.set()
        return "was killed"

    def close(self) -> None:
        self.closed = True


def _cases(n: int) -> list[tuple]:
    return [(f"s{i}", "bfloat16", None, False) for i in range(n)]


def test_helpers_take_the_checks_order_from_its_end_and_copy_as_they_go(tmp_path):
    log, helpers = [], []

    def spawn():
        helpers.append(FakeHelper(tmp_path / f"h{len(helpers)}", log))
        return helpers[-1]
    ahead = CompileAhead(spawn, _cases(6), 2, tmp_path / "checker", frozenset({"_kernel"}), _null_turn, 60, 1)
    ahead.start()
    for thread in ahead._threads:
        thread.join(30)
    stats = ahead.stop()
    assert stats == {"sandboxes": 2, "cases": 6, "kernels": 6, "preempted": 0, "waited_s": 0.0}
    assert sorted(m[1] for m in log) == [f"s{i}" for i in range(6)], "every case once"
    assert log[0][1] in ("s5", "s4"), "the helpers start from the end"
    for helper in helpers:  # each takes the next case from the end, however the two interleave
        own = [int(m[1][1:]) for m in log if m[0] is helper]
        assert own == sorted(own, reverse=True), own
    assert all(h.closed for h in helpers)
    assert len(list((tmp_path / "checker").iterdir())) == 6


def test_stop_kills_a_helper_mid_compile_and_a_lost_helper_is_only_less_compiled(tmp_path):
    log, helpers = [], []

    def spawn():
        slow = not helpers
        helpers.append(FakeHelper(tmp_path / f"h{len(helpers)}", log, delay=600 if slow else 0, fail_after=1))
        return helpers[-1]
    ahead = CompileAhead(spawn, _cases(4), 2, tmp_path / "checker", frozenset({"_kernel"}), _null_turn, 60, 1)
    ahead.start()
    deadline = time.monotonic() + 30
    # until the slow helper is in its first case and the other has finished its first and been lost
    while (len(log) < 2 or sum(t.is_alive() for t in ahead._threads) > 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    stats = ahead.stop()
    assert time.monotonic() - started < 10, "stop does not wait for a compile in flight"
    # the slow helper was killed mid-case, the other was lost after its first: one case finished, one copied
    assert stats == {"sandboxes": 2, "cases": 1, "kernels": 1, "preempted": 0, "waited_s": 0.0}
    assert all(h.closed for h in helpers)


def _until_compiling(log: list) -> None:
    deadline = time.monotonic() + 30
    while not log and time.monotonic() < deadline:
        time.sleep(0.01)


def test_no_helper_starts_a_case_the_checking_sandbox_has_reached(tmp_path):
    log = []
    ahead = CompileAhead(lambda: FakeHelper(tmp_path / "h", log, delay=1.0), _cases(6), 1, tmp_path / "checker",
                         frozenset({"_kernel"}), _null_turn, 60, 1)
    ahead.start()
    ahead.reached(3)  # while the helper compiles s5: s4 is left to it, s3 and everything before are the checker's
    for thread in ahead._threads:
        thread.join(30)
    stats = ahead.stop()
    assert [m[1] for m in log] == ["s5", "s4"], "the helper stops where the checking sandbox is"
    assert stats["cases"] == 2 and stats["waited_s"] == 0.0


def test_the_checking_sandbox_waits_for_the_case_a_helper_is_compiling_and_finds_its_kernel(tmp_path):
    log = []
    ahead = CompileAhead(lambda: FakeHelper(tmp_path / "h", log, delay=1.0), _cases(3), 1, tmp_path / "checker",
                         frozenset({"_kernel"}), _null_turn, 60, 1)
    ahead.start()
    _until_compiling(log)  # the helper is compiling s2
    ahead.reached(2)
    assert len(list((tmp_path / "checker").iterdir())) == 1, "the helper's kernel is there when the wait ends"
    stats = ahead.stop()
    assert [m[1] for m in log] == ["s2"], "nothing compiled twice, nothing started behind the checking sandbox"
    assert stats["cases"] == 1 and stats["kernels"] == 1 and stats["waited_s"] > 0.2


def test_the_checking_sandbox_waits_for_no_helper_lost_mid_case(tmp_path):
    log = []
    ahead = CompileAhead(lambda: FakeHelper(tmp_path / "h", log, delay=600), _cases(3), 1, tmp_path / "checker",
                         frozenset({"_kernel"}), _null_turn, 60, 1)
    ahead.start()
    _until_compiling(log)
    killer = threading.Timer(0.5, lambda: ahead._live[0].kill())  # the helper's sandbox dies mid-compile
    killer.start()
    started = time.monotonic()
    ahead.reached(2)
    assert time.monotonic() - started < 10, "a lost helper's case is the checking sandbox's at once"
    assert ahead.stop()["cases"] == 0


def test_the_checks_say_which_comes_next_before_taking_the_gpus_turn():
    events = []

    @contextmanager
    def turn():
        events.append("turn")
        yield

    spec = get_spec("layer_norm")
    judge = Judge(spec, None, "cpu", random.Random(3), Timeouts(), turn=turn)
    judge.check_shape = lambda shape, dtype, variant, refill: {"shape": shape.name}
    plan = judge.plan(("float32",))
    judge.run_checks(("float32",), [], plan, reached=lambda i: events.append(i))
    assert events == [x for i in range(len(plan)) for x in (i, "turn")]
    events.clear()
    gradients = GradientJudge(judge)
    gradients.check_shape = lambda shape, dtype, variant, repeat, refill: {"shape": shape.name}
    gradients.run(("float32",), [], plan, reached=lambda i: events.append(i))
    assert events == [x for i in range(len(plan)) for x in (i, "turn")]


def test_a_candidate_without_a_kernel_to_copy_starts_no_helper(tmp_path):
    started = []
    ahead = CompileAhead(lambda: started.append(1), _cases(3), 2, tmp_path, frozenset(), _null_turn, 60, 1).start()
    assert ahead.stop() == {"sandboxes": 0, "cases": 0, "kernels": 0, "preempted": 0, "waited_s": 0.0} and not started


def _null_turn(preempt=None):
    from contextlib import nullcontext

    return nullcontext()


@pytest.fixture(scope="module")
def evaluator():
    settings = EvaluatorSettings(device="cpu", backward=False)
    with Evaluator(settings) as ev:
        yield ev


def test_the_sandbox_compiles_only_a_loaded_candidate(evaluator):
    spec = get_spec("bias_gelu")
    sandbox = evaluator._sandbox()
    try:
        request = {"kind": "compile", "shape": spec.interpreter_shapes[0].name, "dtype": "float32",
                   "variant": None, "backward": True, "seed": 5}
        with pytest.raises(CandidateFailure, match="protocol"):
            sandbox_reply(sandbox.request(dict(request), 60), "compiled")
        sandbox_reply(sandbox.request({"kind": "load", "op": "bias_gelu",
                                       "source": spec.template.render(spec.template.seed)}, 120), "loaded")
        assert sandbox_reply(sandbox.request(dict(request), 300), "compiled")["kind"] == "compiled"
    finally:
        sandbox.close()


def test_the_interpreter_runs_no_helper(evaluator):
    spec = get_spec("bias_gelu")
    source = spec.template.render(spec.template.seed)
    path = Path(evaluator._fork_server().base) / "seed.py"
    path.write_text(source)
    verdict = evaluator.evaluate("bias_gelu", path, dtypes=("float32",))
    assert verdict.accepted, verdict.reason()
    assert verdict.compiled_ahead is None and verdict.to_dict()["compiled_ahead"] is None


def test_a_gpu_checks_float32_at_one_timed_shape_it_draws_and_every_other_shape():
    # the plan the helpers follow: every shape in the 16-bit dtypes, float32 at every untimed shape and at one
    # of the timed ones, which differs between candidates
    import random

    from evaluators.judge import Judge
    from evaluators.sandboxes import Timeouts

    spec = get_spec("cross_entropy")
    timed = {s.name for s in spec.timed_shapes()}
    drawn = set()
    for seed in range(40):
        plan = Judge(spec, None, "cuda", random.Random(seed), Timeouts()).plan(("bfloat16", "float16", "float32"))
        pairs = {(shape.name, dtype) for dtype, shape, _, _ in plan}
        assert all((s.name, d) in pairs for s in spec.shapes for d in ("bfloat16", "float16"))
        assert all((s.name, "float32") in pairs for s in spec.shapes if s.name not in timed)
        (chosen,) = {name for name, dtype in pairs if dtype == "float32" and name in timed}
        drawn.add(chosen)
    assert drawn == timed
    # the interpreter's plan is not thinned this way: float32 alone meets every shape
    cpu = Judge(spec, None, "cpu", random.Random(0), Timeouts()).plan(("float32",))
    assert {s.name for _, s, _, _ in cpu} == {s.name for s in spec.interpreter_shapes}


def _turn_is_taken(turns, took: threading.Event, release: threading.Event, seen: list) -> threading.Thread:
    def time_it():
        with turns.exclusive():
            seen.append(time.monotonic())
            took.set()
            release.wait(60)
    thread = threading.Thread(target=time_it, daemon=True)
    thread.start()
    return thread


def test_a_timed_turn_kills_a_helper_in_flight_instead_of_waiting_for_it(evaluator, tmp_path):
    # a helper compiling for 30-50 s held the card's shared turn on an H200 while every other worker waited
    # behind a timed turn; and a helper's GPU work must never overlap a measurement. A candidate whose helper
    # never finishes stands for both: the timed turn kills its sandbox, and starts only once it is dead
    from evaluators import GpuTurns

    spec = get_spec("layer_norm")
    source = (Path(__file__).parent / "cheats" / "hangs.py").read_text()
    live = []

    def spawn():
        live.append(evaluator._sandbox())
        return live[-1]

    def load(sandbox):
        sandbox_reply(sandbox.request({"kind": "load", "op": "layer_norm", "source": source}, 120), "loaded")

    turns = GpuTurns()
    cases = [(spec.interpreter_shapes[0].name, "float32", None, False)]
    ahead = CompileAhead(spawn, cases, 1, tmp_path / "checker", kernel_names(source), turns.preemptible, 600, 1,
                         load=load).start()
    deadline = time.monotonic() + 60
    while not (turns._preemptible and live and live[0].ended is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the helper is inside its compile request, spinning
    took, release, seen = threading.Event(), threading.Event(), []
    timer = _turn_is_taken(turns, took, release, seen)
    try:
        assert took.wait(30), "the timed turn waited for the helper's compile"
        assert live[0].ended is not None and not Path(f"/proc/{live[0].pid}").exists(), \
            "the helper's process is gone before anything is measured"
    finally:
        release.set()
        timer.join(30)
        stats = ahead.stop()
    assert stats["preempted"] >= 1 and stats["cases"] == 0


def test_a_preempted_case_is_compiled_after_the_timed_turn_from_the_kernels_already_made(tmp_path):
    from evaluators import GpuTurns

    log, helpers = [], []
    checker = tmp_path / "checker"
    made = _entry(checker, "_kernel", entry="MADEBEFORE")  # a kernel of the case the first helper finished

    def spawn():
        helpers.append(FakeHelper(tmp_path / f"h{len(helpers)}", log, delay=600 if not helpers else 0))
        return helpers[-1]
    turns = GpuTurns()
    ahead = CompileAhead(spawn, _cases(2), 1, checker, frozenset({"_kernel"}), turns.preemptible, 600, 1).start()
    _until_compiling(log)  # the first helper is in s1
    took, release, seen = threading.Event(), threading.Event(), []
    timer = _turn_is_taken(turns, took, release, seen)
    assert took.wait(30), "the timed turn waited for the helper's compile"
    assert helpers[0].killed.is_set() and len(helpers) == 1, "no helper starts while the card is taken"
    release.set()
    timer.join(30)
    for thread in ahead._threads:
        thread.join(30)
    stats = ahead.stop()
    assert [m[1] for m in log] == ["s1", "s1", "s0"], "the preempted case is taken again, then the next"
    assert stats["preempted"] == 1 and stats["cases"] == 2 and stats["sandboxes"] == 1
    seeded = Path(helpers[1].folder) / "triton" / made.name
    assert (seeded / "_kernel.cubin").read_bytes() == (made / "_kernel.cubin").read_bytes(), \
        "the new helper starts from the kernels the checking sandbox has"
    assert all(h.closed for h in helpers)


def test_a_preempted_case_the_checking_sandbox_reached_is_its_own(tmp_path):
    from evaluators import GpuTurns

    log = []
    turns = GpuTurns()
    ahead = CompileAhead(lambda: FakeHelper(tmp_path / f"h{len(log)}", log, delay=600), _cases(2), 1,
                         tmp_path / "checker", frozenset({"_kernel"}), turns.preemptible, 600, 1).start()
    _until_compiling(log)
    took, release, seen = threading.Event(), threading.Event(), []
    timer = _turn_is_taken(turns, took, release, seen)
    assert took.wait(30)
    started = time.monotonic()
    ahead.reached(1)  # the checking sandbox reaches the case while the card is taken: no helper has it
    assert time.monotonic() - started < 10
    release.set()
    timer.join(30)
    for thread in ahead._threads:
        thread.join(30)
    assert [m[1] for m in log] == ["s1"] and ahead.stop()["cases"] == 0


def test_every_load_of_a_candidate_is_inside_the_gpus_turn(tmp_path, monkeypatch):
    # a candidate's top-level code runs at load and may launch: outside a turn that work could run beside
    # another worker's measurement
    from evaluators import GpuTurns
    from evaluators.sandboxes import Sandbox

    turns, loads = GpuTurns(), []
    request = Sandbox.request

    def recorded(self, message, timeout, expect_reply=True):
        if message.get("kind") == "load":
            loads.append(turns._sharing + len(turns._preemptible) + (turns._owner is not None))
        return request(self, message, timeout, expect_reply)
    monkeypatch.setattr(Sandbox, "request", recorded)
    spec = get_spec("bias_gelu")
    path = tmp_path / "seed.py"
    path.write_text(spec.template.render(spec.template.seed))
    with Evaluator(EvaluatorSettings(device="cpu", backward=False), turns=turns) as ev:
        assert ev.evaluate("bias_gelu", path, dtypes=("float32",)).accepted
        ev._sandbox_with("bias_gelu", path.read_text(), baselines=False).close()
    assert loads == [1, 1], loads
