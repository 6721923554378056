"""How big and how long each measurement is (full and quick), and the configuration sluice runs with."""

from __future__ import annotations

from dataclasses import dataclass

PROVIDER_HOST = "api.anthropic.com"
# Bedrock's runtime in one region: the `bedrock1` phase streams ConverseStream's event-stream frames from it.
BEDROCK_HOST = "bedrock-runtime.us-east-1.amazonaws.com"
BEDROCK_STREAM_PATH = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
CLIENT_NAME = "bench"
CLIENT_USER_ID = "bench-user-0001"

# The operator's configuration: every rule family switched on. Secrets are env references; the values are
# generated per run and given to the sluice mitmdump only.
SLUICE_CONFIG = """\
[[clients]]
name = "bench"
key = "env:SLUICE_BENCH_CLIENT_KEY"
user_id = "bench-user-0001"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_BENCH_KEY_1", "env:SLUICE_BENCH_KEY_2", "env:SLUICE_BENCH_KEY_3"]

[rules]
cache_control_max = 4
max_tokens_default = 8192
model_aliases = { sonnet = "claude-sonnet-4-5", opus = "claude-opus-4-1", haiku = "claude-haiku-4-5" }

[[rules.system_blocks]]
name = "house-rules"
text = "Follow the team's engineering handbook: small commits, tests with every change, no secrets in code."
cache = "5m"

[[rules.system_blocks]]
name = "opus-review"
text = "You are reviewing; be terse."
models = ["claude-opus-*"]

[[upstreams]]
host = "bedrock-runtime.us-east-1.amazonaws.com"
provider = "bedrock"
keys = ["env:SLUICE_BENCH_BEDROCK_KEY"]

[rules.request_headers]
allow = ["x-client-request-id"]
deny = ["anthropic-dangerous-direct-browser-access"]

[rules.response_headers]
allow = ["x-envoy-upstream-service-time"]
"""
UPSTREAM_KEY_ENV = ("SLUICE_BENCH_KEY_1", "SLUICE_BENCH_KEY_2", "SLUICE_BENCH_KEY_3")
CLIENT_KEY_ENV = "SLUICE_BENCH_CLIENT_KEY"
BEDROCK_KEY_ENV = "SLUICE_BENCH_BEDROCK_KEY"


@dataclass(frozen=True)
class Settings:
    rounds: int  # alternating rounds of every phase
    warmup_requests: int
    latency_requests: int  # per round, one connection, back to back
    throughput_concurrency: int
    throughput_warmup_s: float
    throughput_s: float
    small_request_bytes: int  # the request of the latency, throughput and stream phases
    stream_events: int
    stream_interval_us: int  # a paced stream sends one event every this often
    single_streams: int  # streams per round, one after another
    many_streams: int  # concurrent streams
    many_stream_waves: int  # streams per round on each of the concurrent connections
    # A fleet: this many paced streams open at once through one proxy, each `fleet_events` events long.
    fleet_streams: int
    fleet_events: int
    fleet_interval_us: int
    fleet_ramp_s: float  # the streams start spread over this long; events count once every one is open
    agent_request_bytes: int
    agent_requests: int
    huge_request_bytes: int
    huge_requests: int
    # One conversation at these turn counts (each turn a file read: ~2 KB), `turn_requests` calls at each.
    conversation_turns: tuple[int, ...]
    turn_requests: int
    bulk_stream_bytes: int
    bomb_bytes: int  # what each gzip bomb inflates to (about 1 MB on the wire per GiB)
    bomb_others: int  # other clients calling back to back while a bomb passes
    bomb_calm_s: float  # how long the other clients are timed without a bomb, per kind and round
    writer_rows: int
    rewrite_iterations: int
    rewrite_budget_s: float  # per body and function: the in-process timing stops early past this
    deadline_s: float  # the whole run, start-up included


FULL = Settings(
    rounds=3,
    warmup_requests=50,
    latency_requests=400,
    throughput_concurrency=16,
    throughput_warmup_s=1.0,
    throughput_s=8.0,
    small_request_bytes=6_000,
    stream_events=100,
    stream_interval_us=20_000,  # 50 events/s: a fast model's pace
    single_streams=6,
    many_streams=20,
    many_stream_waves=2,
    fleet_streams=1_000,
    fleet_events=60,
    fleet_interval_us=500_000,  # 2 events/s a stream, 2,000 through the proxy
    fleet_ramp_s=10.0,  # 100 new streams a second: the requests' own cost is not what this measures
    agent_request_bytes=100_000,
    agent_requests=60,
    huge_request_bytes=2_000_000,
    huge_requests=8,
    conversation_turns=(1, 50, 100, 200),
    turn_requests=40,
    bulk_stream_bytes=200_000_000,
    bomb_bytes=1024 * 1024 * 1024,
    bomb_others=4,
    bomb_calm_s=2.0,
    writer_rows=50_000,
    rewrite_iterations=200,
    rewrite_budget_s=10.0,
    deadline_s=1_800.0,
)

QUICK = Settings(
    rounds=1,
    warmup_requests=5,
    latency_requests=30,
    throughput_concurrency=16,
    throughput_warmup_s=0.3,
    throughput_s=1.0,
    small_request_bytes=6_000,
    stream_events=15,
    stream_interval_us=10_000,
    single_streams=2,
    many_streams=20,
    many_stream_waves=1,
    fleet_streams=40,
    fleet_events=25,
    fleet_interval_us=20_000,
    fleet_ramp_s=0.05,
    agent_request_bytes=20_000,
    agent_requests=5,
    huge_request_bytes=200_000,
    huge_requests=3,
    conversation_turns=(1, 20),
    turn_requests=5,
    bulk_stream_bytes=4_000_000,
    bomb_bytes=64 * 1024 * 1024,
    bomb_others=2,
    bomb_calm_s=0.3,
    writer_rows=2_000,
    rewrite_iterations=5,
    rewrite_budget_s=2.0,
    deadline_s=240.0,  # a bound, not the expected time (~15 s idle); CI machines are shared
)
