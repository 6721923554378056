import pytest

from rules.endpoints import Endpoint, classify


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/messages", Endpoint("anthropic", "messages")),
        ("POST", "/v1/messages?beta=true", Endpoint("anthropic", "messages")),
        ("POST", "/v1/messages/count_tokens", Endpoint("anthropic", "count_tokens")),
        ("POST", "/anthropic/v1/messages", Endpoint("anthropic", "messages")),
        ("POST", "/v1/chat/completions", Endpoint("openai", "chat")),
        ("POST", "/openai/deployments/gpt/chat/completions", Endpoint("openai", "chat")),
        ("POST", "/v1/responses", Endpoint("openai", "responses")),
        ("GET", "/v1/messages", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/messages/batches", None),
        ("POST", "/v1/responses/resp_123/cancel", None),
        ("POST", "/v1/embeddings", None),
    ],
)
def test_classify(method, path, expected):
    assert classify(method, path) == expected
