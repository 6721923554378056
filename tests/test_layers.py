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


# mitmproxy's documented API: the modules of its API reference (docs.mitmproxy.org, "API Reference"), plus
# `ctx` and `exceptions`, which its addon documentation uses, and `io`, which its examples use to read and
# write flow files. Everything else of mitmproxy is an internal: only addons/mitm_internals.py touches it.
DOCUMENTED_MITMPROXY = frozenset(
    {
        "mitmproxy.addonmanager",
        "mitmproxy.certs",
        "mitmproxy.connection",
        "mitmproxy.contentviews",
        "mitmproxy.coretypes.multidict",
        "mitmproxy.ctx",
        "mitmproxy.dns",
        "mitmproxy.exceptions",
        "mitmproxy.flow",
        "mitmproxy.http",
        "mitmproxy.io",
        "mitmproxy.net.server_spec",
        "mitmproxy.proxy.context",
        "mitmproxy.proxy.mode_specs",
        "mitmproxy.proxy.server_hooks",
        "mitmproxy.tcp",
        "mitmproxy.tls",
        "mitmproxy.udp",
        "mitmproxy.websocket",
    }
)
BY_NAME = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def mitmproxy_imports(path: Path) -> set[str]:
    """Every mitmproxy module a module imports, anywhere in it (`from mitmproxy import http` gives
    `mitmproxy.http`; `from mitmproxy.proxy.layers import tls` gives `mitmproxy.proxy.layers.tls`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "mitmproxy")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "mitmproxy":
                found.update(f"mitmproxy.{alias.name}" for alias in node.names)
            elif node.module.startswith("mitmproxy."):
                documented = node.module in DOCUMENTED_MITMPROXY
                found.update(node.module if documented else f"{node.module}.{a.name}" for a in node.names)
    return found


def private_reads(path: Path) -> list[str]:
    """Each read of another object's private attribute (`options._options`, `getattr(x, "_handle_event")`),
    as source text. An object's own (`self._x`, `cls._x`) and the standard library's type names
    (`zlib._Decompress`, for annotations) are not others'."""
    own = {"self", "cls", *sys.stdlib_module_names}
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in own):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BY_NAME:
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                found.append(ast.unparse(node))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


ADDONS_BUT_THE_INTERNALS = [path for path in modules("addons") if path.name != "mitm_internals.py"]


@pytest.mark.parametrize("path", ADDONS_BUT_THE_INTERNALS, ids=lambda p: p.name)
def test_addons_import_only_mitmproxys_documented_api(path: Path) -> None:
    """A private mitmproxy module (`mitmproxy.proxy.layers.http._http1`) or an undocumented one
    (`mitmproxy.proxy.layers`, `mitmproxy.net.http`, `mitmproxy.optmanager`) is imported only by
    addons/mitm_internals.py, which the contract tests cover."""
    assert mitmproxy_imports(path) <= DOCUMENTED_MITMPROXY, mitmproxy_imports(path) - DOCUMENTED_MITMPROXY


@pytest.mark.parametrize("path", ADDONS_BUT_THE_INTERNALS, ids=lambda p: p.name)
def test_addons_read_no_private_attribute_of_anything_else(path: Path) -> None:
    assert private_reads(path) == []


def test_the_checks_see_what_the_internals_module_does() -> None:
    internals = ROOT / "addons" / "mitm_internals.py"
    assert "mitmproxy.optmanager" in mitmproxy_imports(internals)
    assert "options._options" in private_reads(internals)
