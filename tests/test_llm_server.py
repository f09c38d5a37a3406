"""A scripted OpenAI-compatible server on loopback, for the LLM tests, and tests of the server itself.

It serves POST /v1/chat/completions from a script: each request takes the next step (an answer with its
`usage` token counts, an HTTP error status, or an answer sent only after a delay past the client's
timeout). GET /v1/models lists one model. Every request is kept, headers included, for the tests to read.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass(frozen=True)
class Step:
    content: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200          # an HTTP error status instead of an answer
    delay_s: float = 0.0       # wait before answering (past the client's timeout: the client gives up)


def answer(content: str, prompt_tokens: int = 100, completion_tokens: int = 50, delay_s: float = 0.0) -> Step:
    return Step(content, prompt_tokens, completion_tokens, delay_s=delay_s)


def error(status: int) -> Step:
    return Step(status=status)


class ScriptedServer:
    def __init__(self, script: list[Step], api_key: str | None = None, default: Step | None = None):
        self.script = list(script)
        self.api_key = api_key            # when set, requests without this bearer key get 401
        self.default = default            # served once the script is used up; None -> HTTP 500
        self.requests: list[dict] = []    # {"path", "headers", "body"} of every chat request
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def chats(self) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next(self) -> Step:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        return self.default or Step(status=500)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped waiting (its timeout)

            def _authorised(self) -> bool:
                if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return False

            def do_GET(self):
                if not self._authorised():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "test-model", "object": "model",
                                                                 "created": 0, "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if not self._authorised():
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                step = server._next()
                if step.delay_s:
                    time.sleep(step.delay_s)
                if step.status != 200:
                    self._send(step.status, {"error": {"message": f"scripted HTTP {step.status}",
                                                       "type": "server_error"}})
                    return
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "test-model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": step.content}}],
                    "usage": {"prompt_tokens": step.prompt_tokens, "completion_tokens": step.completion_tokens,
                              "total_tokens": step.prompt_tokens + step.completion_tokens},
                })

        return Handler


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_follows_its_script():
    with ScriptedServer([answer("one", 7, 3), error(503)]) as server:
        url = server.base_url + "/chat/completions"
        status, data = _post(url, {"model": "m", "messages": []})
        assert status == 200 and data["choices"][0]["message"]["content"] == "one"
        assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        assert _post(url, {"model": "m", "messages": []})[0] == 503
        assert _post(url, {"model": "m", "messages": []})[0] == 500   # script used up
        assert len(server.chats) == 3


def test_server_checks_the_key():
    with ScriptedServer([answer("x")], api_key="k1") as server:
        url = server.base_url + "/chat/completions"
        assert _post(url, {"messages": []}, {"Authorization": "Bearer wrong"})[0] == 401
        assert _post(url, {"messages": []}, {"Authorization": "Bearer k1"})[0] == 200


@pytest.mark.parametrize("path", ["/v1/models"])
def test_server_lists_models(path):
    with ScriptedServer([]) as server:
        with urllib.request.urlopen(server.base_url.removesuffix("/v1") + path, timeout=10) as response:
            assert json.loads(response.read())["data"][0]["id"] == "test-model"
