"""`sluice replay`: run a new config's request rules over flows saved with `-w` (rules/replay.py).

The `sluice` command (state/cli.py) imports this module only for `replay`: reading mitmproxy's flow files
needs mitmproxy, and nothing under state/ imports it. Nothing is sent: each saved request is only rewritten
in memory and compared.

A request is replayed as the proxy would see it: the flow's destination host picks the upstream's
settings, the client key it carries picks the client (keys resolved from the new config's `env:`/`file:`
references; a key that cannot be resolved matches no one, and the report says so once).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import exceptions, http, io

from rules.clients import KnownClient, digest, match_client, presented_key
from rules.config import Config, ConfigError, resolve_secret
from rules.providers import classify, wire_format
from rules.replay import ReplayedRequest, replay_request
from rules.rewrite import RuleContext, should_strip_billing_block


@dataclass
class ReplayReport:
    requests: list[ReplayedRequest] = field(default_factory=list)
    flows: int = 0  # every flow in the file, metered or not
    warnings: list[str] = field(default_factory=list)


def replay_file(flows: str | Path, config: Config, config_dir: Path | None) -> ReplayReport:
    """Every metered request saved in `flows`, under `config`'s rules. Raises ValueError for a file that
    cannot be read as mitmproxy flows."""
    report = ReplayReport()
    clients = _known_clients(config, config_dir, report.warnings)
    for flow in read_flows(Path(flows).expanduser()):
        report.flows += 1
        if not isinstance(flow, http.HTTPFlow):
            continue
        request = flow.request
        endpoint = classify(request.method, request.path)
        if endpoint is None:
            continue
        host = request.host  # where the request went (mitmproxy's destination), not its Host header
        upstream = next((u for u in config.upstreams if u.host == host.lower().rstrip(".")), None)
        client = match_client(presented_key(request.headers), clients)
        wire = wire_format(endpoint.api)
        context = RuleContext(
            wire=wire,
            host=host,
            rules=config.rules,
            client=client.name if client else None,
            user_id=client.user_id if client else None,
            strip_billing_block=should_strip_billing_block(
                wire, host, upstream.strip_billing_header if upstream else None
            ),
            content_encoding=request.headers.get("content-encoding"),
        )
        path = request.path.split("?", 1)[0]
        report.requests.append(replay_request(flow.id, path, request.raw_content or b"", context))
    return report


def read_flows(path: Path) -> Iterator[object]:
    try:
        with path.open("rb") as file:
            yield from io.FlowReader(file).stream()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from e
    except exceptions.FlowReadException as e:
        raise ValueError(f"{path} is not a mitmproxy flow file (saved with -w): {e}") from e


def _known_clients(config: Config, config_dir: Path | None, warnings: list[str]) -> list[KnownClient]:
    known = []
    for index, client in enumerate(config.clients):
        try:
            secret, _ = resolve_secret(client.key, field=f"clients[{index}].key", base_dir=config_dir)
        except ConfigError as e:
            warnings.append(f"{e}: calls with that client's key are replayed as no client's")
            continue
        known.append(KnownClient(client.name, digest(secret.get_secret_value()), client.user_id))
    return known
