"""Pricing and budget settlement of a finished call's record, and who writes each of its fields
(addons/calls.py)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from addons.calls import WRITERS, Call, build_record
from rules.usage import Reading, Usage

HOLD = 0.5


def record(model: str, usage: Usage, *, hold: float | None = HOLD, stand_in: str | None = None):
    call = Call("f1", "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 0.0)
    call.request_model = model
    call.budget_hold = hold
    call.price_unknown_as = stand_in
    reading = Reading(model=model, usage=usage, usage_seen=True, complete=True)
    return build_record(
        call, reading, status=200, error=None, request_id=None, rate_limits=[], headers_at=None, ended=1.0
    )


def test_a_priced_call_settles_at_its_cost():
    done = record("claude-sonnet-4-5", Usage(input_tokens=1000, output_tokens=100))
    assert done.row["cost_usd"] == pytest.approx((1000 * 3 + 100 * 15) / 1e6)
    assert done.budget == ("settled", done.row["cost_usd"])


def test_an_unpriced_model_settles_at_the_estimate_not_for_free():
    done = record("claude-imaginary-9", Usage(input_tokens=1000, output_tokens=100))
    assert done.row["cost_usd"] is None and "claude-imaginary-9" in done.row["cost_note"]
    assert done.budget == ("settled", HOLD)


def test_an_unpriced_model_is_charged_as_the_named_one():
    done = record(
        "claude-imaginary-9", Usage(input_tokens=1000, output_tokens=100), stand_in="claude-opus-4-1"
    )
    assert done.row["cost_usd"] == pytest.approx((1000 * 15 + 100 * 75) / 1e6)
    assert done.row["cost_note"].startswith("priced as claude-opus-4-1")
    assert done.budget == ("settled", done.row["cost_usd"])


def test_suspect_usage_is_stored_unpriced_and_settles_at_the_estimate():
    usage = Usage(input_tokens=21, suspect=f"output_tokens={10**30}")
    done = record("claude-sonnet-4-5", usage)
    assert done.row["cost_usd"] is None
    assert done.row["cost_note"].startswith("suspect usage") and str(10**30) in done.row["cost_note"]
    assert done.row["input_tokens"] == 21 and done.row["output_tokens"] is None
    assert done.budget == ("settled", HOLD)


def test_an_unbudgeted_call_is_not_priced_as_anything_else():
    done = record("claude-imaginary-9", Usage(input_tokens=1000, output_tokens=100), hold=None)
    assert done.row["cost_usd"] is None and done.budget is None


# --- who writes each field (addons/calls.py WRITERS) -------------------------------------------------------

ADDONS = Path(__file__).resolve().parents[2] / "addons"
# In-place changes of a field's value: a list, dict or bytearray changed without assigning the field.
MUTATORS = frozenset({"append", "extend", "insert", "remove", "pop", "clear", "update", "setdefault", "add"})
# How a record is reached: the core's table, or a new one.
RECORD_SOURCES = frozenset({"get", "pop", "values", "setdefault"})


def _is_record_source(node: ast.AST) -> bool:
    """`<...>.calls.get(...)`, `.pop(...)`, `.calls[...]`, `Call(...)`, `new_call(...)`."""
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("Call", "new_call"):
            return True
        return (
            isinstance(func, ast.Attribute)
            and func.attr in RECORD_SOURCES
            and isinstance(func.value, ast.Attribute)
            and func.value.attr == "calls"
        )
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "calls"
    )


def _annotated_call(annotation: ast.AST | None) -> bool:
    return annotation is not None and "Call" in {
        n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)
    }


def record_names(tree: ast.AST) -> set[str]:
    """Every name a module binds a call record to."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and _annotated_call(node.annotation):
            names.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if _annotated_call(node.annotation):
                names.add(node.target.id)
        elif isinstance(node, (ast.Assign, ast.NamedExpr)) and _is_record_source(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets if isinstance(t, ast.Name) for n in [t]}
        elif isinstance(node, ast.For) and _is_record_source(
            node.iter.args[0] if _wrapped(node.iter) else node.iter
        ):
            names |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    return names


def _wrapped(node: ast.AST) -> bool:
    """`list(...)` around a source."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "list"
        and bool(node.args)
    )


def field_writes(tree: ast.AST) -> list[tuple[str, int]]:
    """(field, line) for each write to `call.<field>`: assigned, augmented, deleted or changed in place."""
    writes = []

    def field_of(target: ast.AST) -> str | None:
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "call"
        ):
            return target.attr
        return None

    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            stored = (t for target in node.targets for t in ast.walk(target))
            targets = [t for t in stored if isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store)]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS
        ):
            targets = [node.func.value]
        elif _is_setattr_on_a_record(node):
            writes.append(("<setattr>", getattr(node, "lineno", 0)))
        for target in targets:
            name = field_of(target)
            if name is not None:
                writes.append((name, node.lineno))
    return writes


def _is_setattr_on_a_record(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "setattr"
        and bool(node.args)
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "call"
    )


def modules() -> list[tuple[str, ast.Module]]:
    return [(path.stem, ast.parse(path.read_text(), str(path))) for path in sorted(ADDONS.glob("*.py"))]


def test_a_record_is_always_called_call_so_every_write_is_found() -> None:
    elsewhere = {name: sorted(record_names(tree) - {"call"}) for name, tree in modules()}
    assert {name: found for name, found in elsewhere.items() if found} == {}


def test_a_record_is_created_only_by_the_core() -> None:
    creators = sorted(
        name
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Call"
    )
    assert creators == ["core"]


def test_each_field_is_written_only_by_its_documented_owner() -> None:
    fields = {f.name for f in dataclasses.fields(Call)}
    written: dict[str, set[str]] = {}
    undocumented = []
    for module, tree in modules():
        for name, line in field_writes(tree):
            written.setdefault(name, set()).add(module)
            owner = WRITERS.get(name)
            if name not in fields:
                undocumented.append(f"addons/{module}.py:{line}: call.{name} is not a field of Call")
            elif owner is None or module not in owner.parts:
                undocumented.append(f"addons/{module}.py:{line}: call.{name} written outside WRITERS")
    assert undocumented == []
    # And the table names no writer that does not write: a stale entry would hide a moved write.
    assert {name: set(owner.parts) for name, owner in WRITERS.items()} == written


def test_a_field_shared_by_parts_says_why() -> None:
    assert [name for name, owner in WRITERS.items() if len(owner.parts) > 1 and not owner.shared] == []
    assert set(WRITERS) <= {f.name for f in dataclasses.fields(Call)}


def test_the_write_scanner_finds_each_kind_of_write() -> None:
    tree = ast.parse(
        "def f(core, flow):\n"
        "    call = core.calls.get(flow.id)\n"
        "    call.client = 'a'\n"
        "    call.response_bytes += 1\n"
        "    call.notes.append('n')\n"
        "    call.host, x = 'h', 1\n"
        "    other = core.calls.pop(flow.id)\n"
        "    table[call.flow_id] = call.api\n"
    )
    assert sorted(field_writes(tree)) == [("client", 3), ("host", 6), ("notes", 5), ("response_bytes", 4)]
    assert record_names(tree) == {"call", "other"}


def rate_record(usage: Usage, *, answered_locally: bool = False):
    call = Call("f1", "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 0.0)
    call.request_model = "claude-sonnet-4-5"
    call.rate_held = True
    call.answered_locally = answered_locally
    reading = Reading(model=call.request_model, usage=usage, usage_seen=not answered_locally, complete=True)
    return build_record(
        call,
        reading,
        status=503 if answered_locally else 200,
        error=None,
        request_id=None,
        rate_limits=[("anthropic-ratelimit-requests-remaining", "0")],
        headers_at=None,
        ended=1.0,
    )


def test_a_rate_admission_settles_at_new_input_and_output():
    usage = Usage(input_tokens=30, cache_write_5m_tokens=70, cache_read_tokens=900, output_tokens=5)
    done = rate_record(usage)
    assert done.rate == (100, 5)
    assert done.rate_limits == [("anthropic-ratelimit-requests-remaining", "0")]


def test_suspect_input_keeps_the_admission_estimate_rather_than_counting_nothing():
    done = rate_record(Usage(output_tokens=5, suspect=f"input_tokens={10**30}"))
    assert done.row["input_tokens"] is None
    assert done.rate == (None, 5)


def test_a_call_sluice_answered_uses_no_tokens_and_its_headers_are_no_credentials_reading():
    done = rate_record(Usage(), answered_locally=True)
    assert done.rate == (0, 0)
    assert done.rate_limits == [] and done.row["rate_limits"] is None
