"""The LLM coder: asks the model for a candidate file, and for a repair when one fails.

The prompt (agents/llm/prompts/) gives the op's contract, the PyTorch reference's source, the best kernels so
far with their numbers, the rulebook lessons that apply, and for a repair the evaluator's failure class
and message. The answer's one ```python block is the candidate; it then goes through the same evaluator
as any other. An answer that cannot be a candidate (no code, several files) is a counted failure of its
own, and the run goes on.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from evaluators import FAILURE_CLASSES
from kernels import OpSpec
from memory import Rule

from agents.search.coder import Proposal
from agents.llm.client import BudgetSpent, ChatModel, LLMCallFailed
from agents.search.state import best_of

PROMPTS = Path(__file__).resolve().parent / "prompts"
# what a repair can fix: the file itself was wrong; a hang or a crash of the sandbox is retried as new work
REPAIRABLE = frozenset({"syntax_error", "compile_error", "exception", "static", "no_kernel", "wrong_result",
                        "stale_memory", "input_mutation", "aliasing", "layout", "caching", "nondeterminism",
                        "no_code", "several_files", "escape"})
_FENCE = re.compile(r"^```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"", "python", "py", "python3"}
SOURCE_LIMIT = 32_000   # characters of one kernel shown in a prompt: a forward+backward file runs to 25,000


def prompt(name: str, **fields: object) -> str:
    """A prompt file with its $fields filled; a field the file names but the caller lacks is an error."""
    return Template((PROMPTS / name).read_text()).substitute({k: str(v) for k, v in fields.items()})


@dataclass(frozen=True)
class LLMProposal(Proposal):
    failure: tuple[str, str] | None = None    # (class, detail) when the answer is no candidate at all
    exchange: str | None = None               # the recorded exchange, relative to the run folder


def extract_code(answer: str) -> tuple[str | None, tuple[str, str] | None]:
    """(source, None) for an answer with one Python block, else (None, (failure class, detail))."""
    blocks = [body for tag, body in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS]
    if not blocks:
        if "@triton.jit" in answer and "```" not in answer:
            return answer.strip() + "\n", None   # a bare file, as some servers strip the fence
        return None, ("no_code", f"the answer has no ```python block ({len(answer)} characters of prose)")
    if len(blocks) > 1:
        return None, ("several_files", f"the answer has {len(blocks)} code blocks; a candidate is one file")
    return blocks[0], None


def _clip(source: str) -> str:
    return source if len(source) <= SOURCE_LIMIT else source[:SOURCE_LIMIT] + "\n# ... (cut)\n"


def lessons_text(rules: list[Rule]) -> str:
    if not rules:
        return "(none)"
    lines = []
    for r in rules:
        tally = r.tally()
        lines.append(f"- {r.id} ({r.kind}, confidence {r.current_confidence:.2f}, learned on {r.learned_on}, "
                     f"origin {r.origin}; evidence +{tally['confirmed']} -{tally['refuted']} "
                     f"?{tally['inconclusive']}): {r.statement}"
                     + (f" Suggests {dict(r.suggests)}." if r.suggests else ""))
    return "\n".join(lines)


def _numbers(c: dict) -> str:
    if c.get("speedup_eager") is None:
        return "correct on every shape and dtype; speed not measured (CPU interpreter)"
    return (f"{c['speedup_eager']:.2f}x eager, {c['speedup_compile']:.2f}x torch.compile, "
            f"{c['roofline_fraction']:.0%} of the roofline")


class LLMCoder:
    def __init__(self, spec: OpSpec, model: ChatModel, device: str, rules: list[Rule], strategy: str,
                 incumbent: tuple[str, dict] | None, repairs: int, training: bool = True):
        self.spec = spec
        self.training = training
        self.model = model
        self.device = device
        self.rules = rules
        self.strategy = strategy or "(none given: use your judgement)"
        self.incumbent = incumbent           # (source, metrics) of the promoted kernel, if any
        self.repairs = repairs
        self.attempts: dict[str, int] = {}   # candidate id -> repairs spent on its line
        self.answers: dict[str, str] = {}    # exchange -> the model's answer, for repairs of non-files

    # ---------------------------------------------------------------- prompts

    def contract(self) -> dict:
        spec = self.spec
        shapes = "\n".join(f"- {s.name}: {dict(s.dims)} ({s.origin})" for s in spec.shapes_for(self.device))
        if self.device == "cuda":
            shapes += "\nTimed: " + ", ".join(s.name for s in spec.timed_shapes())
        tolerances = "\n".join(f"- {d}: atol {t.atol:g}, rtol {t.rtol:g}" for d, t in spec.tolerances.items()
                               if d in spec.dtypes_for(self.device))
        note = "CPU: Triton's interpreter, correctness only" if self.device != "cuda" else "GPU"
        return {"op": spec.name, "signature": spec.signature, "description": spec.description, "shapes": shapes,
                "dtypes": ", ".join(spec.dtypes_for(self.device)), "tolerances": tolerances,
                "device_note": note, "reference": inspect.getsource(spec.reference).strip(),
                "training": prompt("coder_training.md" if self.training else "coder_inference.md").strip()}

    def _best(self, history: list[dict]) -> str:
        parts = []
        if self.incumbent is not None:
            source, metrics = self.incumbent
            shown = _numbers({**metrics, "speedup_compile": metrics.get("speedup_compile") or 0.0,
                              "roofline_fraction": metrics.get("roofline_fraction") or 0.0})
            parts.append(f"## The promoted kernel (memory), {shown}\n```python\n{_clip(source)}```")
        best = best_of(history)
        if best is not None:
            source = Path(best["path"]).read_text()
            parts.append(f"## {best['id']} of this run ({best['origin']}), {_numbers(best)}\n"
                         f"```python\n{_clip(source)}```")
        return "\n\n".join(parts) or "(none yet)"

    @staticmethod
    def _tried(history: list[dict]) -> str:
        if not history:
            return "(nothing yet)"
        lines = []
        for c in history:
            what = c.get("params") or "LLM-written"
            lines.append(f"- {c['id']} ({c['origin']}, {what}): {c['status']}"
                         + (f", {c.get('reason', '')}" if c["status"] != "accepted" else f", {_numbers(c)}"))
        return "\n".join(lines)

    def task_messages(self, history: list[dict]) -> list[dict]:
        task = prompt("coder_task.md", **self.contract(), strategy=self.strategy, lessons=lessons_text(self.rules),
                      best=self._best(history), tried=self._tried(history))
        return [{"role": "system", "content": prompt("coder_system.md")}, {"role": "user", "content": task}]

    def repair_messages(self, history: list[dict], failed: dict, source: str) -> list[dict]:
        messages = self.task_messages(history)
        status, meaning = FAILURE_CLASSES.get(failed["failure_class"], ("failed", ""))
        messages.append({"role": "user", "content": prompt(
            "coder_repair.md", candidate=failed["id"], status=failed["status"], failure_class=failed["failure_class"],
            failure_meaning=meaning, failure_detail=failed.get("reason", ""), source=_clip(source))})
        return messages

    # ---------------------------------------------------------------- proposing

    def _to_repair(self, history: list[dict]) -> dict | None:
        """The last candidate of this coder, if it failed in a way a repair can fix and repairs are left."""
        mine = [c for c in history if c["origin"] in ("llm", "llm-repair")]
        if not mine or mine[-1]["status"] == "accepted" or mine[-1].get("failure_class") not in REPAIRABLE:
            return None
        last = mine[-1]
        root = self._root_of(history, last)
        if self.attempts.get(root, 0) >= self.repairs:
            return None
        return last

    @staticmethod
    def _root_of(history: list[dict], candidate: dict) -> str:
        by_id = {c["id"]: c for c in history}
        while candidate["origin"] == "llm-repair" and candidate.get("parents") and candidate["parents"][0] in by_id:
            candidate = by_id[candidate["parents"][0]]
        return candidate["id"]

    def propose(self, history: list[dict]) -> LLMProposal | None:
        """The next candidate, or None when the model may not be asked (budget spent, given up):
        the template coder then takes the slot."""
        failed = self._to_repair(history)
        if failed is not None:
            source = (Path(failed["path"]).read_text() if failed.get("path")
                      else self.answers.get(failed.get("exchange") or "", ""))
            messages = self.repair_messages(history, failed, source)
            origin, parents = "llm-repair", (failed["id"],)
            root = self._root_of(history, failed)
            note = f"repair {self.attempts.get(root, 0) + 1} of {root} ({failed['failure_class']})"
        else:
            messages = self.task_messages(history)
            origin, parents, note, root = "llm", (), "new candidate from the model", None
        try:
            reply = self.model.chat("coder-repair" if failed else "coder", self.spec.name, messages)
        except BudgetSpent:
            return None
        except LLMCallFailed as exc:
            return LLMProposal("", origin, None, parents, note, failure=("llm_error", str(exc)))
        if root is not None:
            self.attempts[root] = self.attempts.get(root, 0) + 1
        self.answers[reply.exchange] = reply.content
        source, failure = extract_code(reply.content)
        return LLMProposal(source or "", origin, None, parents, note, failure=failure, exchange=reply.exchange)
