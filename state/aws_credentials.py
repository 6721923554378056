"""Where an upstream's real AWS credentials come from: static keys, a named profile, or an assumed role.

botocore does the work: a profile goes through its credential chain (`~/.aws/config`, `credentials`), an
assumed role through its assume-role fetcher inside `DeferredRefreshableCredentials`, which renews the
session ahead of its expiry. STS is reached directly, never through an environment proxy (sluice is often
that proxy). `current` hands out frozen credentials for one signature; they never go onto a flow.
Fails closed: a source that cannot produce credentials raises `ConfigError` at start-up.
"""

from __future__ import annotations

import stat
from pathlib import Path

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    Credentials,
    DeferredRefreshableCredentials,
    ReadOnlyCredentials,
)
from botocore.exceptions import ProfileNotFound

from rules.config import AwsCredentials, ConfigError, resolve_secret


class AwsCredentialSource:
    """One upstream's real AWS credentials, refreshed by botocore when they come from an assumed role."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def current(self) -> ReadOnlyCredentials:
        """The credentials to sign one request with (botocore refreshes a role's session ahead of expiry)."""
        return self._credentials.get_frozen_credentials()


def _secret(reference: str, field: str, base_dir: Path | None) -> str:
    """A static key from env:NAME or a file:PATH that only its owner can read (0600, like an ssh key)."""
    if reference.startswith("file:"):
        path = Path(reference[5:]).expanduser()
        path = base_dir / path if base_dir is not None and not path.is_absolute() else path
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise ConfigError(f"{field}: cannot read {path}: {e.strerror or e}") from e
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{field}: {path} is readable by others; chmod 600 it")
    value, _inline = resolve_secret(reference, field=field, base_dir=base_dir)
    return value.get_secret_value()


def _base_session(settings: AwsCredentials) -> botocore.session.Session:
    session = botocore.session.Session(profile=settings.profile)
    try:
        found = session.get_credentials()
    except ProfileNotFound as e:
        raise ConfigError(f"aws.profile: {e}") from e
    if settings.profile is not None and found is None:
        raise ConfigError(f"aws.profile: profile {settings.profile!r} yields no credentials")
    return session


def _static(settings: AwsCredentials, field: str, base_dir: Path | None) -> Credentials | None:
    if settings.access_key_id is None or settings.secret_access_key is None:
        return None
    token = settings.session_token
    return Credentials(
        _secret(settings.access_key_id, f"{field}.access_key_id", base_dir),
        _secret(settings.secret_access_key, f"{field}.secret_access_key", base_dir),
        _secret(token, f"{field}.session_token", base_dir) if token is not None else None,
    )


def _assumed(
    settings: AwsCredentials, source: Credentials, sts_endpoint: str | None
) -> DeferredRefreshableCredentials:
    """A role's session from STS, fetched lazily and refreshed by botocore ahead of expiry."""
    role_arn = settings.role_arn
    if role_arn is None:
        raise ConfigError("aws.role_arn: missing")
    session = botocore.session.Session()
    # proxies={}: STS directly, whatever HTTPS_PROXY says (it may point at sluice itself).
    client_config = BotoConfig(proxies={}, region_name=settings.sts_region or "us-east-1")

    def client_creator(service_name: str, **kwargs: object) -> object:
        return session.create_client(
            service_name,
            endpoint_url=sts_endpoint,
            config=client_config,
            **kwargs,
        )

    extra: dict[str, str] = {"ExternalId": settings.external_id} if settings.external_id else {}
    fetcher = AssumeRoleCredentialFetcher(
        client_creator,
        source,
        role_arn,
        extra_args={"RoleSessionName": settings.session_name, **extra},
    )
    return DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")


def credential_source(
    settings: AwsCredentials, *, field: str, base_dir: Path | None = None, sts_endpoint: str | None = None
) -> AwsCredentialSource:
    """Build an upstream's source; `sts_endpoint` overrides botocore's (AWS_ENDPOINT_URL_STS works too)."""
    base = _static(settings, field, base_dir)
    if base is None and (settings.profile is not None or settings.role_arn is None):
        base = _base_session(settings).get_credentials()
    if base is None:
        base = botocore.session.Session().get_credentials()
    if base is None:
        raise ConfigError(
            f"{field}: no AWS credentials to start from (static keys, a profile, or botocore's chain)"
        )
    if settings.role_arn is not None:
        return AwsCredentialSource(_assumed(settings, base, sts_endpoint))
    return AwsCredentialSource(base)
