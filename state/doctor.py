"""`sluice doctor`: everything that stops a first call, checked, each failure with what to do about it.

Each check is a function that returns one `Check` (`pass`, `fail`, or `skip` when it does not apply) and
never raises: a check that cannot tell fails, saying why. No check prints a secret: a credential is named
by where the config says it lives (`upstreams[0].keys[1] env:ANTHROPIC_KEY_2`), never by its value.
Nothing is sent anywhere except with `online=True`, where each upstream key is asked for the provider's
model list (`GET /v1/models`: free on both APIs), directly, never through a proxy.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import psycopg

from rules.config import Config, ConfigError, Upstream, load_config, resolve_secret
from rules.providers import format_of, providers
from rules.secrets import unusable_secret
from state.store import postgres, redact, redact_error

Status = Literal["pass", "fail", "skip"]

CA_FILE = "mitmproxy-ca-cert.pem"
# Which clients read which variable to trust an extra CA.
TRUST_VARIABLES = {
    "NODE_EXTRA_CA_CERTS": "Node clients (Claude Code)",
    "SSL_CERT_FILE": "Python clients (anthropic, openai SDKs, httpx)",
    "REQUESTS_CA_BUNDLE": "clients built on requests (aider, litellm)",
}
PROVIDER_HOSTS = tuple(host for known in providers() for host in known.hosts)
CONNECT_TIMEOUT_S = 2.0
ONLINE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    advice: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# ── versions ────────────────────────────────────────


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    text = ".".join(str(part) for part in version)
    if version >= (3, 12):
        return Check("python", "pass", f"Python {text}")
    return Check(
        "python",
        "fail",
        f"Python {text}; sluice needs 3.12 or later (mitmproxy 12)",
        "install Python 3.12+ and run scripts/run again (or set PYTHON=/path/to/python3.12)",
    )


def check_mitmproxy(version: Callable[[str], str] = metadata.version) -> Check:
    try:
        text = version("mitmproxy")
    except metadata.PackageNotFoundError:
        return Check("mitmproxy", "fail", "mitmproxy is not installed", "run scripts/run (it installs it)")
    major = text.split(".")[0]
    if major == "12":
        return Check("mitmproxy", "pass", f"mitmproxy {text}")
    return Check(
        "mitmproxy",
        "fail",
        f"mitmproxy {text}; sluice needs 12.x",
        "reinstall: .venv/bin/pip install -e . (pyproject.toml pins mitmproxy>=12,<13)",
    )


# ── certificate authority and trust ────────────────────────────────────────


def ca_path(confdir: str | os.PathLike[str]) -> Path:
    return Path(confdir).expanduser() / CA_FILE


def check_ca(confdir: str | os.PathLike[str]) -> Check:
    path = ca_path(confdir)
    if path.is_file() and _pem_bodies(path):
        return Check("mitmproxy CA", "pass", f"{path}")
    return Check(
        "mitmproxy CA",
        "fail",
        f"no CA certificate at {path}",
        "start the proxy once (scripts/run): mitmproxy writes its CA there on first start "
        "(or pass --confdir if you run it with another confdir)",
    )


def check_trust(env: Mapping[str, str], confdir: str | os.PathLike[str]) -> Check:
    """Which trust variables name a file holding mitmproxy's CA. With HTTPS_PROXY set, one that leads
    elsewhere fails (its clients will refuse the proxy's certificates), and so does none at all."""
    path = ca_path(confdir)
    ca = _pem_bodies(path)
    if not ca:
        return Check("CA trust", "skip", "no mitmproxy CA yet (see above)")
    trusting, wrong = [], []
    for variable, clients in TRUST_VARIABLES.items():
        value = env.get(variable)
        if not value:
            continue
        target = Path(value).expanduser()
        if ca <= _pem_bodies(target):
            trusting.append(f"{variable} ({clients})")
        else:
            why = "is not a file" if not target.is_file() else "does not hold the mitmproxy CA"
            wrong.append(f"{variable}={value} {why}")
    if not _proxy_variable(env):
        found = "; ".join([*(f"trusted by {name}" for name in trusting), *wrong]) or "no trust variable set"
        return Check("CA trust", "skip", f"HTTPS_PROXY is not set, so no client needs the CA ({found})")
    if wrong:
        return Check(
            "CA trust", "fail", "; ".join(wrong), f"point it at the CA: export {_trust_exports(path)}"
        )
    if trusting:
        return Check("CA trust", "pass", "trusted by " + ", ".join(trusting))
    return Check(
        "CA trust",
        "fail",
        "HTTPS_PROXY is set but no client trusts the mitmproxy CA: TLS through the proxy will fail",
        f"export {_trust_exports(path)}",
    )


def _trust_exports(path: Path) -> str:
    return " ".join(f"{variable}={path}" for variable in TRUST_VARIABLES)


def _pem_bodies(path: Path) -> frozenset[str]:
    """The certificates in a PEM file, as their base64 bodies (whitespace removed); empty if unreadable."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    bodies = []
    for block in text.split("-----BEGIN CERTIFICATE-----")[1:]:
        body, end, _ = block.partition("-----END CERTIFICATE-----")
        if end:
            bodies.append("".join(body.split()))
    return frozenset(bodies)


# ── proxy variables ────────────────────────────────────────


def _proxy_variable(env: Mapping[str, str]) -> tuple[str, str] | None:
    for name in ("HTTPS_PROXY", "https_proxy"):
        if env.get(name):
            return name, env[name]
    return None


def check_proxy(env: Mapping[str, str], hosts: tuple[str, ...] = PROVIDER_HOSTS) -> Check:
    """HTTPS_PROXY names a port something listens on, and NO_PROXY does not send provider hosts around it."""
    found = _proxy_variable(env)
    if found is None:
        return Check("proxy", "skip", "HTTPS_PROXY is not set (fine in reverse mode, with a base URL)")
    name, value = found
    parsed = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = parsed.port or 8080
    except ValueError:
        return Check(
            "proxy", "fail", f"{name}={value} has no valid port", "export HTTPS_PROXY=http://127.0.0.1:8080"
        )
    if parsed.scheme not in ("http", "") or not parsed.hostname:
        return Check(
            "proxy",
            "fail",
            f"{name}={value}: sluice listens for plain http:// proxy requests",
            f"export HTTPS_PROXY=http://{parsed.hostname or '127.0.0.1'}:{port}",
        )
    bypassed = [host for host in hosts if _no_proxy_matches(env, host)]
    if bypassed:
        return Check(
            "proxy",
            "fail",
            f"NO_PROXY sends {', '.join(bypassed)} around the proxy",
            "remove them (and any '*') from NO_PROXY / no_proxy",
        )
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        return Check(
            "proxy",
            "fail",
            f"nothing listens at {parsed.hostname}:{port} ({name}): {e.strerror or e}",
            f"start the proxy: scripts/run --listen-port {port}",
        )
    return Check("proxy", "pass", f"{name}={value} is listening")


def _no_proxy_matches(env: Mapping[str, str], host: str) -> bool:
    """Whether NO_PROXY exempts `host`, read as curl and the Python and Node clients read it."""
    value = env.get("NO_PROXY") or env.get("no_proxy") or ""
    for entry in (part.strip().lower() for part in value.split(",")):
        entry = entry.split(":")[0].lstrip("*").lstrip(".")
        if value.strip() == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


# ── config and its secret references ────────────────────────────────────────


def check_config(path: str | None, env: Mapping[str, str] | None = None) -> tuple[Check, Config | None]:
    """The config loads and each `env:`/`file:` reference resolves (the values are never shown)."""
    if not path:
        return Check("config", "skip", "no --config given: the proxy records only without one"), None
    try:
        config = load_config(path)
    except ConfigError as e:
        return Check(
            "config", "fail", e.block().replace("\n", "; "), "fix the fields named; see README"
        ), None
    base_dir = Path(path).expanduser().resolve().parent
    problems = []
    for field, reference in secret_references(config):
        try:
            _resolve(reference, field, base_dir, env)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        return Check(
            "config",
            "fail",
            "; ".join(problems),
            "export the variables named, or fix the file: paths (relative to the config file)",
        ), config
    count = len(list(secret_references(config)))
    return Check("config", "pass", f"{path} loads; {count} secret reference(s) resolve"), config


def secret_references(config: Config) -> Iterator[tuple[str, str]]:
    """(field, reference) of every secret the config names."""
    for index, client in enumerate(config.clients):
        yield f"clients[{index}].key", client.key
    for index, upstream in enumerate(config.upstreams):
        for position, key in enumerate(upstream.keys):
            yield f"upstreams[{index}].keys[{position}]", key
        if upstream.oauth is not None:
            yield f"upstreams[{index}].oauth.credentials", upstream.oauth.credentials


def _resolve(reference: str, field: str, base_dir: Path, env: Mapping[str, str] | None) -> str:
    if env is not None and reference.startswith("env:"):
        value = (env.get(reference[4:]) or "").strip()
        if not value:
            raise ConfigError(f"{field}: environment variable {reference[4:]} is not set or empty")
        problem = unusable_secret(value)
        if problem is not None:
            raise ConfigError(f"{field}: the secret cannot be used: {problem}")
        return value
    return resolve_secret(reference, field=field, base_dir=base_dir)[0].get_secret_value()


# ── database ────────────────────────────────────────


def check_database(path: str) -> Check:
    """The database (or, before the first start, its folder) can be written."""
    if postgres.is_postgres(path):
        return _check_postgres(path)
    file = Path(path).expanduser()
    folder = file.parent if str(file.parent) else Path(".")
    if not file.exists():
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return Check("database", "pass", f"{path} does not exist yet; the proxy will create it")
        return Check(
            "database",
            "fail",
            f"{path} cannot be created: {folder} is not a writable folder",
            "point --set sluice_db= (and sluice's --db) at a writable path",
        )
    try:
        connection = sqlite3.connect(file, timeout=2)
        try:
            connection.execute("begin immediate")  # takes the write lock, writes nothing
            connection.execute("select count(*) from sqlite_master").fetchone()
            connection.rollback()
        finally:
            connection.close()
    except sqlite3.Error as e:
        return Check(
            "database",
            "fail",
            f"{path} cannot be written: {e}",
            "check the file's permissions, that it is a SQLite database, and that no process holds a lock",
        )
    return Check("database", "pass", f"{path} is writable")


def _check_postgres(url: str) -> Check:
    """A PostgreSQL database: sluice's login reaches it and may write the calls (or, before the first start,
    create sluice's tables). Named without its password, the server's message too."""
    shown = redact(url)
    try:
        db = postgres.open_connection(url)
        try:
            row = db.conn.raw.execute(
                "select case when to_regclass('public.calls') is null"
                " then has_schema_privilege('public', 'create')"
                " else has_table_privilege('public.calls', 'insert') end"
            ).fetchone()
        finally:
            db.close()
    except psycopg.Error as e:
        return Check(
            "database",
            "fail",
            f"{shown} cannot be opened: {redact_error(url, e)}",
            "check the URL's host, port, user and password, and that the server is running",
        )
    if row is None or not row[0]:
        return Check(
            "database", "fail", f"{shown}: sluice's login may not write it", "grant it as the README shows"
        )
    return Check("database", "pass", f"{shown} can be written")


# ── credentials, online ────────────────────────────────────────


type Fetch = Callable[[urllib.request.Request], int]


def fetch_status(request: urllib.request.Request) -> int:
    """Send `request` directly (never through HTTPS_PROXY: sluice would refuse a real key) and return the
    HTTP status; raises OSError when no answer came."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl.create_default_context())
    )
    try:
        with opener.open(request, timeout=ONLINE_TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)


def check_credentials_online(
    config: Config | None, config_path: str | None, fetch: Fetch = fetch_status
) -> list[Check]:
    """Ask each upstream key for the provider's model list (free). OAuth logins are not checked here."""
    if config is None:
        return [Check("credentials", "skip", "no config loaded")]
    checks = []
    base_dir = Path(config_path or ".").expanduser().resolve().parent
    for index, upstream in enumerate(config.upstreams):
        for position, reference in enumerate(upstream.keys):
            field = f"upstreams[{index}].keys[{position}]"
            checks.append(_check_key(upstream, field, reference, base_dir, fetch))
        if upstream.oauth is not None:
            checks.append(
                Check(
                    f"{upstream.host} oauth",
                    "skip",
                    "an OAuth login is checked by the proxy itself when it first refreshes the token",
                )
            )
    return checks or [Check("credentials", "skip", "no [[upstreams]] keys configured")]


def _check_key(upstream: Upstream, field: str, reference: str, base_dir: Path, fetch: Fetch) -> Check:
    name = f"{upstream.host} {field}"
    label = reference if reference.startswith(("env:", "file:")) else "(inline key)"
    try:
        key = _resolve(reference, field, base_dir, None)
    except ConfigError as e:
        return Check(name, "fail", str(e), "export the variable, or fix the file: path")
    request = _models_request(upstream, key)
    try:
        status = fetch(request)
    except OSError as e:
        reason = getattr(e, "reason", None) or e.strerror or type(e).__name__
        return Check(name, "fail", f"{upstream.host} did not answer: {reason}", "check the network and DNS")
    if 200 <= status < 300:
        return Check(name, "pass", f"{label} answered {status} (GET /v1/models)")
    if status in (401, 403):
        return Check(
            name,
            "fail",
            f"{label} was refused ({status}): the provider does not accept this key",
            f"replace the key {label} names; the proxy would disable it on the first call",
        )
    return Check(
        name,
        "fail",
        f"{label}: GET /v1/models answered {status}",
        "try again; see the provider's status page",
    )


def _models_request(upstream: Upstream, key: str) -> urllib.request.Request:
    port = "" if upstream.port == 443 else f":{upstream.port}"
    url = f"https://{upstream.host}{port}/v1/models"
    write = format_of(upstream.provider).models_headers
    headers = write(key) if write else {"authorization": f"Bearer {key}"}
    return urllib.request.Request(url, headers={**headers, "user-agent": "sluice-doctor"}, method="GET")


# ── all of it ────────────────────────────────────────


def run_checks(
    *,
    config_path: str | None,
    db_path: str,
    confdir: str,
    env: Mapping[str, str],
    online: bool = False,
    fetch: Fetch = fetch_status,
) -> list[Check]:
    config_check, config = check_config(config_path, env)
    configured = [upstream.host for upstream in config.upstreams] if config else []
    hosts = tuple(dict.fromkeys([*PROVIDER_HOSTS, *configured]))
    checks = [
        check_python(),
        check_mitmproxy(),
        check_ca(confdir),
        check_trust(env, confdir),
        check_proxy(env, hosts),
        config_check,
        check_database(db_path),
    ]
    if online:
        checks += check_credentials_online(config, config_path, fetch)
    return checks


def passed(checks: list[Check]) -> bool:
    return all(check.status != "fail" for check in checks)
