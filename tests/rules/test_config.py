import pytest

from rules.config import Config, ConfigError, load_config, parse_config, resolve_secret

GOOD = """
[[clients]]
name = "alice"
key = "env:SLUICE_KEY_ALICE"
user_id = "alice-42"
budget = { usd = 20, period = "day" }

[[upstreams]]
host = "API.anthropic.com"
provider = "anthropic"
keys = ["env:ANTHROPIC_KEY_1", "env:ANTHROPIC_KEY_2"]

[rules]
cache_control_max = 4

[[rules.system_blocks]]
name = "policy"
text = "Be brief."
"""


def test_full_example_parses():
    config = parse_config(GOOD, "sluice.toml")
    assert config.clients[0].budget is not None and config.clients[0].budget.usd == 20
    assert config.upstreams[0].host == "api.anthropic.com"
    assert config.rules.system_blocks[0].name == "policy"


def test_empty_config_is_recording_only():
    assert parse_config("") == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[clients]]\nname='a'\n", "sluice.toml: clients[0].key: missing: this field is required"),
        (
            "[rules]\ncache_control_max = -1\n",
            "sluice.toml: rules.cache_control_max: Input should be greater",
        ),
        ("[rules]\nbogus = 1\n", "sluice.toml: rules.bogus: unknown field"),
        (
            "[[upstreams]]\nhost='https://api.anthropic.com'\nprovider='anthropic'\n",
            "sluice.toml: upstreams[0].host: a bare host name",
        ),
        (
            "[[upstreams]]\nhost='api.x.com'\nprovider='Google AI'\n",
            "sluice.toml: upstreams[0].provider: unknown provider 'Google AI'; sluice speaks anthropic,",
        ),
        ("[[clients]]\nname='a'\nkey='k'\n[[clients]]\nname='a'\nkey='j'\n", "client names must be unique"),
        ("not toml = = 1", "sluice.toml: not valid TOML"),
    ],
)
def test_errors_name_file_field_and_reason(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "sluice.toml")
    assert message in str(e.value)


def test_a_bad_key_value_is_never_echoed():
    with pytest.raises(ConfigError) as e:
        parse_config("[[clients]]\nname='a'\nkey=12345678\n", "sluice.toml")
    assert "12345678" not in str(e.value)
    assert "clients[0].key" in str(e.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config"):
        load_config(tmp_path / "nope.toml")


def test_secret_references(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_SECRET", "s3cret\n")
    (tmp_path / "key.txt").write_text("from-file\n")
    assert resolve_secret("env:SLUICE_TEST_SECRET", field="k")[0].get_secret_value() == "s3cret"
    value, inline = resolve_secret("file:key.txt", field="k", base_dir=tmp_path)
    assert (value.get_secret_value(), inline) == ("from-file", False)
    value, inline = resolve_secret("literal", field="k")
    assert (value.get_secret_value(), inline) == ("literal", True)
    with pytest.raises(ConfigError, match=r"clients\[0\]\.key: environment variable NOPE_X is not set"):
        resolve_secret("env:NOPE_X", field="clients[0].key")


@pytest.mark.parametrize(
    ("host", "name", "port"),
    [
        ("api.anthropic.com", "api.anthropic.com", 443),
        ("Gateway.Internal.:8443", "gateway.internal", 8443),
        ("gateway.internal:443", "gateway.internal", 443),
    ],
)
def test_an_upstream_names_its_host_and_tls_port(host: str, name: str, port: int) -> None:
    [upstream] = parse_config(f"[[upstreams]]\nhost = '{host}'\nprovider = 'openai'\n").upstreams
    assert (upstream.host, upstream.port) == (name, port)


def test_unknown_models_can_be_priced_as_a_named_model_per_provider():
    config = parse_config('budget_price_unknown_models_as = { anthropic = "claude-opus-4-1" }\n')
    assert config.budget_price_unknown_models_as == {"anthropic": "claude-opus-4-1"}
    assert Config().budget_price_unknown_models_as == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host = 'gateway.internal:8443'\nport = 8443", "give the port once"),
        ("host = 'gateway.internal:x'", "the port after ':' must be a number"),
        ("host = 'gateway.internal:70000'", "upstreams[0].port: Input should be less than or equal to 65535"),
        ("host = 'a:1:2'", "a bare host name"),
        ("host = 'user@gateway.internal'", "a bare host name"),
    ],
)
def test_an_upstream_port_is_given_once_and_valid(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f"[[upstreams]]\n{text}\nprovider = 'openai'\n", "sluice.toml")
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'budget_price_unknown_models_as = { "Google AI" = "gemini-2.5-pro" }',
            "budget_price_unknown_models_as",
        ),
        ('budget_price_unknown_models_as = { openai = "" }', "budget_price_unknown_models_as.openai"),
        ('budget_price_unknown_models_as = "claude-opus-4-1"', "budget_price_unknown_models_as"),
    ],
)
def test_bad_unknown_model_prices_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "sluice.toml")


SECRET = "sk-ant-api03-SECRET-IN-A-TYPO-7f3e"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (f"[[clients]]\nname = 'a'\nkye = '{SECRET}'\nkey = 'env:K'\n", "clients[0].kye"),
        (f"[[upstreams]]\nhost = 'h'\nprovider = 'openai'\nkeyz = ['{SECRET}']\n", "upstreams[0].keyz"),
        (f"api_key = '{SECRET}'\n", "api_key"),
        (f"[[clients]]\nname = 'a'\nkey = ['{SECRET}']\n", "clients[0].key"),
        (f"[[clients]]\nname = 'a'\nkey = 'k'\nuser_id = ['{SECRET}']\n", "clients[0].user_id"),
        (f"[rules]\nmodel_aliases = {{ fast = ['{SECRET}'] }}\n", "rules.model_aliases.fast"),
        (f"[[rules.system_blocks]]\nname = 'n'\ntext = 't'\ncache = '{SECRET}'\nx = 1\n", "x"),
        (f"[[upstreams]]\nhost = 'h'\nprovider = 'openai'\noauth = {{ tokn = '{SECRET}' }}\n", "tokn"),
    ],
)
def test_no_error_echoes_a_value_that_may_be_a_secret(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "sluice.toml")
    assert field in str(e.value)
    assert SECRET not in str(e.value)


def test_values_of_fields_that_hold_no_secret_are_echoed() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("[[upstreams]]\nhost = 'h'\nprovider = 'Google AI'\n", "sluice.toml")
    assert "(got 'Google AI')" in str(e.value)


@pytest.mark.parametrize("reference", ["env:SLUICE_TEST_CRLF_KEY", "file:key.txt", "sk-ant\r\nX-Evil: 1"])
def test_a_secret_that_would_break_a_header_is_refused_naming_the_field(
    reference: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SLUICE_TEST_CRLF_KEY", "sk-ant\r\nX-Evil: 1")
    (tmp_path / "key.txt").write_text("sk-ant\x00evil\n")
    with pytest.raises(ConfigError) as e:
        resolve_secret(reference, field="upstreams[0].keys[0]", base_dir=tmp_path)
    assert str(e.value).startswith("upstreams[0].keys[0]: the secret cannot be used: it contains")
    assert "X-Evil" not in str(e.value) and "evil" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (f'"{SECRET}" = 1', "<a key not shown>: unknown field"),
        (f'[rules.model_aliases]\n"{SECRET}" = 5', "rules.model_aliases.<a key not shown>: Input should be"),
    ],
)
def test_a_secret_pasted_as_a_key_is_not_printed_as_the_fields_path(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "sluice.toml")
    assert path in str(e.value)
    assert SECRET not in str(e.value)


def test_alerts_default_to_every_event_with_a_threshold_and_a_hold_down() -> None:
    config = parse_config('[[alerts]]\nurl = "env:SLUICE_WEBHOOK"\n')
    [alert] = config.alerts
    assert alert.format == "json"
    assert len(alert.events) == 7 and "credential_disabled" in alert.events
    assert (alert.quota_threshold, alert.budget_share, alert.hold_down_s) == (0.8, 0.8, 300.0)
    assert (alert.cache_miss_burst.count, alert.cache_miss_burst.window_s) == (5, 300.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('url = "env:X"\nevents = ["key_stolen"]', "alerts[0].events[0]: Input should be"),
        ('url = "env:X"\nevents = []', "alerts[0].events: List should have at least 1 item"),
        ('url = "env:X"\nquota_threshold = 1.5', "alerts[0].quota_threshold: Input should be less than"),
        (
            'url = "env:X"\nformat = "teams"',
            "alerts[0].format: Input should be 'json' or 'slack' (got 'teams')",
        ),
        ('url = "env:X"\ncache_miss_burst = { count = 0 }', "alerts[0].cache_miss_burst.count"),
    ],
)
def test_bad_alerts_are_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^<config>: ") as error:
        parse_config(f"[[alerts]]\n{text}\n")
    assert message in str(error.value)


def test_a_bad_webhook_url_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config("[[alerts]]\nurl = 42\n")
    assert "alerts[0].url" in str(error.value) and "42" not in str(error.value)


def test_the_sandbox_section_names_hosts_and_a_configured_client() -> None:
    config = parse_config(
        '[[clients]]\nname = "ci"\nkey = "env:K"\n'
        '[sandbox]\nallow = ["pypi.org", "github.com:443"]\nclient = "ci"\n'
    )
    assert [entry.name for entry in config.sandbox.allow_entries] == ["pypi.org", "github.com"]
    with pytest.raises(ConfigError, match=r"sandbox\.allow.*expected a host name"):
        parse_config('[sandbox]\nallow = ["pypi.org/simple"]\n')
    with pytest.raises(ConfigError, match="no \\[\\[clients\\]\\] entry is named 'nobody'"):
        parse_config('[sandbox]\nclient = "nobody"\n')


@pytest.mark.parametrize(
    ("text", "field", "meant"),
    [
        ("[[clients]]\nname='a'\nkye='k'\n", "clients[0].kye", "key"),
        ("[rules]\ncache_control_maxx = 3\n", "rules.cache_control_maxx", "cache_control_max"),
        ("idle_timeout = 3\n", "idle_timeout", "idle_timeout_s"),
        (
            "[[rules.system_blocks]]\nname='p'\ntext='t'\ncahce='1h'\n",
            "rules.system_blocks[0].cahce",
            "cache",
        ),
        (
            "[[upstreams]]\nhost='a.example'\nprovider='anthropic'\noauth={credentails='file:x'}\n",
            "upstreams[0].oauth.credentails",
            "credentials",
        ),
    ],
)
def test_a_misspelt_field_is_unknown_with_the_field_it_probably_meant(
    text: str, field: str, meant: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "sluice.toml")
    assert (field, f'unknown field (did you mean "{meant}"?)') in e.value.problems


def test_an_unknown_field_like_no_other_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("[rules]\nzebra = 1\n", "sluice.toml")
    assert e.value.problems == [("rules.zebra", "unknown field")]


def test_the_block_names_the_file_then_each_field() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("[[clients]]\nname='a'\nkye='k'\n", "team.toml")
    assert e.value.block() == (
        "file: team.toml\n"
        "clients[0].key: missing: this field is required\n"
        'clients[0].kye: unknown field (did you mean "key"?)'
    )


def test_a_secret_pasted_as_a_key_gets_no_suggestion_and_is_not_shown() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f'[[clients]]\nname="a"\nkey="k"\n"{SECRET}x" = 1\n', "sluice.toml")
    assert e.value.problems == [("clients[0].<a key not shown>", "unknown field")]
    assert SECRET not in e.value.block()


GOVERNED = """
[[clients]]
name = "alice"
key = "k-alice"

[[clients]]
name = "bob"
key = "k-bob"
"""


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[[teams]]\nname = "ops"\nmembers = ["alice", "carol"]', "no [[clients]] entry is named 'carol'"),
        (
            '[[teams]]\nname = "ops"\nmembers = ["alice"]\n'
            '[[teams]]\nname = "ml"\nmembers = ["bob", "alice"]',
            "client 'alice' is a member of teams 'ops' and 'ml'",
        ),
        (
            '[[teams]]\nname = "ops"\nmembers = ["alice", "bob", "alice"]',
            "[[teams]] ops: 'alice' is listed twice",
        ),
        ('[[teams]]\nname = "ops"\nmembers = []', "members"),
        ('[[teams]]\nname = "ops"\nmembers = ["alice"]\nwindow_share = { "5h" = 0 }', "greater than 0"),
        ('[[teams]]\nname = "ops"\nmembers = ["alice"]\nwindow_share = { "5h" = 1.5 }', "less than or equal"),
        ('[[teams]]\nname = "ops"\nmembers = ["alice"]\nwindow_share = { "five" = 0.5 }', "five"),
        ('[[teams]]\nname = "ops"\nmembers = ["alice"]\nlimits = { rpm = -1 }', "greater than 0"),
        ('[[teams]]\nname = "ops"\nmembers = ["alice"]\nlimits = { rpm = 0 }', "greater than 0"),
        ('[[teams]]\nname = "ops"\nmembers = ["alice"]\nlimits = { rmp = 5 }', "rmp"),
        ('[[teams]]\nname = "ops"\nmembers = ["alice"]\nbudget = { usd = -1 }', "budget"),
    ],
)
def test_a_misconfigured_team_stops_start_up_naming_the_mistake(toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(GOVERNED + toml, "sluice.toml")
    assert expected in str(refused.value)


def test_a_team_needs_nothing_but_members_and_counts_each_once() -> None:
    config = parse_config(GOVERNED + '[[teams]]\nname = "ops"\nmembers = ["bob", "alice"]', "sluice.toml")
    [team] = config.teams
    assert team.members == ["bob", "alice"] and team.budget is None and team.limits is None
    assert config.team_of("alice") is team and config.team_of("carol") is None


AWS_CLIENTS = """
[[clients]]
name = "ci"
key = "env:SLUICE_KEY_CI"
aws = { access_key_id = "AKIAPLACEHOLDER0001", secret_access_key = "env:CI_AWS_PLACEHOLDER_SECRET" }
"""


def test_a_client_may_hold_a_placeholder_aws_key_pair():
    config = parse_config(AWS_CLIENTS)
    assert config.clients[0].aws is not None
    assert config.clients[0].aws.access_key_id == "AKIAPLACEHOLDER0001"


def test_two_clients_may_not_share_an_aws_access_key_id():
    twice = AWS_CLIENTS + AWS_CLIENTS.replace('"ci"', '"cd"')
    with pytest.raises(ConfigError, match="repeated: AKIAPLACEHOLDER0001"):
        parse_config(twice)


@pytest.mark.parametrize(
    ("aws", "message"),
    [
        ('{ access_key_id = "env:K", secret_access_key = "env:S" }', None),
        ('{ profile = "bedrock" }', None),
        (
            '{ role_arn = "arn:aws:iam::123456789012:role/sluice", external_id = "xyz", profile = "base" }',
            None,
        ),
        ('{ access_key_id = "AKIAREALKEYINLINE", secret_access_key = "env:S" }', "never inline"),
        ('{ access_key_id = "env:K" }', "need both"),
        ('{ access_key_id = "env:K", secret_access_key = "env:S", profile = "p" }', "not both"),
        ("{ }", "a profile, or a role_arn"),
        ('{ profile = "p", external_id = "xyz" }', "external_id goes with role_arn"),
        ('{ role_arn = "not-an-arn" }', "role_arn"),
    ],
)
def test_upstream_aws_credentials_are_named_never_inline(aws, message):
    host = "bedrock-runtime.us-east-1.amazonaws.com"
    text = f'[[upstreams]]\nhost = "{host}"\nprovider = "anthropic"\naws = {aws}\n'
    if message is None:
        assert parse_config(text).upstreams[0].aws is not None
    else:
        with pytest.raises(ConfigError, match=message):
            parse_config(text)
