"""runs/<run_id>/: the resolved config, events.jsonl, every candidate's source and summary.json.

Every event is appended and flushed the moment it happens and the summary is rewritten atomically after
each verdict, so a run that is killed leaves a readable folder that says how far it got.
"""
from __future__ import annotations

import json
import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

EVENT_KINDS = ("plan", "candidate", "verdict", "promotion", "lesson", "error", "llm", "reflection", "assembly",
               "resume", "workers_lost")
STATUSES = ("running", "complete", "interrupted", "failed")


class RunNotFound(LookupError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process of that number: alive, and not ours to judge
    return True


def empty_op_summary() -> dict:
    return {"candidates": 0, "accepted": 0, "failures": {}, "best": None, "promoted": False}


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_id = self.path.name
        self.events_path = self.path / "events.jsonl"
        self.summary_path = self.path / "summary.json"

    @classmethod
    def create(cls, runs_dir: Path, target: str, config_toml: str, device: dict, ops: list[str]) -> "RunFolder":
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{re.sub(r'[^A-Za-z0-9_-]', '-', target)}"
        path, n = runs_dir / base, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
                path = runs_dir / f"{base}-{n}"
        folder = cls(path)
        (path / "config.toml").write_text(config_toml)
        (path / "candidates").mkdir()
        folder.summary = {
            "run_id": folder.run_id, "target": target, "status": "running", "device": device,
            "ops": {op: empty_op_summary() for op in ops}, "started": _now(), "finished": None,
            **_owner(),
        }
        folder.write_summary()
        return folder

    def status(self) -> str:
        """The summary's status, except that a run whose process died without saying so (SIGKILL, a lost
        machine) reads as interrupted rather than running forever."""
        status = self.summary.get("status")
        if status == "running" and self.summary.get("host") == socket.gethostname() \
                and isinstance(self.summary.get("pid"), int) and not _alive(self.summary["pid"]):
            return "interrupted"
        return status

    def claim(self) -> None:
        """This process takes the run over (a resume): running again, owned by this process."""
        self.summary.update(status="running", finished=None, **_owner())
        self.summary.setdefault("resumed", []).append(_now())
        self.write_summary()

    @classmethod
    def open(cls, runs_dir: Path, run: str) -> "RunFolder":
        """An existing run by id, by path, or 'latest'."""
        runs_dir = Path(runs_dir)
        if run == "latest":
            runs = list_runs(runs_dir)
            if not runs:
                raise RunNotFound(f"no runs in {runs_dir}")
            return runs[-1]
        path = Path(run) if Path(run).is_dir() and (Path(run) / "summary.json").exists() else runs_dir / run
        if not (path / "summary.json").is_file():
            if path.is_dir() or Path(run).is_dir():
                raise RunNotFound(f"{run} is a folder without summary.json: not a run folder")
            raise RunNotFound(f"no run {run!r} in {runs_dir}")
        folder = cls(path)
        try:
            folder.summary = folder.read_summary()
        except (ValueError, OSError) as exc:
            raise RunNotFound(f"{folder.summary_path} cannot be read: {exc}") from None
        return folder

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def write_summary(self) -> None:
        _write_atomically(self.summary_path, json.dumps(self.summary, indent=2, default=str))

    def log(self, kind: str, **data: Any) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        line = json.dumps({"ts": _now(), "kind": kind, **data}, default=str)
        with self.events_path.open("a") as f:
            f.write(line + "\n")
            f.flush()

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        return out

    def candidate_path(self, op: str, candidate_id: str) -> Path:
        folder = self.path / "candidates" / op
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{candidate_id}.py"

    def write_candidate(self, op: str, candidate_id: str, source: str) -> Path:
        path = self.candidate_path(op, candidate_id)
        path.write_text(source)
        return path

    def op_summary(self, op: str) -> dict:
        return self.summary["ops"].setdefault(op, empty_op_summary())

    def finish(self, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        self.summary["status"] = status
        self.summary["finished"] = _now()
        self.write_summary()


def list_runs(runs_dir: Path) -> list[RunFolder]:
    """Runs with a summary, oldest first (ids start with their start time)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = []
    # ids start with the start time; within one second "-2" comes before "-10"
    for path in sorted((p for p in runs_dir.iterdir() if (p / "summary.json").is_file()),
                       key=lambda p: (p.name[:15], len(p.name), p.name)):
        folder = RunFolder(path)
        try:
            folder.summary = folder.read_summary()
        except (json.JSONDecodeError, OSError):
            continue
        folders.append(folder)
    return folders
