"""The model behind the LLM agents: an OpenAI-compatible client, the token and money ledger, and the
record of every exchange (runs/<id>/llm/), which a later run can replay without a server.

Any server that speaks OpenAI's chat completions works (OpenAI, vLLM, Ollama, llama.cpp's server).
The key is read from the environment variable named by [llm].api_key_env and never written anywhere;
the openai SDK's OPENAI_BASE_URL and OPENAI_API_KEY apply when config.toml leaves base_url and
api_key_env unset. Retries of 429, 5xx and timeouts, with backoff, are the SDK's own (max_retries).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from agents.config import LLMConfig

OPENAI_URL = "https://api.openai.com/v1"
# sent when the server takes no key: the SDK insists on one, and local servers ignore the header
NO_KEY = "not-needed"
RUN_META = "run.json"


class LLMUnavailable(RuntimeError):
    """No usable server before the run starts: no key, unreachable, or the key refused."""


class LLMCallFailed(RuntimeError):
    """One request got no answer after the SDK's retries (server error, timeout, refused)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class BudgetSpent(RuntimeError):
    """The run's token or money budget is used up; the model is not asked again."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str = field(repr=False)   # never logged, never recorded
    key_source: str                    # where the key came from, for messages: "$NAME" or "none"


def _is_openai(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host == "openai.com" or host.endswith(".openai.com")


def resolve_endpoint(llm: LLMConfig) -> Endpoint:
    """The server and key to use. A key is required for OpenAI's own endpoint only: local servers
    (vLLM, Ollama, llama.cpp) usually take none, and one that does refuses us in the preflight."""
    base_url = llm.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    key = os.environ.get(llm.api_key_env, "") if llm.api_key_env else ""
    if key:
        return Endpoint(base_url, key, f"${llm.api_key_env}")
    if _is_openai(base_url):
        named = f"${llm.api_key_env}" if llm.api_key_env else "a key ([llm].api_key_env is empty)"
        raise LLMUnavailable(f"no API key for {base_url}: set {named}, or point [llm].base_url / "
                             f"$OPENAI_BASE_URL at a local server")
    return Endpoint(base_url, NO_KEY, "none")


def _client(endpoint: Endpoint, llm: LLMConfig, **overrides: Any):
    import openai

    options = {"base_url": endpoint.base_url, "api_key": endpoint.api_key, "timeout": llm.timeout_s,
               "max_retries": llm.retries, **overrides}
    return openai.OpenAI(**options)


def preflight(llm: LLMConfig) -> Endpoint:
    """Check, before a run starts, that the server answers and takes the key; raise LLMUnavailable if not.
    It asks for the model list, which costs no tokens; a server without that route still proves it is up."""
    import openai

    endpoint = resolve_endpoint(llm)
    client = _client(endpoint, llm, max_retries=0, timeout=min(llm.timeout_s, 15.0))
    try:
        client.models.list()
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise LLMUnavailable(f"the LLM server at {endpoint.base_url} refused the key from {endpoint.key_source} "
                             f"(HTTP {exc.status_code})") from None
    except openai.APIConnectionError as exc:
        raise LLMUnavailable(f"cannot reach the LLM server at {endpoint.base_url}: {exc}") from None
    except openai.APIStatusError:
        pass
    finally:
        client.close()
    return endpoint


# ----------------------------------------------------------------------------- ledger

@dataclass
class Usage:
    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add(self, prompt: int, completion: int, cost: float, failed: bool) -> None:
        self.calls += 1
        self.failed_calls += int(failed)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost += cost

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"calls": self.calls, "failed_calls": self.failed_calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "tokens": self.tokens, "cost": round(self.cost, 6)}


class Ledger:
    """Tokens and cost per call, per op and per run, against the run's budget."""

    def __init__(self, llm: LLMConfig):
        self.llm = llm
        self.run = Usage()
        self.ops: dict[str, Usage] = {}
        self.spent_reason: str | None = None

    def cost_of(self, prompt: int, completion: int) -> float:
        return prompt / 1000 * self.llm.price_in_per_1k + completion / 1000 * self.llm.price_out_per_1k

    def check(self) -> None:
        """Raise BudgetSpent if the run may not ask again; checked before each request."""
        if self.spent_reason:
            raise BudgetSpent(self.spent_reason)
        limit_tokens, limit_cost = self.llm.run_token_budget, self.llm.run_cost_budget
        if limit_tokens and self.run.tokens >= limit_tokens:
            self.spent_reason = f"token budget spent: {self.run.tokens:,} of {limit_tokens:,} tokens"
        elif limit_cost and self.run.cost >= limit_cost:
            self.spent_reason = f"money budget spent: {self.run.cost:.4f} of {limit_cost:.4f}"
        if self.spent_reason:
            raise BudgetSpent(self.spent_reason)

    def record(self, op: str | None, prompt: int, completion: int, failed: bool) -> float:
        cost = self.cost_of(prompt, completion)
        self.run.add(prompt, completion, cost, failed)
        self.ops.setdefault(op or "-", Usage()).add(prompt, completion, cost, failed)
        return cost

    def summary(self) -> dict:
        return {**self.run.to_dict(), "budget": {"tokens": self.llm.run_token_budget,
                                                 "cost": self.llm.run_cost_budget},
                "budget_spent": self.spent_reason}


# ----------------------------------------------------------------------------- exchanges

@dataclass(frozen=True)
class Reply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    exchange: str          # the recorded file, relative to the run folder


class Recorder:
    """runs/<id>/llm/NNNN-<purpose>.json, one file per request in the order they were sent."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seq = 0

    def write(self, record: dict) -> str:
        self.seq += 1
        name = f"{self.seq:04d}-{record['purpose']}.json"
        (self.folder / name).write_text(json.dumps({"seq": self.seq, **record}, indent=2))
        return f"{self.folder.name}/{name}"

    def write_meta(self, meta: dict) -> None:
        (self.folder / RUN_META).write_text(json.dumps(meta, indent=2))


def read_meta(run_path: Path) -> dict:
    path = Path(run_path) / "llm" / RUN_META
    if not path.is_file():
        raise FileNotFoundError(f"{run_path} has no recorded LLM exchanges (no llm/{RUN_META})")
    return json.loads(path.read_text())


def read_exchanges(run_path: Path) -> list[dict]:
    folder = Path(run_path) / "llm"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("[0-9][0-9][0-9][0-9]-*.json"))]


class ChatModel:
    """What the agents call: chat(purpose, op, messages) -> Reply, with the ledger and the record kept.

    Raises BudgetSpent before a request the budget does not allow, LLMCallFailed when a request got no
    answer; both leave the run going. `on_call` sees each call's ledger line (the run's events)."""

    def __init__(self, llm: LLMConfig, recorder: Recorder, endpoint: Endpoint | None = None,
                 replay: list[dict] | None = None, on_call: Callable[[dict], None] = lambda data: None):
        self.llm = llm
        self.ledger = Ledger(llm)
        self.recorder = recorder
        self.on_call = on_call
        self.replay = list(replay) if replay is not None else None
        self.consecutive_failures = 0
        self.gave_up: str | None = None
        self._client = _client(endpoint, llm) if endpoint is not None and replay is None else None

    @property
    def available(self) -> bool:
        return self.gave_up is None and self.ledger.spent_reason is None

    def why_unavailable(self) -> str:
        return self.gave_up or self.ledger.spent_reason or ""

    def chat(self, purpose: str, op: str | None, messages: list[dict]) -> Reply:
        if self.gave_up:
            raise BudgetSpent(self.gave_up)
        try:
            self.ledger.check()
        except BudgetSpent as exc:
            self.on_call({"purpose": purpose, "op": op, "outcome": "budget_spent", "error": str(exc)})
            raise
        request = {"model": self.llm.model, "messages": messages, "temperature": self.llm.temperature,
                   "max_tokens": self.llm.max_tokens}
        started = time.perf_counter()
        if self.replay is not None:
            response, error = self._replayed(purpose)
        else:
            response, error = self._ask(request)
        seconds = round(time.perf_counter() - started, 3)
        usage = (response or {}).get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        record = {"purpose": purpose, "op": op, "request": request, "seconds": seconds}
        record.update({"error": error} if error else {"response": response})
        exchange = self.recorder.write(record)
        cost = self.ledger.record(op, prompt, completion, failed=error is not None)
        self.on_call({"purpose": purpose, "op": op, "outcome": "error" if error else "ok",
                      "prompt_tokens": prompt, "completion_tokens": completion, "cost": round(cost, 6),
                      "seconds": seconds, "exchange": exchange, **({"error": error["message"]} if error else {})})
        if error:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.llm.give_up_after:
                self.gave_up = (f"{self.consecutive_failures} requests in a row got no answer "
                                f"(last: {error['message']}); the template coder takes over")
            raise LLMCallFailed(error["kind"], error["message"])
        self.consecutive_failures = 0
        return Reply(response["content"], prompt, completion, exchange)

    def _ask(self, request: dict) -> tuple[dict | None, dict | None]:
        import openai

        try:
            completion = self._client.chat.completions.create(**request)
        except openai.APITimeoutError as exc:
            return None, {"kind": "timeout", "message": f"no answer within {self.llm.timeout_s:g} s "
                                                        f"after {self.llm.retries} retries ({exc})"}
        except openai.APIStatusError as exc:
            return None, {"kind": f"http_{exc.status_code}", "message": f"HTTP {exc.status_code} after "
                                                                       f"{self.llm.retries} retries: {exc.message}"}
        except openai.APIError as exc:
            return None, {"kind": type(exc).__name__, "message": str(exc)}
        choices = completion.choices or []
        content = (choices[0].message.content if choices and choices[0].message else None) or ""
        usage = completion.usage
        return {"content": content, "finish_reason": choices[0].finish_reason if choices else None,
                "model": completion.model,
                "usage": {"prompt_tokens": usage.prompt_tokens if usage else 0,
                          "completion_tokens": usage.completion_tokens if usage else 0}}, None

    def _replayed(self, purpose: str) -> tuple[dict | None, dict | None]:
        if not self.replay:
            # the recording ends where the original run stopped asking: nothing more to answer with
            self.gave_up = "the recording has no more answers"
            raise BudgetSpent(self.gave_up)
        recorded = self.replay.pop(0)
        if recorded["purpose"] != purpose:
            return None, {"kind": "replay_mismatch",
                          "message": f"the recording has a {recorded['purpose']} answer where this run asks "
                                     f"for {purpose} (exchange {recorded['seq']})"}
        return recorded.get("response"), recorded.get("error")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
