"""The evaluation pool on Ray: one actor per worker, each a whole Evaluator (judge and sandboxes) on whatever
node Ray places it, with one GPU of its own on a GPU cluster.

Candidates travel as source text and verdicts come back as the JSON of a local verdict, so the judge/sandbox
split holds inside every actor and a verdict does not depend on where it was judged. An actor lost mid-way
(its process or node gone) gives its candidate back to the queue and a new actor takes its place; a
candidate that loses actors again and again is the judge's failure, not the candidate's verdict.
"""
from __future__ import annotations

import os
import tempfile
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .evaluate import Evaluator, EvaluatorSettings, read_source
from .judge import JudgeError
from .promotion import ABDecision
from .verdict import Verdict

LOSSES_PER_CANDIDATE = 3  # actors a single candidate may lose before the run stops with the judge's error


class EvaluatorActor:
    """The body of each Ray actor: an Evaluator, asked through source text."""

    def __init__(self, settings: EvaluatorSettings):
        self.evaluator = Evaluator(settings)
        self.folder = tempfile.mkdtemp(prefix="evolve-actor-")

    def pid(self) -> int:
        return os.getpid()

    def device_info(self) -> dict:
        return self.evaluator.device_info

    def ceilings(self) -> dict | None:
        return self.evaluator.ceilings()

    def evaluate(self, op: str, source: str, name: str) -> dict:
        return self.evaluator.evaluate_source(op, source, name).to_dict()

    def _file(self, role: str, source: str) -> Path:
        path = Path(self.folder) / f"{role}.py"
        path.write_text(source)
        return path

    def retime(self, op: str, source: str, name: str) -> dict:
        verdict = self.evaluator.retime(op, self._file("retimed", source))
        verdict.candidate = name
        return verdict.to_dict()

    def ab(self, op: str, challenger: str, incumbent: str, backward: bool) -> dict:
        return asdict(self.evaluator.ab(op, self._file("challenger", challenger), self._file("incumbent", incumbent),
                                        backward))

    def close(self) -> None:
        self.evaluator.close()


class RayPool:
    """The same interface as pool.EvaluationPool, on `workers` Ray actors of the cluster at `address` (""
    starts a Ray instance for this process alone)."""

    def __init__(self, settings: EvaluatorSettings, workers: int = 1, address: str = ""):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        try:
            import ray
        except ImportError:
            raise RuntimeError("[cluster].backend = \"ray\" needs Ray: pip install ray") from None
        self.ray = ray
        self.settings = settings
        self.started_ray = False
        if not ray.is_initialized():
            # a run of our own: room for every worker even on a machine with fewer cores
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level="warning",
                     **({} if address else {"num_cpus": max(workers, os.cpu_count() or 1)}))
            self.started_ray = True
        resources = {"num_gpus": 1} if settings.device == "cuda" else {"num_cpus": 1}
        # max_concurrency=1: an actor judges one candidate at a time, as a local worker does
        self._actor_class = ray.remote(**resources, max_concurrency=1)(EvaluatorActor)
        self.actors = [self._new_actor() for _ in range(workers)]
        self.lost = 0  # actors lost and replaced during the pool's life
        self._device: dict | None = None

    def _new_actor(self):
        return self._actor_class.remote(self.settings)

    def _call(self, method: str, *args):
        """One request to the first actor, replaced (and asked again) if it is lost."""
        for _ in range(LOSSES_PER_CANDIDATE):
            try:
                return self.ray.get(getattr(self.actors[0], method).remote(*args))
            except self.ray.exceptions.RayActorError:
                self.lost += 1
                self.actors[0] = self._new_actor()
        raise JudgeError(f"Ray lost {LOSSES_PER_CANDIDATE} actors in a row answering {method}")

    # ------------------------------------------------------------ the pool's interface

    def spec(self, op: str):
        return Evaluator(self.settings).spec(op)

    @property
    def device_info(self) -> dict:
        if self._device is None:
            self._device = self._call("device_info")
        return self._device

    def ceilings(self) -> dict | None:
        return self._call("ceilings")

    def evaluate(self, op: str, path: Path, on_message: Callable[[tuple], None] | None = None,
                 dtypes: tuple[str, ...] | None = None) -> Verdict:
        if dtypes is not None:
            raise ValueError("the Ray pool judges every dtype of the spec")
        return self.evaluate_all([(op, path)], on_message)[0]

    def retime(self, op: str, path: Path) -> Verdict:
        return Verdict.from_dict(self._call("retime", op, read_source(Path(path)), str(path)))

    def ab(self, op: str, challenger: Path, incumbent: Path, backward: bool = False) -> ABDecision:
        return ABDecision(**self._call("ab", op, read_source(Path(challenger)), read_source(Path(incumbent)),
                                       backward))

    def evaluate_all(self, jobs: list[tuple[str, Path]], on_message: Callable[[tuple], None] | None = None,
                     on_verdict: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """The verdict of every (op, path), in the jobs' order, whichever actor finished first; each verdict
        also goes to `on_verdict(job index, verdict)` as it comes."""
        ray = self.ray
        sources = [(op, read_source(Path(path)), str(path)) for op, path in jobs]
        verdicts: list[Verdict | None] = [None] * len(jobs)
        losses = [0] * len(jobs)
        queue = deque(range(len(jobs)))
        idle = list(range(len(self.actors)))
        running: dict = {}  # object ref -> (job index, actor slot)
        while queue or running:
            while queue and idle:
                index, slot = queue.popleft(), idle.pop(0)
                if on_message is not None:
                    on_message(("phase", "judged by a Ray actor", index))
                running[self.actors[slot].evaluate.remote(*sources[index])] = (index, slot)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                index, slot = running.pop(ref)
                try:
                    verdicts[index] = Verdict.from_dict(ray.get(ref))
                    if on_verdict is not None:
                        on_verdict(index, verdicts[index])
                except ray.exceptions.RayActorError:
                    # the actor (its process or its node) is gone: the candidate goes back to the queue,
                    # first in line, and a fresh actor takes the slot
                    self.lost += 1
                    losses[index] += 1
                    if losses[index] >= LOSSES_PER_CANDIDATE:
                        raise JudgeError(f"{sources[index][2]}: {LOSSES_PER_CANDIDATE} Ray actors were lost "
                                         f"judging it") from None
                    self.actors[slot] = self._new_actor()
                    queue.appendleft(index)
                idle.append(slot)
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        ray = self.ray
        try:
            ray.get([actor.close.remote() for actor in self.actors], timeout=60)
        except Exception:
            pass  # an actor already gone has nothing left to close
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        if self.started_ray:
            ray.shutdown()

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
