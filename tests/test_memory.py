"""Tests of memory/: the rulebook (seed, queries, schema errors, evidence, learned rules), the kernel
store and the candidate archive. All on the CPU, in tmp_path."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from memory import (
    DEFAULT_MEMORY_ROOT,
    CandidateArchive,
    Evidence,
    KernelStore,
    MemoryStoreError,
    Rule,
    Rulebook,
    gpu_slug,
)

SEED_SUGGESTS = {
    "attention.stability-floor": {"MASK_VALUE": -1e20},
    "rowwise.pow2-masking": {"SINGLE_TILE": True},
    "attention.tile-64x64": {"BLOCK_M": 64, "BLOCK_N": 64},
    "attention.load-pipelining": {"K_LAT": 2, "V_LAT": 5},
    "rowwise.persistent-grid": {"PERSISTENT": True},
    "matmul.tensorise": {"USE_DOT": True},
    "norm.fuse-scale-into-linear": {"FUSE_NORM_SCALE": True},
}
SEED_INVARIANTS = {
    "nanogpt.weight-tying",
    "nanogpt.residual-init",
    "nanogpt.softmax-max-subtraction",
    "nanogpt.loss-parity",
}
LAYER_NORM_CONTEXT = {"row_wise": True, "normalization": True, "rows_over_2x_sms": True}
ATTENTION_CONTEXT = {"head_dim": 64, "causal": True}

VALID_RULE = """
[[rule]]
id = "{id}"
kind = "rule"
statement = "a statement"
op = "layer_norm"
learned_on = "test"
confidence = 0.5
origin = "test"
"""


@pytest.fixture
def seeded_root(tmp_path: Path) -> Path:
    """A memory root holding a copy of the shipped seed lessons, so tests never write into the package."""
    shutil.copytree(DEFAULT_MEMORY_ROOT / "lessons", tmp_path / "lessons")
    return tmp_path


def write_lesson(root: Path, name: str, text: str) -> Path:
    path = root / "lessons" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_rule(rule_id: str, **changes: object) -> Rule:
    fields: dict[str, object] = dict(
        id=rule_id, kind="rule", statement="s", op="*", learned_on="test", confidence=0.3, origin="test"
    )
    fields.update(changes)
    return Rule(**fields)  # type: ignore[arg-type]


# --- the shipped seed -------------------------------------------------------------------------------


def test_seed_loads_with_every_id_and_its_suggests(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    assert {rule.id for rule in book.rules} == set(SEED_SUGGESTS) | SEED_INVARIANTS
    for rule_id, suggests in SEED_SUGGESTS.items():
        assert book.get(rule_id).suggests == suggests, rule_id
    assert {rule.id for rule in book.invariants()} == SEED_INVARIANTS
    for rule in book.rules:
        assert rule.learned_on == "RTX 5070 (sm_120), cuTile"
        assert rule.evidence == ()


def test_seed_scopes_and_confidences(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    tile = book.get("attention.tile-64x64")
    assert (tile.kind, tile.op, tile.when, tile.confidence) == ("law", "attention", ATTENTION_CONTEXT, 0.9)
    assert book.get("rowwise.persistent-grid").when == {"normalization": True, "rows_over_2x_sms": True}
    assert book.get("norm.fuse-scale-into-linear").confidence == 0.6
    assert "hypothesis" in book.get("norm.fuse-scale-into-linear").statement.lower()
    floor = book.get("attention.stability-floor").statement
    assert "fp32" in floor and "fp16" in floor and "-1e20" in floor


def test_package_root_loads_the_seed() -> None:
    assert "matmul.tensorise" in Rulebook.load(DEFAULT_MEMORY_ROOT)


# --- queries ----------------------------------------------------------------------------------------


def test_layer_norm_context_gets_the_rowwise_rules(seeded_root: Path) -> None:
    ids = [rule.id for rule in Rulebook.load(seeded_root).query("layer_norm", LAYER_NORM_CONTEXT)]
    assert ids == ["rowwise.persistent-grid", "rowwise.pow2-masking"]  # equal confidence: by id


def test_attention_context_gets_the_attention_rules_sorted_by_confidence(seeded_root: Path) -> None:
    ids = [rule.id for rule in Rulebook.load(seeded_root).query("attention", ATTENTION_CONTEXT)]
    assert ids == ["attention.stability-floor", "attention.tile-64x64", "attention.load-pipelining"]


def test_missing_context_key_excludes_the_rule(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    ids = {rule.id for rule in book.query("attention", {"head_dim": 64})}
    assert "attention.tile-64x64" not in ids
    assert "attention.load-pipelining" in ids
    assert book.query("layer_norm", {"row_wise": True, "normalization": True}) == [book.get("rowwise.pow2-masking")]
    assert book.query("layer_norm", {}) == []


def test_op_must_match_unless_rule_is_for_every_op(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    assert book.query("layer_norm", ATTENTION_CONTEXT) == []
    assert [r.id for r in book.query("bias_gelu", {"has_dot": True})] == ["matmul.tensorise"]


def test_when_values_must_be_equal_and_bools_are_not_ints() -> None:
    rule = make_rule("r", when={"head_dim": 64, "causal": True})
    assert rule.applies_to("attention", {"head_dim": 64, "causal": True, "extra": 1})
    assert not rule.applies_to("attention", {"head_dim": 128, "causal": True})
    assert not rule.applies_to("attention", {"head_dim": 64, "causal": 1})


def test_list_in_when_means_any_of(tmp_path: Path) -> None:
    write_lesson(tmp_path, "a.toml", VALID_RULE.format(id="wide") + 'when = { width = [384, 768] }\n')
    book = Rulebook.load(tmp_path)
    assert [r.id for r in book.query("layer_norm", {"width": 768})] == ["wide"]
    assert book.query("layer_norm", {"width": 512}) == []


def test_invariants_only_when_asked(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    assert all(rule.kind != "invariant" for rule in book.query("layer_norm", LAYER_NORM_CONTEXT))
    with_invariants = {r.id for r in book.query("layer_norm", LAYER_NORM_CONTEXT, include_invariants=True)}
    assert SEED_INVARIANTS <= with_invariants


def test_get_unknown_id_is_a_key_error(seeded_root: Path) -> None:
    with pytest.raises(KeyError, match="no-such-rule"):
        Rulebook.load(seeded_root).get("no-such-rule")


def test_missing_root_is_an_empty_rulebook(tmp_path: Path) -> None:
    assert Rulebook.load(tmp_path / "absent").rules == []


# --- malformed files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('colour = "red"\n', "unknown key"),
        ('when = { x = 1 }\nbogus = 1\n', "bogus"),
    ],
)
def test_unknown_key_names_file_and_rule(tmp_path: Path, extra: str, message: str) -> None:
    path = write_lesson(tmp_path, "bad.toml", VALID_RULE.format(id="my.rule") + extra)
    with pytest.raises(MemoryStoreError, match=message) as caught:
        Rulebook.load(tmp_path)
    assert str(path) in str(caught.value) and "my.rule" in str(caught.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('origin = "test"\n', "", "missing required key"),
        ('kind = "rule"', 'kind = "guess"', "kind"),
        ("confidence = 0.5", "confidence = 1.5", "outside"),
        ("confidence = 0.5", 'confidence = "high"', "number"),
    ],
)
def test_schema_violations_name_file_and_rule(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = VALID_RULE.format(id="my.rule")
    assert old in text
    path = write_lesson(tmp_path, "bad.toml", text.replace(old, new))
    with pytest.raises(MemoryStoreError, match=message) as caught:
        Rulebook.load(tmp_path)
    assert str(path) in str(caught.value) and "my.rule" in str(caught.value)


def test_bad_evidence_verdict_in_toml_is_refused(tmp_path: Path) -> None:
    evidence = 'evidence = [{ run = "r1", gpu = "g", verdict = "maybe", date = 2026-01-02 }]\n'
    path = write_lesson(tmp_path, "bad.toml", VALID_RULE.format(id="my.rule") + evidence)
    with pytest.raises(MemoryStoreError, match="verdict") as caught:
        Rulebook.load(tmp_path)
    assert str(path) in str(caught.value)


def test_evidence_in_toml_loads_with_toml_dates(tmp_path: Path) -> None:
    evidence = 'evidence = [{ run = "r1", gpu = "g", verdict = "confirmed", date = 2026-01-02 }]\n'
    write_lesson(tmp_path, "ok.toml", VALID_RULE.format(id="my.rule") + evidence)
    rule = Rulebook.load(tmp_path).get("my.rule")
    assert rule.evidence == (Evidence(run="r1", gpu="g", verdict="confirmed", date="2026-01-02"),)


def test_duplicate_id_across_files_is_refused(tmp_path: Path) -> None:
    first = write_lesson(tmp_path, "a.toml", VALID_RULE.format(id="twice"))
    second = tmp_path / "learned" / "b.toml"
    second.parent.mkdir()
    second.write_text(VALID_RULE.format(id="twice"), encoding="utf-8")
    with pytest.raises(MemoryStoreError, match="duplicate") as caught:
        Rulebook.load(tmp_path)
    assert str(second) in str(caught.value) and str(first) in str(caught.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_lesson(tmp_path, "broken.toml", "[[rule]\nid = ")
    with pytest.raises(MemoryStoreError, match="not valid TOML") as caught:
        Rulebook.load(tmp_path)
    assert str(path) in str(caught.value)


# --- evidence ---------------------------------------------------------------------------------------


def test_confirmed_evidence_persists_and_raises_confidence(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    seed_text = (seeded_root / "lessons" / "seed.toml").read_text(encoding="utf-8")
    updated = book.record_evidence(
        "attention.load-pipelining",
        Evidence(run="run-1", gpu="NVIDIA H100 80GB HBM3", verdict="confirmed", effect="1.1x", date="2026-11-24"),
    )
    assert updated.current_confidence == pytest.approx(0.7 + 0.25 * 0.3)
    assert updated.confidence == 0.7
    assert book.get("attention.load-pipelining") == updated
    reloaded = Rulebook.load(seeded_root).get("attention.load-pipelining")
    assert reloaded.evidence == updated.evidence
    assert reloaded.current_confidence == pytest.approx(0.775)
    assert (seeded_root / "lessons" / "seed.toml").read_text(encoding="utf-8") == seed_text


def test_refuted_lowers_and_inconclusive_keeps_confidence(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    book.record_evidence("attention.tile-64x64", Evidence("r1", "H100", "inconclusive", date="2026-11-24"))
    assert book.get("attention.tile-64x64").current_confidence == pytest.approx(0.9)
    book.record_evidence("attention.tile-64x64", Evidence("r2", "H100", "refuted", date="2026-11-24"))
    book.record_evidence("attention.tile-64x64", Evidence("r3", "H100", "refuted", date="2026-11-25"))
    rule = Rulebook.load(seeded_root).get("attention.tile-64x64")
    assert rule.current_confidence == pytest.approx(0.9 * 0.75 * 0.75)
    assert rule.tally() == {"confirmed": 0, "refuted": 2, "inconclusive": 1}


def test_refuted_rule_drops_below_a_less_trusted_one_in_query(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    for run in ("r1", "r2"):
        book.record_evidence("attention.tile-64x64", Evidence(run, "H100", "refuted", date="2026-11-24"))
    ids = [r.id for r in book.query("attention", ATTENTION_CONTEXT)]
    assert ids.index("attention.load-pipelining") < ids.index("attention.tile-64x64")


def test_evidence_log_ignores_unknown_rules_and_torn_lines(seeded_root: Path) -> None:
    log = seeded_root / "evidence.jsonl"
    good = {
        "rule": "matmul.tensorise", "run": "r", "gpu": "g", "verdict": "refuted", "effect": "", "date": "2026-11-24"
    }
    log.write_text(
        json.dumps({**good, "rule": "gone.rule"}) + "\n" + json.dumps(good) + "\n" + '{"rule": "matmul.tens',
        encoding="utf-8",
    )
    book = Rulebook.load(seeded_root)
    assert book.get("matmul.tensorise").tally()["refuted"] == 1
    book.record_evidence("matmul.tensorise", Evidence("r2", "g", "confirmed", date="2026-11-25"))
    tally = Rulebook.load(seeded_root).get("matmul.tensorise").tally()
    assert tally == {"confirmed": 1, "refuted": 1, "inconclusive": 0}
    assert "gone.rule" in log.read_text(encoding="utf-8")


def test_record_evidence_for_unknown_rule_is_a_key_error(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    with pytest.raises(KeyError):
        book.record_evidence("nope", Evidence("r", "g", "confirmed", date="2026-11-24"))
    assert not (seeded_root / "evidence.jsonl").exists()


def test_evidence_and_rule_validate_their_fields() -> None:
    with pytest.raises(MemoryStoreError, match="verdict"):
        Evidence("r", "g", "probably")
    with pytest.raises(MemoryStoreError, match="date"):
        Evidence("r", "g", "confirmed", date="yesterday")
    with pytest.raises(MemoryStoreError, match="outside"):
        make_rule("x", confidence=-0.1)
    with pytest.raises(MemoryStoreError, match="kind"):
        make_rule("x", kind="hunch")


# --- learned rules ----------------------------------------------------------------------------------


def test_add_learned_round_trips_and_refuses_duplicates(seeded_root: Path) -> None:
    book = Rulebook.load(seeded_root)
    rule = make_rule(
        "layer_norm/num-warps 8",
        op="layer_norm",
        when={"width": [768, 1024], "row_wise": True},
        suggests={"num_warps": 8},
        evidence=(Evidence("r1", "H100", "confirmed", "1.05x", "2026-11-24"),),
    )
    path = book.add_learned(rule)
    assert path == seeded_root / "learned" / "layer_norm_num-warps_8.toml"
    assert book.get(rule.id) == rule
    assert Rulebook.load(seeded_root).get(rule.id) == rule
    with pytest.raises(MemoryStoreError, match="already exists") as caught:
        book.add_learned(rule)
    assert rule.id in str(caught.value)
    with pytest.raises(MemoryStoreError, match="already exists"):
        Rulebook.load(seeded_root).add_learned(make_rule("matmul.tensorise"))
    with pytest.raises(MemoryStoreError, match="file already exists"):
        book.add_learned(make_rule("layer_norm_num-warps_8"))


# --- promoted kernels -------------------------------------------------------------------------------


def test_gpu_slug() -> None:
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_slug("interpreter") == "interpreter"


def test_promote_best_and_history_keep_the_incumbent(tmp_path: Path) -> None:
    store = KernelStore(tmp_path)
    gpu = "NVIDIA H100 80GB HBM3"
    assert store.best("layer_norm", gpu) is None
    first = store.promote(
        "layer_norm", gpu, "# first\n", {"speedup_eager": 1.5, "timing": None}, {"run": "r1", "parents": []}
    )
    assert first.path == tmp_path / "promoted" / "layer_norm" / "nvidia-h100-80gb-hbm3" / "kernel.py"
    assert first.metrics == {"speedup_eager": 1.5}
    assert store.best("layer_norm", gpu) == first
    second = store.promote("layer_norm", gpu, "# second\n", {"speedup_eager": 2.0}, {"run": "r2", "parents": ["c1"]})
    best = store.best("layer_norm", gpu)
    assert best == second and best.source() == "# second\n"
    history = store.history("layer_norm", gpu)
    assert len(history) == 1
    assert history[0].source() == "# first\n" and history[0].lineage == {"run": "r1", "parents": []}
    assert history[0].promoted_at == first.promoted_at
    store.promote("layer_norm", gpu, "# third\n", {}, {})  # same second as `second`: history must not collide
    assert [k.source() for k in store.history("layer_norm", gpu)] == ["# first\n", "# second\n"]


def test_meta_toml_drops_none_values(tmp_path: Path) -> None:
    kernel = KernelStore(tmp_path).promote(
        "attention", "interpreter", "# k\n", {"ms": None, "ok": True}, {"params": {"BLOCK": 64, "X": None}}
    )
    meta = tomllib.loads((kernel.path.parent / "meta.toml").read_text(encoding="utf-8"))
    assert meta["metrics"] == {"ok": True} and meta["lineage"] == {"params": {"BLOCK": 64}}


def test_all_and_for_gpu(tmp_path: Path) -> None:
    store = KernelStore(tmp_path)
    store.promote("layer_norm", "NVIDIA H100 80GB HBM3", "# a\n", {}, {})
    store.promote("attention", "NVIDIA H100 80GB HBM3", "# b\n", {}, {})
    store.promote("layer_norm", "interpreter", "# c\n", {}, {})
    assert [(k.op, k.gpu) for k in store.all()] == [
        ("attention", "NVIDIA H100 80GB HBM3"),
        ("layer_norm", "interpreter"),
        ("layer_norm", "NVIDIA H100 80GB HBM3"),
    ]
    on_h100 = store.for_gpu("NVIDIA H100 80GB HBM3")
    assert set(on_h100) == {"layer_norm", "attention"} and on_h100["layer_norm"].source() == "# a\n"
    assert set(store.for_gpu("interpreter")) == {"layer_norm"}


def test_promote_refuses_unsafe_op_and_untomlable_values(tmp_path: Path) -> None:
    store = KernelStore(tmp_path)
    with pytest.raises(MemoryStoreError, match="op"):
        store.promote("../escape", "interpreter", "# k\n", {}, {})
    store.promote("layer_norm", "interpreter", "# keep\n", {}, {})
    with pytest.raises(MemoryStoreError, match="TOML"):
        store.promote("layer_norm", "interpreter", "# new\n", {"bad": object()}, {})
    assert store.best("layer_norm", "interpreter").source() == "# keep\n"


# --- archive ----------------------------------------------------------------------------------------


def test_archive_record_and_lookup_latest(tmp_path: Path) -> None:
    archive = CandidateArchive(tmp_path)
    assert archive.lookup("layer_norm", "src") is None
    sha = archive.record("layer_norm", "src", {"status": "rejected", "run": "r1"})
    archive.record("layer_norm", "other", {"status": "accepted"})
    archive.record("layer_norm", "src", {"status": "accepted", "run": "r2"})
    found = archive.lookup("layer_norm", "src")
    assert found == {"sha": sha, "op": "layer_norm", "status": "accepted", "run": "r2"}
    assert archive.lookup("attention", "src") is None
    assert archive.lookup("layer_norm", "src ") is None
    assert len(archive.entries("layer_norm")) == 3


def test_archive_survives_a_truncated_last_line(tmp_path: Path) -> None:
    archive = CandidateArchive(tmp_path)
    sha = archive.record("cross_entropy", "a", {"status": "accepted"})
    path = tmp_path / "archive" / "cross_entropy.jsonl"
    with path.open("a", encoding="utf-8") as log:
        log.write('{"sha": "abc", "op": "cross_en')  # a crash mid-write
    assert [e["sha"] for e in archive.entries("cross_entropy")] == [sha]
    archive.record("cross_entropy", "b", {"status": "failed"})
    assert [e["status"] for e in archive.entries("cross_entropy")] == ["accepted", "failed"]
    assert archive.lookup("cross_entropy", "b") is not None


def test_archive_refuses_entries_that_contradict_its_keys(tmp_path: Path) -> None:
    with pytest.raises(MemoryStoreError, match="sha"):
        CandidateArchive(tmp_path).record("layer_norm", "src", {"sha": "not-the-hash"})


def test_meta_records_the_kernel_hash_and_the_promotion_order(tmp_path: Path) -> None:
    store = KernelStore(tmp_path)
    for n in range(3):
        store.promote("layer_norm", "interpreter", f"# k{n}\n", {}, {})
    slot = store.slot("layer_norm", "interpreter")
    meta = tomllib.loads((slot / "meta.toml").read_text(encoding="utf-8"))
    assert meta["seq"] == 3 and meta["sha256"] == hashlib.sha256(b"# k2\n").hexdigest()
    assert [k.seq for k in store.history("layer_norm", "interpreter")] == [1, 2]


def test_a_meta_without_hash_or_order_still_reads(tmp_path: Path) -> None:
    """Winners promoted before hashes were recorded (the shipped ones) stay readable and promotable."""
    slot = tmp_path / "promoted" / "layer_norm" / "interpreter"
    slot.mkdir(parents=True)
    (slot / "kernel.py").write_text("# old\n", encoding="utf-8")
    (slot / "meta.toml").write_text(
        'op = "layer_norm"\ngpu = "interpreter"\npromoted_at = "2026-01-01T00:00:00+00:00"\n', encoding="utf-8"
    )
    store = KernelStore(tmp_path)
    assert store.best("layer_norm", "interpreter").source() == "# old\n"
    store.promote("layer_norm", "interpreter", "# new\n", {}, {})
    assert [k.source() for k in store.history("layer_norm", "interpreter")] == ["# old\n"]
    assert store.best("layer_norm", "interpreter").seq == 1
