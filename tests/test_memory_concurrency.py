"""Several processes writing one memory root at once: promotions into one slot, evidence and archive
appends. Afterwards (and after writers killed with SIGKILL at random moments) every kernel.py/meta.toml
pair matches its recorded hash, the history holds every earlier winner once in lock order, and the logs
hold whole lines only."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from memory import CandidateArchive, KernelStore, MemoryStoreError, Rulebook

OP, GPU, RULE = "layer_norm", "interpreter", "rowwise.pow2-masking"

# Each writer promotes, records evidence and archives a candidate, `count` times (0: until killed). The
# kernel text varies in size so that writes take long enough for kills to land inside them.
WRITER = """
import random, sys
from pathlib import Path
from memory import CandidateArchive, Evidence, KernelStore, Rulebook
root, writer, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store, book, archive = KernelStore(root), Rulebook.load(root), CandidateArchive(root)
n = 0
while count == 0 or n < count:
    body = "# " + "x" * random.randrange(1, 1 << 17) + "\\n"
    store.promote("layer_norm", "interpreter", f"# writer {writer} promotion {n}\\n{body}", {"n": n},
                  {"writer": writer, "n": n})
    book.record_evidence("rowwise.pow2-masking", Evidence(run=f"{writer}-{n}", gpu="interpreter",
                                                          verdict="confirmed", effect="e" * (n % 500)))
    archive.record("layer_norm", f"{writer}-{n}", {"status": "accepted", "pad": "p" * random.randrange(4096)})
    n += 1
"""


def start_writer(root: Path, writer: str, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), writer, str(count)], cwd=PROJECT_ROOT,
                            stderr=subprocess.PIPE, text=True)


def slot_entries(root: Path) -> list[Path]:
    """The current winner's folder and every history folder of the slot."""
    slot = root / "promoted" / OP / GPU
    history = slot / "history"
    return [slot, *(sorted(p for p in history.iterdir()) if history.is_dir() else [])]


def check_pairs(root: Path) -> list[dict]:
    """Every kernel.py matches the sha256 its meta.toml records (read straight from disk); the metas."""
    metas = []
    for folder in slot_entries(root):
        meta = tomllib.loads((folder / "meta.toml").read_text(encoding="utf-8"))
        digest = hashlib.sha256((folder / "kernel.py").read_bytes()).hexdigest()
        assert meta["sha256"] == digest, f"{folder}: kernel.py does not belong to meta.toml"
        metas.append(meta)
    return metas


def check_store(root: Path) -> list[tuple[str, int]]:
    """The store reads cleanly and its order is one chain; the (writer, n) of each promotion, in order."""
    store = KernelStore(root)
    best, history = store.best(OP, GPU), store.history(OP, GPU)
    if best is None:
        assert history == []
        return []
    chain = [*history, best]
    assert [k.seq for k in chain] == list(range(1, len(chain) + 1))
    assert [k.promoted_at for k in chain] == sorted(k.promoted_at for k in chain)
    for kernel in chain:
        assert kernel.source().startswith(f"# writer {kernel.lineage['writer']} promotion {kernel.lineage['n']}\n")
        assert hashlib.sha256(kernel.source().encode()).hexdigest() == kernel.sha256
    check_pairs(root)
    Rulebook.load(root)
    CandidateArchive(root).entries(OP)
    return [(k.lineage["writer"], k.lineage["n"]) for k in chain]


def test_concurrent_promotions_and_appends_keep_every_entry_in_lock_order(memory_root: Path) -> None:
    writers, count = 4, 25
    procs = [start_writer(memory_root, f"w{i}", count) for i in range(writers)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    order = check_store(memory_root)
    assert len(order) == writers * count
    assert len(KernelStore(memory_root).history(OP, GPU)) == writers * count - 1
    assert sorted(order) == sorted((f"w{i}", n) for i in range(writers) for n in range(count))
    for i in range(writers):  # each writer's own promotions keep its program order in the lock order
        assert [n for w, n in order if w == f"w{i}"] == list(range(count))
    slot = memory_root / "promoted" / OP / GPU
    assert sorted(p.name for p in slot.iterdir() if p.name.startswith(".")) == [".lock"]

    lines = (memory_root / "evidence.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == writers * count and all(json.loads(line)["rule"] == RULE for line in lines)
    evidence = Rulebook.load(memory_root).get(RULE).evidence
    assert sorted(e.run for e in evidence) == sorted(f"w{i}-{n}" for i in range(writers) for n in range(count))
    archived = (memory_root / "archive" / f"{OP}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(archived) == writers * count and all(json.loads(line)["op"] == OP for line in archived)


def test_writers_killed_at_random_moments_leave_a_clean_store(memory_root: Path) -> None:
    rng = random.Random(1234)
    seen: list[tuple[str, int]] = []
    for round_number in range(8):
        procs = [start_writer(memory_root, f"r{round_number}w{i}", 0) for i in range(3)]
        deadline = time.monotonic() + 0.4  # let the interpreters start and the writers get going
        for proc in procs:
            time.sleep(max(0.0, deadline - time.monotonic()) + rng.uniform(0.0, 0.6))
            assert proc.poll() is None, proc.communicate()[1]
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL
        order = check_store(memory_root)
        assert order[: len(seen)] == seen  # nothing committed earlier was lost or reordered
        seen = order
    assert len(seen) > 8
    # a writer after the kills finds the slot as the last committed promotion left it, and goes on
    final = start_writer(memory_root, "last", 2)
    assert final.wait(timeout=120) == 0
    order = check_store(memory_root)
    assert order == [*seen, ("last", 0), ("last", 1)]
    slot = memory_root / "promoted" / OP / GPU
    assert sorted(p.name for p in slot.iterdir() if p.name.startswith(".")) == [".lock"]
    # killed appends may leave a torn line, never a record glued to another: every whole line parses
    for log in (memory_root / "evidence.jsonl", memory_root / "archive" / f"{OP}.jsonl"):
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        parsed = [line for line in lines if _parses(line)]
        assert len(parsed) >= len(lines) - 8 * 3 and _parses(lines[-1])


def _parses(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def test_a_kernel_that_does_not_match_its_meta_is_damage(tmp_path: Path) -> None:
    store = KernelStore(tmp_path)
    store.promote(OP, GPU, "# first\n", {}, {})
    store.promote(OP, GPU, "# second\n", {}, {})
    kernel = store.slot(OP, GPU) / "kernel.py"
    kernel.write_text("# tampered\n", encoding="utf-8")
    with pytest.raises(MemoryStoreError, match="damaged.*sha256"):
        store.best(OP, GPU)
    with pytest.raises(MemoryStoreError, match="damaged"):
        store.promote(OP, GPU, "# third\n", {}, {})
    kernel.write_text("# second\n", encoding="utf-8")
    assert store.best(OP, GPU).source() == "# second\n"
    (store.slot(OP, GPU) / "history").iterdir().__next__().joinpath("kernel.py").write_text("# x\n")
    with pytest.raises(MemoryStoreError, match="damaged"):
        store.history(OP, GPU)


def test_a_pending_journal_is_rolled_forward_by_the_next_reader(tmp_path: Path, monkeypatch) -> None:
    """A writer killed after its commit point: the next reader (under the lock) finishes its promotion."""
    import memory._journal as journal

    store = KernelStore(tmp_path)
    store.promote(OP, GPU, "# first\n", {}, {"n": 1})
    slot = store.slot(OP, GPU)

    def killed(folder: Path) -> None:
        raise KeyboardInterrupt  # stands in for a kill between the commit and applying it

    monkeypatch.setattr(journal, "apply_pending", killed)
    with pytest.raises(KeyboardInterrupt):
        store.promote(OP, GPU, "# second\n", {}, {"n": 2})
    monkeypatch.undo()
    assert (slot / journal.PENDING).is_dir() and store.best(OP, GPU).source() == "# second\n"
    assert not (slot / journal.PENDING).exists() and store.best(OP, GPU).seq == 2
    assert [k.source() for k in store.history(OP, GPU)] == ["# first\n"]


def test_concurrent_learned_rules_with_one_id_write_one_file_each(memory_root: Path) -> None:
    """Writers race to learn the same ids; for each id exactly one writes its file, the others are refused."""
    ids = 300
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom memory import MemoryStoreError, Rule, Rulebook\n"
        "book = Rulebook.load(Path(sys.argv[1]))\n"
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
        f"for i in range({ids}):\n"
        "    rule = Rule(id=f'race.{i}', kind='rule', statement=sys.argv[2], op='*', learned_on='x',"
        " confidence=0.2, origin='test')\n"
        "    try:\n        book.add_learned(rule)\n        print(i)\n    except MemoryStoreError:\n        pass\n"
    )
    start = time.time() + 3.0  # every writer loaded and waiting before the race begins
    procs = [subprocess.Popen([sys.executable, "-c", script, str(memory_root), f"writer {w}", str(start)],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True) for w in range(4)]
    wrote: dict[int, list[str]] = {}
    for w, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for line in out.split():
            wrote.setdefault(int(line), []).append(f"writer {w}")
    assert sorted(wrote) == list(range(ids)) and all(len(writers) == 1 for writers in wrote.values())
    book = Rulebook.load(memory_root)
    assert all(book.get(f"race.{i}").statement == wrote[i][0] for i in range(ids))
    assert not [p for p in os.listdir(memory_root / "learned") if p.endswith(".tmp")]


def test_two_runs_at_once_on_one_memory_leave_it_valid_and_agree_on_the_order(config_file, tmp_path) -> None:
    """Two `evolve run` processes on one memory folder at the same time: both complete, both promote into
    the same slot, and the store says which came first (one is the winner, the other its history entry)."""
    import json
    import subprocess

    from conftest import EVOLVE, PROJECT_ROOT
    from memory import INTERPRETER_GPU, KernelStore, Rulebook

    command = [*EVOLVE, "--config", str(config_file), "run", "nanogpt", "--ops", "layer_norm", "--budget", "1",
               "--device", "cpu"]
    procs = [subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if (p / "summary.json").is_file())
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert len(summaries) == 2 and all(s["status"] == "complete" for s in summaries)
    assert all(s["ops"]["layer_norm"]["promoted"] for s in summaries)
    store = KernelStore(tmp_path / "memory")
    winner = store.best("layer_norm", INTERPRETER_GPU)
    earlier = store.history("layer_norm", INTERPRETER_GPU)
    assert [k.seq for k in earlier] == [1] and winner.seq == 2
    assert {winner.lineage["run"], earlier[0].lineage["run"]} == {s["run_id"] for s in summaries}
    Rulebook.load(tmp_path / "memory")  # every evidence line the two runs appended still parses
