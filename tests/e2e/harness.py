"""End-to-end harness: a real `mitmdump` process, real clients, and the fake provider behind it.

The proxy is never told where the fake is. `sitecustomize/sitecustomize.py`, put on the subprocess's
PYTHONPATH, makes `api.anthropic.com` and `api.openai.com` resolve to the fake's loopback port (and also
`console.anthropic.com`, where OAuth tokens are refreshed, and `gateway.sluice.test`, a host that is not a
provider's own API), so every flow keeps its real host and port (`api.anthropic.com:443`) and the TLS
handshake carries the real SNI; the fake's
leaf certificate is signed by a per-session test CA that mitmdump is told to trust upstream.

Nothing here imports pytest: the fixtures live in `conftest.py`.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    import anthropic
    import openai

    from tests.fake_provider import FakeProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDON_SCRIPT = REPO_ROOT / "addons" / "sluice.py"
SITECUSTOMIZE_DIR = Path(__file__).resolve().parent / "sitecustomize"
# The provider hosts, the OAuth token host and a non-provider gateway host (TEST_HOSTS in
# tests/fake_provider.py), then the loopback names.
LEAF_NAMES = (
    "api.anthropic.com",
    "api.openai.com",
    "console.anthropic.com",
    "gateway.sluice.test",
    "generativelanguage.googleapis.com",
    "openrouter.ai",
    "bedrock-runtime.us-east-1.amazonaws.com",
    "us-east5-aiplatform.googleapis.com",
    "oauth2.googleapis.com",
    "localhost",
    "127.0.0.1",
)
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CLIENT_TIMEOUT = 10.0
# Proxy settings in the environment would send clients (or mitmdump's own upstream) somewhere else.
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


# Certificates.


@dataclass(frozen=True)
class CertAuthority:
    """A test CA and one leaf certificate it signed, as PEM files in `directory`."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    leaf_cert: Path
    leaf_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def make_test_ca(directory: Path, names: Sequence[str] = LEAF_NAMES) -> CertAuthority:
    """Create a CA and a server certificate for `names` (DNS names or IP addresses) under `directory`.

    The extensions are the ones OpenSSL's strict verification wants (key identifiers, key usage, a
    critical basic-constraints), so both mitmproxy and the Python `ssl` module accept the chain.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sluice tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sluice test CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = CertAuthority(
        directory=directory,
        ca_cert=directory / "ca-cert.pem",
        ca_key=directory / "ca-key.pem",
        leaf_cert=directory / "leaf-cert.pem",
        leaf_key=directory / "leaf-key.pem",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.ca_key, ca_key)
    files.leaf_cert.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.leaf_key, leaf_key)
    return files


# Processes.


def free_port() -> int:
    """A loopback port nothing listens on right now (another process may take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mitmdump_path(program: str = "mitmdump") -> Path:
    """`mitmdump` or `mitmweb` beside the interpreter running the tests (the venv's, not one on PATH)."""
    return Path(sys.executable).parent / program


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in _PROXY_ENV}
    env.update(extra or {})
    return env


_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live):
        if process.poll() is None:
            process.kill()


class Proxy:
    """One running `mitmdump`. Use as a context manager, or call `stop()`."""

    def __init__(
        self,
        *,
        process: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        log_path: Path,
        db_path: Path | None,
        mode: str | None,
        args: list[str],
        web_port: int | None = None,
        web_token: str | None = None,
    ) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.log_path = log_path
        self.db_path = db_path
        self.mode = mode
        self.args = args
        self.web_port = web_port
        self.web_token = web_token
        self.confdir = workdir / "mitm"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> Path:
        """mitmproxy's own CA, which clients must trust to talk TLS through the proxy."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def web_url(self) -> str | None:
        """mitmweb's UI (None under mitmdump); requests need `?token=<web_token>`."""
        return f"http://127.0.0.1:{self.web_port}" if self.web_port else None

    @property
    def reverse(self) -> bool:
        return bool(self.mode and self.mode.startswith("reverse:"))

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def tracebacks(self) -> list[str]:
        """Python tracebacks in the log (an addon crash shows up here, not as a failed request).

        Stopping mitmdump while a client still holds a connection open logs a `CancelledError` traceback
        from asyncio; close clients first (`with anthropic_client(proxy) as client:`).
        """
        blocks = self.log_text().split("Traceback (most recent call last):")[1:]
        return ["Traceback (most recent call last):" + block.split("\n\n")[0] for block in blocks]

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in (log := self.log_text()):
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the mitmdump log after {timeout}s:\n{self.log_tail()}")

    def rows(self) -> list[dict[str, Any]]:
        if self.db_path is None:
            raise ValueError("this proxy runs without the sluice addon: no database")
        return rows(self.db_path)

    def wait_for_rows(self, n: int, *, since: int = 0, timeout: float = 10.0) -> list[dict[str, Any]]:
        if self.db_path is None:
            raise ValueError("this proxy runs without the sluice addon: no database")
        return wait_for_rows(self.db_path, n, since=since, timeout=timeout)

    def mark(self) -> RowMark:
        """Where this proxy's rows stand now, for `wait_for_rows(n, since=mark)` on a shared proxy."""
        return RowMark.of(len(self.rows()))

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT (so addons' `done` runs and queues drain), then SIGKILL after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _live.discard(self.process)
        return self.process.returncode

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proxy {self.url} mode={self.mode or 'regular'} pid={self.process.pid}>"


def start_proxy(
    workdir: Path,
    *,
    fake: FakeProvider,
    addon: bool = True,
    config_toml: str | None = None,
    extra_args: Sequence[str] = (),
    mode: str | None = None,
    env: dict[str, str] | None = None,
    set_db: bool = True,
    upstream_ca: Path | None = None,
    program: str = "mitmdump",
) -> Proxy:
    """Start `mitmdump` on a free loopback port, with `fake` standing in for the provider hosts.

    Runs in `workdir` (its cwd, so a default `./sluice.db` lands there). With `addon`, loads
    `addons/sluice.py` with `sluice_db=<workdir>/sluice.db` (unless `set_db=False`) and, given
    `config_toml`, `sluice_config=<workdir>/sluice.toml`. Returns once the port accepts connections and
    mitmproxy has written its CA; raises with the log tail otherwise. `program="mitmweb"` runs the web UI
    instead, on another free port (`proxy.web_url`), without opening a browser.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    trusted = upstream_ca or fake.ca_pem
    last_error: RuntimeError | None = None
    for _attempt in range(3):
        port = free_port()
        args = [
            str(mitmdump_path(program)),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={workdir / 'mitm'}",
            "--set",
            "termlog_verbosity=info",
        ]
        if trusted:
            args += ["--set", f"ssl_verify_upstream_trusted_ca={trusted}"]
        web_port = web_token = None
        if program == "mitmweb":
            web_port, web_token = free_port(), secrets.token_hex(8)
            args += ["--set", "web_open_browser=false", "--set", "web_host=127.0.0.1"]
            args += ["--set", f"web_port={web_port}", "--set", f"web_password={web_token}"]
        if mode:
            args += ["--mode", mode]
        db_path: Path | None = None
        if addon:
            args += ["-s", str(ADDON_SCRIPT)]
            db_path = workdir / "sluice.db"
            if set_db:
                args += ["--set", f"sluice_db={db_path}"]
            if config_toml is not None:
                config_path = workdir / "sluice.toml"
                config_path.write_text(config_toml)
                args += ["--set", f"sluice_config={config_path}"]
        args += list(extra_args)
        process_env = clean_env(
            {
                "PYTHONPATH": str(SITECUSTOMIZE_DIR),
                "PYTHONUNBUFFERED": "1",
                "SLUICE_TEST_HOSTS": fake.hosts_env(),
                **(env or {}),
            }
        )
        log_path = workdir / f"mitmdump-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args,
                cwd=workdir,
                env=process_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _live.add(process)
        proxy = Proxy(
            process=process,
            port=port,
            workdir=workdir,
            log_path=log_path,
            db_path=db_path,
            mode=mode,
            args=args,
            web_port=web_port,
            web_token=web_token,
        )
        try:
            _wait_until_ready(proxy)
            return proxy
        except RuntimeError as e:
            proxy.stop(timeout=2)
            if "address already in use" not in proxy.log_text().lower():
                raise
            last_error = e
    assert last_error is not None
    raise last_error


def start_up_failure(start: Any, workdir: Path, **kwargs: Any) -> str:
    """Start a mitmdump (with `start`, a `start_proxy` fixture) that must refuse to run; return its log.

    mitmproxy binds its port before it acts on an error logged during start-up, so the harness may see the
    process ready just before it exits: wait for the exit either way.
    """
    try:
        proxy = start(workdir, **kwargs)
    except RuntimeError as e:
        if "during start-up" not in str(e):
            raise
    else:
        try:
            proxy.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mitmdump kept running:\n{proxy.log_tail()}") from None
        if proxy.returncode == 0:
            raise AssertionError(f"mitmdump exited cleanly:\n{proxy.log_tail()}")
    return "\n".join(log.read_text(errors="replace") for log in sorted(workdir.glob("mitmdump-*.log")))


def _wait_until_ready(proxy: Proxy, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            raise RuntimeError(
                f"mitmdump exited with {proxy.process.returncode} during start-up:\n{proxy.log_tail()}"
            )
        # mitmweb opens its web port on its own schedule, after the proxy port: wait for both.
        web_ready = proxy.web_port is None or _accepts(proxy.web_port)
        if proxy.ca_pem.exists() and _accepts(proxy.port) and web_ready:
            return
        time.sleep(0.05)
    raise RuntimeError(f"mitmdump not ready after {timeout}s:\n{proxy.log_tail()}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# Clients.


def _httpx_kwargs(proxy: Proxy, extra: dict[str, Any] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_env": False, "timeout": CLIENT_TIMEOUT}
    if not proxy.reverse:
        kwargs["proxy"] = proxy.url
        kwargs["verify"] = ssl.create_default_context(cafile=str(proxy.ca_pem))
    kwargs.update(extra or {})
    return kwargs


def _anthropic_base_url(proxy: Proxy) -> str:
    return proxy.url if proxy.reverse else "https://api.anthropic.com"


def _openai_base_url(proxy: Proxy) -> str:
    return f"{proxy.url}/v1" if proxy.reverse else "https://api.openai.com/v1"


def _http_module(sdk_module: Any) -> Any:
    """The HTTP library an SDK is built on: newer SDKs use `httpx2` and reject `httpx` clients."""
    base = sdk_module._base_client
    return getattr(base, "httpx2", None) or base.httpx


def anthropic_client(
    proxy: Proxy,
    api_key: str | None = "sk-ant-test",
    *,
    httpx_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> anthropic.Anthropic:
    """The official SDK, through `proxy` (or at it, in reverse mode), never retrying.

    `httpx_kwargs` go to the SDK's HTTP client (e.g. `event_hooks`); other keywords to `Anthropic(...)`.
    """
    import anthropic

    return _sdk_client(
        anthropic, anthropic.Anthropic, _anthropic_base_url(proxy), proxy, api_key, httpx_kwargs, kwargs
    )


def async_anthropic_client(
    proxy: Proxy,
    api_key: str | None = "sk-ant-test",
    *,
    httpx_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> anthropic.AsyncAnthropic:
    import anthropic

    return _sdk_client(
        anthropic,
        anthropic.AsyncAnthropic,
        _anthropic_base_url(proxy),
        proxy,
        api_key,
        httpx_kwargs,
        kwargs,
        asynchronous=True,
    )


def openai_client(
    proxy: Proxy, api_key: str = "sk-test", *, httpx_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> openai.OpenAI:
    import openai

    return _sdk_client(openai, openai.OpenAI, _openai_base_url(proxy), proxy, api_key, httpx_kwargs, kwargs)


def async_openai_client(
    proxy: Proxy, api_key: str = "sk-test", *, httpx_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> openai.AsyncOpenAI:
    import openai

    return _sdk_client(
        openai,
        openai.AsyncOpenAI,
        _openai_base_url(proxy),
        proxy,
        api_key,
        httpx_kwargs,
        kwargs,
        asynchronous=True,
    )


def _sdk_client(
    sdk: Any,
    client_class: Any,
    base_url: str,
    proxy: Proxy,
    api_key: str | None,
    httpx_kwargs: dict[str, Any] | None,
    kwargs: dict[str, Any],
    *,
    asynchronous: bool = False,
) -> Any:
    """`client_class` (sync or async) on an HTTP client of the same kind, set up for `proxy`."""
    http = _http_module(sdk)
    http_client_class = http.AsyncClient if asynchronous else http.Client
    return client_class(
        api_key=api_key,
        base_url=kwargs.pop("base_url", base_url),
        http_client=http_client_class(**_httpx_kwargs(proxy, httpx_kwargs)),
        max_retries=kwargs.pop("max_retries", 0),
        **kwargs,
    )


@dataclass
class CurlResult:
    """What curl got. Unpacks as `status, headers, body`; `body` is raw (curl is not asked to decode)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    returncode: int
    stderr: str

    def __iter__(self) -> Iterator[Any]:
        return iter((self.status, self.headers, self.body))

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def curl(proxy: Proxy, *args: str, timeout: float = CLIENT_TIMEOUT) -> CurlResult:
    """Run the real curl binary through `proxy` (no `--proxy` in reverse mode: pass `proxy.url` URLs).

    Does not raise on curl failures: a cut stream is something tests look at (`returncode`, `stderr`).
    """
    with tempfile.TemporaryDirectory(prefix="sluice-curl-") as scratch:
        head_file = Path(scratch) / "headers"
        body_file = Path(scratch) / "body"
        command = [
            "curl",
            "-q",
            "-sS",
            "--max-time",
            str(timeout),
            "-D",
            str(head_file),
            "-o",
            str(body_file),
        ]
        if not proxy.reverse:
            command += ["--proxy", proxy.url, "--cacert", str(proxy.ca_pem)]
        command += list(args)
        done = subprocess.run(command, capture_output=True, env=clean_env(), timeout=timeout + 5, check=False)
        status, headers = _parse_curl_headers(head_file.read_bytes() if head_file.exists() else b"")
        body = body_file.read_bytes() if body_file.exists() else b""
    return CurlResult(status, headers, body, done.returncode, done.stderr.decode(errors="replace"))


def _parse_curl_headers(raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The last response head curl dumped (a CONNECT's `200 Connection established` comes first)."""
    blocks = [b for b in raw.decode("latin-1").replace("\r\n", "\n").split("\n\n") if b.startswith("HTTP/")]
    if not blocks:
        return 0, []
    status_line, *lines = blocks[-1].splitlines()
    headers = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines if line)]
    return int(status_line.split()[1]), headers


# The database.


def rows(db_path: Path) -> list[dict[str, Any]]:
    """Every row of `calls`, oldest first, read through a read-only connection ([] before it exists)."""
    if not Path(db_path).exists():
        return []
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("select * from calls order by rowid")]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        conn.close()


class RowMark(int):
    """A count of `calls` rows and the moment it was taken. On a proxy tests share, the row of an earlier
    test's call can be written after a later test counted the rows (the writer waits a few ms to group
    rows, longer on a loaded machine): rows of calls that started before the mark are not counted after it."""

    at: str

    @classmethod
    def of(cls, count: int) -> RowMark:
        mark = cls(count)
        mark.at = datetime.now(UTC).isoformat(timespec="microseconds")
        return mark


def wait_for_rows(db_path: Path, n: int, *, since: int = 0, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll until `calls` has at least `n` rows after the first `since` (the proxy writes from a background
    thread); with a `RowMark`, only rows of calls started after it count.

    Returns those rows: take `since=proxy.mark()` (or `len(rows(db))`) before a call on a shared proxy.
    """
    deadline = time.monotonic() + timeout
    new: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        new = rows(db_path)[since:]
        if isinstance(since, RowMark):
            new = [row for row in new if row["started_at"] >= since.at]
        if len(new) >= n:
            return new
        time.sleep(0.05)
    raise AssertionError(f"{db_path}: {len(new)} new calls rows after {timeout}s, expected {n}")
