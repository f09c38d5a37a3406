"""The LLM agents' parts in this process: answer parsing, the ledger and its budget, the client against
the scripted loopback server (errors, retries, records), the planner's schema, the reflector's lessons,
the mixed schedule and the [llm] config."""
from __future__ import annotations

import dataclasses
import json
import random
import socket
import tomllib
from pathlib import Path

import pytest

from agents.config import Config, ConfigError, LLMConfig, load_config
from agents.search.graph import RunContext
from agents.llm.client import (BudgetSpent, ChatModel, LLMCallFailed, LLMUnavailable, Ledger, Recorder, preflight,
                        read_exchanges, resolve_endpoint)
from agents.llm.coder import extract_code
from agents.llm.planner import Unusable, parse_json_object, validate
from agents.search.planner import Planner
from agents.llm.reflector import lesson_rules
from evaluators import FAILURE_CLASSES
from kernels import TARGETS, get_spec
from memory import INTERPRETER_GPU, KernelStore, Rulebook

from test_llm_server import ScriptedServer, answer, error

SPEC = get_spec("layer_norm")
CONTEXT = SPEC.context(SPEC.headline_shape(), 132)


# ============================================================================ answers

def test_extract_one_block():
    source, failure = extract_code("Sure.\n```python\nimport triton\nX = 1\n```\nDone.")
    assert failure is None and source == "import triton\nX = 1\n"
    assert extract_code("```py\nA = 2\n```")[0] == "A = 2\n"
    assert extract_code("```\nB = 3\n```")[0] == "B = 3\n"


def test_extract_no_code():
    source, failure = extract_code("I can't help with kernels, but LayerNorm normalises rows.")
    assert source is None and failure[0] == "no_code"
    assert extract_code("```bash\npip install triton\n```")[1][0] == "no_code"


def test_extract_several_files():
    source, failure = extract_code("```python\nA = 1\n```\nand\n```python\nB = 2\n```")
    assert source is None and failure[0] == "several_files" and "2 code blocks" in failure[1]
    # a shell line beside the file is not a second file
    assert extract_code("```python\nA = 1\n```\nrun:\n```bash\nevolve eval\n```")[0] == "A = 1\n"


def test_extract_a_bare_file():
    text = "import triton\n@triton.jit\ndef k():\n    pass\n"
    assert extract_code(text) == (text, None)


def test_failure_classes_are_known_to_the_verdicts():
    assert FAILURE_CLASSES["no_code"][0] == "rejected"
    assert FAILURE_CLASSES["several_files"][0] == "rejected"
    assert FAILURE_CLASSES["llm_error"][0] == "failed"


# ============================================================================ ledger

def test_ledger_costs_and_budget():
    ledger = Ledger(LLMConfig(price_in_per_1k=2.0, price_out_per_1k=4.0, run_token_budget=1500))
    ledger.check()
    assert ledger.record("layer_norm", 1000, 250, failed=False) == pytest.approx(3.0)
    ledger.check()  # 1250 < 1500
    ledger.record(None, 200, 100, failed=False)
    with pytest.raises(BudgetSpent, match="token budget"):
        ledger.check()
    summary = ledger.summary()
    assert summary["tokens"] == 1550 and summary["cost"] == pytest.approx(3.0 + 0.4 + 0.4)
    assert ledger.ops["layer_norm"].calls == 1 and ledger.ops["-"].prompt_tokens == 200


def test_ledger_money_budget():
    ledger = Ledger(LLMConfig(price_in_per_1k=10.0, run_cost_budget=1.0))
    ledger.record("x", 50, 0, failed=False)
    ledger.check()
    ledger.record("x", 60, 0, failed=True)
    with pytest.raises(BudgetSpent, match="money budget"):
        ledger.check()
    assert ledger.run.failed_calls == 1


# ============================================================================ endpoint

def test_endpoint_key_rules(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMUnavailable, match="OPENAI_API_KEY"):
        resolve_endpoint(LLMConfig())
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    endpoint = resolve_endpoint(LLMConfig())
    assert endpoint.base_url == "https://api.openai.com/v1" and endpoint.api_key == "k"
    assert "k" not in repr(endpoint).replace("key_source", "")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    assert resolve_endpoint(LLMConfig()).base_url == "http://localhost:11434/v1"
    # config.toml's base_url wins over the SDK's variable; a local server needs no key
    monkeypatch.delenv("OPENAI_API_KEY")
    local = resolve_endpoint(LLMConfig(base_url="http://localhost:8000/v1"))
    assert local.base_url == "http://localhost:8000/v1" and local.key_source == "none"
    # api_key_env = "" never sends the variable's key
    monkeypatch.setenv("OPENAI_API_KEY", "secret")
    assert resolve_endpoint(LLMConfig(base_url="http://h/v1", api_key_env="")).api_key != "secret"


def test_preflight_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LLMUnavailable, match="cannot reach"):
        preflight(LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", timeout_s=2.0))


def test_preflight_ok_and_refused(monkeypatch):
    monkeypatch.setenv("EVOLVE_TEST_KEY", "good")
    with ScriptedServer([], api_key="good") as server:
        assert preflight(LLMConfig(base_url=server.base_url, api_key_env="EVOLVE_TEST_KEY")).api_key == "good"
        monkeypatch.setenv("EVOLVE_TEST_KEY", "bad")
        with pytest.raises(LLMUnavailable, match="refused the key from \\$EVOLVE_TEST_KEY"):
            preflight(LLMConfig(base_url=server.base_url, api_key_env="EVOLVE_TEST_KEY"))


# ============================================================================ the client

def model_for(server: ScriptedServer, tmp_path: Path, **llm) -> tuple[ChatModel, list[dict]]:
    calls: list[dict] = []
    config = LLMConfig(base_url=server.base_url, api_key_env="", timeout_s=1.0, **llm)
    return ChatModel(config, Recorder(tmp_path / "llm"), resolve_endpoint(config), on_call=calls.append), calls


MESSAGES = [{"role": "user", "content": "hello"}]


def test_client_retries_5xx_and_records(tmp_path):
    with ScriptedServer([error(503), error(429), answer("fine", 11, 4)]) as server:
        model, calls = model_for(server, tmp_path, retries=2)
        reply = model.chat("coder", "layer_norm", MESSAGES)
        assert len(server.chats) == 3
    assert reply.content == "fine" and (reply.prompt_tokens, reply.completion_tokens) == (11, 4)
    assert calls[0]["outcome"] == "ok" and calls[0]["exchange"] == "llm/0001-coder.json"
    record = json.loads((tmp_path / "llm" / "0001-coder.json").read_text())
    assert record["request"]["messages"] == MESSAGES and record["response"]["content"] == "fine"
    assert record["response"]["usage"] == {"prompt_tokens": 11, "completion_tokens": 4}


def test_client_error_after_retries_is_counted(tmp_path):
    with ScriptedServer([error(500), error(500)], default=answer("late")) as server:
        model, calls = model_for(server, tmp_path, retries=1, give_up_after=2)
        with pytest.raises(LLMCallFailed) as info:
            model.chat("coder", "layer_norm", MESSAGES)
        assert info.value.kind == "http_500" and len(server.chats) == 2
        assert model.available
        with pytest.raises(LLMCallFailed):   # 500 from the default step: exhausted script, still failing
            server.default = None
            model.chat("coder", "layer_norm", MESSAGES)
        assert not model.available and "2 requests in a row" in model.why_unavailable()
        with pytest.raises(BudgetSpent):
            model.chat("coder", "layer_norm", MESSAGES)
        assert len(server.chats) == 4, "a model given up on is not asked"
    assert [c["outcome"] for c in calls] == ["error", "error"]
    assert model.ledger.run.failed_calls == 2
    assert "error" in json.loads((tmp_path / "llm" / "0001-coder.json").read_text())


def test_client_timeout(tmp_path):
    with ScriptedServer([answer("slow", delay_s=3.0)]) as server:
        model, calls = model_for(server, tmp_path, retries=0)
        with pytest.raises(LLMCallFailed) as info:
            model.chat("coder", "layer_norm", MESSAGES)
    assert info.value.kind == "timeout"
    assert calls[0]["outcome"] == "error"


def test_client_budget_checked_before_the_request(tmp_path):
    with ScriptedServer([answer("a", 80, 30), answer("b")]) as server:
        model, calls = model_for(server, tmp_path, run_token_budget=100)
        model.chat("coder", "layer_norm", MESSAGES)
        with pytest.raises(BudgetSpent):
            model.chat("coder", "layer_norm", MESSAGES)
        assert len(server.chats) == 1
    assert calls[-1]["outcome"] == "budget_spent"


def test_replay_answers_in_order_without_a_server(tmp_path):
    with ScriptedServer([answer("first", 5, 5), error(500)]) as server:
        model, _ = model_for(server, tmp_path / "a", retries=0)
        model.chat("planner", None, MESSAGES)
        with pytest.raises(LLMCallFailed):
            model.chat("coder", "layer_norm", MESSAGES)
    recorded = read_exchanges(tmp_path / "a")
    replay = ChatModel(LLMConfig(), Recorder(tmp_path / "b" / "llm"), None, replay=recorded)
    assert replay.chat("planner", None, MESSAGES).content == "first"
    with pytest.raises(LLMCallFailed, match="500"):
        replay.chat("coder", "layer_norm", MESSAGES)
    with pytest.raises(BudgetSpent, match="no more answers"):
        replay.chat("coder", "layer_norm", MESSAGES)
    assert replay.ledger.run.prompt_tokens == 5
    mismatched = ChatModel(LLMConfig(), Recorder(tmp_path / "c" / "llm"), None, replay=recorded)
    with pytest.raises(LLMCallFailed, match="planner answer where this run asks for coder"):
        mismatched.chat("coder", "layer_norm", MESSAGES)


# ============================================================================ planner schema

@pytest.fixture
def planner(memory_root) -> Planner:
    return Planner(Rulebook.load(memory_root), KernelStore(memory_root), INTERPRETER_GPU, 132, 4, True)


def test_planner_answer_parsed_from_prose_or_fence():
    assert parse_json_object('Plan:\n```json\n{"op": "layer_norm"}\n```') == {"op": "layer_norm"}
    assert parse_json_object('I pick {"op": "x", "rules": []} today') == {"op": "x", "rules": []}
    for bad in ("layer_norm first", "{op: layer_norm}", "[1, 2]"):
        with pytest.raises(Unusable):
            parse_json_object(bad)


def test_planner_valid_answer(planner):
    op, plan, strategy = validate({"op": "layer_norm", "strategy": " chunked ", "rules": ["rowwise.persistent-grid"],
                                   "suggestions": {"SINGLE_TILE": False, "CHUNK_N": 512}},
                                  ["layer_norm"], None, planner)
    assert op == "layer_norm" and strategy == "chunked"
    assert [r.id for r in plan.rules] == ["rowwise.persistent-grid"] and plan.tests == ("rowwise.persistent-grid",)
    assert plan.suggestions == {"PERSISTENT": True, "SINGLE_TILE": False, "CHUNK_N": 512}


@pytest.mark.parametrize("answer,needle", [
    ({"op": "attention", "strategy": "", "rules": []}, "not one of the ops"),
    ({"op": "layer_norm", "rules": []}, "lacks strategy"),
    ({"op": "layer_norm", "strategy": "", "rules": [], "budget": 99}, "unknown keys"),
    ({"op": "layer_norm", "strategy": "", "rules": "rowwise.pow2-masking"}, "array"),
    ({"op": "layer_norm", "strategy": "", "rules": ["attention.tile-64x64"]}, "do not apply"),
    ({"op": "layer_norm", "strategy": "", "rules": [], "suggestions": {"BLOCK_M": 64}}, "no knob"),
    ({"op": "layer_norm", "strategy": "", "rules": [], "suggestions": {"NUM_WARPS": 3}}, "outside"),
    ({"op": "layer_norm", "strategy": "", "rules": [], "suggestions": {"SINGLE_TILE": 1}}, "outside"),
])
def test_planner_unusable_answers(planner, answer, needle):
    with pytest.raises(Unusable, match=needle):
        validate(answer, ["layer_norm"], None, planner)


# ============================================================================ reflector

def test_reflector_lessons_become_low_confidence_hypotheses():
    data = {"lessons": [
        {"name": "Warps: 2 at width 768!", "statement": "c003 beat c001", "when": {"width": 768},
         "suggests": {"NUM_WARPS": 2}},
        {"name": "x", "statement": "s", "when": {"head_dim": 64}},
        {"name": "y", "statement": "s", "suggests": {"NUM_WARPS": 3}},
        {"name": "", "statement": "s"},
        "not an object",
    ]}
    rules, rejected = lesson_rules(data, SPEC, CONTEXT, "NVIDIA H100", "run-1", 0.2,
                                   {"learned.layer_norm.warps-2-at-width-768"})
    assert len(rules) == 1 and len(rejected) == 2   # three at most are read
    rule = rules[0]
    assert rule.id == "learned.layer_norm.warps-2-at-width-768-2"   # an id already taken is not reused
    assert rule.confidence == 0.2 and rule.evidence == () and rule.learned_on == "NVIDIA H100"
    assert rule.op == "layer_norm" and rule.origin == "reflector, run run-1"
    assert rule.applies_to("layer_norm", CONTEXT) and not rule.applies_to("layer_norm", {**CONTEXT, "width": 384})
    assert any("head_dim" in r for r in rejected) and any("NUM_WARPS=3" in r for r in rejected)
    with pytest.raises(Unusable):
        lesson_rules({"rules": []}, SPEC, CONTEXT, "g", "r", 0.2, set())


def test_learned_lesson_is_written_and_planned_with(memory_root):
    rules, _ = lesson_rules({"lessons": [{"name": "warps", "statement": "two warps won", "when": {"row_wise": True},
                                          "suggests": {"NUM_WARPS": 2}}]}, SPEC, CONTEXT, INTERPRETER_GPU, "r1", 0.2,
                            set())
    book = Rulebook.load(memory_root)
    path = book.add_learned(rules[0])
    assert path.parent == memory_root / "learned"
    plan = Planner(Rulebook.load(memory_root), None, INTERPRETER_GPU, 132, 8, True).plan(SPEC)
    assert "learned.layer_norm.warps" in plan.tests, "a later run puts the hypothesis to the test"
    assert plan.suggestions["NUM_WARPS"] == 2


# ============================================================================ mixed schedule and config

def _ctx(coder: str, share: float) -> RunContext:
    config = dataclasses.replace(Config(), llm=LLMConfig(mixed_share=share))
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, coder=coder))
    ctx = RunContext(config=config, folder=None, evaluator=None, planner=None, gpu="g", rulebook=None, store=None,
                     archive=None, rng=random.Random(0))
    ctx.model = object()
    return ctx


@pytest.mark.parametrize("share,budget,expected", [
    (0.5, 4, [False, True, False, True]),
    (0.25, 8, [False, False, False, True, False, False, False, True]),
    (1.0, 3, [True, True, True]),
    (0.0, 3, [False, False, False]),
])
def test_mixed_shares_the_budget(share, budget, expected):
    ctx = _ctx("mixed", share)
    assert [ctx.llm_slot(i) for i in range(budget)] == expected
    assert all(_ctx("llm", share).llm_slot(i) for i in range(budget))


def test_llm_config_table(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "config.toml"
    path.write_text('[run]\ncoder = "mixed"\n[llm]\nbase_url = "http://localhost:11434/v1"\nmodel = "qwen2.5-coder"\n'
                    'api_key_env = ""\nrun_token_budget = 5000\nmixed_share = 0.25\n')
    config = load_config(path)
    assert config.llm.model == "qwen2.5-coder" and config.llm.run_token_budget == 5000
    data = tomllib.loads(config.to_toml())
    assert data["llm"]["base_url"] == "http://localhost:11434/v1"
    assert "llm" not in tomllib.loads(config.with_run(coder="template").to_toml())


@pytest.mark.parametrize("text,needle", [
    ('[llm]\nmodell = "x"\n', "modell"),
    ('[llm]\non_unavailable = "retry"\n', "on_unavailable"),
    ("[llm]\nmixed_share = 1.5\n", "mixed_share"),
    ("[llm]\nretries = -1\n", "retries"),
    ('[llm]\ntimeout_s = "soon"\n', "timeout_s"),
    ("[llm]\nrun_cost_budget = -2\n", "budgets"),
])
def test_bad_llm_config_names_the_key(tmp_path, text, needle):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_llm_coder_needs_an_endpoint_unless_it_may_fall_back(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "config.toml"
    path.write_text("[run]\nbudget = 2\n")
    config = load_config(path)
    with pytest.raises(ConfigError, match="coder 'llm' needs an LLM endpoint"):
        config.with_run(coder="llm")
    assert config.with_run(check_llm=False, coder="llm").run.coder == "llm"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert config.with_run(coder="llm").run.coder == "llm"
    monkeypatch.delenv("OPENAI_BASE_URL")
    lenient = dataclasses.replace(config, llm=LLMConfig(on_unavailable="template"))
    assert lenient.with_run(coder="mixed").run.coder == "mixed"


# ============================================================================ the planner and coder with a model

def _summary(ops: list[str]) -> dict:
    return {"ops": {op: {"candidates": 0, "accepted": 0, "failures": {}, "best": None, "promoted": False}
                    for op in ops}}


def test_llm_planner_picks_the_op_and_strategy(tmp_path, planner):
    from agents.llm.planner import LLMPlanner

    other = next(op for op in ("add_layer_norm", "bias_gelu", "embedding") if op in TARGETS["nanogpt"])
    queue = ["layer_norm", other]
    plan_answer = json.dumps({"op": other, "strategy": "fuse first", "rules": []})
    with ScriptedServer([answer("```json\n" + plan_answer + "\n```"), answer("layer_norm, I think")]) as server:
        model, _ = model_for(server, tmp_path)
        llm_planner = LLMPlanner(model, planner, planner.rulebook, {"name": "cpu", "sm_count": 4})
        choice = llm_planner.choose(queue, _summary(queue))
        assert (choice.op, choice.planner, choice.strategy, choice.fallback) == (other, "llm", "fuse first", None)
        assert choice.plan.op == other and choice.plan.rules == ()
        prompt_text = server.chats[0]["body"]["messages"][1]["content"]
        assert "layer_norm" in prompt_text and other in prompt_text and "rowwise.pow2-masking" in prompt_text
        fallback = llm_planner.choose(queue, _summary(queue))
    assert (fallback.op, fallback.planner) == ("layer_norm", "rules") and "JSON" in fallback.fallback
    assert fallback.plan == planner.plan(SPEC)


def test_llm_coder_prompt_carries_strategy_and_incumbent(tmp_path, memory_root):
    from agents.llm.coder import LLMCoder

    rules = Rulebook.load(memory_root).query("layer_norm", CONTEXT)
    coder = LLMCoder(SPEC, None, "cpu", rules, "try two rows per program", ("# the incumbent\n", {"speedup_eager": 1.5,
                                                                                                    "speedup_compile": 0.9,
                                                                                                    "roofline_fraction": 0.6}),
                     repairs=1)
    system, task = (m["content"] for m in coder.task_messages([]))
    assert "try two rows per program" in task
    assert "# the incumbent" in task and "1.50x eager" in task and "60% of the roofline" in task
    assert "(nothing yet)" in task and "imports only `torch`" in system


def test_llm_coder_is_told_whether_the_run_wants_a_backward(memory_root):
    from agents.llm.coder import LLMCoder

    rules = Rulebook.load(memory_root).query("layer_norm", CONTEXT)
    training = LLMCoder(SPEC, None, "cpu", rules, "", None, repairs=1, training=True).task_messages([])[1]["content"]
    inference = LLMCoder(SPEC, None, "cpu", rules, "", None, repairs=1, training=False).task_messages([])[1]["content"]
    assert "torch.autograd.Function" in training and "cannot win" in training
    assert "forward only" in inference and "torch.autograd.Function" not in inference
