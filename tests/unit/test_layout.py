"""The layout's rules, checked on every module: where the web framework may be imported, module
size, private names, import cycles and module names (docs/architecture.rst explains each)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.server import REPO

PACKAGES = ("flwd_server", "flwd_cli")
WEB_FRAMEWORK = ("flask", "werkzeug", "gunicorn")
MAX_LINES = 500
MAX_TOP_LEVEL = 12  # modules directly in flwd_server/, __init__ aside
SHIMS = {"flwd_server.wsgi"}  # the historical entry point flwd_server.wsgi:app, one line over web/wsgi.py


def modules(package: str = "flwd_server") -> dict[str, Path]:
    """Dotted name -> file, for every module of ``package`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


ALL = {name: path for package in PACKAGES for name, path in modules(package).items()}


def imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import in the file, nested ones included, made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names], node.lineno


def project_edges(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (``from . import x`` is an import of module ``x``)."""
    out = set()
    for target, names, _ in imports(name, path):
        submodules = {f"{target}.{n}" for n in names} & ALL.keys()
        out |= submodules or ({target} & ALL.keys())
    out.discard(name)
    return out


def test_the_web_framework_is_imported_only_under_web():
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for name, path in ALL.items()
        if not name.startswith("flwd_server.web")
        for target, _, line in imports(name, path)
        if target.split(".")[0] in WEB_FRAMEWORK
    ]
    assert wrong == []


def test_no_module_is_longer_than_500_lines():
    long = {
        str(path.relative_to(REPO)): n for path in ALL.values() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_about_a_dozen_modules_sit_directly_in_flwd_server():
    top = sorted(p.name for p in (REPO / "flwd_server").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL, top


def test_no_private_name_is_imported_from_another_module():
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {n} from {target}"
        for name, path in ALL.items()
        for target, names, line in imports(name, path)
        if target.split(".")[0] in PACKAGES
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert wrong == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules():
    """Lazy imports inside functions count too: a cycle is a cycle, whenever it closes."""
    graph = {name: project_edges(name, path) for name, path in ALL.items()}
    assert cycles(graph) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_two_modules_share_a_name(package):
    seen: dict[str, list[str]] = {}
    for name, path in modules(package).items():
        if name in SHIMS:
            continue
        if path.name != "__init__.py":
            seen.setdefault(path.stem, []).append(name)
        else:
            seen.setdefault(name.rpartition(".")[2], []).append(name)
    assert {stem: names for stem, names in seen.items() if len(names) > 1} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_architecture_page_names_every_module():
    page = (REPO / "docs" / "architecture.rst").read_text()
    missing = [
        str(path.relative_to(REPO))
        for name, path in ALL.items()
        if path.name != "__init__.py" and not name.startswith("flwd_cli.commands.") and f"``{path.name}``" not in page
    ]
    assert missing == []
