"""The evaluation pool: several evaluators judging a population at once, verdicts in the order proposed,
timing alone on a shared GPU, and a run whose candidates and verdicts do not depend on the worker count."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import EVOLVE, PROJECT_ROOT, render


def test_a_timed_turn_waits_for_the_checks_and_holds_back_new_ones():
    from evaluators import GpuTurns

    turns = GpuTurns()
    checking, release_check = threading.Event(), threading.Event()
    timing, release_timing = threading.Event(), threading.Event()
    late_check = threading.Event()

    def check():
        with turns.shared():
            checking.set()
            release_check.wait(30)

    def time_it():
        with turns.exclusive():
            timing.set()
            release_timing.wait(30)

    def check_later():
        with turns.shared():
            late_check.set()

    threads = [threading.Thread(target=check), threading.Thread(target=time_it)]
    threads[0].start()
    assert checking.wait(30)
    threads[1].start()
    assert not timing.wait(0.5)  # a check is running: the timed turn waits
    threads.append(threading.Thread(target=check_later))
    threads[2].start()
    assert not late_check.wait(0.5)  # a timed turn is waiting: no new check jumps ahead of it
    release_check.set()
    assert timing.wait(30)
    assert not late_check.is_set()  # nothing else runs beside the timed turn
    release_timing.set()
    assert late_check.wait(30)
    for t in threads:
        t.join(30)


def test_the_exclusive_turn_is_reentrant_for_its_holder_only():
    # promotion's re-timing holds the exclusive turn and may warm the baseline, which asks for it again: on
    # the H200 that nesting hung a run until this held
    from evaluators import GpuTurns

    turns = GpuTurns()
    other_in = threading.Event()

    def other():
        with turns.shared():
            other_in.set()

    with turns.exclusive():
        with turns.exclusive():
            with turns.shared():
                thread = threading.Thread(target=other)
                thread.start()
                assert not other_in.wait(0.3)  # another thread still waits for the turn
    assert other_in.wait(30)
    thread.join(30)


def test_a_pool_returns_verdicts_in_the_order_of_its_jobs(tmp_path):
    from evaluators import EvaluationPool, EvaluatorSettings

    good = render(tmp_path, name="good.py")
    bad = tmp_path / "bad.py"
    bad.write_text("def layer_norm(x, weight, bias, eps):\n    return x\n")  # no kernel: static refusal
    # forward checks only: the order and the fork servers are the point here, not the gradients
    with EvaluationPool(EvaluatorSettings(device="cpu", backward=False), workers=2) as pool:
        verdicts = pool.evaluate_all([("layer_norm", good), ("layer_norm", bad), ("layer_norm", good)])
        assert pool.sandboxes_started >= 2
        servers = {w._server.process.pid for w in pool.workers if w._server is not None}
        again = pool.evaluate_all([("layer_norm", good), ("layer_norm", good)])
        # the next population finds the same fork servers alive: none died with a finished thread
        assert {w._server.process.pid for w in pool.workers if w._server is not None} >= servers
        assert all(w._server.alive() for w in pool.workers if w._server is not None)
        assert [v.status for v in again] == ["accepted", "accepted"]
    assert [v.candidate for v in verdicts] == [str(good), str(bad), str(good)]
    assert [v.status for v in verdicts] == ["accepted", "rejected", "accepted"]


def test_closing_a_pool_mid_population_judges_nothing_more():
    # Ctrl-C in a run: the pool closes while two workers judge hanging candidates and two more wait their turn
    from evaluators import EvaluationPool, EvaluatorSettings, Timeouts

    hangs = PROJECT_ROOT / "tests" / "cheats" / "hangs.py"
    settings = EvaluatorSettings(device="cpu", backward=False,
                                 timeouts=Timeouts(start=120, load=10, compile=60, check=60, time=10, task=10))
    pool = EvaluationPool(settings, workers=2)
    verdicts, ended = [], []

    def judge_population():
        try:
            pool.evaluate_all([("layer_norm", hangs)] * 4, on_verdict=lambda i, v: verdicts.append(v))
        except Exception as exc:  # the population's end: its candidates were stopped, not judged
            ended.append(exc)

    population = threading.Thread(target=judge_population, daemon=True)
    population.start()
    deadline = time.monotonic() + 120
    while pool.sandboxes_started < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pool.sandboxes_started == 2
    pool.close()
    population.join(60)
    # the candidates killed by the closing have no verdict; the two waiting never started, on a new fork server
    # or otherwise, and nothing of the pool is left running
    assert pool.sandboxes_started == 2 and verdicts == [] and len(ended) == 1
    assert all(w._server is None for w in pool.workers)


def test_pool_rejects_zero_workers():
    from evaluators import EvaluationPool, EvaluatorSettings

    with pytest.raises(ValueError, match="at least 1"):
        EvaluationPool(EvaluatorSettings(device="cpu"), workers=0)


def _run(folder: Path, workers: int, cluster: str = "", interrupt=None) -> list[dict]:
    """`evolve run` of layer_norm in populations of two; `interrupt(proc, runs)` runs beside it."""
    folder.mkdir(parents=True)
    config = folder / "config.toml"
    config.write_text('[model]\nassemble = false\n[run]\nruns_dir = "runs"\nmemory_dir = "memory"\nbudget = 4\n'
                      'device = "cpu"\ncoder = "template"\ntraining = false\npopulation = 2\n' + cluster)
    proc = subprocess.Popen([*EVOLVE, "--config", str(config), "run", "nanogpt", "--ops", "layer_norm", "--seed",
                             "5", "--workers", str(workers), "--no-memory"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    if interrupt is not None:
        interrupt(proc, folder / "runs")
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    (events,) = (folder / "runs").glob("*/events.jsonl")
    return [json.loads(line) for line in events.read_text().splitlines()]


def _candidates(events):
    return [(e["id"], e["origin"], e["params"]) for e in events if e["kind"] == "candidate"]


def _verdicts(events):
    # logged as they come: within a population, in the order the workers finished
    return sorted((e["id"], e["status"], (e["failure"] or {}).get("class")) for e in events if e["kind"] == "verdict")


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> list[dict]:
    return _run(tmp_path_factory.mktemp("pool") / "one", 1)


def _same_run(events, reference):
    assert _candidates(events) == _candidates(reference)
    assert len(_candidates(reference)) == 4
    assert _verdicts(events) == _verdicts(reference)
    assert [v[0] for v in _verdicts(events)] == ["c001", "c002", "c003", "c004"]  # each judged once, in order


def test_two_workers_judge_the_same_candidates_as_one(tmp_path, one_worker):
    _same_run(_run(tmp_path / "two", 2), one_worker)


RAY = '[cluster]\nbackend = "ray"\n'


def test_ray_actors_judge_the_same_candidates_as_one_local_worker(tmp_path, one_worker):
    pytest.importorskip("ray")
    _same_run(_run(tmp_path / "ray", 2, RAY), one_worker)


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"EvaluatorActor.evaluate" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_ray_actor_killed_mid_run_gives_its_candidate_back(tmp_path, one_worker):
    pytest.importorskip("ray")
    killed = []

    def kill_an_actor(proc, runs):
        deadline = time.monotonic() + 600
        while not killed:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no actor was ever seen judging"
            pids = _actor_pids()
            if pids:
                time.sleep(2)  # well inside its evaluation (the interpreter's checks take several seconds)
                for pid in pids[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)

    events = _run(tmp_path / "killed", 2, RAY, interrupt=kill_an_actor)
    assert killed
    (lost,) = [e for e in events if e["kind"] == "workers_lost"]
    assert lost["lost"] == 1
    _same_run(events, one_worker)


@pytest.mark.parametrize("args, config, message", [
    (["--workers=-1"], "", "workers must be 0 (as many as the machine suits) or more"),
    ([], '[cluster]\nbackend = "spark"\n', "[cluster].backend must be one of local, ray"),
])
def test_bad_pool_settings_get_one_line(tmp_path, args, config, message):
    path = tmp_path / "config.toml"
    path.write_text('[run]\nruns_dir = "runs"\nmemory_dir = "memory"\ndevice = "cpu"\n' + config)
    done = subprocess.run([*EVOLVE, "--config", str(path), "run", "nanogpt", "--ops", "layer_norm", *args],
                          capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_workers_are_spread_over_the_gpus_and_take_turns_per_gpu(monkeypatch):
    # no GPU is touched: the pool only assigns cards, and a fork server pins its sandboxes to one
    from evaluators import EvaluationPool, EvaluatorSettings
    from evaluators.evaluate import visible_gpu
    from evaluators.sandboxes import scrubbed_env

    pool = EvaluationPool(EvaluatorSettings(device="cuda"), workers=5, gpus=2)
    assert [w.gpu for w in pool.workers] == [0, 1, 0, 1, 0]
    first, second = pool.workers[0].turns, pool.workers[1].turns
    assert first is not None and second is not None and first is not second
    assert all(w.turns is (first if w.gpu == 0 else second) for w in pool.workers)
    assert pool.turns is first  # promotion's re-timing and A/B rounds take the first card's turns
    alone = EvaluationPool(EvaluatorSettings(device="cuda"), workers=2, gpus=4)
    assert [w.gpu for w in alone.workers] == [0, 1] and all(w.turns is None for w in alone.workers)
    single = EvaluationPool(EvaluatorSettings(device="cuda"), workers=3, gpus=1)
    assert all(w.gpu is None and w.turns is single.turns for w in single.workers) and single.turns is not None
    cpu = EvaluationPool(EvaluatorSettings(device="cpu"), workers=3, gpus=8)
    assert all(w.gpu is None and w.turns is None for w in cpu.workers)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert visible_gpu(1) == "6" and visible_gpu(0) == "4"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu(3) == "3"
    assert scrubbed_env("cuda", "6")["CUDA_VISIBLE_DEVICES"] == "6"


def test_checks_take_the_shared_turn_one_at_a_time_so_timing_gets_in_between(tmp_path):
    # a candidate's checks last minutes on a GPU: held as one turn, another worker's timing waited for
    # all of them. Each check takes its own turn, so an exclusive turn asked for mid-way is granted at the
    # next check's boundary while the checking worker waits
    import random

    from evaluators.judge import Judge
    from evaluators.pool import GpuTurns
    from evaluators.sandboxes import Timeouts
    from kernels import get_spec

    turns, events = GpuTurns(), []
    timed = threading.Event()

    def time_alone():
        with turns.exclusive():
            events.append("timed")
        timed.set()

    judge = Judge(get_spec("layer_norm"), None, "cpu", random.Random(0), Timeouts(), turn=turns.shared)
    plan = judge.plan(("float32", "float16"))
    assert len(plan) >= 4

    def check(shape, dtype_key, variant, refill):
        events.append("check")
        if events.count("check") == 2:
            # mid-way through the candidate's checks another worker asks to time
            threading.Thread(target=time_alone).start()
            time.sleep(0.2)
        return {"shape": shape.name, "passed": True}

    judge.check_shape = check
    judge.run_checks(("float32", "float16"), [])
    assert timed.wait(5)
    assert events.index("timed") == 2, events  # right after the check it arrived in, not after them all


def test_only_the_measurements_hold_the_gpu_alone():
    # torch.compile's tracing of the baseline took part of every candidate's exclusive turn on an H200,
    # where other workers could only wait: it is prepared, and the timed kernel re-checked, in shared turns
    from evaluators.evaluate import Evaluator, EvaluatorSettings, PhaseClock
    from evaluators.pool import GpuTurns
    from kernels import get_spec

    turns, calls = GpuTurns(), []

    def held():
        return "alone" if turns._held_here() else f"shared by {turns._sharing}"

    class RecordingJudge:
        spec = get_spec("layer_norm")
        backward_timing = {"candidate_ms": 1.0}
        phase = "check"

        def prepare_timing(self, dtypes, backward):
            calls.append(("prepare", held(), backward))

        def time(self, dtypes, ceilings, settings, final_check, backward):
            calls.append(("time", held(), final_check))
            return {"candidate_ms": 1.0}

        def recheck_after_timing(self, dtype_key):
            calls.append(("recheck", held(), self.spec.headline_shape().name))

    class RecordingGradients:
        def check_shape(self, shape, dtype_key, variant, repeat, refill):
            calls.append(("backward recheck", held(), repeat))

    evaluator = Evaluator(EvaluatorSettings(device="cuda"), turns=turns)
    backward = {"checks": []}
    clock = PhaseClock()
    timing = evaluator._time(RecordingJudge(), RecordingGradients(), backward, {}, clock, None)
    assert timing == {"candidate_ms": 1.0} and backward["timing"] == {"candidate_ms": 1.0}
    assert calls == [("prepare", "shared by 1", True), ("time", "alone", False),
                     ("recheck", "shared by 1", "gpt2-B8-T1024"), ("backward recheck", "shared by 1", True)]
    assert list(clock.stop()) == ["prepare", "time", "recheck"]
    # no stored baseline in the sandbox: torch.compile would autotune by timing, so it prepares alone
    calls.clear()
    evaluator._time(RecordingJudge(), None, None, {}, PhaseClock(), None, prepare_alone=True)
    assert calls == [("prepare", "alone", False), ("time", "alone", False),
                     ("recheck", "shared by 1", "gpt2-B8-T1024")]


@pytest.mark.parametrize("reply, loaded", [({"kind": "baselines", "artifacts": 5}, True),
                                           ({"kind": "baselines", "artifacts": 0}, False),
                                           ({"kind": "baselines", "artifacts": 0, "error": "EOFError: torn"}, False),
                                           ({"kind": "baselines", "artifacts": "5"}, False)])
def test_a_sandbox_counts_as_holding_the_baseline_only_when_it_loaded_its_caches(tmp_path, reply, loaded):
    from evaluators.evaluate import Evaluator, EvaluatorSettings

    class Answering:
        def request(self, message, timeout):
            assert message["kind"] == "baselines"
            return reply

    evaluator = Evaluator(EvaluatorSettings(device="cuda"))
    evaluator.baseline_cache = lambda op: str(tmp_path / "baselines.bin")
    assert evaluator._offer_baselines(Answering(), "layer_norm") is loaded


def test_a_sandbox_prepares_timing_only_for_a_loaded_candidate(monkeypatch):
    from evaluators import sandbox

    monkeypatch.setattr(sandbox, "STATE", {})
    reply = sandbox._handle({"kind": "prepare", "shapes": [["gpt2-B8-T1024", "bfloat16"]], "seed": 1,
                             "backward": False})
    assert reply["kind"] == "failure" and reply["class"] == "protocol" and "before the candidate" in reply["detail"]


def test_workers_zero_is_four_per_gpu_within_a_quarter_of_the_cores(monkeypatch):
    import torch

    from agents.app.runner import resolve_workers

    assert resolve_workers(0, "cpu") == 1 and resolve_workers(3, "cpu") == 3 and resolve_workers(5, "cuda") == 5
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert resolve_workers(0, "cuda") == 8
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert resolve_workers(0, "cuda") == 4
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert resolve_workers(0, "cuda") == 1
