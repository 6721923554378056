"""Gemini's field names, either spelling: Google's JSON parser takes `systemInstruction` and
`system_instruction` alike (proto3 JSON), and clients send both (the google-genai SDK camelCases the top
level but passes nested config objects as written)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def key_of(body: Mapping[str, Any], name: str) -> str | None:
    """Which spelling of `name` (given in camelCase) the body uses, if any: camelCase first."""
    if name in body:
        return name
    other = snake(name)
    return other if other in body else None


def get(body: Mapping[str, Any], name: str) -> Any:
    key = key_of(body, name)
    return body[key] if key is not None else None
