"""The layers import in one direction: `addons/` may use `rules/`, `state/` and `ops/`; `state/` and `ops/`
never import mitmproxy or `addons/`; `rules/` holds pure functions over plain data: the standard library,
pydantic, and itself. Checked by parsing every module's imports, so a new import that breaks the direction
fails here before it ships."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(path: Path) -> set[str]:
    """The top-level names a module imports when it is imported (`from a.b import c` gives `a`): relative
    imports and imports inside functions left out (a `sluice` command that needs mitmproxy, `replay`, imports
    it when it runs, so the rest of the command and `state/` load without it)."""
    roots: set[str] = set()
    for node in _module_level(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def _module_level(tree: ast.AST) -> list[ast.AST]:
    found: list[ast.AST] = []
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("rules"), ids=lambda p: str(p.relative_to(ROOT)))
def test_rules_import_only_the_standard_library_pydantic_and_rules(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__", "pydantic", "pydantic_core", "rules"}
    assert imported_roots(path) <= allowed, imported_roots(path) - allowed


@pytest.mark.parametrize("path", modules("state"), ids=lambda p: str(p.relative_to(ROOT)))
def test_state_never_imports_mitmproxy_or_the_addons(path: Path) -> None:
    assert not imported_roots(path) & {"mitmproxy", "addons"}


@pytest.mark.parametrize("path", modules("ops"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_ops_process_never_imports_mitmproxy_or_the_addons(path: Path) -> None:
    """ops/ runs in a process of its own, started without mitmproxy (and lighter for it)."""
    assert not imported_roots(path) & {"mitmproxy", "addons"}


def test_no_addon_module_shadows_a_top_level_package() -> None:
    """mitmproxy puts addons/ itself on sys.path (`-s addons/sluice.py`): a module there named like a
    package (`ops.py` beside `ops/`) would be imported in the package's place."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert not {path.stem for path in modules("addons")} & packages
