"""What cache-affine routing saves: one key pool, two routings, the same conversations, in one run.

    .venv/bin/python -m bench.affinity              # 20 conversations x 30 turns, each routing; a few minutes
    .venv/bin/python -m bench.affinity --quick      # 4 x 6: a smoke run (the test suite runs it)
    .venv/bin/python -m bench.affinity --json out.json

A real mitmdump with sluice holds a pool of three Anthropic keys, once with `routing = "first"` (every call
on the first usable key) and once with `routing = "affinity"` (a conversation stays on its key), one after the
other against the same fake provider (tests/fake_provider.py, reached under api.anthropic.com as in the
end-to-end tests). The fake keeps one prompt cache per key, with Anthropic's rules (tests/fake_accounts.py),
and churns each key: after a seeded number of requests the key answers 429 with a `retry-after` of a few
seconds, then recovers; its rate-limit headers show its own load. Claude Code-like conversations
(bench/conversations.py) run concurrently through the proxy on the anthropic SDK, which retries a 429 as
it always does (`retry-after`, `x-should-retry`), with a pause between turns where the tool would run.

Then it reads sluice's own database (`calls`) and prints, per routing: calls, the share of input tokens read
from the cache, tokens written to it, dollars, the 429s the clients saw, and how often a conversation moved
from one key to another. Seeds fix the conversations and every key's 429 schedule; when the clients' retries
land still depends on the machine, so two runs differ a little.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anthropic

from bench.conversations import Conversation, conversations
from bench.processes import BenchError, run_command, work_directory
from tests.e2e.harness import Proxy, async_anthropic_client, make_test_ca, start_proxy
from tests.fake_accounts import KeyLimits, PromptCache
from tests.fake_provider import FakeProvider, Usage

ROUTINGS = ("first", "affinity")
CLIENT_KEY = "sk-sluice-affinity-bench-client"
# Placeholder upstream keys: they only ever reach the fake. The fake seeds each key's 429 schedule from its
# value, so both routings meet the same schedules.
UPSTREAM_KEYS = tuple(f"sk-ant-api03-affinity-bench-key-{n}" for n in (1, 2, 3))
ENV = {"SLUICE_AFFINITY_CLIENT": CLIENT_KEY} | {
    f"SLUICE_AFFINITY_KEY_{n}": key for n, key in enumerate(UPSTREAM_KEYS, 1)
}
CONFIG = """\
[[clients]]
name = "bench"
key = "env:SLUICE_AFFINITY_CLIENT"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_AFFINITY_KEY_1", "env:SLUICE_AFFINITY_KEY_2", "env:SLUICE_AFFINITY_KEY_3"]
routing = "{routing}"
"""
REPLY = "Reading the file now."
CALL_TIMEOUT_S = 120.0
SDK_RETRIES = 10  # Claude Code's own setting
TURN_ATTEMPTS = 3  # a turn whose retries all failed is asked again, as a person would


@dataclass(frozen=True)
class Settings:
    conversations: int
    turns: int
    seed: int
    tool_words: int  # per tool description (ten tools): about 6 bytes a word
    instruction_words: int
    result_words: tuple[int, int]  # a tool result's size range
    output_tokens: int  # per call, as the fake reports it
    pause_s: tuple[float, float]  # between turns, where the tool runs
    start_spread_s: float  # conversations start evenly over this span (0: all at once)
    limit_every: tuple[int, int]  # requests a key serves before its next 429 spell
    limit_lasting: tuple[float, float]  # seconds a spell lasts
    deadline_s: float  # both routings, start-up included


FULL = Settings(
    conversations=20,
    turns=30,
    seed=14,
    tool_words=650,
    instruction_words=2_000,
    result_words=(300, 1_000),
    output_tokens=400,
    pause_s=(0.2, 1.0),
    start_spread_s=0.0,
    limit_every=(40, 120),
    limit_lasting=(2.0, 5.0),
    deadline_s=900.0,
)
QUICK = replace(
    FULL,
    conversations=4,
    turns=6,
    pause_s=(0.05, 0.2),
    limit_every=(5, 10),
    limit_lasting=(1.0, 2.0),
    deadline_s=300.0,
)


@dataclass
class ClientTally:
    """What the clients saw."""

    turns: int = 0
    rate_limited: int = 0  # 429 answers, retried by the SDK or not
    failed_turns: int = 0  # turns whose every retry failed (asked again)


async def converse(proxy: Proxy, conversation: Conversation, s: Settings, tally: ClientTally) -> None:
    """One conversation, turn after turn, on its own client (one Claude Code process each)."""

    async def seen(response: Any) -> None:
        if response.status_code == 429:
            tally.rate_limited += 1

    pauses = random.Random(f"pauses:{s.seed}:{conversation.number}")
    client = async_anthropic_client(
        proxy,
        CLIENT_KEY,
        httpx_kwargs={"event_hooks": {"response": [seen]}, "timeout": CALL_TIMEOUT_S},
        max_retries=SDK_RETRIES,
    )
    await asyncio.sleep(conversation.number * s.start_spread_s / s.conversations)
    async with client:
        for _ in range(s.turns):
            await _turn(client, conversation, tally)
            conversation.advance()
            await asyncio.sleep(pauses.uniform(*s.pause_s))


async def _turn(client: anthropic.AsyncAnthropic, conversation: Conversation, tally: ClientTally) -> None:
    failure: anthropic.APIError | None = None
    for _ in range(TURN_ATTEMPTS):
        try:
            stream = await client.messages.create(
                **conversation.request(), extra_headers=conversation.headers()
            )
            async for _event in stream:
                pass
        except anthropic.APIError as e:  # the SDK's retries are spent: ask again, as a person would
            tally.failed_turns += 1
            failure = e
            continue
        tally.turns += 1
        return
    raise BenchError(
        f"conversation {conversation.number}: {TURN_ATTEMPTS} attempts at a turn failed, the last: {failure}"
    )


def summarize(db_path: Path, tally: ClientTally, seconds: float) -> dict[str, Any]:
    """The routing's figures, from sluice's own `calls` table."""
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = list(
            conn.execute("select * from calls where api = 'messages' order by started_at, rowid").fetchall()
        )
    finally:
        conn.close()
    served = [row for row in rows if row["status"] == 200]
    read = sum(row["cache_read_tokens"] or 0 for row in served)
    written = sum((row["cache_write_5m_tokens"] or 0) + (row["cache_write_1h_tokens"] or 0) for row in served)
    uncached = sum(row["input_tokens"] or 0 for row in served)
    unpriced = sum(1 for row in served if row["cost_usd"] is None)
    if unpriced:
        raise BenchError(f"{unpriced} calls have no price: {served[0]['cost_note']}")
    keys: dict[str, int] = {}
    where: dict[str, str] = {}
    moves = 0
    moved: set[str] = set()
    for row in served:
        keys[row["credential"]] = keys.get(row["credential"], 0) + 1
        session = row["session_id"]
        if session in where and where[session] != row["credential"]:
            moves += 1
            moved.add(session)
        where[session] = row["credential"]
    total_input = read + written + uncached
    return {
        "calls": len(served),
        "upstream_calls": len(rows),
        "cache_read_share": round(read / total_input, 4) if total_input else None,
        "input_tokens": total_input,
        "cache_read_tokens": read,
        "cache_write_tokens": written,
        "usd": round(sum(row["cost_usd"] for row in served), 4),
        "client_429s": tally.rate_limited,
        "failed_turns": tally.failed_turns,
        "key_switches": moves,
        "conversations_moved": len(moved),
        "calls_per_key": sorted(keys.values(), reverse=True),
        "seconds": round(seconds, 1),
    }


def run_routing(
    fake: FakeProvider, workdir: Path, routing: str, s: Settings, deadline: float
) -> dict[str, Any]:
    """One routing from a cold start: fresh caches and limits at the fake, a fresh proxy and database."""
    fake.reset()
    fake.record_requests = False
    fake.set_default(text=REPLY, usage=Usage(output_tokens=s.output_tokens))
    fake.prompt_cache = PromptCache()
    fake.key_limits = KeyLimits(
        churn=True,
        seed=s.seed,
        every=s.limit_every,
        lasting=s.limit_lasting,
        tokens_per_minute=8_000_000,  # this load takes a visible share of it: headroom to read
        tokens_per_5h=200_000_000,
    )
    try:
        proxy = start_proxy(
            workdir / routing,
            fake=fake,
            config_toml=CONFIG.format(routing=routing),
            env=ENV,
            extra_args=["--set", "flow_detail=0"],  # no console line per flow
        )
    except RuntimeError as e:
        raise BenchError(f"mitmdump ({routing}) did not start: {e}") from e
    tally = ClientTally()
    started = time.monotonic()
    try:
        talks = conversations(
            s.conversations,
            seed=s.seed,
            tool_words=s.tool_words,
            instruction_words=s.instruction_words,
            result_words=s.result_words,
        )

        async def everyone() -> None:
            async with asyncio.timeout(deadline - time.monotonic()):
                await asyncio.gather(*(converse(proxy, talk, s, tally) for talk in talks))

        try:
            asyncio.run(everyone())
        except TimeoutError:
            raise BenchError(f"the run went over its {s.deadline_s:g} s limit (in {routing})") from None
        seconds = time.monotonic() - started
    finally:
        proxy.stop()
    if fake.errors:
        raise BenchError("the fake provider failed:\n" + "\n".join(fake.errors))
    if proxy.tracebacks():
        raise BenchError(f"mitmdump ({routing}) logged a traceback:\n{proxy.tracebacks()[0]}")
    if strangers := fake.key_limits.keys() - set(UPSTREAM_KEYS):
        raise BenchError(f"the fake saw keys that are not the pool's: {sorted(strangers)}")
    figures = summarize(proxy.workdir / "sluice.db", tally, seconds)
    figures["fake_429s"] = sum(fake.key_limits.refused.values())
    if figures["calls"] != s.conversations * s.turns:
        raise BenchError(f"{routing}: {figures['calls']} calls recorded, {s.conversations * s.turns} made")
    return figures


COLUMNS = (
    ("calls", "calls", "{}"),
    ("cache_read_share", "read from cache", "{:.1%}"),
    ("cache_write_tokens", "cache writes (tokens)", "{:,}"),
    ("usd", "dollars", "${:.2f}"),
    ("client_429s", "429s at clients", "{}"),
    ("key_switches", "key switches", "{}"),
    ("conversations_moved", "conversations moved", "{}"),
    ("calls_per_key", "calls per key", "{}"),
    ("seconds", "seconds", "{}"),
)


def print_table(results: dict[str, dict[str, Any]], s: Settings) -> None:
    print(
        f"cache-affine routing: {s.conversations} conversations x {s.turns} turns, 3 keys, 429 churn "
        f"(seed {s.seed}; a key limited every {s.limit_every[0]}-{s.limit_every[1]} requests "
        f"for {s.limit_lasting[0]:g}-{s.limit_lasting[1]:g} s; "
        + (f"starts spread over {s.start_spread_s:g} s)" if s.start_spread_s else "all starting at once)")
    )
    print("| routing | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for routing, figures in results.items():
        cells = [
            "/".join(map(str, figures[key])) if key == "calls_per_key" else form.format(figures[key])
            for key, _, form in COLUMNS
        ]
        print(f"| {routing} | " + " | ".join(cells) + " |")


def run(s: Settings, routings: Sequence[str], keep: bool) -> dict[str, Any]:
    """Every routing in turn against one fake provider; prints the table and returns the figures."""
    deadline = time.monotonic() + s.deadline_s
    with work_directory("sluice-affinity-", keep) as workdir:
        ca = make_test_ca(workdir / "ca")
        results: dict[str, dict[str, Any]] = {}
        with FakeProvider(certfile=ca.leaf_cert, keyfile=ca.leaf_key, ca_pem=ca.ca_cert) as fake:
            for routing in routings:
                if time.monotonic() > deadline:
                    raise BenchError(f"the run went over its {s.deadline_s:g} s limit (before {routing})")
                results[routing] = run_routing(fake, workdir, routing, s, deadline)
        print_table(results, s)
        return {"settings": asdict(s), "routings": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.affinity", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 conversations x 6 turns: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--seed", type=int, help="conversations and 429 schedules (default 14)")
    parser.add_argument("--conversations", type=int, help="concurrent conversations (full: 20)")
    parser.add_argument("--turns", type=int, help="turns per conversation (full: 30)")
    parser.add_argument(
        "--start-spread",
        type=float,
        metavar="SECONDS",
        help="start the conversations evenly over this many seconds instead of all at once",
    )
    parser.add_argument(
        "--routing", choices=ROUTINGS, action="append", help="run only this routing (repeatable)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    for name in ("seed", "conversations", "turns"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: max(1, getattr(args, name))})
    if args.start_spread is not None:
        settings = replace(settings, start_spread_s=max(0.0, args.start_spread))
    return run_command(lambda: run(settings, args.routing or ROUTINGS, args.keep), args.json)


if __name__ == "__main__":
    sys.exit(main())
