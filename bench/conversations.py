"""Claude Code-like conversations, turn by turn, the same bytes on every run of a seed.

A Claude Code session sends, on every turn, everything so far: the tools (the same schemas in every session
of one version), the system prompt (the same instructions, then a block about this session's project),
and the messages, one exchange longer each turn — the assistant's text and tool call, then the tool's result.
Its cache breakpoints sit on the last tool, on both system blocks and on the last message, so each turn can
read the previous turn's prefix from the prompt cache. Each session has its own id, sent as
`x-claude-code-session-id` and inside `metadata.user_id` (a JSON string, Claude Code's shape).
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

MODEL = "claude-sonnet-4-5"
BILLING_BLOCK = "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli"
BREAKPOINT = {"type": "ephemeral"}
TOOL_NAMES = ("Bash", "Read", "Write", "Edit", "Glob", "Grep", "LS", "WebFetch", "TodoWrite", "Task")
_VOCABULARY = (
    "agent file patch test output step cache token stream header proxy request response module function",
    "class value error retry branch commit review change build config parse write read check run",
)
WORDS = " ".join(_VOCABULARY).split()


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(WORDS, k=count))


def tools(seed: int, description_words: int) -> list[dict[str, Any]]:
    """The tool schemas every session shares; a breakpoint on the last one."""
    rng = random.Random(f"tools:{seed}")
    schemas: list[dict[str, Any]] = [
        {
            "name": name,
            "description": words(rng, description_words),
            "input_schema": {
                "type": "object",
                "properties": {
                    f"arg_{i}": {"type": "string", "description": words(rng, 12)} for i in range(3)
                },
                "required": ["arg_0"],
            },
        }
        for name in TOOL_NAMES
    ]
    schemas[-1]["cache_control"] = BREAKPOINT
    return schemas


@dataclass
class Conversation:
    """One session: its identity, its fixed prefix and the messages so far."""

    number: int
    seed: int
    session_id: str
    user_id: str
    system: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    result_words: tuple[int, int]
    messages: list[dict[str, Any]] = field(default_factory=list)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def start(
        cls,
        number: int,
        *,
        seed: int,
        shared_tools: list[dict[str, Any]],
        instructions: str,
        result_words: tuple[int, int],
    ) -> Conversation:
        rng = random.Random(f"conversation:{seed}:{number}")
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        device = hashlib.sha256(f"device:{seed}".encode()).hexdigest()
        user_id = json.dumps({"device_id": device, "account_uuid": "", "session_id": session_id})
        project = (
            f"Working directory: /home/dev/project-{number}\nIs directory a git repo: Yes\n"
            f"gitStatus: {words(rng, 80)}"
        )
        system = [
            {"type": "text", "text": BILLING_BLOCK},
            {"type": "text", "text": instructions, "cache_control": BREAKPOINT},
            {"type": "text", "text": project, "cache_control": BREAKPOINT},
        ]
        first = {"role": "user", "content": [{"type": "text", "text": f"Task {number}: {words(rng, 60)}"}]}
        conversation = cls(number, seed, session_id, user_id, system, shared_tools, result_words, [first])
        conversation._rng = rng
        return conversation

    def request(self) -> dict[str, Any]:
        """This turn's Messages request: everything so far, the breakpoint on the last message."""
        messages = [*self.messages[:-1], _with_breakpoint(self.messages[-1])]
        return {
            "model": MODEL,
            "max_tokens": 32_000,
            "system": self.system,
            "tools": self.tools,
            "messages": messages,
            "metadata": {"user_id": self.user_id},
            "stream": True,
        }

    def headers(self) -> dict[str, str]:
        return {
            "x-claude-code-session-id": self.session_id,
            "x-app": "cli",
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
            "user-agent": "claude-cli/2.0.14 (external, cli)",
        }

    def advance(self) -> None:
        """The model answered with a tool call and the tool ran: one exchange more."""
        rng = self._rng
        turn = len(self.messages) // 2
        tool_id = f"toolu_01{self.number:04d}{turn:018d}"
        name = rng.choice(TOOL_NAMES)
        low, high = self.result_words
        result = words(rng, rng.randint(low, high))
        self.messages += [
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": words(rng, rng.randint(15, 60))},
                    {"type": "tool_use", "id": tool_id, "name": name, "input": {"arg_0": f"src/{turn}.py"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": result}],
            },
        ]


def _with_breakpoint(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of `message` with a breakpoint on its last block (earlier turns' markers are not kept)."""
    *before, last = message["content"]
    return {**message, "content": [*before, {**last, "cache_control": BREAKPOINT}]}


def conversations(
    count: int, *, seed: int, tool_words: int, instruction_words: int, result_words: tuple[int, int]
) -> list[Conversation]:
    shared_tools = tools(seed, tool_words)
    instructions = words(random.Random(f"instructions:{seed}"), instruction_words)
    return [
        Conversation.start(
            number, seed=seed, shared_tools=shared_tools, instructions=instructions, result_words=result_words
        )
        for number in range(count)
    ]
