"""Unit tests of agents/: config, planner, template coder, lessons, run folder and report tables.
No worker processes: everything here runs in this process on synthetic histories."""
from __future__ import annotations

import dataclasses
import json
import random
import tomllib
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from agents.search.coder import Proposal, TemplateCoder, counterfactual, follows
from agents.search.state import best_of
from agents.config import Config, ConfigError, load_config
from agents.search.lessons import judge_rule
from agents.search.planner import OpPlan, Planner
from agents.app.report import print_run, run_table, runs_table
from agents.run_folder import EVENT_KINDS, RunFolder, RunNotFound, list_runs
from kernels import TemplateSpace, get_spec
from memory import INTERPRETER_GPU, KernelStore, Rule, Rulebook

from conftest import PROJECT_ROOT

SPEC = get_spec("layer_norm")
SPACE = SPEC.template
POW2 = "rowwise.pow2-masking"
PERSISTENT = "rowwise.persistent-grid"


def key(params: dict) -> tuple:
    return tuple(sorted(SPACE.normalize(params).items()))


def point(**knobs) -> dict:
    return SPACE.normalize(SPACE.validate(knobs))


def entry(cid: str, params: dict, speed: float | None, status: str = "accepted") -> dict:
    return {"id": cid, "status": status, "params": params, "speedup_eager": speed}


def make_rule(rule_id: str, suggests: dict, confidence: float = 0.5, when: dict | None = None,
              op: str = "*") -> Rule:
    return Rule(id=rule_id, kind="rule", statement="a test rule", op=op, when=when or {}, learned_on="test",
                suggests=suggests, confidence=confidence, origin="tests")


# ============================================================================ config

def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_project_config_loads():
    config = load_config(PROJECT_ROOT / "config.toml")
    assert isinstance(config, Config)
    assert config.source == (PROJECT_ROOT / "config.toml").resolve()
    assert config.run.budget >= 1
    assert config.run.device in ("auto", "cuda", "cpu")
    assert config.run.coder == "template"
    assert config.run.runs_dir == PROJECT_ROOT / "runs"
    assert config.run.memory_dir == PROJECT_ROOT / "memory"
    assert 0.0 <= config.coder.explore <= 1.0


def test_conftest_config_loads(config_file, tmp_path, memory_root):
    config = load_config(config_file)
    assert config.run.budget == 3
    assert config.run.runs_dir == tmp_path / "runs"
    assert config.run.memory_dir == memory_root
    assert config.evaluator.ceilings_cache == tmp_path / "runs" / "ceilings.json"
    assert config.evaluator.baselines_cache == tmp_path / "runs" / "baselines"  # the default, beside the runs


@pytest.mark.parametrize("text,needle", [
    ("[nosuch]\nx = 1\n", "nosuch"),
    ("[run]\nbudgett = 3\n", "budgett"),
    ('[run]\nbudget = "x"\n', "budget"),
    ("[run]\nbudget = true\n", "budget"),
    ("[run]\nbudget = 0\n", "budget"),
    ('[run]\ndevice = "tpu"\n', "device"),
    ('[run]\ncoder = "llm"\n', "coder"),
    ("[coder]\nexplore = 1.5\n", "explore"),
    ('[coder]\ntest_rules = "yes"\n', "test_rules"),
    ("[evaluator]\ntimed_dtypes = [\"float8\"]\n", "timed_dtypes"),
    ("[run]\nruns_dir = 3\n", "runs_dir"),
    ("run = 3\n", "run"),
])
def test_bad_config_names_the_key(tmp_path, text, needle):
    path = write_config(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)


def test_config_not_toml_or_missing(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write_config(tmp_path / "bad.toml", "[run\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the config's folder: the result must not depend on the cwd
    absolute = tmp_path / "elsewhere" / "mem"
    path = write_config(tmp_path / "sub" / "config.toml",
                        f'[run]\nruns_dir = "myruns"\nmemory_dir = "{absolute}"\n'
                        '[evaluator]\nceilings_cache = "cache/c.json"\n')
    config = load_config(path)
    assert config.run.runs_dir == tmp_path / "sub" / "myruns"
    assert config.run.memory_dir == absolute
    assert config.evaluator.ceilings_cache == tmp_path / "sub" / "cache" / "c.json"


def test_defaults_of_path_settings_resolve_too(tmp_path):
    config = load_config(write_config(tmp_path / "a" / "config.toml", "[run]\nbudget = 2\n"))
    assert config.run.runs_dir == tmp_path / "a" / "runs"
    assert config.run.memory_dir == tmp_path / "a" / "memory"
    assert config.run.budget == 2
    assert config.coder.explore == Config().coder.explore


def test_ints_accepted_for_float_settings(tmp_path):
    config = load_config(write_config(tmp_path / "config.toml", "[coder]\nexplore = 1\n"))
    assert config.coder.explore == 1.0 and isinstance(config.coder.explore, float)


def test_with_run_overrides_and_validates(config_file):
    config = load_config(config_file)
    changed = config.with_run(budget=5, device="cpu", coder=None)
    assert changed.run.budget == 5 and changed.run.device == "cpu"
    assert changed.run.coder == config.run.coder
    assert changed.run.runs_dir == config.run.runs_dir
    assert config.run.budget == 3, "with_run must not change the original"
    assert config.with_run(budget=None) == config
    with pytest.raises(ConfigError, match="device"):
        config.with_run(device="tpu")
    with pytest.raises(ConfigError, match="budget"):
        config.with_run(budget=0)
    with pytest.raises(ConfigError, match="coder"):
        config.with_run(coder="llm")


def test_to_toml_round_trips(tmp_path, config_file):
    config = load_config(config_file).with_run(budget=4, device="cpu")
    text = config.to_toml()
    data = tomllib.loads(text)
    assert set(data) == {"run", "coder", "evaluator", "timing", "promotion", "model", "cluster"}
    assert data["run"]["budget"] == 4 and data["run"]["device"] == "cpu"
    assert data["run"]["runs_dir"] == str(config.run.runs_dir)
    again = load_config(write_config(tmp_path / "copy" / "config.toml", text))
    for table in ("run", "coder", "evaluator", "timing", "promotion", "model", "cluster"):
        assert getattr(again, table) == getattr(config, table), table


# ============================================================================ planner

def planner(memory_root, sm_count=132, with_rules=True, test_rules=True, gpu=INTERPRETER_GPU, budget=8):
    book = Rulebook.load(memory_root) if with_rules else None
    return Planner(book, KernelStore(memory_root), gpu, sm_count, budget, test_rules)


def test_planner_applies_rowwise_rules(memory_root):
    plan = planner(memory_root).plan(SPEC)
    ids = {r.id for r in plan.rules}
    assert ids == {POW2, PERSISTENT}
    assert not any(i.startswith("attention.") for i in ids)
    assert plan.suggestions == {"SINGLE_TILE": True, "PERSISTENT": True}
    assert set(plan.tests) == {POW2, PERSISTENT}
    assert plan.context["rows_over_2x_sms"] is True
    assert plan.budget == 8
    assert plan.incumbent is None
    event = plan.to_event()
    json.dumps(event)  # an event must be plain JSON
    assert {r["id"] for r in event["rules"]} == ids
    assert event["suggestions"] == plan.suggestions


def test_planner_without_enough_rows_skips_persistent(memory_root):
    plan = planner(memory_root, sm_count=10000).plan(SPEC)
    assert {r.id for r in plan.rules} == {POW2}
    assert plan.suggestions == {"SINGLE_TILE": True}
    assert plan.context["rows_over_2x_sms"] is False


def test_planner_without_rulebook(memory_root):
    plan = planner(memory_root, with_rules=False).plan(SPEC)
    assert plan.rules == () and plan.suggestions == {} and plan.tests == ()


def test_planner_without_rule_tests(memory_root):
    plan = planner(memory_root, test_rules=False).plan(SPEC)
    assert plan.rules and plan.tests == ()


def test_planner_skips_suggestions_outside_the_template(memory_root):
    book = Rulebook.load(memory_root)
    book.add_learned(make_rule("rowwise.rows-3", {"ROWS_PER_PROGRAM": 3}, 0.95, {"row_wise": True}))
    book.add_learned(make_rule("rowwise.chunked", {"SINGLE_TILE": False}, 0.1, {"row_wise": True}))
    plan = Planner(book, None, INTERPRETER_GPU, 132, 8, True).plan(SPEC)
    assert "rowwise.rows-3" not in {r.id for r in plan.rules}
    assert any("rowwise.rows-3" in note for note in plan.notes)
    # the most trusted rule naming a knob sets it
    assert plan.suggestions["SINGLE_TILE"] is True
    assert "ROWS_PER_PROGRAM" not in plan.suggestions


def promote_incumbent(memory_root, params, gpu=INTERPRETER_GPU, backward=True):
    store = KernelStore(memory_root)
    source = SPACE.render(params)
    return store.promote("layer_norm", gpu, source, {"speedup_eager": None, "backward": backward},
                         {"run": "r0", "candidate": "c001", "origin": "rules", "params": params})


def test_planner_finds_the_incumbent(memory_root):
    kernel = promote_incumbent(memory_root, point())
    plan = planner(memory_root).plan(SPEC)
    assert plan.incumbent is not None
    assert plan.incumbent.path == kernel.path
    assert plan.incumbent.source() == kernel.source()
    assert plan.to_event()["incumbent"] == str(kernel.path)
    # another device has no incumbent
    assert planner(memory_root, gpu="NVIDIA H100 80GB HBM3").plan(SPEC).incumbent is None


# ============================================================================ template coder

def rules_plan(memory_root, **kw) -> OpPlan:
    return planner(memory_root, **kw).plan(SPEC)


def test_first_proposal_applies_the_rules(memory_root):
    plan = rules_plan(memory_root)
    proposal = TemplateCoder(SPEC, plan, 0.25, random.Random(0)).propose([], plan.budget)
    assert isinstance(proposal, Proposal)
    assert proposal.origin == "rules"
    assert proposal.params == point(SINGLE_TILE=True, PERSISTENT=True)
    assert proposal.source == SPACE.render(proposal.params)
    assert proposal.parents == ()


def test_first_proposal_without_rules_is_the_seed(memory_root):
    plan = rules_plan(memory_root, with_rules=False)
    proposal = TemplateCoder(SPEC, plan, 0.25, random.Random(0)).propose([], plan.budget)
    assert proposal.origin == "seed"
    assert proposal.params == point()


def test_incumbent_comes_first(memory_root):
    kernel = promote_incumbent(memory_root, point())  # the seed point, not the rules' point
    plan = rules_plan(memory_root)
    coder = TemplateCoder(SPEC, plan, 0.25, random.Random(0))
    first = coder.propose([], plan.budget)
    assert first.origin == "incumbent"
    assert first.source == kernel.source()
    assert first.params == point()
    second = coder.propose([entry("c001", first.params, None)], plan.budget - 1)
    assert second.origin == "rules"
    assert second.params == point(SINGLE_TILE=True, PERSISTENT=True)


def test_forward_only_incumbent_is_rendered_with_a_backward_in_a_training_run(memory_root):
    """An incumbent promoted for its forward alone cannot be measured forward+backward as it is: a training
    run proposes its point rendered with the backward instead; an inference run, the stored file."""
    kernel = promote_incumbent(memory_root, point(), backward=False)
    training = TemplateCoder(SPEC, rules_plan(memory_root), 0.25, random.Random(0)).propose([], 8)
    assert training.origin == "incumbent-point" and training.params == point()
    assert training.source == SPACE.render(point()) and "BWD_PARAMS" in training.source
    inference = TemplateCoder(SPEC, rules_plan(memory_root), 0.25, random.Random(0), training=False).propose([], 8)
    assert inference.origin == "incumbent" and inference.source == kernel.source()


def test_inference_run_holds_the_backward_knobs_at_their_seed(memory_root):
    plan = rules_plan(memory_root, with_rules=False)
    coder = TemplateCoder(SPEC, plan, 1.0, random.Random(3), training=False)
    history = []
    for i in range(6):
        proposal = coder.propose(history, 8 - i)
        history.append(entry(f"c{i + 1:03d}", proposal.params, None))
        assert all(proposal.params[k] == SPACE.seed[k] for k in SPACE.backward_knobs)


def test_incumbent_point_is_not_proposed_again(memory_root):
    rules_point = point(SINGLE_TILE=True, PERSISTENT=True)
    promote_incumbent(memory_root, rules_point)
    plan = rules_plan(memory_root)
    coder = TemplateCoder(SPEC, plan, 0.25, random.Random(1))
    first = coder.propose([], plan.budget)
    assert first.origin == "incumbent"
    second = coder.propose([entry("c001", first.params, None)], plan.budget - 1)
    assert second is not None and second.origin != "rules"
    assert key(second.params) != key(rules_point)


@pytest.mark.parametrize("age", ["older-template", "removed-knob"])
def test_incumbent_from_another_template_version(memory_root, age):
    # promoted before the template gained a knob: the missing knob takes its seed value and the kernel can
    # be mutated; promoted with a knob since removed: it is re-measured but never used as a parent
    params = point(ROWS_PER_PROGRAM=2)
    if age == "older-template":
        del params["NUM_STAGES"]
    else:
        params["UNROLL"] = 4
    promote_incumbent(memory_root, params)
    plan = rules_plan(memory_root)
    coder = TemplateCoder(SPEC, plan, 0.0, random.Random(3))
    first = coder.propose([], plan.budget)
    assert first.origin == "incumbent"
    assert first.params == (point(ROWS_PER_PROGRAM=2) if age == "older-template" else None)
    history = [entry("c001", first.params, 2.0)]
    second = coder.propose(history, plan.budget - 1)
    history.append(entry("c002", second.params, 1.0))
    third = coder.propose(history, plan.budget - 2)
    assert third is not None and third.params is not None
    if age == "older-template":
        assert third.origin == "mutation" and third.parents == ("c001",)
    else:
        assert third.parents != ("c001",)


def test_never_proposes_a_point_twice(memory_root):
    promote_incumbent(memory_root, point(ROWS_PER_PROGRAM=2))
    plan = rules_plan(memory_root)
    coder = TemplateCoder(SPEC, plan, 0.3, random.Random(7))
    speeds = random.Random(11)
    history: list[dict] = []
    seen: list[tuple] = []
    origins = []
    budget = 60
    for i in range(budget):
        proposal = coder.propose(history, budget - i)
        assert proposal is not None
        assert proposal.params is not None
        origins.append(proposal.origin)
        seen.append(key(proposal.params))
        history.append(entry(f"c{i + 1:03d}", proposal.params, round(speeds.uniform(0.5, 2.0), 3)))
    assert len(set(seen)) == len(seen), "a normalized point was proposed twice"
    assert origins[0] == "incumbent" and origins[1] == "rules"
    assert {"mutation", "explore"} & set(origins)


def test_counterfactuals_at_the_end_of_the_budget(memory_root):
    plan = rules_plan(memory_root)
    assert list(plan.tests) == [PERSISTENT, POW2]  # both at 0.9, ties broken by id
    coder = TemplateCoder(SPEC, plan, 0.25, random.Random(0))
    first = coder.propose([], 3)
    history = [entry("c001", first.params, 1.5)]
    second = coder.propose(history, 2)
    assert second.origin == f"test:{PERSISTENT}"
    assert second.params == point(SINGLE_TILE=True, PERSISTENT=False)
    assert second.parents == ("c001",)
    history.append(entry("c002", second.params, 1.2))
    third = coder.propose(history, 1)
    assert third.origin == f"test:{POW2}"
    assert third.params == point(SINGLE_TILE=False, PERSISTENT=True)
    assert third.parents == ("c001",)
    assert third.source == SPACE.render(third.params)


def test_no_counterfactuals_while_budget_remains(memory_root):
    plan = rules_plan(memory_root)
    coder = TemplateCoder(SPEC, plan, 0.25, random.Random(0))
    first = coder.propose([], 8)
    second = coder.propose([entry("c001", first.params, 1.5)], 7)
    assert second.origin in ("mutation", "explore")


def test_counterfactual_helper(memory_root):
    book = Rulebook.load(memory_root)
    best = point(SINGLE_TILE=True, PERSISTENT=True, ROWS_PER_PROGRAM=4)
    assert counterfactual(SPACE, best, book.get(POW2)) == point(SINGLE_TILE=False, PERSISTENT=True,
                                                                ROWS_PER_PROGRAM=4)
    assert counterfactual(SPACE, best, book.get(PERSISTENT)) == point(SINGLE_TILE=True, ROWS_PER_PROGRAM=4)
    rows = make_rule("t.rows", {"ROWS_PER_PROGRAM": 4})
    assert counterfactual(SPACE, best, rows)["ROWS_PER_PROGRAM"] == SPACE.seed["ROWS_PER_PROGRAM"]
    seedish = make_rule("t.warps", {"NUM_WARPS": SPACE.seed["NUM_WARPS"]})
    assert counterfactual(SPACE, best, seedish)["NUM_WARPS"] != SPACE.seed["NUM_WARPS"]
    # knobs the template lacks are ignored
    assert counterfactual(SPACE, best, make_rule("t.other", {"BLOCK_M": 64})) == best
    # a point that does not follow the rule: its counterfactual takes the advice
    chunked = point(SINGLE_TILE=False, CHUNK_N=512)
    assert counterfactual(SPACE, chunked, book.get(POW2)) == point(SINGLE_TILE=True)
    assert counterfactual(SPACE, point(), rows) == point(ROWS_PER_PROGRAM=4)
    # the counterfactual lies on the other side of the rule
    for p in (best, chunked, point(NUM_WARPS=8)):
        for rule in (book.get(POW2), book.get(PERSISTENT), rows):
            other = counterfactual(SPACE, p, rule)
            assert other != p
            assert follows(rule, other) != follows(rule, p)
            assert SPACE.validate(other) == other


def _end_of_budget(memory_root, best_params):
    """Proposals for the last two slots after c001 (the rules' point, 1.0x) and c002 (`best_params`, 2.0x)."""
    plan = rules_plan(memory_root)
    coder = TemplateCoder(SPEC, plan, 0.25, random.Random(0))
    first = coder.propose([], 4)
    history = [entry("c001", first.params, 1.0), entry("c002", best_params, 2.0)]
    proposals = [coder.propose(history, 2)]
    history.append(entry("c003", proposals[0].params, 0.5))
    proposals.append(coder.propose(history, 1))
    return first, proposals


def test_counterfactual_test_when_the_best_breaks_the_rule(memory_root):
    chunked = point(SINGLE_TILE=False, PERSISTENT=True, CHUNK_N=128, ROWS_PER_PROGRAM=2)  # breaks pow2
    _, proposals = _end_of_budget(memory_root, chunked)
    assert [p.origin for p in proposals] == [f"test:{PERSISTENT}", f"test:{POW2}"]
    assert all(p.parents == ("c002",) for p in proposals)
    assert proposals[0].params == point(SINGLE_TILE=False, CHUNK_N=128, ROWS_PER_PROGRAM=2)
    assert proposals[1].params == point(SINGLE_TILE=True, PERSISTENT=True, ROWS_PER_PROGRAM=2)


def test_counterfactual_already_measured_is_not_repeated(memory_root):
    # the pow2 counterfactual of this best is the rules' point, c001, measured already
    first, proposals = _end_of_budget(memory_root, point(SINGLE_TILE=False, PERSISTENT=True, CHUNK_N=128))
    assert proposals[0].origin == f"test:{PERSISTENT}"
    assert proposals[1].origin != f"test:{POW2}"
    assert key(proposals[1].params) != key(first.params)


def test_mutations_name_the_best_parent(memory_root):
    plan = rules_plan(memory_root)
    coder = TemplateCoder(SPEC, plan, 0.0, random.Random(3))  # explore 0: always a mutation
    first = coder.propose([], 50)
    history = [entry("c001", first.params, 1.0)]
    second = coder.propose(history, 49)
    assert second.origin == "mutation" and second.parents == ("c001",)
    assert key(second.params) in {key(n) for n in SPACE.neighbours(first.params)}
    history.append(entry("c002", second.params, 2.0))   # the new best
    third = coder.propose(history, 48)
    assert third.origin == "mutation" and third.parents == ("c002",)
    assert key(third.params) in {key(n) for n in SPACE.neighbours(second.params)}
    history.append(entry("c003", third.params, 0.5))
    history.append(entry("c004", point(ROWS_PER_PROGRAM=8), 9.0, status="rejected"))  # never a parent
    fourth = coder.propose(history, 47)
    assert fourth.parents == ("c002",)


def tiny_spec(canonical=None):
    kw = {"canonical": canonical} if canonical else {}
    space = TemplateSpace(params={"A": (1, 2), "B": (True, False)}, seed={"A": 1, "B": True},
                          render=lambda p: f"# A={p['A']} B={p['B']}\n", **kw)
    return dataclasses.replace(SPEC, template=space)


def _exhaust(spec, budget=20):
    plan = OpPlan(spec.name, budget, {}, (), {}, ())
    coder = TemplateCoder(spec, plan, 0.5, random.Random(5))
    history, proposals = [], []
    for i in range(budget):
        proposal = coder.propose(history, budget - i)
        if proposal is None:
            break
        proposals.append(proposal)
        history.append(entry(f"c{i + 1:03d}", proposal.params, None))
    return coder, history, proposals


def test_coder_exhausts_a_tiny_space():
    spec = tiny_spec()
    coder, history, proposals = _exhaust(spec)
    assert len(proposals) == 4
    assert proposals[0].origin == "seed" and proposals[0].params == {"A": 1, "B": True}
    assert {(p.params["A"], p.params["B"]) for p in proposals} == {(1, True), (1, False), (2, True), (2, False)}
    for p in proposals:
        assert p.source == f"# A={p.params['A']} B={p.params['B']}\n"
    assert coder.propose(history, 10) is None
    assert coder.propose(history, 10) is None


def test_coder_exhausts_a_tiny_space_modulo_normalisation():
    def canonical(p):
        if p["A"] == 1:
            p["B"] = True  # B does nothing when A is 1
        return p

    _, _, proposals = _exhaust(tiny_spec(canonical))
    assert len(proposals) == 3
    assert {(p.params["A"], p.params["B"]) for p in proposals} == {(1, True), (2, True), (2, False)}


def test_best_of():
    a, b, c = point(), point(ROWS_PER_PROGRAM=2), point(ROWS_PER_PROGRAM=4)
    assert best_of([], template_only=True) is None
    assert best_of([entry("c001", a, None, "failed")], template_only=True) is None
    timed = [entry("c001", a, 1.0), entry("c002", b, 3.0), entry("c003", c, 2.0), entry("c004", a, 9.0, "rejected"),
             {"id": "c005", "status": "accepted", "params": None, "speedup_eager": 8.0}]
    assert best_of(timed, template_only=True)["id"] == "c002"
    assert best_of(timed)["id"] == "c005"  # not a template point, but the fastest
    untimed = [entry("c001", a, None), entry("c002", b, None), entry("c003", c, None, "failed")]
    assert best_of(untimed, template_only=True)["id"] == "c001"  # without timings: the first accepted


# ============================================================================ lessons

@pytest.fixture
def pow2_rule(memory_root) -> Rule:
    return Rulebook.load(memory_root).get(POW2)


ROWS4 = make_rule("test.rows-4", {"ROWS_PER_PROGRAM": 4})


@pytest.mark.parametrize("rule_name", ["pow2", "rows4"])
def test_judge_confirmed(pow2_rule, rule_name):
    rule = pow2_rule if rule_name == "pow2" else ROWS4
    following = point(SINGLE_TILE=True, ROWS_PER_PROGRAM=4)
    without = counterfactual(SPACE, following, rule)
    assert without != following
    history = [entry("c001", point(NUM_WARPS=8), 1.1), entry("c002", following, 2.0),
               entry("c003", without, 1.5)]
    verdict, effect = judge_rule(rule, SPACE, history, 0.02)
    assert verdict == "confirmed", effect
    assert "c002" in effect and "c003" in effect


def test_judge_refuted(pow2_rule):
    chunked = point(SINGLE_TILE=False, CHUNK_N=512)        # does not follow the rule: the fastest overall
    single = point(SINGLE_TILE=True)                        # the same point following it
    history = [entry("c001", single, 1.5), entry("c002", chunked, 2.0), entry("c003", point(NUM_WARPS=8), 1.0)]
    verdict, effect = judge_rule(pow2_rule, SPACE, history, 0.02)
    assert verdict == "refuted", effect
    assert "c001" in effect and "c002" in effect


def test_judge_inconclusive_within_margin(pow2_rule):
    following = point(SINGLE_TILE=True)
    history = [entry("c001", following, 1.50), entry("c002", counterfactual(SPACE, following, pow2_rule), 1.49)]
    verdict, effect = judge_rule(pow2_rule, SPACE, history, 0.02)
    assert verdict == "inconclusive"
    assert "margin" in effect
    # the same pair beyond a smaller margin is confirmed
    assert judge_rule(pow2_rule, SPACE, history, 0.001)[0] == "confirmed"


def test_judge_inconclusive_without_speeds(pow2_rule):
    following = point(SINGLE_TILE=True)
    history = [entry("c001", following, None), entry("c002", counterfactual(SPACE, following, pow2_rule), None)]
    verdict, effect = judge_rule(pow2_rule, SPACE, history, 0.02)
    assert verdict == "inconclusive"
    assert "not measured" in effect


def test_judge_inconclusive_without_counterfactual(pow2_rule):
    following = point(SINGLE_TILE=True)
    history = [entry("c001", following, 2.0), entry("c002", point(NUM_WARPS=8), 1.0)]
    verdict, effect = judge_rule(pow2_rule, SPACE, history, 0.02)
    assert verdict == "inconclusive"
    assert "c001" in effect
    # a counterfactual that failed does not count either
    history.append(entry("c003", counterfactual(SPACE, following, pow2_rule), None, status="failed"))
    assert judge_rule(pow2_rule, SPACE, history, 0.02)[0] == "inconclusive"


# ============================================================================ run folder

DEVICE = {"name": "cpu", "arch": "interpreter", "torch": "2.x", "triton": "3.x", "sm_count": 4}
# the design's keys, and the process that owns the run (so a dead one reads as interrupted)
SUMMARY_KEYS = {"run_id", "target", "status", "device", "ops", "started", "finished", "pid", "host"}
OP_KEYS = {"candidates", "accepted", "failures", "best", "promoted"}


def new_run(runs_dir: Path, target: str = "nanogpt") -> RunFolder:
    return RunFolder.create(runs_dir, target, Config().to_toml(), DEVICE, ["layer_norm"])


def test_create_writes_the_folder(tmp_path):
    folder = new_run(tmp_path / "runs")
    assert folder.path.parent == tmp_path / "runs"
    assert folder.run_id == folder.path.name and folder.run_id.endswith("nanogpt")
    assert (folder.path / "config.toml").read_text() == Config().to_toml()
    tomllib.loads((folder.path / "config.toml").read_text())
    assert (folder.path / "candidates").is_dir()
    summary = json.loads((folder.path / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["run_id"] == folder.run_id
    assert summary["target"] == "nanogpt"
    assert summary["status"] == "running"
    assert summary["device"] == DEVICE
    assert summary["finished"] is None
    datetime.fromisoformat(summary["started"])
    assert set(summary["ops"]) == {"layer_norm"}
    op = summary["ops"]["layer_norm"]
    assert set(op) == OP_KEYS
    assert op == {"candidates": 0, "accepted": 0, "failures": {}, "best": None, "promoted": False}


def test_log_appends_one_line_per_event(tmp_path):
    folder = new_run(tmp_path / "runs")
    folder.log("plan", op="layer_norm", rules=[])
    folder.log("verdict", id="c001", status="accepted", path=Path("/x/y.py"))
    lines = folder.events_path.read_text().splitlines()
    assert len(lines) == 2
    events = [json.loads(line) for line in lines]
    assert [e["kind"] for e in events] == ["plan", "verdict"]
    for e in events:
        datetime.fromisoformat(e["ts"])
    assert events[0]["op"] == "layer_norm" and events[1]["path"] == "/x/y.py"
    assert folder.events() == events
    for kind in ("plan", "candidate", "verdict", "promotion", "lesson", "error"):
        assert kind in EVENT_KINDS
    with pytest.raises(ValueError):
        folder.log("gossip", text="hi")
    assert len(folder.events_path.read_text().splitlines()) == 2


def test_events_skip_a_truncated_last_line(tmp_path):
    folder = new_run(tmp_path / "runs")
    assert folder.events() == []
    folder.log("plan", op="layer_norm")
    folder.log("candidate", id="c001")
    with folder.events_path.open("a") as f:
        f.write('{"ts": "2026-01-01T00:00:00+00:00", "kind": "verd')
    events = folder.events()
    assert [e["kind"] for e in events] == ["plan", "candidate"]


def test_finish_sets_status(tmp_path):
    folder = new_run(tmp_path / "runs")
    folder.op_summary("layer_norm")["candidates"] = 2
    folder.finish("complete")
    summary = json.loads(folder.summary_path.read_text())
    assert summary["status"] == "complete"
    assert summary["finished"] is not None
    datetime.fromisoformat(summary["finished"])
    assert summary["ops"]["layer_norm"]["candidates"] == 2
    with pytest.raises(ValueError):
        folder.finish("exploded")
    assert json.loads(folder.summary_path.read_text())["status"] == "complete"
    assert not list(folder.path.glob("*.tmp"))


def test_write_candidate(tmp_path):
    folder = new_run(tmp_path / "runs")
    path = folder.write_candidate("layer_norm", "c001", "print('hi')\n")
    assert path == folder.path / "candidates" / "layer_norm" / "c001.py"
    assert path.read_text() == "print('hi')\n"


def test_open_latest_and_by_id(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(RunNotFound):
        RunFolder.open(runs, "latest")
    first = new_run(runs)
    second = new_run(runs)
    assert first.run_id != second.run_id
    latest = RunFolder.open(runs, "latest")
    assert latest.run_id == second.run_id
    assert latest.summary == second.read_summary()
    assert RunFolder.open(runs, first.run_id).run_id == first.run_id
    assert RunFolder.open(runs, str(first.path)).run_id == first.run_id
    assert [f.run_id for f in list_runs(runs)] == [first.run_id, second.run_id]
    with pytest.raises(RunNotFound):
        RunFolder.open(runs, "20000101-000000-nosuch")


def test_list_runs_skips_folders_without_summary(tmp_path):
    runs = tmp_path / "runs"
    folder = new_run(runs)
    (runs / "zzz-not-a-run").mkdir()
    (runs / "zzz-broken").mkdir()
    (runs / "zzz-broken" / "summary.json").write_text("{not json")
    assert [f.run_id for f in list_runs(runs)] == [folder.run_id]
    assert list_runs(tmp_path / "nowhere") == []


# ============================================================================ report

def cpu_summary() -> dict:
    return {
        "run_id": "20260101-000000-nanogpt", "target": "nanogpt", "status": "complete", "device": DEVICE,
        "ops": {"layer_norm": {
            "candidates": 3, "accepted": 2, "failures": {"wrong_result": 1},
            "best": {"candidate": "c001", "origin": "rules", "speedup_eager": None, "speedup_compile": None,
                     "roofline_fraction": None, "gbps": None},
            "promoted": True, "promotion": "first kernel for this op on this device",
            "lessons": [{"rule": POW2, "verdict": "inconclusive", "effect": "speed not measured",
                         "recorded": False}]}},
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
    }


def gpu_summary() -> dict:
    s = cpu_summary()
    s["device"] = {"name": "NVIDIA H100 80GB HBM3", "arch": "sm_90", "torch": "2.13", "triton": "3.9",
                   "sm_count": 132, "ceilings": {"copy_gbps": 2995.0, "matmul_tflops": 745.0}}
    s["ops"]["layer_norm"]["best"] = {"candidate": "c004", "origin": "mutation", "speedup_eager": 1.634,
                                      "speedup_compile": 1.104, "roofline_fraction": 0.82, "gbps": 2456.3}
    s["ops"]["layer_norm"]["failures"] = {}
    return s


def render_text(renderable_or_fn) -> str:
    console = Console(record=True, width=200)
    if callable(renderable_or_fn):
        renderable_or_fn(console)
    else:
        console.print(renderable_or_fn)
    return console.export_text()


def folder_with(tmp_path, summary) -> RunFolder:
    folder = RunFolder(tmp_path / summary["run_id"])
    folder.summary = summary
    return folder


def test_run_table_cpu(tmp_path):
    text = render_text(run_table(folder_with(tmp_path, cpu_summary())))
    assert "Speed not measured" in text
    assert "layer_norm" in text and "c001 rules" in text
    assert "wrong_result 1" in text
    assert "yes" in text
    assert "1.63x" not in text


def test_run_table_gpu(tmp_path):
    text = render_text(run_table(folder_with(tmp_path, gpu_summary())))
    assert "1.63x" in text
    assert "1.10x" in text
    assert "82%" in text
    assert "2,456" in text
    assert "c004 mutation" in text
    assert "2,995 GB/s" in text and "745 TFLOP/s" in text
    assert "Speed not measured" not in text
    assert "NVIDIA H100" in text


def test_run_table_rate_follows_the_roofline(tmp_path):
    # a memory-bound op reports GB/s, a compute-bound one TFLOP/s
    summary = gpu_summary()
    best = dict(summary["ops"]["layer_norm"]["best"], gbps=1115.0, tflops=285.4)
    summary["ops"] = {"layer_norm": summary["ops"]["layer_norm"],
                      "attention": {**summary["ops"]["layer_norm"], "best": best}}
    text = render_text(run_table(folder_with(tmp_path, summary)))
    assert "285 TF/s" in text and "1,115" not in text
    assert "2,456 GB/s" in text


def test_print_run_and_runs_table(tmp_path):
    folder = folder_with(tmp_path, cpu_summary())
    text = render_text(lambda c: print_run(c, folder))
    assert "first kernel for this op on this device" in text
    assert POW2 in text and "inconclusive" in text
    text = render_text(runs_table([folder, folder_with(tmp_path, gpu_summary())]))
    assert "20260101-000000-nanogpt" in text
    assert "2 / 3" in text
    assert "NVIDIA H100" in text


def test_a_device_without_an_incumbent_starts_from_the_nearest_devices_winner(memory_root):
    """An H200 with nothing promoted starts from the sm_90 H100's winner (same architecture) before a
    winner of another architecture, re-measured here as its first candidate; its own slot, once filled,
    is the incumbent instead."""
    store = KernelStore(memory_root)
    hopper, other = point(ROWS_PER_PROGRAM=2), point(ROWS_PER_PROGRAM=4)
    for gpu, arch, params in (("NVIDIA H100 80GB HBM3", "sm_90", hopper), ("NVIDIA RTX 5070", "sm_120", other)):
        store.promote("layer_norm", gpu, SPACE.render(params), {"speedup_eager": 1.5, "backward": True},
                      {"run": "r0", "candidate": "c001", "origin": "rules", "params": params, "arch": arch})
    h200 = Planner(Rulebook.load(memory_root), store, "NVIDIA H200", 132, 8, True, True, "sm_90").plan(SPEC)
    assert h200.incumbent is None and h200.transfer.gpu == "NVIDIA H100 80GB HBM3"
    assert h200.to_event()["transfer"]["gpu"] == "NVIDIA H100 80GB HBM3"
    first = TemplateCoder(SPEC, h200, 0.25, random.Random(0)).propose([], 8)
    assert first.origin == "transfer" and first.params == hopper and first.source == SPACE.render(hopper)
    blackwell = Planner(None, store, "NVIDIA RTX 5090", 170, 8, True, True, "sm_120").plan(SPEC)
    assert blackwell.transfer.gpu == "NVIDIA RTX 5070"
    store.promote("layer_norm", "NVIDIA H200", SPACE.render(other), {"speedup_eager": 1.6, "backward": True},
                  {"run": "r1", "candidate": "c002", "origin": "rules", "params": other, "arch": "sm_90"})
    again = Planner(None, store, "NVIDIA H200", 132, 8, True, True, "sm_90").plan(SPEC)
    assert again.transfer is None and again.incumbent.gpu == "NVIDIA H200"


def test_rule_confidence_counts_only_the_devices_own_evidence(memory_root):
    from memory import Evidence

    rule = make_rule("test.rule", {"NUM_WARPS": 2}, confidence=0.5)
    rule = dataclasses.replace(rule, evidence=(Evidence(run="r", gpu="NVIDIA H100", verdict="confirmed"),
                                               Evidence(run="r", gpu="NVIDIA H100", verdict="confirmed")))
    assert rule.confidence_on("NVIDIA H100") > 0.7
    assert rule.confidence_on("NVIDIA H200") == 0.5  # a hypothesis there until measured there
    assert rule.verdicts_by_gpu() == {"NVIDIA H100": {"confirmed": 2, "refuted": 0, "inconclusive": 0}}
