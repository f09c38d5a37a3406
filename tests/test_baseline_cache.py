"""torch.compile's baseline compiled once per op in a sandbox that loads no candidate, and its caches loaded
into later sandboxes before their candidate: the later compile finds every graph cached. On the CPU
torch.compile's C++ backend stands in for the GPU's; the requests and the files are the same."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluators import EvaluatorSettings
from evaluators.evaluate import Evaluator
from evaluators.judge import sandbox_reply
from evaluators.verdict import CandidateFailure
from kernels import get_spec

OP = "bias_gelu"
SHAPE = "one-row"  # one row of 3072: compiles like the timed shapes, in seconds


@pytest.fixture(scope="module")
def evaluator():
    # forward only on the CPU (one graph to compile); the GPU test warms forward+backward
    settings = EvaluatorSettings(device="cpu", timed_dtypes=("float32",), timed_shapes={OP: (SHAPE,)}, backward=False)
    # no static policy: the poisoner below must meet the sandbox's own layers
    with Evaluator(settings, skip_static=True) as ev:
        yield ev


def _warm(sandbox, timeout=600) -> dict:
    request = {"kind": "warm", "op": OP, "shapes": [[SHAPE, "float32"]], "seed": 3, "backward": False}
    return sandbox_reply(sandbox.request(request, timeout), "warmed")


def test_a_later_sandbox_finds_the_baseline_compiled(evaluator):
    path = evaluator.baseline_cache(OP)
    assert path is not None and os.path.getsize(path) > 0
    # judge-owned: in the fork server's folder, outside every sandbox's own (the only place a sandbox writes)
    assert Path(path).parent == Path(evaluator._fork_server().base)
    assert evaluator.baseline_cache(OP) == path, "one warm sandbox per op and fork server"

    warm = evaluator._sandbox()
    try:
        loaded = sandbox_reply(warm.request({"kind": "baselines", "path": path}, 120), "baselines")
        assert loaded["artifacts"] > 0 and "error" not in loaded
        again = _warm(warm)
    finally:
        warm.close()
    # the baseline's graph from the cache: a sandbox without it misses (torch compiles it afresh)
    assert again["cache_hits"] >= 1 and again["cache_misses"] == 0


def test_no_cache_goes_into_or_comes_out_of_a_sandbox_with_a_candidate(evaluator, tmp_path):
    source = get_spec(OP).template.render(get_spec(OP).template.seed)
    sandbox = evaluator._sandbox()
    try:
        sandbox_reply(sandbox.request({"kind": "load", "op": OP, "source": source}, 120), "loaded")
        # the caches must be in place before candidate code runs, and a sandbox that ran some saves none
        with pytest.raises(CandidateFailure, match="protocol"):
            sandbox_reply(sandbox.request({"kind": "baselines", "path": str(tmp_path / "x.bin")}, 60), "baselines")
        with pytest.raises(CandidateFailure, match="protocol"):
            _warm(sandbox, 60)
    finally:
        sandbox.close()


def test_a_broken_cache_file_is_the_judges_and_compiles_cold(evaluator, tmp_path):
    broken = tmp_path / "baselines.bin"
    broken.write_bytes(b"not torch's cache artifacts")
    sandbox = evaluator._sandbox()
    try:
        reply = sandbox_reply(sandbox.request({"kind": "baselines", "path": str(broken)}, 60), "baselines")
    finally:
        sandbox.close()
    assert reply["artifacts"] == 0  # a reply, not a failure the candidate would be blamed for


# a candidate that tries to overwrite the cache file beside its sandbox's folder with its own bytes, so
# that later sandboxes would load a baseline of its making; the static policy is skipped so the sandbox's
# own layers are what stops it
POISONER = '''
import torch
import triton
import triton.language as tl

# the candidate's builtins have no open: the real one, through a module's globals
torch.__builtins__["open"]("../baselines-bias_gelu.bin", "wb").write(b"a slower baseline")


@triton.jit
def _copy(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


def bias_gelu(x, bias):
    y = torch.empty_like(x)
    _copy[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    return y
'''


def test_a_candidate_cannot_rewrite_the_cache_its_successors_load(evaluator):
    path = evaluator.baseline_cache(OP)
    before = Path(path).read_bytes()
    verdict = evaluator.evaluate_source(OP, POISONER, "poisoner")
    assert Path(path).read_bytes() == before
    # the audit hook refuses writes outside the sandbox's folder, whoever's open makes them
    assert verdict.failure_class == "escape", verdict.reason()


def test_the_workers_of_a_pool_share_one_warm_and_no_candidate_rewrites_it(tmp_path):
    """Two workers asking at once: one warm between them (the real one is the test above's; here a stand-in
    that takes its time, so the second worker asks while the first is warming), each worker's copy in its
    own fork server's folder, and a candidate told where the pool keeps the shared file cannot write it
    (the sandbox's audit hook)."""
    import threading
    import time

    from evaluators import EvaluationPool

    settings = EvaluatorSettings(device="cpu", timed_dtypes=("float32",), timed_shapes={OP: (SHAPE,)}, backward=False)
    warms = []
    both_asked = threading.Barrier(2)

    def warm_stand_in(op: str, destination: str) -> str:
        warms.append(op)
        time.sleep(0.5)
        Path(destination).write_bytes(b"caches of " + op.encode())
        return destination

    with EvaluationPool(settings, workers=2, skip_static=True) as pool:
        for worker in pool.workers:
            worker._warm_baseline = warm_stand_in

        def ask(worker):
            both_asked.wait(timeout=60)
            return worker.baseline_cache(OP)

        # on the pool's own threads, whose fork servers live as long as the pool
        paths = list(pool._threads.map(ask, pool.workers))
        assert warms == [OP] and pool.baselines[0].warmed == 1
        assert all(paths) and paths[0] != paths[1]
        for worker, path in zip(pool.workers, paths):
            assert Path(path).parent == Path(worker._fork_server().base)
            assert Path(path).read_bytes() == b"caches of " + OP.encode()
        assert pool.workers[0].baseline_cache(OP) == paths[0] and warms == [OP], "asked again: no second warm"

        shared = Path(pool.baselines[0].folder) / f"baselines-{OP}.bin"
        before = shared.read_bytes()
        attack = POISONER.replace('"../baselines-bias_gelu.bin"', repr(str(shared)))
        verdict = pool.workers[1].evaluate_source(OP, attack, "poisoner")
        assert verdict.failure_class == "escape", verdict.reason()
        assert shared.read_bytes() == before
        folder = pool.baselines[0].folder
    assert not os.path.exists(folder), "the pool's folder goes with the pool"


def test_a_later_run_loads_the_stored_caches_and_runs_no_warm(tmp_path):
    """Kept across runs: the first evaluator warms (a stand-in for the compile) and stores the file whole; a
    second evaluator, as a later run has, copies it and starts no sandbox; a candidate told where the store
    is cannot rewrite it; other timed dtypes are another key, and an empty stored file is warmed again."""
    import dataclasses

    store = tmp_path / "baselines"
    settings = EvaluatorSettings(device="cpu", timed_dtypes=("float32",), timed_shapes={OP: (SHAPE,)},
                                 backward=False, baselines_cache=store)
    warms = []

    def stand_in(op: str, destination: str) -> str:
        warms.append(op)
        Path(destination).write_bytes(f"caches of {op} #{len(warms)}".encode())
        return destination

    with Evaluator(settings, skip_static=True) as first:
        first._warm_baseline = stand_in
        made = first.baseline_cache(OP)
        stored = first.stored_baseline(OP)
    assert warms == [OP] and stored.parent == store and stored.read_bytes() == f"caches of {OP} #1".encode()
    assert [p.name for p in store.iterdir()] == [stored.name], "no partial file left beside it"

    with Evaluator(settings, skip_static=True) as later:
        later._warm_baseline = stand_in
        path = later.baseline_cache(OP)
        assert Path(path).read_bytes() == Path(stored).read_bytes() and path != made
        assert later.sandboxes_started == 0 and warms == [OP]
        before = stored.read_bytes()
        verdict = later.evaluate_source(OP, POISONER.replace('"../baselines-bias_gelu.bin"', repr(str(stored))),
                                        "poisoner")
        assert verdict.failure_class == "escape", verdict.reason()
        assert stored.read_bytes() == before

    other = dataclasses.replace(settings, timed_dtypes=("float16",))
    with Evaluator(other, skip_static=True) as fp16:
        fp16._warm_baseline = stand_in
        assert fp16.stored_baseline(OP) != stored
        fp16.baseline_cache(OP)
    assert warms == [OP, OP]

    stored.write_bytes(b"")  # an empty file is no cache: warmed again, and stored again
    with Evaluator(settings, skip_static=True) as again:
        again._warm_baseline = stand_in
        again.baseline_cache(OP)
    assert warms == [OP, OP, OP] and stored.read_bytes() == f"caches of {OP} #3".encode()
