"""The environment a sandboxed command runs in (state/sandbox.py): who it runs as, the CA it trusts, its
client key, and none of the real credentials or proxy settings of the process that starts it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rules.config import Config, ConfigError, resolve_secret
from rules.providers import format_of, providers

# Variables a command would use to reach a proxy that does not exist inside the sandbox.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# Where each client trusts extra or replacement CAs: Node adds to its own list; OpenSSL, requests and curl
# replace theirs, so they get the system's bundle with sluice's CA appended.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# Provider credentials a command would otherwise inherit from this process's environment: never passed on
# (a key the command should hold is its client key, set by the sandbox).
DROPPED_VARIABLES = frozenset(
    {
        *(name for known in providers() for name in known.key_variables),
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    }
)


class SandboxError(RuntimeError):
    """The sandbox could not be set up; the message says what to do."""


@dataclass(frozen=True)
class Account:
    """Who the command runs as (None: as this process, root)."""

    name: str
    uid: int
    gid: int
    home: str


def account_for(user: str | None) -> Account | None:
    """`--user`, else the user who ran sudo, else None (root: warned about, since root can leave)."""
    name = user or os.environ.get("SUDO_USER")
    if not name or name == "root":
        print(
            "sluice sandbox: warning: COMMAND runs as root, which can leave any network namespace and read "
            "sluice's memory; pass --user to confine it",
            file=sys.stderr,
        )
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SandboxError(f"--user: no user named {name!r}") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def command_environment(
    environ: Mapping[str, str],
    config: Config,
    config_dir: Path,
    client: str | None,
    ca: tuple[Path, Path],
    account: Account | None,
) -> dict[str, str]:
    """This process's environment minus every secret the config refers to and every proxy variable, plus
    the CA trust variables and the chosen client's key in each swapped provider's variable."""
    references, secrets = _config_secrets(config, config_dir)
    env = {
        name: value
        for name, value in environ.items()
        if name.upper() not in PROXY_VARIABLES
        and name not in DROPPED_VARIABLES
        and name not in references
        and not any(secret in value for secret in secrets)
    }
    mitm_ca, bundle = ca
    env["NODE_EXTRA_CA_CERTS"] = str(mitm_ca)
    env.update(dict.fromkeys(CA_VARIABLES, str(bundle)))
    key = _client_key(config, config_dir, client)
    if key is not None:
        for upstream in config.upstreams:
            if upstream.swaps:
                env.update(dict.fromkeys(format_of(upstream.provider).key_variables, key))
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    return env


def _config_secrets(config: Config, base_dir: Path) -> tuple[set[str], set[str]]:
    """The variables the config's `env:` references name, and the values of the upstream secrets."""
    references = [
        (f"upstreams[{i}].keys[{j}]", ref)
        for i, upstream in enumerate(config.upstreams)
        for j, ref in enumerate(upstream.keys)
    ]
    references += [
        (f"upstreams[{i}].oauth.credentials", u.oauth.credentials)
        for i, u in enumerate(config.upstreams)
        if u.oauth is not None
    ]
    references += [(f"clients[{i}].key", client.key) for i, client in enumerate(config.clients)]
    names = {ref.removeprefix("env:") for _, ref in references if ref.startswith("env:")}
    values = set()
    for field, ref in references:
        if field.startswith("upstreams") and not field.endswith("credentials"):
            with contextlib.suppress(ConfigError):  # sluice itself says so at start-up
                value = resolve_secret(ref, field=field, base_dir=base_dir)[0].get_secret_value()
                if len(value) >= 8:  # a value that short would match by accident; none is a real key
                    values.add(value)
    return names, values


def _client_key(config: Config, config_dir: Path, client: str | None) -> str | None:
    """The key of `client` (`--client`), of `[sandbox] client`, or of the only configured client."""
    name = client or config.sandbox.client
    if name is None:
        if len(config.clients) > 1:
            raise SandboxError(
                "several [[clients]] are configured: name the sandbox's with --client or [sandbox] client"
            )
        if not config.clients:
            return None
        name = config.clients[0].name
    entry = next((c for c in config.clients if c.name == name), None)
    if entry is None:
        raise SandboxError(f"--client: no [[clients]] entry is named {name!r}")
    try:
        return resolve_secret(entry.key, field="key", base_dir=config_dir)[0].get_secret_value()
    except ConfigError as e:
        raise SandboxError(f"the client key of {name!r}: {e}") from None


def ca_files(confdir: Path, scratch: Path) -> tuple[Path, Path]:
    """sluice's CA certificate alone (for Node), and the system's bundle with it appended (for the rest),
    copied where the command's user can read them (never the CA's key)."""
    mitm_ca = (confdir.expanduser() / "mitmproxy-ca-cert.pem").read_text()
    alone, bundle = scratch / "sluice-ca.pem", scratch / "ca-bundle.pem"
    alone.write_text(mitm_ca)
    system = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    system_text = Path(system).read_text() if system and Path(system).is_file() else ""
    bundle.write_text(system_text.rstrip("\n") + "\n" + mitm_ca if system_text else mitm_ca)
    for path in (alone, bundle):
        path.chmod(0o644)
    return alone, bundle
