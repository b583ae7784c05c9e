"""The packages keep to their layers: read from the source, so a violation fails before it ships.

`modules` is the contract and imports none of the others; `publisher` and `edge_agent` use only
`modules`; `simulator` may use `edge_agent` too. A package reaches another only through its
public surface (no `_private` module or name of another package), the `modelfleet` command table
points at public modules that have a `main`, and the modules of the publisher (and of the
contract) do not import each other in a circle.

Every import counts, including those inside functions, under `TYPE_CHECKING`, and
`importlib.import_module("...")` with a literal name: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("publisher", "edge_agent", "modules", "simulator")
# importer package -> the other packages it may import
ALLOWED: dict[str, frozenset[str]] = {
    "publisher": frozenset({"modules"}),
    "edge_agent": frozenset({"modules"}),
    "simulator": frozenset({"edge_agent", "modules"}),
    "modules": frozenset(),
}
COMMAND_GROUP = "modelfleet.commands"
# Packages whose modules may not import one another in a circle.
ACYCLIC_PACKAGES = ("publisher", "modules")


@dataclass(frozen=True)
class Edge:
    """One import: `importer` (the file's dotted name) needs `target` (a dotted module name).

    `top_level`: runs when the importer is imported (not in a function, not for type checkers);
    `type_only`: under `if TYPE_CHECKING:`, so it never runs at all.
    """

    file: str
    line: int
    importer: str
    target: str
    names: tuple[str, ...]
    top_level: bool
    type_only: bool = False

    def where(self) -> str:
        names = f" (names: {', '.join(self.names)})" if self.names else ""
        return f"{self.file}:{self.line}: {self.importer} -> {self.target}{names}"


def module_name(rel_path: str) -> str:
    parts = list(Path(rel_path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_repo_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, rel_path: str, is_module: Callable[[str], bool]) -> None:
        self.file = rel_path
        self.importer = module_name(rel_path)
        is_package = Path(rel_path).name == "__init__.py"
        self.package = self.importer if is_package else self.importer.rpartition(".")[0]
        self.is_module = is_module
        self.deferred = 0  # > 0 inside a function body or a TYPE_CHECKING block
        self.type_only = 0  # > 0 inside a TYPE_CHECKING block
        self.edges: list[Edge] = []

    def _add(self, node: ast.AST, target: str, names: tuple[str, ...] = ()) -> None:
        line = getattr(node, "lineno", 0)
        top, type_only = self.deferred == 0, self.type_only > 0
        self.edges.append(Edge(self.file, line, self.importer, target, names, top, type_only))

    def _resolve(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        base = self.package.split(".")
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join([*base, *([module] if module else [])])

    def _deferred(self, node: ast.AST) -> None:
        self.deferred += 1
        self.generic_visit(node)
        self.deferred -= 1

    visit_FunctionDef = _deferred
    visit_AsyncFunctionDef = _deferred
    visit_Lambda = _deferred

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.deferred += 1
        self.type_only += 1
        for child in node.body:
            self.visit(child)
        self.type_only -= 1
        self.deferred -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node.module, node.level)
        plain: list[str] = []
        for alias in node.names:
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            if alias.name != "*" and self.is_module(f"{base}.{alias.name}"):
                self._add(node, f"{base}.{alias.name}")
            else:
                plain.append(alias.name)
        if plain:
            self._add(node, base, tuple(plain))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                text = first.value
                level = len(text) - len(text.lstrip("."))
                self._add(node, self._resolve(text[level:] or None, level))
        self.generic_visit(node)


def import_edges(
    source: str, rel_path: str, is_module: Callable[[str], bool] = _is_repo_module
) -> list[Edge]:
    """Every import of one file; `rel_path` (like `publisher/_deploy.py`) names the importer."""
    collector = _Collector(rel_path, is_module)
    collector.visit(ast.parse(source, filename=rel_path))
    return collector.edges


def _top(dotted: str) -> str:
    return dotted.split(".", 1)[0]


def _private_part(target: str, names: tuple[str, ...] = ()) -> str | None:
    """The first private component of a module path below its package (or a private name)."""
    for part in [*target.split(".")[1:], *names]:
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return part
    return None


def edge_violations(edges: list[Edge]) -> list[str]:
    """Wrong-direction and cross-package private imports, one message per offending edge."""
    problems = []
    for edge in edges:
        source, target = _top(edge.importer), _top(edge.target)
        if target not in PACKAGES or target == source:
            continue
        if target not in ALLOWED[source]:
            allowed = ", ".join(sorted(ALLOWED[source])) or "nothing"
            problems.append(f"{edge.where()}: {source} must not import {target} (it may import {allowed})")
        private = _private_part(edge.target, edge.names)
        if private is not None:
            problems.append(
                f"{edge.where()}: {private!r} is private to {target}; "
                f"import it from {target}'s public surface (its __init__ or a public module)"
            )
    return problems


def import_cycles(edges: list[Edge], package: str) -> list[str]:
    """Cycles among one package's modules through imports that run, at import time or later.

    An import moved into a function still makes the two modules depend on each other: it hides
    the cycle from Python, not from the design. Only `TYPE_CHECKING` imports are left out.
    """
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        inside = _top(edge.importer) == package and _top(edge.target) == package
        if inside and not edge.type_only and edge.target != edge.importer:
            graph.setdefault(edge.importer, []).append(edge)
    problems = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            inner = sorted(
                (e for node in component for e in graph.get(node, []) if e.target in component),
                key=lambda e: (e.file, e.line),
            )
            lines = "\n    ".join(e.where() for e in inner)
            problems.append(f"import cycle between {', '.join(sorted(component))}:\n    {lines}")
    return problems


def _strongly_connected(graph: dict[str, list[Edge]]) -> list[set[str]]:
    """Tarjan's algorithm, recursive: the import graphs here are a few dozen modules deep at most."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            out.append(component)

    for node in list(graph):
        if node not in index:
            visit(node)
    return out


def _defines(source: str, name: str) -> bool:
    """Whether a module binds `name` at its top level (def, assignment or import)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
            (a.asname or a.name.split(".")[0]) == name for a in node.names
        ):
            return True
    return False


def command_table_violations(
    pyproject: dict, is_module: Callable[[str], bool] = _is_repo_module
) -> list[str]:
    """The console script and every `modelfleet` command: a public module of ours with that callable."""
    project = pyproject.get("project", {})
    table = {
        **{f"[project.scripts] {k}": v for k, v in project.get("scripts", {}).items()},
        **{
            f'[project.entry-points."{COMMAND_GROUP}"] {k}': v
            for k, v in project.get("entry-points", {}).get(COMMAND_GROUP, {}).items()
        },
    }
    problems = []
    for where, value in table.items():
        module, _, attr = value.partition(":")
        module, attr = module.strip(), attr.strip()
        if _top(module) not in PACKAGES:
            problems.append(f"pyproject.toml {where} = {value!r}: {module} is not in {', '.join(PACKAGES)}")
            continue
        private = _private_part(module)
        if private is not None:
            problems.append(
                f"pyproject.toml {where} = {value!r}: {private!r} is private; name a public module"
            )
        if not is_module(module):
            problems.append(f"pyproject.toml {where} = {value!r}: no module {module} in the source tree")
            continue
        path = ROOT.joinpath(*module.split("."))
        source_file = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        if not attr or not _defines(source_file.read_text(), attr):
            problems.append(f"pyproject.toml {where} = {value!r}: {module} defines no {attr or 'callable'!r}")
    return problems


def _source_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _all_edges() -> list[Edge]:
    edges = []
    for path in _source_files():
        rel = path.relative_to(ROOT).as_posix()
        edges += import_edges(path.read_text(), rel)
    return edges


def _report(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}):\n  " + "\n  ".join(problems)


# -- the project itself -------------------------------------------------------------------------


def test_packages_import_only_downwards_and_only_public_names() -> None:
    problems = edge_violations(_all_edges())
    assert not problems, _report("layering violations", problems)


@pytest.mark.parametrize("package", ACYCLIC_PACKAGES)
def test_no_import_cycle(package: str) -> None:
    problems = import_cycles(_all_edges(), package)
    assert not problems, _report(f"import cycles in {package}", problems)


def test_command_table_names_public_modules_with_a_main() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"][COMMAND_GROUP], "no modelfleet commands declared"
    problems = command_table_violations(pyproject)
    assert not problems, _report("command table problems", problems)


# -- the checker itself: each check is shown to fail on a bad example --------------------------


def test_checker_flags_publisher_importing_the_agent_privately() -> None:
    edges = import_edges("from edge_agent._agent import Agent\n", "publisher/x.py")
    problems = edge_violations(edges)
    assert len(problems) == 2, problems
    assert "publisher/x.py:1: publisher.x -> edge_agent._agent" in problems[0]
    assert "publisher must not import edge_agent" in problems[0]
    assert "'_agent' is private to edge_agent" in problems[1]


def test_checker_sees_lazy_relative_and_import_module_imports() -> None:
    source = (
        "import importlib\n"
        "def later():\n"
        "    from publisher import cli\n"
        "    return importlib.import_module('simulator')\n"
        "from .. import _errors\n"
    )
    edges = import_edges(source, "modules/oci/x.py", is_module=lambda d: d == "modules._errors")
    assert [(e.target, e.top_level) for e in edges if e.target != "importlib"] == [
        ("publisher", False),
        ("simulator", False),
        ("modules._errors", True),
    ]
    problems = edge_violations(edges)
    assert sum("modules must not import" in p for p in problems) == 2, problems
    # Inside its own package a file may use its private modules.
    assert not any("private" in p for p in problems), problems


def test_checker_allows_public_downward_imports() -> None:
    edges = import_edges(
        "from modules.oci import check_digest\nimport modules.deployment\n", "edge_agent/x.py"
    )
    assert edge_violations(edges) == []
    assert edge_violations(import_edges("from edge_agent import Agent\n", "simulator/x.py")) == []


def test_checker_flags_a_cycle_even_through_a_function_level_import() -> None:
    edges = import_edges("from publisher.b import f\n", "publisher/a.py") + import_edges(
        "from publisher.a import g\n", "publisher/b.py"
    )
    (problem,) = import_cycles(edges, "publisher")
    assert "publisher.a, publisher.b" in problem and "publisher/b.py:1" in problem
    deferred = import_edges("def h():\n    from publisher.a import g\n", "publisher/b.py")
    (problem,) = import_cycles(edges[:1] + deferred, "publisher")
    assert "publisher/b.py:2" in problem
    typing_only = import_edges(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from publisher.a import g\n",
        "publisher/b.py",
    )
    assert import_cycles(edges[:1] + typing_only, "publisher") == []


def test_checker_flags_bad_command_table_entries() -> None:
    table = {
        "project": {
            "scripts": {"modelfleet": "modules.cli:main"},
            "entry-points": {
                COMMAND_GROUP: {
                    "good": "modules.hub.cli:main",
                    "hidden": "publisher._deploy:main",
                    "elsewhere": "requests:get",
                    "missing": "publisher.nothing_here:main",
                    "nomain": "modules.topics:main",
                }
            },
        }
    }
    problems = command_table_violations(table)
    assert not any(" good " in p or "modelfleet =" in p for p in problems), problems
    for name in ("hidden", "elsewhere", "missing", "nomain"):
        assert any(f" {name} = " in p for p in problems), (name, problems)
