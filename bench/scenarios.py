"""What is measured: the phases run through each proxy, and the two measured inside this process.

Every phase returns a dict of samples (lists) and totals (numbers) and notes the spans during which it
loaded the proxy, so the event-loop lag samples can be matched to it. Each one also reports the CPU time
the mitmdump process used and the units (requests, events) it relayed meanwhile: on a shared machine CPU
per unit is steadier than any wall-clock figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bombs import request_bomb
from bench.client import REQUEST_TIMEOUT_S, Connection, connections, request_head
from bench.payloads import UPSTREAM_MODEL, agent_request, client_headers, conversation_request, stamped
from bench.processes import BenchError, Proxy, Usage
from bench.settings import (
    BEDROCK_HOST,
    BEDROCK_STREAM_PATH,
    CLIENT_NAME,
    CLIENT_USER_ID,
    PROVIDER_HOST,
    SLUICE_CONFIG,
    Settings,
)

MESSAGES_PATH = "/v1/messages?beta=true"  # Claude Code's own path, query included
MAX_REQUESTS_PER_WORKER = 1_000_000
_EVENT_TIME = re.compile(rb'"text":"(\d+) "')  # bench/upstream.py writes the send time as the delta text


@dataclass
class Workload:
    """The request bodies of a run, built once: Claude Code-shaped, at the sizes the settings ask for."""

    client_key: str
    settings: Settings
    small: bytes = field(init=False)
    small_stream: bytes = field(init=False)
    agent: bytes = field(init=False)
    huge: bytes = field(init=False)
    turns: dict[int, bytes] = field(init=False)  # one conversation at each of `conversation_turns`
    sent: int = field(default=0, init=False)
    _request_bomb: bytes | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.small = agent_request(s.small_request_bytes, stream=False)
        self.small_stream = agent_request(s.small_request_bytes, stream=True)
        self.agent = agent_request(s.agent_request_bytes, stream=False)
        self.huge = agent_request(s.huge_request_bytes, stream=False)
        self.turns = {turns: conversation_request(turns) for turns in s.conversation_turns}

    def turn(self, body: bytes) -> bytes:
        """`body` as the next turn of its conversation: the same prefix, a new last message."""
        self.sent += 1
        return stamped(body, self.sent)

    def head(
        self, body: bytes, *, stream: bool = False, query: str = "", extra: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        path = f"{MESSAGES_PATH}&{query}" if query else MESSAGES_PATH
        return request_head(path, [*client_headers(self.client_key, stream=stream), *extra], len(body))

    def bedrock_turn(self, query: str) -> tuple[bytes, bytes]:
        """(head, body) of the next ConverseStream call, as boto3 sends one with a Bedrock API key."""
        self.sent += 1
        message = {"role": "user", "content": [{"text": f"Turn {self.sent}: carry on with the refactor."}]}
        body = json.dumps(
            {
                "messages": [message],
                "system": [{"text": "You are a careful engineer."}],
                "inferenceConfig": {"maxTokens": 1024},
            },
            separators=(",", ":"),
        ).encode()
        headers = [
            ("host", BEDROCK_HOST),
            ("accept", "application/vnd.amazon.eventstream"),
            ("accept-encoding", "identity"),
            ("authorization", f"Bearer {self.client_key}"),
            ("content-type", "application/json"),
            ("user-agent", "Boto3/1.44.8 md/Botocore#1.44.8 ua/2.1 os/linux lang/python#3.12.1"),
            ("amz-sdk-invocation-id", secrets.token_hex(16)),
            ("amz-sdk-request", "attempt=1; max=1"),
        ]
        return request_head(f"{BEDROCK_STREAM_PATH}?{query}", headers, len(body)), body

    @property
    def request_bomb(self) -> bytes:
        """The gzip request bomb, built on first use (a few seconds per GiB) and kept for every round."""
        if self._request_bomb is None:
            self._request_bomb = request_bomb(self.settings.bomb_bytes)
        return self._request_bomb


# --- through the proxies ------------------------------------------------------------------------------


async def sequential(proxy: Proxy, work: Workload, body: bytes, count: int, phase: str) -> dict[str, Any]:
    """`count` requests back to back on one keep-alive connection: each one's latency in seconds."""
    head = work.head(body)
    samples = []
    async with connections(proxy, 1) as (conn,):
        # The connection's first request pays for things the others do not.
        await conn.call(head, work.turn(body))
        cpu, start = proxy.cpu_seconds(), time.monotonic()
        for _ in range(count):
            request = work.turn(body)
            t0 = time.perf_counter()
            response = await conn.call(head, request)
            samples.append(time.perf_counter() - t0)
            if proxy.name == "sluice" and UPSTREAM_MODEL.encode() not in response:
                raise BenchError(f"sluice did not apply its rules (no model alias): {response[:200]!r}")
        proxy.window(phase, start, time.monotonic())
        return {"latency": samples, "cpu_s": proxy.cpu_seconds() - cpu, "units": count}


async def conversation(proxy: Proxy, work: Workload) -> dict[str, Any]:
    """One conversation at each of `conversation_turns`, `turn_requests` calls at each (each a new turn on
    the same prefix): CPU per call against conversation length."""
    found: dict[str, Any] = {}
    for turns, body in work.turns.items():
        result = await sequential(proxy, work, body, work.settings.turn_requests, "conversation")
        found[f"cpu_s_{turns}"] = result["cpu_s"]
        found[f"units_{turns}"] = result["units"]
        found[f"bytes_{turns}"] = len(body)
    return found


async def throughput(proxy: Proxy, work: Workload) -> dict[str, Any]:
    """Requests per second that `throughput_concurrency` keep-alive connections get through, counted over
    `throughput_s` after a warm-up (each connection sends its next request as soon as one is answered)."""
    s = work.settings
    head = work.head(work.small)
    completed = 0
    cpu: list[float] = []
    async with connections(proxy, s.throughput_concurrency) as conns:
        loop = asyncio.get_running_loop()
        begin = time.monotonic() + s.throughput_warmup_s
        end = begin + s.throughput_s
        used: list[Usage | None] = []

        def mark() -> None:
            cpu.append(proxy.cpu_seconds())
            used.append(proxy.usage())

        loop.call_later(s.throughput_warmup_s, mark)
        loop.call_later(s.throughput_warmup_s + s.throughput_s, mark)

        async def worker(conn: Connection) -> None:
            nonlocal completed
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if time.monotonic() >= end:
                    return
                await conn.call(head, work.turn(work.small))
                if begin <= time.monotonic() <= end:
                    completed += 1

        await asyncio.gather(*(worker(conn) for conn in conns))
    proxy.window("throughput", begin, end)
    cpu_s = cpu[1] - cpu[0] if len(cpu) == 2 else None
    phase = used[1] - used[0] if len(used) == 2 and used[0] is not None and used[1] is not None else None
    return {
        "rps": completed / s.throughput_s,
        "cpu_s": cpu_s,
        "units": completed,
        "usage": asdict(phase) if phase is not None else None,
    }


async def streams(
    proxy: Proxy, work: Workload, concurrency: int, per_connection: int, phase: str, bedrock: bool = False
) -> dict:
    """Paced streams, `concurrency` at a time: each stream's time to first byte, and each event's one-way
    latency (client receive time minus the upstream's write time, both CLOCK_MONOTONIC). The connections
    start staggered over one interval, so the events of different streams do not all fall on one instant.
    `bedrock`: Bedrock ConverseStream calls (AWS event-stream frames) instead of Anthropic SSE ones."""
    s = work.settings
    query = f"bench=paced&events={s.stream_events}&interval_us={s.stream_interval_us}"
    head = work.head(work.small_stream, stream=True, query=query)
    ttfb: list[float] = []
    events: list[float] = []
    limit = REQUEST_TIMEOUT_S + s.stream_events * s.stream_interval_us / 1e6

    async def worker(index: int, conn: Connection) -> None:
        await asyncio.sleep(index * s.stream_interval_us / 1e6 / concurrency)
        for _ in range(per_connection):
            async with asyncio.timeout(limit):
                if bedrock:
                    call_head, request = work.bedrock_turn(query)
                else:
                    call_head, request = head, work.turn(work.small_stream)
                sent = time.monotonic_ns()
                await conn.send(call_head, request)
                headers = await conn.read_head()
                first, count = True, 0
                async for chunk in conn.chunks(headers):
                    received = time.monotonic_ns()
                    if first:
                        ttfb.append((received - sent) / 1e9)
                        first = False
                    stamps = _EVENT_TIME.findall(chunk)
                    events.extend((received - int(stamp)) / 1e9 for stamp in stamps)
                    count += len(stamps)
            if count != s.stream_events:
                raise BenchError(f"{proxy.name}: a stream delivered {count} of {s.stream_events} events")

    async with connections(proxy, concurrency, BEDROCK_HOST if bedrock else PROVIDER_HOST) as conns:
        cpu, start = proxy.cpu_seconds(), time.monotonic()
        await asyncio.gather(*(worker(index, conn) for index, conn in enumerate(conns)))
        proxy.window(phase, start, time.monotonic())
        cpu_s = proxy.cpu_seconds() - cpu
    return {"ttfb": ttfb, "events": events, "cpu_s": cpu_s, "units": len(events)}


FLEET_OPEN_BATCH = 50  # connections opened at a time


async def fleet(proxy: Proxy, work: Workload) -> dict[str, Any]:
    """`fleet_streams` paced streams open at once through one proxy, as a fleet of agents streaming. They
    start spread over `fleet_ramp_s`; what is measured is the steady state while every one is open: each
    event's one-way latency, the slowest stream's p99, the streams with an event a second or more late
    (starved), and the proxy's resident memory per open stream (its peak while they stream, over what it
    held before their connections opened)."""
    s = work.settings
    count = s.fleet_streams
    query = f"bench=paced&events={s.fleet_events}&interval_us={s.fleet_interval_us}"
    head = work.head(work.small_stream, stream=True, query=query)
    length_s = s.fleet_events * s.fleet_interval_us / 1e6
    if length_s <= s.fleet_ramp_s:
        raise BenchError("fleet streams must outlast their ramp: no moment has every stream open")
    per_stream: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    limit = REQUEST_TIMEOUT_S + s.fleet_ramp_s + length_s

    async def worker(index: int, conn: Connection) -> None:
        await asyncio.sleep(index * s.fleet_ramp_s / count)
        async with asyncio.timeout(limit):
            await conn.send(head, work.turn(work.small_stream))
            headers = await conn.read_head()
            async for chunk in conn.chunks(headers):
                received = time.monotonic_ns()
                for stamp in _EVENT_TIME.findall(chunk):
                    per_stream[index].append((received, (received - int(stamp)) / 1e9))
        if len(per_stream[index]) != s.fleet_events:
            raise BenchError(f"{proxy.name}: a stream delivered {len(per_stream[index])} of {s.fleet_events}")

    sampler = RssSampler(proxy.child.pid)
    before = sampler.rss()
    async with connections(proxy, count, batch=FLEET_OPEN_BATCH) as conns:
        with sampler:
            begin_ns = time.monotonic_ns()
            cpu, start = proxy.cpu_seconds(), time.monotonic()
            await asyncio.gather(*(worker(index, conn) for index, conn in enumerate(conns)))
            proxy.window("fleet", start, time.monotonic())
            cpu_s = proxy.cpu_seconds() - cpu
    # Every stream is open from the last one's start to the first one's end.
    steady = (begin_ns + int(s.fleet_ramp_s * 1e9), begin_ns + int(length_s * 1e9))
    streams = [[late for at, late in stream if steady[0] <= at <= steady[1]] for stream in per_stream]
    events = [late for stream in streams for late in stream]
    worst = max((_p99(stream) for stream in streams if stream), default=None)
    return {
        "events": events,
        "worst_stream_p99": worst,
        "starved": sum(1 for stream in streams if stream and max(stream) >= 1.0),
        "rss_per_stream": max(0, sampler.peak - before) / count,
        "cpu_s": cpu_s,
        "units": sum(len(stream) for stream in per_stream),
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class RssSampler:
    """Peak resident memory of a process while a block runs: sampled every few ms, plus the kernel's own
    high-water mark (VmHWM, reset on entry through clear_refs), which no sampling interval can miss."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _status(self, field_name: str) -> int | None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field_name):
                    return int(line.split()[1]) * 1024
        return None

    def rss(self) -> int:
        rss = self._status("VmRSS:")
        if rss is not None:
            return rss
        import psutil  # not on Linux: the `bench` extra installs it

        return int(psutil.Process(self.pid).memory_info().rss)

    def _run(self) -> None:
        for _ in range(100_000_000):
            if self._stop.wait(0.005):
                return
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._status("VmHWM:") or 0)


async def bulk(proxy: Proxy, work: Workload) -> dict[str, Any]:
    """One stream of `bulk_stream_bytes` relayed as fast as the proxy can: peak RSS over idle, MB/s."""
    size = work.settings.bulk_stream_bytes
    head = work.head(work.small_stream, stream=True, query=f"bench=bulk&bytes={size}")
    received = 0
    async with connections(proxy, 1) as (conn,):
        await asyncio.sleep(0.2)  # let the previous phase's work settle
        sampler = RssSampler(proxy.child.pid)
        idle = sampler.rss()
        with sampler:
            start = time.monotonic()
            async with asyncio.timeout(REQUEST_TIMEOUT_S + size / 2e6):
                await conn.send(head, work.turn(work.small_stream))
                async for chunk in conn.chunks(await conn.read_head()):
                    received += len(chunk)
            elapsed = time.monotonic() - start
        proxy.window("bulk", start, start + elapsed)
    if received < size:
        raise BenchError(f"{proxy.name}: the bulk stream delivered {received} of {size} bytes")
    return {"growth": sampler.peak - idle, "idle": idle, "mb_per_s": received / elapsed / 1e6}


BOMB_KINDS = ("json", "sse", "request")  # a whole response, an event stream, a request body
BOMB_SETTLE_S = 0.2  # the other clients run this long before the bomb is sent and after it has passed


async def bombs(proxy: Proxy, work: Workload) -> dict[str, Any]:
    """Each kind of gzip bomb in turn, while `bomb_others` clients call back to back on their own
    connections: the proxy's peak RSS over idle while the bomb passes, and the other clients' latencies
    with the bomb and, just before, for `bomb_calm_s` without it."""
    result: dict[str, Any] = {}
    for kind in BOMB_KINDS:
        for part, value in (await _bomb(proxy, work, kind)).items():
            result[f"{kind}_{part}"] = value
    return result


async def _bomb(proxy: Proxy, work: Workload, kind: str) -> dict[str, Any]:
    s = work.settings
    calm = await _others_alone(proxy, work, s.bomb_calm_s)
    during: list[float] = []
    stop = asyncio.Event()
    async with connections(proxy, s.bomb_others) as conns, connections(proxy, 1) as (bomb_conn,):
        others = [asyncio.create_task(_call_until(conn, work, stop, during)) for conn in conns]
        try:
            await asyncio.sleep(BOMB_SETTLE_S)
            sampler = RssSampler(proxy.child.pid)
            idle = sampler.rss()
            with sampler:
                start = time.monotonic()
                received = await _send_bomb(bomb_conn, work, kind)
                await asyncio.sleep(BOMB_SETTLE_S)  # what the bomb left the proxy to do afterwards
            proxy.window(f"bomb-{kind}", start, time.monotonic())
        finally:
            stop.set()
            await asyncio.gather(*others)
    if kind != "request" and received < 1000:
        raise BenchError(f"{proxy.name}: the {kind} bomb delivered only {received} bytes")
    return {"growth": sampler.peak - idle, "others": during, "calm": calm}


async def _send_bomb(conn: Connection, work: Workload, kind: str) -> int:
    """One bomb through the proxy; the bytes of the response body the client got."""
    if kind == "request":
        body = work.request_bomb
        head = work.head(body, extra=(("content-encoding", "gzip"),))
    else:
        body = work.turn(work.small_stream if kind == "sse" else work.small)
        head = work.head(body, stream=kind == "sse", query=f"bench=bomb&kind={kind}")
    received = 0
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        await conn.send(head, body)
        async for chunk in conn.chunks(await conn.read_head()):
            received += len(chunk)
    return received


async def _others_alone(proxy: Proxy, work: Workload, seconds: float) -> list[float]:
    samples: list[float] = []
    stop = asyncio.Event()
    async with connections(proxy, work.settings.bomb_others) as conns:
        tasks = [asyncio.create_task(_call_until(conn, work, stop, samples)) for conn in conns]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return samples


async def _call_until(conn: Connection, work: Workload, stop: asyncio.Event, samples: list[float]) -> None:
    head = work.head(work.small)
    for _ in range(MAX_REQUESTS_PER_WORKER):
        if stop.is_set():
            return
        t0 = time.perf_counter()
        await conn.call(head, work.turn(work.small))
        samples.append(time.perf_counter() - t0)


# --- in this process ----------------------------------------------------------------------------------


def _timed(fn: Callable[[], object], iterations: int, budget_s: float) -> list[float]:
    """CPU seconds of this thread per call: unlike wall time, not inflated by other processes' load."""
    samples = []
    deadline = time.monotonic() + budget_s
    for _ in range(iterations):
        t0 = time.thread_time()
        fn()
        samples.append(time.thread_time() - t0)
        if time.monotonic() > deadline:
            break
    return samples


def measure_rewrite(body: bytes, settings: Settings) -> dict[str, Any]:
    """`apply_request_rules` on one body with the benchmark's rules, called as the rewrite addon calls it;
    and `json.loads` + `json.dumps` of the same body, the least any parse-and-rewrite must spend."""
    from rules.config import parse_config
    from rules.providers import wire_format
    from rules.rewrite import RuleContext, apply_request_rules, should_strip_billing_block

    config = parse_config(SLUICE_CONFIG, "bench config")
    wire = wire_format("messages")
    context = RuleContext(
        wire=wire,
        host=PROVIDER_HOST,
        rules=config.rules,
        client=CLIENT_NAME,
        user_id=CLIENT_USER_ID,
        strip_billing_block=should_strip_billing_block(wire, PROVIDER_HOST, None),
    )
    result = apply_request_rules(body, context)
    if result.body is None:
        raise BenchError(f"the rules changed nothing on the benchmark request: {result.note}")
    n, budget = settings.rewrite_iterations, settings.rewrite_budget_s
    return {
        "rewrite": _timed(lambda: apply_request_rules(body, context), n, budget),
        "reference": _timed(
            lambda: json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")), n, budget
        ),
        "applied": result.applied,
        "bytes": len(body),
    }


def measure_writer(location: str, rows: int) -> dict[str, Any]:
    """Rows per second through `state.writer.RecordWriter` into a new database at `location` (a SQLite
    file, or an empty PostgreSQL database), from the first `put` to `flush` returning. Rows as the meter
    writes them for a streamed Claude Code call, each carrying the 24 rate-limit headers Anthropic sends on
    every response."""
    from state import store as sluice_db
    from state.writer import CallRecord, RecordWriter
    from tests.fake_provider import anthropic_ratelimit_headers

    store = sluice_db.open_store(location)
    now = datetime.now(UTC)
    limits = [(name.lower(), value) for name, value in anthropic_ratelimit_headers(1, now)]
    records = []
    for index in range(rows):
        started = now.isoformat(timespec="microseconds")
        row: dict[str, Any] = dict.fromkeys(sluice_db.CALL_COLUMNS)
        row.update(
            id=f"{index:08x}-bench-{secrets.token_hex(8)}",
            started_at=started,
            client=CLIENT_NAME,
            host=PROVIDER_HOST,
            method="POST",
            path="/v1/messages",
            provider="anthropic",
            api="messages",
            model=UPSTREAM_MODEL,
            stream=1,
            status=200,
            request_id="req_011C" + secrets.token_hex(11),
            response_id="msg_01" + secrets.token_hex(11),
            stop_reason="end_turn",
            input_tokens=1_234,
            cache_read_tokens=20_000,
            cache_write_5m_tokens=800,
            cache_write_1h_tokens=0,
            output_tokens=256,
            web_search_requests=0,
            service_tier="standard",
            cost_usd=0.0140,
            duration_ms=2345.678,
            ttft_ms=456.789,
            credential="sha256:0123456789abcdef",
            request_bytes=98_765,
            response_bytes=4_321,
            rules_applied='["model_alias:sonnet->claude-sonnet-4-5","system_block:house-rules",'
            '"cache_control_cap:5->4","request_headers_dropped:x-debug-trace"]',
            rate_limits=json.dumps(dict(limits)),
            session_id="3f0c9a52-7c1e-4b7a-9d55-2f4b1f9d8e21",
        )
        records.append(
            CallRecord(
                row=row,
                rate_limits=limits,
                host=PROVIDER_HOST,
                credential="sha256:0123456789abcdef",
                observed_at=started,
            )
        )
    writer = RecordWriter(store.connect)
    writer.start()
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for record in records:
            writer.put(record)
        if not writer.flush(timeout=max(30.0, rows / 1_000)):
            raise BenchError("the writer did not drain its queue in time")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        writer.close()
    with store.reading() as db:
        written = db.conn.execute("select count(*) from calls").fetchone()[0]
    store.close()
    if written != rows:
        raise BenchError(f"the writer wrote {written} of {rows} rows")
    # CPU seconds of this process (the writer thread and the puts): what the rate would be on an idle core.
    return {
        "engine": store.engine,
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "rows_per_cpu_s": rows / cpu,
    }
