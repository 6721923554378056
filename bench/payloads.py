"""Request bodies and headers shaped like Claude Code's, at any size, the same bytes on every run.

A real agent turn is one Messages request carrying everything so far: Claude Code's attribution block at
system[0], its instructions, a dozen tool schemas, then user / tool_use / tool_result turns holding file
contents, with cache breakpoints on the system prompt, the last tool and the last message. The bodies here
have that shape (and some non-ASCII text), grown to the size asked for by adding turns, so the rewrite rules
do the work they would do on real traffic: alias the model, inject the operator's system block, stamp the
user id, cap five breakpoints to four.

Like a real conversation, no two requests are the same: the last message (the turn's new tool result)
carries a stamp, `TURN_STAMP` wide, that `stamped` makes unique per request; everything before it repeats
from the previous request, as an agent re-sends its conversation on every turn.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

CLIENT_MODEL = "sonnet"  # an alias in the benchmark config: sluice rewrites it to the real model
UPSTREAM_MODEL = "claude-sonnet-4-5"
BILLING_BLOCK = "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli"
TURN_STAMP = b"turn-000000000000"  # in every body's last message; `stamped` writes a request number over it

_VOCABULARY = (
    "the agent reads file writes patch runs tests then checks output and retries when a step fails "
    "context window tokens cache breakpoint tool result stream usage header proxy request response "
    "naïve café 日本語 ünïcödé résumé — “quoted” ✓"
)
_WORDS = _VOCABULARY.split()

_TOOL_NAMES = (
    "Bash",
    "Read",
    "Write",
    "Edit",
    "MultiEdit",
    "Glob",
    "Grep",
    "LS",
    "WebFetch",
    "WebSearch",
    "TodoWrite",
    "NotebookEdit",
    "Task",
    "ExitPlanMode",
    "BashOutput",
    "KillShell",
)


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def _source(rng: random.Random, n_lines: int) -> str:
    """Numbered lines like Claude Code's Read tool returns them."""
    return "\n".join(f"{number:>6}\t{_text(rng, rng.randint(3, 12))}" for number in range(1, n_lines + 1))


def _tool(rng: random.Random, name: str) -> dict[str, Any]:
    properties = {
        f"param_{index}": {
            "type": rng.choice(["string", "integer", "boolean"]),
            "description": _text(rng, rng.randint(6, 20)),
        }
        for index in range(rng.randint(2, 6))
    }
    return {
        "name": name,
        "description": _text(rng, rng.randint(60, 240)),
        "input_schema": {
            "type": "object",
            "properties": properties,
            "required": sorted(properties)[:1],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


def _turn(rng: random.Random, index: int) -> list[dict[str, Any]]:
    tool_id = f"toolu_01{index:022d}"
    return [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": _text(rng, rng.randint(10, 40))},
                {
                    "type": "tool_use",
                    "id": tool_id,
                    "name": "Read",
                    "input": {"file_path": f"/src/module_{index}.py", "limit": 2000, "offset": 0},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_id, "content": _source(rng, rng.randint(20, 60))}
            ],
        },
    ]


def agent_request(target_bytes: int, *, stream: bool, seed: int = 7) -> bytes:
    """A Claude Code-like Messages request of at least `target_bytes` (compact JSON, UTF-8).

    Four client cache breakpoints (two system blocks, the last tool, the last message): the operator's
    cached system block makes five, which the cache cap brings back to four.
    """
    rng = random.Random(seed)
    tool_count = max(2, min(len(_TOOL_NAMES), target_bytes // 6_000))
    tools = [_tool(rng, name) for name in _TOOL_NAMES[:tool_count]]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    body: dict[str, Any] = {
        "model": CLIENT_MODEL,
        "max_tokens": 32_000,
        "stream": stream,
        "temperature": 1,
        "system": [
            {"type": "text", "text": BILLING_BLOCK},
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": _text(rng, max(20, min(2_000, target_bytes // 60))),
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": tools,
        "messages": [{"role": "user", "content": [{"type": "text", "text": _text(rng, 30)}]}],
    }
    size = len(_dump(body))
    index = 0
    while size < target_bytes:
        turn = _turn(rng, index)
        body["messages"].extend(turn)
        size += len(_dump(turn))
        index += 1
    last = body["messages"][-1]["content"][-1]
    last["cache_control"] = {"type": "ephemeral"}
    key = "text" if last["type"] == "text" else "content"
    last[key] = f"{TURN_STAMP.decode()} {last[key]}"
    return _dump(body)


def conversation_request(turns: int, *, stream: bool = False, seed: int = 11) -> bytes:
    """Turn `turns` of one Claude Code conversation: the same system prompt and tools whatever the turn, and
    `turns` file reads after the first message, so that a later turn's body begins with an earlier one's."""
    rng = random.Random(seed)
    tools = [_tool(rng, name) for name in _TOOL_NAMES]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    body: dict[str, Any] = {
        "model": CLIENT_MODEL,
        "max_tokens": 32_000,
        "stream": stream,
        "system": [
            {"type": "text", "text": BILLING_BLOCK},
            {"type": "text", "text": _text(rng, 1_500), "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "messages": [{"role": "user", "content": [{"type": "text", "text": _text(rng, 30)}]}],
    }
    for index in range(turns):
        body["messages"].extend(_turn(rng, index))
    last = body["messages"][-1]["content"][-1]
    last["cache_control"] = {"type": "ephemeral"}
    key = "text" if last["type"] == "text" else "content"
    last[key] = f"{TURN_STAMP.decode()} {last[key]}"
    return _dump(body)


def stamped(body: bytes, number: int) -> bytes:
    """`body` (from agent_request) with request `number` in its last message: a new turn, same length."""
    stamp = f"turn-{number:0{len(TURN_STAMP) - 5}d}".encode()
    at = body.rfind(TURN_STAMP)
    return body[:at] + stamp + body[at + len(TURN_STAMP) :]


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def client_headers(client_key: str, *, stream: bool) -> list[tuple[str, str]]:
    """What Claude Code (the Anthropic TypeScript SDK underneath) sends, plus one header no policy allows."""
    return [
        ("host", "api.anthropic.com"),
        ("accept", "text/event-stream" if stream else "application/json"),
        ("accept-encoding", "identity"),
        ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14"),
        ("anthropic-dangerous-direct-browser-access", "true"),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("user-agent", "claude-cli/2.0.14 (external, cli)"),
        ("x-api-key", client_key),
        ("x-app", "cli"),
        ("x-claude-code-session-id", str(uuid.UUID(int=random.Random(1).getrandbits(128)))),
        ("x-stainless-arch", "x64"),
        ("x-stainless-helper-method", "stream" if stream else "create"),
        ("x-stainless-lang", "js"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-package-version", "0.60.0"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-runtime", "node"),
        ("x-stainless-runtime-version", "v22.17.0"),
        ("x-stainless-timeout", "600"),
        ("x-debug-trace", "bench"),  # not in any allow-list: sluice drops it and notes that on the row
        ("connection", "keep-alive"),
    ]
