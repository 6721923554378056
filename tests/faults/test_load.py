"""Load with injected faults: concurrent SDK clients, a mix of streamed and plain calls on three APIs.

Default run: 500 calls from 20 clients. `--soak`: 10,000 calls from 50 clients. Either way: every call ends
(no hang), ends the way its fault says, and has exactly one row matched to the request the fake saw; the
proxy still serves at the end, and its memory stays flat from the middle of the run to the end.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest

from tests.e2e.harness import Proxy, anthropic_client
from tests.fake_provider import FakeProvider
from tests.faults.load import USAGE, Load, read_rows
from tests.faults.support import MESSAGE, assert_no_tracebacks, rss_bytes, wait_until

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
# Faults the client must not notice (its full answer arrives), and those it must see as an HTTP status.
# Every other fault may end as a status, a cut or a stream error; never a hang or a wrong answer.
ANSWERED = {"none", "split", "slow", "gzip", "br"}
STATUS = {"rate-limited": 429, "overloaded": (529, 503), "server-error": 500}
# RSS growth allowed from the middle of the run to its end. Measured here: mitmdump's RSS creeps by about
# 1 KiB per call with or without sluice (10,000 calls: +5 MiB over the second half), and tracemalloc shows
# the Python heap flat over it (+165 KiB, sluice's bounded cache-health table): allocator and TLS memory,
# not a reference kept. A leaked flow or call record is 10 KiB or more with its headers and bodies, so
# 50 MiB over the soak's second half (5,000 calls): the soak bound is well below that. The default run is
# still warming up at its middle (250 calls to go), so its bound only catches a gross leak, such as every
# call's body kept (64 KiB a call and up).
GROWTH_BOUND = {False: 16 * MiB, True: 20 * MiB}


def test_load_with_faults_gives_every_call_exactly_one_row(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], soak: bool
) -> None:
    total, clients = (10_000, 50) if soak else (500, 20)
    proxy = start_proxy(config_toml="idle_timeout_s = 1\n")
    load = Load(proxy, fake, total=total, clients=clients, seed=20240611)
    samples: list[tuple[int, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            samples.append((load.done, rss_bytes(proxy.process.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        load.run(timeout=1800 if soak else 240)
    finally:
        sampling.set()
        sampler.join(5)
    results = load.results

    # Every call ended, the way its fault says.
    endings = Counter((r.fault, r.ending) for r in results.values())
    assert len(results) == total, endings
    bad = [r for r in results.values() if r.ending in ("hang", "wrong-answer", "refused")]
    assert not bad, "\n".join([str(endings), *(f"{r.fault} {r.api}: {r.detail}" for r in bad[:10])])
    for result in results.values():
        if result.fault in ANSWERED:
            assert result.ending == "answer", result
        elif result.fault in STATUS:
            expected = STATUS[result.fault]
            assert result.ending == "status" and result.status in (
                expected if isinstance(expected, tuple) else (expected,)
            ), result

    # Exactly one row per call, matched through the marker to what the fake saw and answered.
    assert wait_until(lambda: len(read_rows(proxy.db_path)) >= total, timeout=60)
    rss_end = rss_bytes(proxy.process.pid)
    rows = read_rows(proxy.db_path)
    per_call = Counter(row["session_id"] for row in rows)
    assert len(rows) == total
    assert set(per_call) == set(results), "rows for calls nobody made, or calls without a row"
    assert max(per_call.values()) == 1, [m for m, n in per_call.items() if n > 1][:10]
    assert len({row["id"] for row in rows}) == total
    by_marker = {row["session_id"]: row for row in rows}
    seen = Counter(load.marker_of(request) for request in fake.requests)
    assert set(seen) == set(results) and max(seen.values()) == 1  # one upstream request per call
    for request in fake.requests:
        marker = load.marker_of(request)
        row, fault = by_marker[marker], results[marker].fault
        sent_id = request.response.header("request-id") or request.response.header("x-request-id")
        if fault == "reset-before-response":
            assert (row["status"], row["request_id"]) == (None, None), (fault, row)
        elif fault == "reset" and row["status"] is None:
            # A TCP reset discards what the proxy had not read yet, the response head included.
            assert row["request_id"] is None and row["error"].startswith("connection lost"), (fault, row)
        else:
            assert row["request_id"] == sent_id, (fault, row)
    for result in results.values():
        row = by_marker[result.marker]
        assert row["stream"] == int(result.api.endswith("stream")), row
        if result.ending == "answer":
            assert (row["status"], row["error"], row["response_id"]) == (200, None, result.response_id), row
            assert row["output_tokens"] == USAGE.output_tokens, row
        elif not (result.fault == "malformed" and row["stream"]):
            # (A malformed record in the middle of a stream that then completes is not an error sluice
            # sees: it parses only the records that carry usage, ids and errors.)
            assert row["error"], (result, row)

    # Still serving, and memory flat from the middle of the run to the end.
    fake.choose = None
    fake.next(usage=USAGE)
    with anthropic_client(proxy) as client:
        assert client.messages.create(**MESSAGE).usage.output_tokens == USAGE.output_tokens
    assert proxy.returncode is None
    rss_mid = next(rss for done, rss in samples if done >= total // 2)
    rss_peak = max(rss for _, rss in samples)
    tally = dict(Counter(r.ending for r in results.values()))
    print(f"\nload {total} calls / {clients} clients: endings {tally}")
    mid, end, peak = (f"{value / MiB:.1f} MiB" for value in (rss_mid, rss_end, rss_peak))
    print(f"mitmdump RSS: mid {mid}, end {end}, peak {peak}")
    assert rss_end - rss_mid <= GROWTH_BOUND[soak], (rss_mid / MiB, rss_end / MiB)
    proxy.stop()
    assert_no_tracebacks(proxy)
    assert "usage parser stopped" not in proxy.log_text()
