"""Attacks on the evaluator (tests/attacks.py), by class: each is rejected, classified, or survives with no
effect, with the static policy on and with it skipped (the sandbox's containment, its torch guard and
the judge's checks hold on their own). Then the attacks on the tool itself: the wire, the file that
changes after its check, a stderr flood, encodings, and a judge killed mid-evaluation.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attacks import ATTACKS, MARKER, candidate
from conftest import PROJECT_ROOT
from evaluators import Evaluator, EvaluatorSettings, FAILURE_CLASSES, Timeouts
from evaluators import evaluate as evaluate_module
from evaluators import wire
from evaluators.static import check_candidate

OP = "layer_norm"
SECRET = "evolve-test-secret-7f3a"
CHEATS = Path(__file__).resolve().parent / "cheats"


@pytest.fixture(scope="module", autouse=True)
def secret_in_environment():
    # a key in the judge's environment, as an LLM key would be: no sandbox may see it
    os.environ["EVOLVE_TEST_SECRET"] = SECRET
    Path(MARKER).unlink(missing_ok=True)
    yield
    del os.environ["EVOLVE_TEST_SECRET"]


@pytest.fixture(scope="module")
def guarded(cpu_evaluator):
    return cpu_evaluator


@pytest.fixture(scope="module")
def unguarded(cpu_unguarded):
    return cpu_unguarded


def test_attack_table_names_real_classes() -> None:
    for name, (_, static, dynamic) in ATTACKS.items():
        for cls in {static, *dynamic} - {None, "accepted"}:
            assert cls in FAILURE_CLASSES, (name, cls)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_with_the_static_policy(guarded, name: str) -> None:
    source, static, dynamic = ATTACKS[name]
    if static is None:
        # legal text: the static policy lets it through to the checks, which the next test runs
        assert check_candidate(source, "layer_norm") == []
        return
    verdict = guarded.evaluate_source(OP, source, name)
    assert verdict.failure_class == static, f"{name}: {verdict.reason()}"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_behind_the_static_policy(unguarded, name: str) -> None:
    source, _, dynamic = ATTACKS[name]
    verdict = unguarded.evaluate_source(OP, source, name)
    assert (verdict.failure_class or "accepted") in dynamic, f"{name}: {verdict.reason()}\n{verdict.stderr}"
    # whatever it tried, nothing reached outside: no file, no secret, the judge alive to say so
    assert not Path(MARKER).exists(), f"{name} wrote outside its sandbox"
    assert SECRET not in verdict.to_json()


def test_the_environment_a_sandbox_sees_is_scrubbed(unguarded) -> None:
    verdict = unguarded.evaluate_source(OP, ATTACKS["reads_environment"][0])
    assert verdict.failure["detail"].endswith("env:absent")


def test_a_refusal_caught_by_the_candidate_still_rejects_it(unguarded) -> None:
    source = candidate(before="    try:\n        typing.sys.modules['os'].system('true')\n"
                              "    except Exception:\n        pass\n")
    verdict = unguarded.evaluate_source(OP, source)
    assert verdict.failure_class == "escape", verdict.reason()


# ----------------------------------------------------------------------------- the wire

def _peer() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_a_pickle_is_never_unpickled() -> None:
    import pickle

    judge, sandbox = _peer()

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {MARKER}",))

    body = pickle.dumps(Boom())
    sandbox.sendall(len(body).to_bytes(8, "big") + body)
    with pytest.raises(wire.WireError) as err:
        wire.receive(judge, time.monotonic() + 5)
    assert err.value.kind == "protocol"
    assert not Path(MARKER).exists()


def test_a_truncated_frame_meets_its_deadline() -> None:
    judge, sandbox = _peer()
    sandbox.sendall((1000).to_bytes(8, "big") + b'{"kind": ')  # then nothing
    started = time.monotonic()
    with pytest.raises(wire.WireError) as err:
        wire.receive(judge, time.monotonic() + 1.0)
    assert err.value.kind == "timeout"
    assert time.monotonic() - started < 10


def test_a_byte_at_a_time_cannot_stretch_the_deadline() -> None:
    judge, sandbox = _peer()
    frame = (10_000).to_bytes(8, "big") + b"{" + b" " * 9_998 + b"}"

    def trickle():
        for byte in frame:
            try:
                sandbox.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.01)

    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(wire.WireError):
        wire.receive(judge, time.monotonic() + 1.0)
    assert time.monotonic() - started < 5
    judge.close()


@pytest.mark.parametrize("body,kind", [
    (None, "protocol"),                                   # a length over the cap
    (b"[" * 100_000 + b"]" * 100_000, "protocol"),        # nesting past any parser
    (b"\xff\xfe not json", "protocol"),
    (b"[1, 2, 3]", "protocol"),                           # JSON, but not an object
])
def test_malformed_frames_are_protocol_errors(body, kind) -> None:
    judge, sandbox = _peer()
    if body is None:
        sandbox.sendall((1 << 40).to_bytes(8, "big"))
    else:
        threading.Thread(target=lambda: sandbox.sendall(len(body).to_bytes(8, "big") + body), daemon=True).start()
    with pytest.raises(wire.WireError) as err:
        wire.receive(judge, time.monotonic() + 5)
    assert err.value.kind == kind


def test_untrusted_fields_are_type_checked() -> None:
    with pytest.raises(wire.WireError):
        wire.field({"launches": True}, "launches", int)  # a bool is not a count
    with pytest.raises(wire.WireError):
        wire.number({"ms": float("nan")}, "ms")
    assert wire.field({"launches": 3}, "launches", int) == 3


# ----------------------------------------------------------------------------- the tool

def test_the_file_swapped_after_its_check_is_not_what_runs(guarded, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "candidate.py"
    path.write_text((CHEATS / "honest.py").read_text())
    checked = evaluate_module.check_candidate

    def check_then_swap(source, entry):
        found = checked(source, entry)
        path.write_text((CHEATS / "zeros.py").read_text())  # the race: a new file after the check
        return found

    monkeypatch.setattr(evaluate_module, "check_candidate", check_then_swap)
    verdict = guarded.evaluate(OP, path)
    assert verdict.accepted, verdict.reason()  # what ran is the text that was checked: the honest one


def test_a_stderr_flood_is_capped(unguarded) -> None:
    source = candidate(before="    for i in range(20000):\n        print('x' * 500)\n"
                              "    raise ValueError('after the flood')\n")
    verdict = unguarded.evaluate_source(OP, source)
    assert verdict.failure_class == "exception"
    assert len(verdict.stderr) <= 4000
    assert verdict.seconds < 120


def test_encodings(guarded, tmp_path: Path) -> None:
    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbf" + (CHEATS / "honest.py").read_bytes())
    assert guarded.evaluate(OP, bom).accepted
    latin = tmp_path / "latin.py"
    latin.write_bytes((CHEATS / "honest.py").read_bytes().replace(b"An honest", b"Un honn\xeate"))
    verdict = guarded.evaluate(OP, latin)
    assert verdict.failure_class == "syntax_error" and "UTF-8" in verdict.failure["detail"]


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="load"):
        Timeouts(load=0)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_outlives_a_killed_eval(tmp_path: Path, sig) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "agents.app.cli", "eval", OP, str(CHEATS / "kernel_spins.py")],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = f"evolve-sandboxes-{proc.pid}-"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _processes_mentioning(marker):
        time.sleep(0.2)
    assert _processes_mentioning(marker), "the fork server never started"
    time.sleep(3)  # the sandbox is spinning in the kernel now
    proc.send_signal(sig)
    proc.wait(60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _processes_mentioning(marker):
        time.sleep(0.2)
    assert _processes_mentioning(marker) == [], "a fork server or sandbox outlived the killed eval"


def test_sandbox_folders_are_removed(tmp_path: Path) -> None:
    with Evaluator(EvaluatorSettings(device="cpu")) as ev:
        assert ev.evaluate(OP, CHEATS / "honest.py").accepted
        assert ev.evaluate(OP, CHEATS / "segfaults.py").failure_class == "crash"
        base = Path(ev._server.base)
        assert base.is_dir() and list(base.iterdir()) == [], "a sandbox left its folder behind"
    assert not base.exists(), "close() left the fork server's folder behind"
