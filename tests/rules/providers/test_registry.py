"""The registry: which wire format a request speaks, and the providers' names and hosts."""

import pytest

from rules.providers import (
    Provider,
    WireFormat,
    classify,
    find_provider,
    provider,
    provider_for_host,
    register,
    wire_format,
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/messages", ("anthropic", "messages")),
        ("POST", "/v1/messages?beta=true", ("anthropic", "messages")),
        ("POST", "/v1/messages/count_tokens", ("anthropic", "count_tokens")),
        ("POST", "/anthropic/v1/messages", ("anthropic", "messages")),
        ("POST", "/v1/chat/completions", ("openai", "chat")),
        ("POST", "/openai/deployments/gpt/chat/completions", ("openai", "chat")),
        ("POST", "/v1beta/openai/chat/completions", ("openai", "chat")),
        ("POST", "/v1/responses", ("openai", "responses")),
        ("GET", "/v1/messages", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/messages/batches", None),
        ("POST", "/v1/responses/resp_123/cancel", None),
        ("POST", "/v1/embeddings", None),
    ],
)
def test_classify(method, path, expected):
    found = classify(method, path)
    assert (None if found is None else (found.provider, found.api)) == expected


def test_names_and_hosts():
    assert wire_format("chat").provider is provider("openai")
    assert provider_for_host("API.Anthropic.com.") is provider("anthropic")
    assert provider_for_host("example.com") is None
    assert find_provider("openrouter") is None
    with pytest.raises(KeyError, match=r"known: .*messages"):
        wire_format("embeddings")


def test_a_second_wire_format_under_a_known_name_is_refused():
    impostor = Provider(
        "anthropic", (), (), (), provider("anthropic").error_body, lambda s, m: b"", lambda h, s, k: {}, ()
    )
    with pytest.raises(ValueError, match="a second Provider named 'anthropic'"):
        register(WireFormat("other", impostor, ("/other",)))


def test_a_cloud_provider_owns_its_regional_hosts_and_names_their_region():
    from rules.providers import _PROVIDERS, host_region

    def regional(host: str) -> str | None:
        prefix, _, rest = host.partition(".")
        return rest.removesuffix(".cloud.test") if prefix == "llm" and rest.endswith(".cloud.test") else None

    base = provider("anthropic")
    cloud = Provider(
        "toy-cloud", (), (), (), base.error_body, base.sse_error_event, base.write_credential, (),
        regional_host=regional,
    )  # fmt: skip
    _PROVIDERS[cloud.name] = cloud
    try:
        assert provider_for_host("LLM.eu-west-3.cloud.test.") is cloud
        assert host_region("llm.eu-west-3.cloud.test") == "eu-west-3"
        assert host_region("other.eu-west-3.cloud.test") is None
        assert provider_for_host("other.eu-west-3.cloud.test") is None
        assert host_region("api.anthropic.com") is None
    finally:
        del _PROVIDERS[cloud.name]


def test_rate_limit_headers_are_read_by_the_family_that_declares_them():
    from rules.providers import counted_limit_header, window_header

    assert window_header("anthropic-ratelimit-unified-5h-utilization") == (
        provider("anthropic"),
        "5h-utilization",
    )
    assert counted_limit_header("anthropic-ratelimit-unified-5h-reset") is None  # a window's, not counted
    assert counted_limit_header("anthropic-ratelimit-input-tokens-remaining") == (
        provider("anthropic"), "input-tokens", "remaining"
    )  # fmt: skip
    assert counted_limit_header("x-ratelimit-reset-tokens") == (provider("openai"), "tokens", "reset")
    assert counted_limit_header("x-ratelimit-remaining") is None
    assert window_header("x-ratelimit-remaining-tokens") is None
