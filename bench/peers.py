"""The peer row (`python -m bench.run --peers`): LiteLLM's proxy measured beside bare mitmdump and sluice, in
the same run, on the same fake upstream, client, request bodies and streams.

LiteLLM is a base-URL (reverse) proxy, not a forward one, so its client does what an Anthropic SDK pointed
at it does: plain HTTP to `http://127.0.0.1:PORT/anthropic/v1/messages?beta=true` (LiteLLM serves plain
HTTP unless given a certificate, and is run so behind a load balancer), no CONNECT, no TLS on that hop;
the mitmdumps terminate the client's TLS, so this hop favours the peer. LiteLLM forwards on its Anthropic
pass-through route (no translation: the body, query and stream go through as they are) to the bench
upstream at `https://127.0.0.1:PORT`, trusting only the bench's CA (`SSL_CERT_FILE`), with the upstream key
(`ANTHROPIC_API_KEY`) in place of the client's, which it checks as its master key: a credential swap, as
sluice's.

Run as a fair peer: one uvicorn worker (a mitmdump is one process, one event loop), logging at ERROR
(`LITELLM_LOG`; uvicorn's access log goes with it), as the mitmdumps run with `flow_detail=0` and
`termlog_verbosity=warn`; no database (no spend logs, no virtual keys); the model-cost map shipped in the
package (no fetch at start). Everything else is LiteLLM's default, uvloop and its pass-through logging
(it reads each answer's usage and prices it, as sluice meters every call) included.

LiteLLM runs from a virtualenv of its own under `.bench-peers/litellm/` (git-ignored): created with the
running Python and `pip install 'litellm[proxy]'` on first use, reused after.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.processes import ROOT, BenchError, Child, Proxy
from tests.e2e.harness import clean_env, free_port

PEER_NAME = "litellm"
PEER_CACHE = ROOT / ".bench-peers" / PEER_NAME
LITELLM_REQUIREMENT = "litellm[proxy]"
# LiteLLM's Anthropic pass-through: https://api.anthropic.com/v1/... becomes http://HOST:PORT/anthropic/v1/...
BASE_PATH = "/anthropic"
INSTALL_TIMEOUT_S = 900.0
START_TIMEOUT_S = 120.0  # LiteLLM imports for several seconds, longer on a loaded machine
PROBE_TIMEOUT_S = 2.0
INSTALLED_MARK = "sluice-bench-installed"  # written once pip succeeded: a venv without it is made again

# The phases a base-URL peer runs, and why the others are sluice's and bare mitmdump's only.
PEER_PHASES = ("latency", "throughput", "stream1", "stream20", "agent", "huge", "conversation")
PEER_SKIPPED = {
    "bedrock1": "the peer is set up with Anthropic's pass-through route only (Bedrock's signs with SigV4)",
    "fleet": "1,000 streams for minutes a round on a shared machine; stream1/stream20 stand for streaming",
    "bulk": "sluice's own bound (memory flat on a 200 MB stream), not a relay-cost comparison",
    "bomb": "sluice's own bounds against hostile gzip bodies, not a relay-cost comparison",
}
# Variables of the caller's environment that would point LiteLLM at a database, a cache or another upstream.
_FOREIGN_ENV_PREFIXES = ("LITELLM_", "ANTHROPIC_", "DATABASE_URL", "DIRECT_URL", "REDIS_", "SSL_", "PYTHON")


def litellm_config() -> dict[str, Any]:
    """The proxy's config file (YAML; JSON is YAML): the master key from the environment, nothing else. No
    `model_list`: the pass-through route needs none. No `database_url`: no spend logs, no virtual keys."""
    return {"general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"}}


def litellm_env(
    base: dict[str, str], *, upstream_port: int, ca_cert: Path, client_key: str, upstream_key: str
) -> dict[str, str]:
    """The proxy's environment: `base` without anything of the caller's that would change what LiteLLM talks
    to, plus the upstream on loopback, the bench CA as the only trusted one, and the two keys."""
    env = {
        name: value
        for name, value in base.items()
        if not name.upper().startswith(_FOREIGN_ENV_PREFIXES) and name.upper() != "REQUESTS_CA_BUNDLE"
    }
    env.update(
        {
            "ANTHROPIC_API_BASE": f"https://127.0.0.1:{upstream_port}",  # the bench upstream's cert names it
            "ANTHROPIC_API_KEY": upstream_key,
            "SSL_CERT_FILE": str(ca_cert),
            "LITELLM_MASTER_KEY": client_key,
            "LITELLM_LOG": "ERROR",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
    )
    return env


def litellm_command(venv: Path, config: Path, port: int) -> list[str]:
    """`litellm` on loopback with one worker (the CLI runs uvicorn in its own process for one)."""
    where = ["--host", "127.0.0.1", "--port", str(port)]
    return [str(venv / "bin" / "litellm"), "--config", str(config), *where, "--num_workers", "1"]


def litellm_venv(
    cache: Path = PEER_CACHE, requirement: str = LITELLM_REQUIREMENT, python: str = sys.executable
) -> Path:
    """The virtualenv LiteLLM runs from: `cache` as it is once installed, else made now (`python -m venv`,
    then pip from the configured index, about a minute). BenchError with pip's last lines if that fails."""
    if (cache / INSTALLED_MARK).exists() and (cache / "bin" / "litellm").exists():
        return cache
    if cache.exists():  # an install that did not finish: start it over
        shutil.rmtree(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    print(f"bench: installing {requirement} into {cache} (first use of --peers)", file=sys.stderr)
    log = cache.parent / f"{cache.name}-install.log"
    steps = (
        [python, "-m", "venv", str(cache)],
        [str(cache / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", requirement],
    )
    with log.open("wb") as sink:
        for step in steps:
            try:
                done = subprocess.run(
                    step, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, timeout=INSTALL_TIMEOUT_S
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                raise BenchError(f"--peers: could not install {requirement} into {cache}: {e}") from None
            if done.returncode:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
                shutil.rmtree(cache, ignore_errors=True)
                raise BenchError(
                    f"--peers: could not install {requirement} into {cache} ({step[2]} exited with "
                    f"{done.returncode}; PyPI or a pip index must be reachable); full log in {log}:\n{tail}"
                )
    (cache / INSTALLED_MARK).write_text(requirement + "\n")
    return cache


def installed_version(venv: Path) -> str | None:
    """The LiteLLM version installed in `venv`, from its dist-info directory's name."""
    for dist in sorted(venv.glob("lib/python*/site-packages/litellm-*.dist-info")):
        return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return None


def _answers(port: int) -> bool:
    """LiteLLM's liveness route answers 200: the app has started, not just the socket."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", "/health/liveliness")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start_litellm(
    workdir: Path, venv: Path, *, upstream_port: int, ca_cert: Path, client_key: str, upstream_key: str
) -> Proxy:
    """LiteLLM's proxy on a free loopback port, forwarding to the bench upstream; returns once it answers."""
    home = workdir / PEER_NAME
    home.mkdir()
    config = home / "config.yaml"
    config.write_text(json.dumps(litellm_config(), indent=2) + "\n")
    port = free_port()
    env = litellm_env(
        clean_env(),
        upstream_port=upstream_port,
        ca_cert=ca_cert,
        client_key=client_key,
        upstream_key=upstream_key,
    )
    args = litellm_command(venv, config, port)
    child = Child(f"{PEER_NAME} proxy", args, env=env, log=home / "litellm.log")
    child.wait_ready(lambda: _answers(port), START_TIMEOUT_S, poll_s=0.2)
    return Proxy(PEER_NAME, child, port, client_tls=None, lag_file=None, base_path=BASE_PATH)


def peer_report(venv: Path, phases: tuple[str, ...]) -> dict[str, Any]:
    """What the report says of the peer: which, how it was run, what it ran and what it skipped, and why."""
    return {
        "name": PEER_NAME,
        "version": installed_version(venv),
        "route": "Anthropic pass-through (/anthropic/v1/messages)",
        "workers": 1,
        "log_level": "ERROR",
        "database": None,
        "client_hop": "plain HTTP on 127.0.0.1 (base URL; the mitmdumps get CONNECT + TLS)",
        "upstream_hop": "HTTPS to 127.0.0.1, bench CA via SSL_CERT_FILE",
        "phases": [phase for phase in phases if phase in PEER_PHASES],
        "skipped": {phase: reason for phase, reason in PEER_SKIPPED.items() if phase in phases},
    }
