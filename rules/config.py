"""The operator's TOML configuration: one frozen pydantic model, validated up front.

`load_config(path)` fails closed: any error raises `ConfigError` naming the file, the field and what is wrong,
and mitmproxy refuses to start. Secrets are references (`env:NAME`, `file:PATH`); a literal is accepted
with a warning, and nothing here ever prints a resolved value.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rules.alerting import EVENT_KINDS, EventKind, WebhookFormat
from rules.destination import normalize_host
from rules.egress import AllowEntry, parse_allow_entry
from rules.secrets import unusable_secret

_PROVIDER_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _known_provider(name: str) -> str:
    """Who serves (and bills) an upstream: a provider sluice has a module for (rules/providers), or the
    genai-prices id of a gateway that speaks one of their formats (`openrouter`, `groq`): such an id is
    checked against genai-prices where it is loaded (addons/core.py), here only its form."""
    # Imported here: the provider modules import this one (system blocks, rules), so a module-level import
    # would be circular; by the time a config is read every module is loaded.
    from rules.providers import find_provider, providers

    if find_provider(name) is None and not _PROVIDER_ID.fullmatch(name):
        known = ", ".join(sorted(known.name for known in providers()))
        raise ValueError(
            f"unknown provider {name!r}; sluice speaks {known}, or name a genai-prices provider id"
        )
    return name


Provider = Annotated[str, AfterValidator(_known_provider)]
Ttl = Literal["5m", "1h"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Model):
    usd: Annotated[float, Field(gt=0)]
    period: Literal["day", "week", "month", "total"] = "day"
    # "reserve": a call is admitted only if its worst case (its `max_tokens` ceiling) fits. "stream": a call
    # whose worst case does not fit is admitted with what is left, and its stream is metered as it flows and
    # ended when its cost reaches that (addons/meter.py).
    enforce: Literal["reserve", "stream"] = "reserve"


class Limits(_Model):
    """How fast a client (or a team, all its members together) may call: requests and tokens per minute,
    and calls at once. Tokens are counted as the providers count them: at admission the input estimate and
    the output ceiling (`max_tokens`), settled to the usage the answer reports (state/rates.py)."""

    rpm: Annotated[int, Field(gt=0)] | None = None
    input_tpm: Annotated[int, Field(gt=0)] | None = None
    output_tpm: Annotated[int, Field(gt=0)] | None = None
    concurrent: Annotated[int, Field(gt=0)] | None = None


# A subscription window, named as its provider names it (`5h`, `7d`, `7d_opus`): the share of it a client (or
# team) may use, 0..1. Over it, the client waits for the window's reset while others keep going.
WindowName = Annotated[str, Field(pattern=r"^\d+[hd](?:[_-][a-z0-9_.-]+)?$")]
WindowShare = dict[WindowName, Annotated[float, Field(gt=0, le=1)]]


def _reference_not_inline(value: str) -> str:
    """A real AWS credential is named (env:NAME or file:PATH), never written into the config file."""
    if not value.startswith(("env:", "file:")) or len(value) < 5:
        raise ValueError("give a real AWS credential as env:NAME or file:PATH (a 0600 file), never inline")
    return value


AwsSecretReference = Annotated[str, AfterValidator(_reference_not_inline)]


class AwsKeyPair(_Model):
    """A client's placeholder AWS key pair: requests it signs with SigV4 are verified and attributed to it."""

    access_key_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{16,128}$")]
    secret_access_key: Annotated[
        str, Field(min_length=1, description="secret reference: env:NAME, file:PATH or a literal")
    ]


class AwsCredentials(_Model):
    """An upstream's real AWS credentials: static keys, a named profile, or a role assumed from either.

    The request is re-signed with them as it is written to the upstream connection."""

    access_key_id: AwsSecretReference | None = None
    secret_access_key: AwsSecretReference | None = None
    session_token: AwsSecretReference | None = None
    profile: Annotated[str, Field(min_length=1)] | None = None
    role_arn: (
        Annotated[
            str, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9_+=,.@/-]+$", max_length=2048)
        ]
        | None
    ) = None
    external_id: Annotated[str, Field(min_length=2, max_length=1224)] | None = None
    session_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_+=,.@-]{2,64}$")] = "sluice"
    # STS's regional endpoint; None means botocore's default for the session.
    sts_region: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AwsCredentials:
        static = self.access_key_id is not None or self.secret_access_key is not None
        if static and (self.access_key_id is None or self.secret_access_key is None):
            raise ValueError("static AWS keys need both access_key_id and secret_access_key")
        if self.session_token is not None and not static:
            raise ValueError("session_token goes with access_key_id and secret_access_key")
        if static and self.profile is not None:
            raise ValueError("give static keys or a profile, not both")
        if not static and self.profile is None and self.role_arn is None:
            raise ValueError("give access_key_id + secret_access_key, a profile, or a role_arn")
        if (self.external_id is not None) and self.role_arn is None:
            raise ValueError("external_id goes with role_arn")
        return self


class Client(_Model):
    name: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(min_length=1, description="secret reference: env:NAME, file:PATH or a literal")]
    user_id: str | None = None
    budget: Budget | None = None
    limits: Limits | None = None
    window_share: WindowShare = {}
    aws: AwsKeyPair | None = None


class Team(_Model):
    """Clients that share a budget, rate limits and window shares, on top of each member's own."""

    name: Annotated[str, Field(min_length=1)]
    members: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    budget: Budget | None = None
    limits: Limits | None = None
    window_share: WindowShare = {}


class OAuth(_Model):
    credentials: Annotated[
        str, Field(min_length=1, description="file:PATH of a credentials JSON, or env:NAME")
    ]
    token_url: str | None = None
    client_id: str | None = None
    scope: str | None = None
    # RFC 6749 §6 says form-encoded; Anthropic's token endpoint (the one Claude Code uses) takes JSON.
    token_format: Literal["form", "json"] = "json"
    # The access token is minted in the proxy from `credentials` (a key file, or `default` for the
    # platform's workload credentials) rather than refreshed from a login's refresh token.
    mint: Literal["google"] | None = None


class Upstream(_Model):
    """Where sluice puts real credentials on the wire: a host name and the TLS port they may go to.

    `host = "gateway.internal:8443"` names a port other than 443; credentials never go to any other port,
    nor over cleartext (rules/destination.py).
    """

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 443
    provider: Provider
    keys: list[str] = []
    oauth: OAuth | None = None
    aws: AwsCredentials | None = None
    # None means "decide by host": strip only when the host is not the provider's own API.
    strip_billing_header: bool | None = None
    # How the pool picks a credential (state/pool.py): "affinity" keeps a conversation on the key that
    # holds its prompt cache and starts new ones on the key with the most headroom; "first" always takes the
    # first usable key in the order listed.
    routing: Literal["affinity", "first"] = "affinity"

    @property
    def swaps(self) -> bool:
        """sluice puts a real credential on this upstream's requests: keys, an OAuth login, or AWS
        credentials it signs them with."""
        return bool(self.keys or self.oauth or self.aws)

    @model_validator(mode="before")
    @classmethod
    def _split_port(cls, data: object) -> object:
        """`host = "name:port"` is the same as `host = "name"` with `port = port`."""
        if not isinstance(data, dict) or not isinstance(data.get("host"), str):
            return data
        name, colon, port = data["host"].rpartition(":")
        if not colon or ":" in name or "/" in data["host"]:
            return data  # no port; several colons are not a host name, and `_bare_host` says so
        if "port" in data:
            raise ValueError("give the port once: in host (name:port) or in port")
        if not port.isdigit():
            raise ValueError("host: the port after ':' must be a number")
        return {**data, "host": name, "port": int(port)}

    @field_validator("host")
    @classmethod
    def _bare_host(cls, value: str) -> str:
        if any(char in value for char in "/:@?#[] \t") or not value.strip("."):
            raise ValueError(
                "a bare host name such as api.anthropic.com, optionally with :port (no scheme or path)"
            )
        return normalize_host(value)


class SystemBlock(_Model):
    name: Annotated[str, Field(min_length=1)]
    text: Annotated[str, Field(min_length=1)]
    cache: Ttl | None = None
    hosts: list[str] = []
    clients: list[str] = []
    models: list[str] = []


class HeaderPolicy(_Model):
    """Extra names or families (`x-foo-*`, `*ratelimit*`) allowed on top of the provider defaults."""

    allow: list[str] = []
    deny: list[str] = []
    replace_defaults: bool = False


class Rules(_Model):
    cache_control_max: Annotated[int, Field(ge=0)] = 4
    max_tokens_default: Annotated[int, Field(gt=0)] | None = None
    model_aliases: dict[str, str] = {}
    system_blocks: list[SystemBlock] = []
    openai_include_usage: bool = True
    request_headers: HeaderPolicy = HeaderPolicy()
    response_headers: HeaderPolicy = HeaderPolicy()


class MissBurst(_Model):
    """`count` prompt-cache misses within `window_s` seconds, from one client."""

    count: Annotated[int, Field(ge=1)] = 5
    window_s: Annotated[float, Field(gt=0)] = 300.0


class Alert(_Model):
    """A webhook that is told when something needs a person (ops/alerts.py)."""

    # A secret reference like a key: a Slack webhook URL is itself a credential.
    url: Annotated[str, Field(min_length=1, description="secret reference: env:NAME, file:PATH or a literal")]
    format: WebhookFormat = "json"
    events: Annotated[list[EventKind], Field(min_length=1)] = list(EVENT_KINDS)
    quota_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    budget_share: Annotated[float, Field(gt=0)] = 0.8
    cache_miss_burst: MissBurst = MissBurst()
    rows_in_memory: Annotated[int, Field(ge=1)] = 1
    hold_down_s: Annotated[float, Field(ge=0)] = 300.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3


class Sandbox(_Model):
    """`sluice sandbox`: where the sandboxed command may connect besides the provider hosts, and which
    client's key it is given (needed when more than one client is configured)."""

    allow: list[str] = []
    client: str | None = None

    @field_validator("allow")
    @classmethod
    def _allow_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_allow_entry(entry)  # a ValueError names the entry and what is wrong
        return value

    @property
    def allow_entries(self) -> list[AllowEntry]:
        return [parse_allow_entry(entry) for entry in self.allow]


class Config(_Model):
    clients: list[Client] = []
    teams: list[Team] = []
    upstreams: list[Upstream] = []
    rules: Rules = Rules()
    sandbox: Sandbox = Sandbox()
    idle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    # What a budget hold becomes when a stream ends without any usage frame: released ("refund") or
    # charged at its estimate ("charge_estimate"; the provider may have billed tokens nobody saw).
    budget_without_usage: Literal["refund", "charge_estimate"] = "refund"
    # A budgeted client's call to a model genai-prices has no price for is refused, unless its provider is
    # named here with a model whose prices it is then estimated and charged at (e.g. anthropic =
    # "claude-opus-4-1"). Checked at start-up: the named model must have a price (addons/budget.py).
    budget_price_unknown_models_as: dict[Provider, Annotated[str, Field(min_length=1)]] = {}
    alerts: list[Alert] = []

    @field_validator("clients")
    @classmethod
    def _unique_client_names(cls, value: list[Client]) -> list[Client]:
        names = [client.name for client in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"client names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @field_validator("clients")
    @classmethod
    def _unique_aws_key_ids(cls, value: list[Client]) -> list[Client]:
        ids = [client.aws.access_key_id for client in value if client.aws is not None]
        duplicates = sorted({key for key in ids if ids.count(key) > 1})
        if duplicates:
            raise ValueError(
                f"each client's aws.access_key_id must be its own; repeated: {', '.join(duplicates)}"
            )
        return value

    @field_validator("upstreams")
    @classmethod
    def _unique_hosts(cls, value: list[Upstream]) -> list[Upstream]:
        hosts = [upstream.host for upstream in value]
        duplicates = sorted({host for host in hosts if hosts.count(host) > 1})
        if duplicates:
            raise ValueError(f"one [[upstreams]] entry per host; repeated: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _teams_name_their_clients_once(self) -> Config:
        """Each team's members are configured clients, and a client is in one team at most (its spend
        counts against one team budget)."""
        names = [team.name for team in self.teams]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"team names must be unique; repeated: {', '.join(repeated)}")
        clients = {client.name for client in self.clients}
        team_of: dict[str, str] = {}
        for team in self.teams:
            twice = sorted({member for member in team.members if team.members.count(member) > 1})
            if twice:
                listed = ", ".join(repr(member) for member in twice)
                raise ValueError(f"[[teams]] {team.name}: {listed} is listed twice in members")
            for member in team.members:
                if member not in clients:
                    raise ValueError(f"[[teams]] {team.name}: no [[clients]] entry is named {member!r}")
                if member in team_of and team_of[member] != team.name:
                    raise ValueError(
                        f"client {member!r} is a member of teams {team_of[member]!r} and {team.name!r}; "
                        "a client belongs to one team"
                    )
                team_of[member] = team.name
        return self

    def team_of(self, client: str) -> Team | None:
        """The team a client belongs to, if any."""
        return next((team for team in self.teams if client in team.members), None)

    @model_validator(mode="after")
    def _sandbox_client_is_configured(self) -> Config:
        named = self.sandbox.client
        if named is not None and named not in {client.name for client in self.clients}:
            raise ValueError(f"[sandbox] client: no [[clients]] entry is named {named!r}")
        return self


# Every field name the configuration has, at any depth: always shown.
_FIELD_NAMES = frozenset(name for model in _Model.__subclasses__() for name in model.model_fields)


class ConfigError(ValueError):
    """A configuration problem, worded for the operator: file, field, what is wrong.

    `str()` is one line (`file: field: reason; field: reason`); `source` and `problems` (field, reason)
    keep the parts, so a front end can show one block (`block()`) instead of one long line.
    """

    def __init__(
        self, message: str, *, source: str | None = None, problems: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.source = source
        self.problems = list(problems)

    def block(self) -> str:
        """The error as a few lines: the file, then one line per field with its reason."""
        if not self.problems:
            return str(self)
        lines = [f"file: {self.source}"] if self.source else []
        lines += [f"{field}: {reason}" for field, reason in self.problems]
        return "\n".join(lines)


# A key the config does not know is named in the error only when it looks like a field name: a secret
# pasted as a key (`"sk-ant-..." = 1`, a model alias) would otherwise be printed as the field's path.
_SHOWN_KEY = re.compile(r"[A-Za-z0-9_-]{1,24}")


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        name = part if part in _FIELD_NAMES or _SHOWN_KEY.fullmatch(part) else "<a key not shown>"
        path += f".{name}" if path else name
    return path or "(top level)"


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse TOML text into a `Config`; raises `ConfigError` naming `source`, the field and the reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"{source}: not valid TOML: {e}", source=source, problems=[("(file)", f"not valid TOML: {e}")]
        ) from e
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = [
            (
                _field_path(error["loc"]),
                _reason(error) + (f" (got {error['input']!r})" if _is_safe_to_echo(error) else ""),
            )
            for error in e.errors()
        ]
        text = "; ".join(f"{field}: {reason}" for field, reason in problems)
        raise ConfigError(f"{source}: {text}", source=source, problems=problems) from None


def _reason(error: object) -> str:
    """pydantic's message in the operator's words: "unknown field" (with the field it probably meant)."""
    if not isinstance(error, dict):
        return str(error)
    kind, location = error.get("type"), tuple(error.get("loc", ()))
    if kind == "extra_forbidden":
        return "unknown field" + _did_you_mean(location)
    if kind == "missing":
        return "missing: this field is required"
    message = str(error.get("msg", ""))
    return message.removeprefix("Value error, ")


def _did_you_mean(location: tuple[int | str, ...]) -> str:
    """` (did you mean "key"?)` for an unknown field close to one the same table has; else empty.

    Only for a name that is shown at all (`_SHOWN_KEY`): a secret pasted as a key gets no suggestion.
    """
    if not location or not isinstance(location[-1], str) or not _SHOWN_KEY.fullmatch(location[-1]):
        return ""
    model = _model_at(location[:-1])
    if model is None:
        return ""
    close = difflib.get_close_matches(location[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _model_at(location: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose table `location` points into (list indexes skipped), or None."""
    model: type[BaseModel] = Config
    for part in location:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        found = _model_in(field.annotation) if field is not None else None
        if found is None:
            return None
        model = found
    return model


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model an annotation holds: `X`, `X | None`, `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, Union, types.UnionType, Annotated):
        for argument in typing.get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None


# Fields whose values are never secrets: a bad value there is echoed to help the operator. Everything else
# (a credential field, a free-text field, a field that does not exist: `kye = "sk-..."` is a typo of `key`)
# is named without its value.
_ECHOED_FIELDS = frozenset(
    {
        "provider",
        "port",
        "period",
        "usd",
        "cache",
        "token_format",
        "mint",
        "cache_control_max",
        "max_tokens_default",
        "openai_include_usage",
        "replace_defaults",
        "strip_billing_header",
        "idle_timeout_s",
        "budget_without_usage",
        "routing",
    }
)

# The alerts' settings (the webhook URL is not among them: a Slack URL is a credential).
_ECHOED_FIELDS = _ECHOED_FIELDS | {
    "format",
    "events",
    "quota_threshold",
    "budget_share",
    "count",
    "window_s",
    "rows_in_memory",
    "hold_down_s",
    "timeout_s",
    "retries",
}

_ECHOED_LENGTH = 20


def _is_safe_to_echo(error: object) -> bool:
    """Echo a bad value only for a field known to hold no secret (an allow-list: fails closed)."""
    if not isinstance(error, dict) or error.get("type") == "extra_forbidden":
        return False
    location = [part for part in error.get("loc", ()) if isinstance(part, str)]
    if not location or location[-1] not in _ECHOED_FIELDS:
        return False
    value = error.get("input")
    # A long string is never echoed, in any field: a key pasted one line off is still a key.
    return isinstance(value, int | float | bool) or (isinstance(value, str) and len(value) <= _ECHOED_LENGTH)


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config: {e.strerror or e}") from e
    return parse_config(text, str(file))


def resolve_secret(reference: str, *, field: str, base_dir: Path | None = None) -> tuple[SecretStr, bool]:
    """Resolve `env:NAME`, `file:PATH` or a literal to its value.

    Returns the value and whether it was given inline (the caller warns about inline secrets).
    Raises `ConfigError` naming the field, never the value; a value that cannot be sent as a header
    (rules/secrets.py) is refused too.
    """
    value, inline = _resolve(reference, field=field, base_dir=base_dir)
    problem = unusable_secret(value.get_secret_value())
    if problem is not None and not field.endswith("oauth.credentials"):  # a JSON file: its tokens are checked
        raise ConfigError(f"{field}: the secret cannot be used: {problem}")
    return value, inline


def _resolve(reference: str, *, field: str, base_dir: Path | None) -> tuple[SecretStr, bool]:
    if reference.startswith("env:"):
        name = reference[4:]
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"{field}: environment variable {name} is not set or empty")
        return SecretStr(value.strip()), False
    if reference.startswith("file:"):
        file = Path(reference[5:]).expanduser()
        if base_dir is not None and not file.is_absolute():
            file = base_dir / file
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{field}: cannot read {file}: {e.strerror or e}") from e
        if not value:
            raise ConfigError(f"{field}: {file} is empty")
        return SecretStr(value), False
    return SecretStr(reference), True
