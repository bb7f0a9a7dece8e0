"""A local HTTP server that speaks the OpenAI chat-completions protocol, scripted reply by reply.

It lets tests and benchmarks exercise the real client stack (HTTP, retries, timeouts, usage
accounting) without a language model. Every answer it gives is one you scripted, so nothing
here pretends to be a model: it is a test double for the *network peer*, not for our code.

Typical use::

    with ScriptedOpenAIServer() as server:
        server.script(text("Paris"), error(429, retry_after=1), text("Lyon"))
        ...  # point a pydanticai connection's host at server.base_url
        assert len(server.requests) == 3

Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_UNSET: Any = object()


@dataclass
class Reply:
    """One scripted answer. Build it with :func:`text`, :func:`tool_call`, :func:`structured`,
    :func:`error` or :func:`hang` rather than by hand."""

    content: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    structured: Any = _UNSET
    status: int = 200
    error_message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    raw_body: str | None = None
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens) to report instead of the server's own count."""
    ignore_max_tokens: bool = False
    """Answer in full and report ``usage`` as scripted even past the request's ``max_tokens``."""


def text(
    content: str,
    *,
    delay: float = 0.0,
    usage: tuple[int, int] | None = None,
    ignore_max_tokens: bool = False,
) -> Reply:
    """A plain assistant message.

    Like OpenAI's server, a request's ``max_completion_tokens`` (or ``max_tokens``) cuts the reply:
    at most that many completion tokens are reported (also of a scripted ``usage``), the text is
    cut to 4 characters a token and ``finish_reason`` is ``"length"``. ``ignore_max_tokens=True``
    scripts a misbehaving upstream that answers and bills past the cap."""
    return Reply(content=content, delay=delay, usage=usage, ignore_max_tokens=ignore_max_tokens)


def tool_call(name: str, arguments: dict[str, Any], *, delay: float = 0.0) -> Reply:
    """The assistant asks to call tool ``name`` with ``arguments``."""
    return Reply(tool_calls=[(name, arguments)], delay=delay)


def structured(
    data: Any,
    *,
    delay: float = 0.0,
    usage: tuple[int, int] | None = None,
    ignore_max_tokens: bool = False,
) -> Reply:
    """Structured output: a call of the request's output tool (pydantic-ai's ``final_result``),
    or JSON content when the request asked for a ``json_schema`` response format. A ``str`` is
    sent verbatim, so a test can send malformed JSON. ``max_tokens`` cuts it as for :func:`text`
    (the arguments are then truncated JSON, as a real server's would be)."""
    return Reply(structured=data, delay=delay, usage=usage, ignore_max_tokens=ignore_max_tokens)


def error(
    status: int, message: str = "scripted error", *, retry_after: float | None = None, delay: float = 0.0
) -> Reply:
    """An HTTP error in OpenAI's error shape, e.g. 429 with ``Retry-After`` or 500."""
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Reply(status=status, error_message=message, headers=headers, delay=delay)


def invalid_json(body: str = '{"choices": [', *, delay: float = 0.0) -> Reply:
    """A 200 whose body is not valid JSON (a broken gateway)."""
    return Reply(raw_body=body, delay=delay)


def hang() -> Reply:
    """Never answer (until the server stops), so the client's timeout must fire."""
    return Reply(hang=True)


@dataclass
class RecordedRequest:
    """What the server received, with monotonic arrival and completion times."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    arrived_at: float
    answered_at: float | None = None
    status: int | None = None
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens) the answer reported: what a provider would bill."""
    finish_reason: str | None = None

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools", []) if t.get("type") == "function"]

    def text_of(self, role: str) -> str:
        """All text the request carries for ``role`` (e.g. ``"system"`` or ``"user"``), joined."""
        parts: list[str] = []
        for message in self.messages:
            if message.get("role") != role:
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
        return "\n".join(parts)


Responder = Callable[[RecordedRequest], Reply]


class ScriptedOpenAIServer:
    """Serve ``/v1/chat/completions`` from a queue of scripted replies.

    :param responder: called for a request when the script queue is empty; without one, such a
        request gets a 500 naming the problem, so a test that under-scripts fails loudly.
    :param latency: seconds added before every answer (benchmarks use a fixed latency).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        responder: Responder | None = None,
        latency: float = 0.0,
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """What a pydanticai connection's ``host`` (the OpenAI base URL) should be."""
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}/v1"

    def start(self) -> ScriptedOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting ---------------------------------------------------------------------------
    def script(self, *replies: Reply | Iterable[Reply]) -> None:
        """Queue replies, answered in order, one per request."""
        with self._lock:
            for reply in replies:
                if isinstance(reply, Reply):
                    self._script.append(reply)
                else:
                    self._script.extend(reply)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()

    @property
    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        with self._lock:
            return len(self._script)

    def connection(self, model: str = "gpt-4o-mini", api_key: str = "sk-local-test") -> dict[str, Any]:
        """A ``pydanticai`` connection (as a dict for ``AIRFLOW_CONN_*`` JSON) pointing here."""
        return {
            "conn_type": "pydanticai",
            "host": self.base_url,
            "password": api_key,
            "extra": {"model": f"openai-chat:{model}"},
        }

    # -- serving -----------------------------------------------------------------------------
    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(request)
        return error(500, f"scripted server: no reply scripted for request #{request.index}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body would wait ~40 ms for
            # the client's delayed ACK on every answer, inflating every scripted latency.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                return

            def _send(self, status: int, payload: str, headers: dict[str, str] | None = None) -> None:
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200, json.dumps({"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                    )
                else:
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsed": raw.decode(errors="replace")}
                request = RecordedRequest(
                    index=next(server._counter),
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    arrived_at=time.monotonic(),
                )
                with server._lock:
                    server.requests.append(request)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    request.status = 404
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                    return
                reply = server._next_reply(request)
                if reply.hang:
                    server._stopping.wait()
                    return
                pause = server.latency + reply.delay
                if pause > 0:
                    time.sleep(pause)
                status, payload = _render(reply, request)
                request.status = status
                request.answered_at = time.monotonic()
                try:
                    self._send(status, payload, reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout); nothing to answer

        return Handler


def _arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _estimate_tokens(text_value: str) -> int:
    return max(1, len(text_value) // 4)


def _output_cap(body: dict[str, Any]) -> int | None:
    """The request's output cap: ``max_completion_tokens`` (current clients), else ``max_tokens``."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _render(reply: Reply, request: RecordedRequest) -> tuple[int, str]:
    if reply.raw_body is not None:
        return 200, reply.raw_body
    if reply.status >= 400:
        kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
        return reply.status, json.dumps(
            {"error": {"message": reply.error_message, "type": kind, "code": kind}}
        )

    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    calls = list(reply.tool_calls)
    if reply.structured is not _UNSET:
        response_format = request.body.get("response_format") or {}
        if response_format.get("type") in ("json_schema", "json_object"):
            message["content"] = _arguments(reply.structured)
        else:
            tools = request.tool_names
            output_tools = [name for name in tools if name.startswith("final_result")] or tools
            if not output_tools:
                return 400, json.dumps(
                    {"error": {"message": "scripted server: structured reply but the request offers no tool"}}
                )
            calls.append((output_tools[0], reply.structured))
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{request.index}_{n}",
                "type": "function",
                "function": {"name": name, "arguments": _arguments(arguments)},
            }
            for n, (name, arguments) in enumerate(calls)
        ]
    prompt_text = json.dumps(request.messages)
    completion_text = json.dumps(message)
    prompt_tokens, completion_tokens = reply.usage or (
        _estimate_tokens(prompt_text),
        _estimate_tokens(completion_text),
    )
    finish_reason = "tool_calls" if calls else "stop"
    cap = _output_cap(request.body)
    if cap is not None and completion_tokens > cap and not reply.ignore_max_tokens:
        # What an OpenAI server does: it stops generating at the cap, bills the cap and says why.
        completion_tokens, finish_reason = cap, "length"
        if isinstance(message.get("content"), str):
            message["content"] = message["content"][: cap * 4]
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = call["function"]["arguments"][: cap * 4]
    request.usage, request.finish_reason = (prompt_tokens, completion_tokens), finish_reason
    return 200, json.dumps(
        {
            "id": f"chatcmpl-{request.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or "scripted",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )
