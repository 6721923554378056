"""Claude on Google Vertex AI: Anthropic's Messages API behind Vertex's `rawPredict` / `streamRawPredict`
(https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude/use-claude), and its free
token count.

Paths: `/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict` (and
`:streamRawPredict`), the model with its version after `@` (`claude-sonnet-4-5@20250929`), which is the
`model` column and what genai-prices is asked (its `google` provider prices Claude on Vertex). The body is
Anthropic's Messages with `anthropic_version` and no `model`; the answer, streamed or not, is Anthropic's
(same SSE): the anthropic package's hooks read and rewrite both. The count is
`.../publishers/anthropic/models/count-tokens:rawPredict`, with the model in the body.

Hosts: `{region}-aiplatform.googleapis.com` and the global `aiplatform.googleapis.com` (region `global`).
Credentials: an OAuth access token as a bearer (clients present their client key there; sluice writes a
token it minted from a service account or workload credentials). Errors: Google's
`{"error": {"code", "message", "status"}}` (https://cloud.google.com/apis/design/errors); 429
RESOURCE_EXHAUSTED is a quota, 503 UNAVAILABLE the service overloaded. Fail open: nothing here raises on
what a client or Vertex sends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from rules.providers import Provider, gemini, register
from rules.providers.anthropic import COUNT_TOKENS as ANTHROPIC_COUNT_TOKENS
from rules.providers.anthropic import MESSAGES

GLOBAL_HOST = "aiplatform.googleapis.com"
GLOBAL_REGION = "global"
TOKEN_ENDPOINT = "oauth2.googleapis.com/token"
# A Google Cloud region name: `us-east5`, `europe-west1`, `asia-southeast1`, `me-central2`.
_REGIONAL_HOST = re.compile(r"([a-z]+(?:-[a-z]+)*[0-9]+)-aiplatform\.googleapis\.com")
_PUBLISHER = "/publishers/anthropic/models/"
COUNT_TOKENS_MODEL = "count-tokens"


def regional_host(host: str) -> str | None:
    """`us-east5-aiplatform.googleapis.com` -> `us-east5`; the global host -> `global`; else None."""
    if host == GLOBAL_HOST:
        return GLOBAL_REGION
    found = _REGIONAL_HOST.fullmatch(host)
    return found.group(1) if found else None


def write_credential(headers: Mapping[str, str], secret: str, kind: str) -> dict[bytes, bytes | None]:
    """Always a bearer access token; a key a client put in another header goes."""
    return {b"authorization": b"Bearer " + secret.encode(), b"x-goog-api-key": None, b"x-api-key": None}


def path_model(path: str) -> str | None:
    """The model a path names: `.../publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict` ->
    `claude-sonnet-4-5@20250929`; None for the token count (its model is in the body) or another path."""
    head, colon, _ = path.split("?", 1)[0].rpartition(":")
    _, found, model = head.rpartition(_PUBLISHER)
    if not colon or not found or not model or "/" in model or model == COUNT_TOKENS_MODEL:
        return None
    return model


VERTEX = Provider(
    name="vertex",
    hosts=(GLOBAL_HOST,),
    regional_host=regional_host,
    # x-goog-user-project (the billed project), x-goog-api-client, x-goog-request-params; the Anthropic
    # SDK's and Claude Code's own families ride along as on Anthropic's API.
    request_headers=("x-goog-*", "anthropic-*", "x-anthropic-*", "x-claude-*", "x-app", "x-client-app"),
    response_headers=("x-goog-*", "x-vertex-ai-*", "server-timing"),
    error_body=gemini.error_body,
    sse_error_event=gemini.sse_error_event,
    write_credential=write_credential,
    key_headers=("authorization", "x-goog-api-key", "x-api-key"),
    pricing_id="google",  # Google bills Claude on Vertex; genai-prices prices it under `google`
    # ErrorInfo reasons that say the project or credential cannot be used at all (not a client's request).
    terminal_codes=(
        "SERVICE_DISABLED",
        "BILLING_DISABLED",
        "CONSUMER_INVALID",
        "ACCESS_TOKEN_TYPE_UNSUPPORTED",
    ),
    overloaded_answers=((503, "UNAVAILABLE"),),
    example_model="claude-sonnet-4-5@20250929",
    # Where Google's auth libraries (Claude Code's too) refresh Application Default Credentials.
    client_token_endpoints=(TOKEN_ENDPOINT,),
)

# The Messages hooks, reused: the body and the answer are Anthropic's. Not "alias": the model is in the
# path, which a body rule cannot rename.
RAW_PREDICT = replace(
    MESSAGES,
    name="raw_predict",
    provider=VERTEX,
    path_suffixes=(":rawPredict", ":streamRawPredict"),
    path_model=path_model,
    rule_set=MESSAGES.rule_set - {"alias"},
)

COUNT_TOKENS = replace(
    ANTHROPIC_COUNT_TOKENS,
    name="raw_predict_count_tokens",
    provider=VERTEX,
    path_suffixes=(_PUBLISHER + COUNT_TOKENS_MODEL + ":rawPredict",),
)

register(RAW_PREDICT, COUNT_TOKENS)
