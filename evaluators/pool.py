"""Several evaluators judging candidates at once, behind the one interface the search uses.

Each worker is an Evaluator of its own (its own fork server, fresh sandboxes per candidate); the judge side of
each runs in a thread of this process, the candidates in their sandboxes. On a GPU the workers share the card
in turns: any number may check at once, but a timed phase runs alone, so that no measurement is disturbed by
another candidate's work (`GpuTurns`). A shared turn covers one check, so a worker waiting to time gets the
card at the next check's end. The workers of a card compile each op's torch.compile baseline once between
them (`SharedBaselines`), since each compile is an exclusive turn. On a host with several GPUs the workers are spread over the cards,
each pinned to its own (its sandboxes see that card alone), and turns are taken per card. Verdicts come back
in the order the jobs were given, whichever worker finished first, so what a search does with them does not
depend on the schedule.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from .baselines import SharedBaselines
from .evaluate import Evaluator, EvaluatorSettings
from .verdict import Verdict


class GpuTurns:
    """A readers-writer lock over one GPU: `shared()` for work that may overlap (correctness checks),
    `exclusive()` for timing. A waiting exclusive turn holds back new shared ones, so timing is not starved.
    The thread that holds the exclusive turn may ask for either again inside it (promotion's re-timing holds
    it and may have to warm the baseline, which asks for it too): it has the GPU already.

    `preemptible(preempt)` is a shared turn for work that can be thrown away (a compile-ahead helper, whose
    cases last up to a minute): an exclusive turn does not wait for it to end but calls `preempt`, which kills
    the helper's sandbox, and with its process any GPU work it had queued, and waits only until the turn is
    given back, which a killed helper does at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharing = 0
        self._owner: int | None = None  # the thread holding the exclusive turn
        self._waiting = 0
        self._preemptible: dict[object, Callable[[], None]] = {}  # each holder's way to end its turn

    def _held_here(self) -> bool:
        with self._cond:
            return self._owner == threading.get_ident()

    @contextmanager
    def shared(self) -> Iterator[None]:
        if self._held_here():
            yield
            return
        with self._cond:
            self._cond.wait_for(lambda: self._owner is None and not self._waiting)
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @contextmanager
    def preemptible(self, preempt: Callable[[], None]) -> Iterator[None]:
        if self._held_here():
            yield
            return
        holder = object()
        with self._cond:
            self._cond.wait_for(lambda: self._owner is None and not self._waiting)
            self._preemptible[holder] = preempt
        try:
            yield
        finally:
            with self._cond:
                del self._preemptible[holder]
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if self._held_here():
            yield
            return
        with self._cond:
            self._waiting += 1  # from here no turn of any kind starts
            holders = list(self._preemptible.values())
        for preempt in holders:  # outside the lock: a kill waits for the process to end
            preempt()
        with self._cond:
            self._cond.wait_for(lambda: self._owner is None and not self._sharing and not self._preemptible)
            self._waiting -= 1
            self._owner = threading.get_ident()
        try:
            yield
        finally:
            with self._cond:
                self._owner = None
                self._cond.notify_all()


class EvaluationPool:
    """`workers` evaluators; `evaluate_all` judges a population of candidates on all of them. Promotion's
    re-timing and A/B rounds (`retime`, `ab`) and the device's description go through the first worker."""

    def __init__(self, settings: EvaluatorSettings, workers: int = 1, skip_static: bool = False,
                 gpus: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.settings = settings
        # on a host with several GPUs, worker i judges on GPU i mod their number; the workers of one GPU take
        # turns on it, and the GPUs are independent of each other
        if settings.device == "cuda" and gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        gpus = max(1, min(gpus or 1, workers)) if settings.device == "cuda" else 1
        per_gpu = [sum(1 for i in range(workers) if i % gpus == g) for g in range(gpus)]
        turns = [GpuTurns() if settings.device == "cuda" and n > 1 else None for n in per_gpu]
        self.turns = turns[0]  # the first GPU's, where promotion's re-timing and A/B rounds run
        # the workers of one GPU compile each op's torch.compile baseline once between them
        self.baselines = [SharedBaselines() for _ in range(gpus)]
        self.workers = [Evaluator(settings, skip_static=skip_static, turns=turns[i % gpus],
                                  gpu=i % gpus if gpus > 1 else None, baselines=self.baselines[i % gpus])
                        for i in range(workers)]
        self._messages = threading.Lock()
        self.lost = 0  # workers lost mid-evaluation: a local worker is a thread of this process, never lost alone
        self._closing = False  # set before the workers' sandboxes are stopped: verdicts after it are not real
        # threads that live as long as the pool: a fork server dies with the thread that started it (its
        # parent-death signal follows the thread), so short-lived threads would restart one every step
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evaluator") \
            if workers > 1 else None

    # the first worker speaks for the pool where one evaluator is asked
    def spec(self, op: str):
        return self.workers[0].spec(op)

    @property
    def device_info(self) -> dict:
        return self.workers[0].device_info

    def ceilings(self) -> dict | None:
        return self.workers[0].ceilings()

    def evaluate(self, op: str, path: Path, on_message: Callable[[tuple], None] | None = None,
                 dtypes: tuple[str, ...] | None = None) -> Verdict:
        return self.workers[0].evaluate(op, path, on_message, dtypes)

    def retime(self, op: str, path: Path) -> Verdict:
        with self._alone():
            return self.workers[0].retime(op, path)

    def ab(self, op: str, challenger: Path, incumbent: Path, backward: bool = False):
        with self._alone():
            return self.workers[0].ab(op, challenger, incumbent, backward)

    def _alone(self):
        return self.turns.exclusive() if self.turns is not None else nullcontext()

    @property
    def sandboxes_started(self) -> int:
        return sum(w.sandboxes_started for w in self.workers)

    def evaluate_all(self, jobs: list[tuple[str, Path]], on_message: Callable[[tuple], None] | None = None,
                     on_verdict: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """The verdict of every (op, path), in the jobs' order. Progress messages from the workers, and each
        verdict as it comes (`on_verdict(job index, verdict)`), are passed on one at a time."""
        free = list(self.workers)
        lock = threading.Lock()

        def judge(index: int) -> Verdict:
            with lock:
                worker = free.pop()
            try:
                op, path = jobs[index]
                verdict = worker.evaluate(op, Path(path), self._tagged(on_message, index))
            finally:
                with lock:
                    free.append(worker)
            with self._messages:
                # a candidate whose sandbox the pool's own closing (Ctrl-C, SIGTERM) killed has no verdict
                if on_verdict is not None and not self._closing:
                    on_verdict(index, verdict)
            return verdict

        if len(jobs) == 1 or self._threads is None:
            return [judge(i) for i in range(len(jobs))]
        return list(self._threads.map(judge, range(len(jobs))))

    def _tagged(self, on_message: Callable[[tuple], None] | None, index: int):
        if on_message is None:
            return None

        def tagged(message: tuple) -> None:
            with self._messages:
                on_message((*message, index))
        return tagged

    def close(self) -> None:
        with self._messages:
            self._closing = True
        for worker in self.workers:
            worker.stop()
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)  # a candidate not yet started never starts
        for shared in self.baselines:
            shared.close()

    def __enter__(self) -> "EvaluationPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
