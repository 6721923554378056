"""A load of real SDK calls through a proxy, each call with its own scripted upstream behaviour.

Every call carries a marker (`sluice-load-<run>-<n>`) twice: in its prompt, where the fake provider reads it
to pick that call's behaviour (`FakeProvider.choose`), and as `x-claude-code-session-id`, which sluice
records as the row's `session_id`, whichever provider the call went to. So each client call, the request
the fake saw (and the request id it answered with) and the `calls` row can be matched one to one.
"""

from __future__ import annotations

import random
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai

from tests.e2e.harness import Proxy, _http_module, anthropic_client, openai_client
from tests.fake_provider import Behaviour, FakeProvider, RecordedRequest, Usage

USAGE = Usage(input_tokens=150, cache_read_tokens=20, output_tokens=30)
TEXT = "load test answer with a few words"

APIS = ("messages", "messages-stream", "chat", "chat-stream", "responses-stream")
STREAMED = {"messages-stream", "chat-stream", "responses-stream"}

Claude = anthropic.Anthropic
Gpt = openai.OpenAI
Extra = dict[str, str]

_http = _http_module(anthropic)
_CUT = (_http.TransportError, anthropic.APIConnectionError, openai.APIConnectionError)
_HANG = (_http.TimeoutException, anthropic.APITimeoutError, openai.APITimeoutError)


def _faults(api: str) -> list[tuple[str, float, dict[str, Any]]]:
    """(name, weight, Behaviour fields) for one API; the rest of the calls are answered normally."""
    streamed = api in STREAMED
    overloaded = 529 if _provider(api) == "anthropic" else 503
    faults: list[tuple[str, float, dict[str, Any]]] = [
        ("split", 0.05, {"split": True}),
        ("slow", 0.02, {"delay": 0.3}),
        ("rate-limited", 0.04, {"status": 429}),
        ("overloaded", 0.03, {"status": overloaded}),
        ("reset-before-response", 0.03, {"reset_before_response": True}),
        ("malformed", 0.03, {"malformed": True}),
        ("reset", 0.03, {"reset_after": 3 if streamed else 1, "split": True}),
        ("truncated", 0.04, {"truncate_after": 3 if streamed else 1, "split": True}),
    ]
    # Encodings the SDKs ask for (gzip, br); sluice asks for identity on a chat stream whose usage chunk
    # it must cut, and a real provider would honour that, so chat streams get none.
    if api != "chat-stream":
        faults += [("gzip", 0.04, {"encoding": "gzip"}), ("br", 0.03, {"encoding": "br"})]
    if streamed:
        faults += [
            ("in-stream-error", 0.03, {"error_after": 3}),
            ("stall", 0.01, {"stall_after": 2, "stall_seconds": 2.0}),
        ]
    else:
        faults.append(("server-error", 0.03, {"status": 500}))
    return faults


@dataclass
class CallPlan:
    index: int
    marker: str
    api: str
    fault: str
    behaviour: Behaviour


@dataclass
class CallResult:
    marker: str
    api: str
    fault: str
    ending: str  # answer | status | cut | stream-error | wrong-answer | hang | refused
    status: int | None = None
    response_id: str | None = None
    finished_at: float = 0.0  # time.monotonic() when the client had its whole answer (or error)
    detail: str = ""


@dataclass
class Load:
    """`total` calls over `clients` threads; `faults=False` answers every call normally."""

    proxy: Proxy
    fake: FakeProvider
    total: int
    clients: int
    seed: int = 1
    faults: bool = True
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    plans: list[CallPlan] = field(init=False)
    results: dict[str, CallResult] = field(init=False, default_factory=dict)
    _next: int = field(init=False, default=0)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    stop: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.plans = []
        for index in range(self.total):
            api = rng.choice(APIS)
            name, fields = "none", {}
            if self.faults:
                roll = rng.random()
                for fault, weight, fault_fields in _faults(api):
                    if roll < weight:
                        name, fields = fault, fault_fields
                        break
                    roll -= weight
            behaviour = Behaviour(usage=USAGE, text=TEXT, **fields)
            self.plans.append(CallPlan(index, f"sluice-load-{self.run_id}-{index}", api, name, behaviour))
        self._pattern = re.compile(rb"sluice-load-" + self.run_id.encode() + rb"-(\d+)")

    # The fake's side.

    def choose(self, request: RecordedRequest) -> Behaviour | None:
        found = self._pattern.search(request.body)
        return self.plans[int(found.group(1))].behaviour if found else None

    def marker_of(self, request: RecordedRequest) -> str | None:
        found = self._pattern.search(request.body)
        return self.plans[int(found.group(1))].marker if found else None

    # The clients' side.

    @property
    def done(self) -> int:
        return len(self.results)

    def run(self, timeout: float) -> None:
        """Run every call (or until `stop` is set); returns when all client threads have finished."""
        self.fake.choose = self.choose
        threads = [
            threading.Thread(target=self._worker, name=f"load-client-{n}", daemon=True)
            for n in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        if any(thread.is_alive() for thread in threads):
            self.stop.set()
            raise AssertionError(f"load clients still running after {timeout}s: {self.done}/{self.total}")

    def _take(self) -> CallPlan | None:
        with self._lock:
            if self._next >= self.total or self.stop.is_set():
                return None
            plan = self.plans[self._next]
            self._next += 1
            return plan

    def _worker(self) -> None:
        with anthropic_client(self.proxy) as claude, openai_client(self.proxy) as gpt:
            while (plan := self._take()) is not None:
                result = self._call(plan, claude, gpt)
                with self._lock:
                    self.results[plan.marker] = result

    def _call(self, plan: CallPlan, claude: anthropic.Anthropic, gpt: openai.OpenAI) -> CallResult:
        result = CallResult(plan.marker, plan.api, plan.fault, ending="answer")
        headers = {"x-claude-code-session-id": plan.marker}
        prompt = f"call {plan.marker}: answer briefly"
        try:
            result.response_id = _CALLS[plan.api](claude, gpt, prompt, headers)
        except _HANG as e:
            result.ending, result.detail = "hang", repr(e)
        except (anthropic.APIStatusError, openai.APIStatusError) as e:
            result.ending, result.status, result.detail = "status", e.status_code, str(e)[:200]
        except _CUT as e:
            refused = isinstance(e, anthropic.APIConnectionError | openai.APIConnectionError) and isinstance(
                e.__cause__, _http.ConnectError
            )
            result.ending, result.detail = ("refused" if refused else "cut"), repr(e)[:200]
        except (anthropic.APIError, openai.APIError, ValueError) as e:
            result.ending, result.detail = "stream-error", repr(e)[:200]
        except Exception as e:  # anything else is a wrong answer, reported by the test, not a dead client
            result.ending, result.detail = "wrong-answer", repr(e)[:300]
        result.finished_at = time.monotonic()
        return result


class StreamSaidError(ValueError):
    """The stream itself said it failed (an error event the SDK passes on rather than raising)."""


def _provider(api: str) -> str:
    return "anthropic" if api.startswith("messages") else "openai"


def _messages(claude: Claude, gpt: Gpt, prompt: str, headers: Extra) -> str:
    message = claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=32,
        messages=[{"role": "user", "content": prompt}],
        extra_headers=headers,
    )
    assert message.content[0].text == TEXT  # type: ignore[union-attr]
    return message.id


def _messages_stream(claude: Claude, gpt: Gpt, prompt: str, headers: Extra) -> str:
    with claude.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=32,
        messages=[{"role": "user", "content": prompt}],
        extra_headers=headers,
    ) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == TEXT  # type: ignore[union-attr]
    return message.id


def _chat(claude: Claude, gpt: Gpt, prompt: str, headers: Extra) -> str:
    completion = gpt.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], extra_headers=headers
    )
    assert completion.choices[0].message.content == TEXT
    return completion.id


def _chat_stream(claude: Claude, gpt: Gpt, prompt: str, headers: Extra) -> str:
    chunks = list(
        gpt.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_headers=headers,
        )
    )
    # sluice asked for the usage chunk on the client's behalf; the client must never see it.
    assert all(chunk.choices for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == TEXT
    return chunks[0].id


def _responses_stream(claude: Claude, gpt: Gpt, prompt: str, headers: Extra) -> str:
    events = list(gpt.responses.create(model="gpt-5", input=prompt, stream=True, extra_headers=headers))
    if events[-1].type in ("error", "response.failed"):
        # The SDK hands a Responses stream's error event to the caller instead of raising.
        raise StreamSaidError(f"the stream ended with {events[-1].type}")
    assert events[-1].type == "response.completed"
    # Under threads the SDK sometimes leaves the final response unvalidated, as a dict.
    response: Any = events[-1].response  # type: ignore[union-attr]
    return str(response["id"] if isinstance(response, dict) else response.id)


_CALLS: dict[str, Callable[[Claude, Gpt, str, Extra], str]] = {
    "messages": _messages,
    "messages-stream": _messages_stream,
    "chat": _chat,
    "chat-stream": _chat_stream,
    "responses-stream": _responses_stream,
}


def read_rows(db_path: Path) -> list[dict[str, Any]]:
    """Every `calls` row, read with an ordinary connection (it also recovers a WAL after a crash)."""
    conn = sqlite3.connect(str(db_path), timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("select * from calls order by rowid")]
    finally:
        conn.close()
