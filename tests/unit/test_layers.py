"""DESIGN.md's import rules, checked on the source with ``ast``: pure, no import of conveyor, no server.

Every ``import`` statement under ``src/conveyor`` counts, wherever it stands: at module level, inside
a function (it runs on every call) and under ``if TYPE_CHECKING`` (a type-only import is still a
dependency on that module's contract). The rules, as DESIGN.md states them, with the precisions
this test adds in brackets:

1. ``errors``, ``settings``, ``message``, ``signing`` and ``scheduler/schedules`` import nothing from
   conveyor except ``errors`` [nor do ``states``, the result-record format, and ``_registry``, the
   URL-scheme loader both registries share].
2. ``brokers/*`` and ``backends/*`` import only ``message``, ``errors``, ``settings`` and their own
   ``base`` [and ``states``; a broker may import ``backends.base``, the contract of the store it is
   handed; a module of one engine's subpackage (``brokers/redis/``) may import its siblings; a
   backend may import its own engine's ``brokers.<engine>.connection``, ``keys``, ``aio`` (the async
   client) and ``wake`` (cross-process wake-ups) and nothing else of ``brokers``].
3. ``worker/*`` depends on the ``brokers.base``/``backends.base`` contracts (and the packages that
   re-export them), never on a concrete broker or backend.
4. ``cli/`` and ``dashboard/`` go through ``app`` and ``ops/`` only [read: they never import
   ``brokers`` or ``backends``; the CLI still starts the worker and beat it serves].
5. [A private module (``_name``) or private name is imported only from inside its own package.]
6. [No import cycle at run time: module-level and function-local imports, ``TYPE_CHECKING`` aside.]

The checker runs on any source tree, so the last tests plant one violation per rule in a scratch
package and see it reported: the rules cannot pass vacuously.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "conveyor"

#: Rule 1: modules that import nothing from conveyor but ``errors``.
PURE = frozenset(
    {
        "conveyor.errors",
        "conveyor.settings",
        "conveyor.message",
        "conveyor.signing",
        "conveyor.scheduler.schedules",
        "conveyor.states",
        "conveyor._registry",
    }
)
#: Rule 2: what any module of ``brokers/`` or ``backends/`` may import besides its own package's contract.
STORAGE_MAY_IMPORT = frozenset({"conveyor.errors", "conveyor.message", "conveyor.settings", "conveyor.states"})
#: Rule 2: modules of ``brokers/`` every broker module may import (the contract and shared private helpers).
BROKERS_SHARED = frozenset({"conveyor.brokers.base", "conveyor.brokers._urls", "conveyor.brokers._stalls"})
#: Rule 2: what a backend may use of its engine's broker subpackage.
ENGINE_MODULES_FOR_BACKENDS = frozenset({"connection", "keys", "aio", "wake"})


@dataclasses.dataclass(frozen=True, slots=True)
class Edge:
    """One import: ``source`` (module) imports ``target`` (module), plus the names taken from it."""

    source: str
    target: str
    line: int
    names: tuple[str, ...] = ()
    target_is_package: bool = False
    type_only: bool = False
    local: bool = False

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.source}:{self.line} imports {self.target}{names}"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (a package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def edges(root: Path) -> list[Edge]:
    """Every import between modules of ``root``'s package (imports of other packages are left out)."""
    modules = module_names(root)
    found: list[Edge] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        found += _ImportVisitor(name, is_package, modules, root.name).collect(ast.parse(path.read_text(), str(path)))
    return found


class _ImportVisitor(ast.NodeVisitor):
    """Collects the imports of one module, noting those under ``TYPE_CHECKING`` and those inside functions."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, Path], top: str) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.modules = modules
        self.top = top
        self.found: list[Edge] = []
        self.type_only = 0
        self.local = 0

    def collect(self, tree: ast.AST) -> list[Edge]:
        self.visit(tree)
        return self.found

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        self.type_only += guarded
        for child in node.body:
            self.visit(child)
        self.type_only -= guarded
        for child in node.orelse:
            self.visit(child)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.local += 1
        self.generic_visit(node)
        self.local -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, (), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        plain = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:  # ``from package import module``: an edge to that module
                self._add(submodule, (), node.lineno)
            else:
                plain.append(alias.name)
        if plain:
            self._add(base, tuple(plain), node.lineno)

    def _add(self, target: str, names: tuple[str, ...], line: int) -> None:
        if target == self.top or target.startswith(self.top + "."):
            is_package = target in self.modules and self.modules[target].name == "__init__.py"
            edge = Edge(self.module, target, line, names, is_package, self.type_only > 0, self.local > 0)
            self.found.append(edge)


# -- the rules -----------------------------------------------------------------------------------


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def rule_pure(edge: Edge, top: str) -> str | None:
    if edge.source in {m.replace("conveyor", top, 1) for m in PURE} and edge.target != f"{top}.errors":
        return "rule 1: errors, settings, message, signing, states, schedules and _registry import only errors"
    return None


def rule_storage(edge: Edge, top: str) -> str | None:
    brokers, backends = f"{top}.brokers", f"{top}.backends"
    source, target = edge.source, edge.target
    if not (_under(source, brokers) or _under(source, backends)):
        return None
    if target in {m.replace("conveyor", top, 1) for m in STORAGE_MAY_IMPORT}:
        return None
    if target == f"{top}._registry" and source in {brokers, backends}:
        return None
    shared = {m.replace("conveyor", top, 1) for m in BROKERS_SHARED}
    if _under(source, brokers):
        same_engine = source.count(".") >= 2 and _under(target, ".".join(source.split(".")[:3]))
        if target in shared or same_engine or target == f"{backends}.base":
            return None
        return "rule 2: a broker imports message, errors, settings, states, brokers.base, its own engine, backends.base"
    if target == f"{backends}.base":
        return None
    engine = source.split(".")[2] if source.count(".") == 2 else None
    allowed = {f"{brokers}.{engine}.{name}" for name in ENGINE_MODULES_FOR_BACKENDS}
    if engine is not None and target in allowed:
        return None
    return (
        "rule 2: a backend imports message, errors, settings, states, backends.base, its engine's connection/keys/..."
    )


def rule_worker(edge: Edge, top: str) -> str | None:
    if not _under(edge.source, f"{top}.worker"):
        return None
    for package in (f"{top}.brokers", f"{top}.backends"):
        if _under(edge.target, package) and edge.target not in {package, f"{package}.base"}:
            return "rule 3: the worker depends on the broker and backend contracts, never on an engine"
    return None


def rule_front(edge: Edge, top: str) -> str | None:
    if not (_under(edge.source, f"{top}.cli") or _under(edge.source, f"{top}.dashboard")):
        return None
    if _under(edge.target, f"{top}.brokers") or _under(edge.target, f"{top}.backends"):
        return "rule 4: the CLI and dashboard reach brokers and backends through app and ops only"
    return None


def rule_private(edge: Edge, top: str) -> str | None:
    """A ``_private`` module, or a ``_private`` name of a module, is used only inside its own package."""
    parts = edge.target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            if not _under(edge.source, owner):
                return f"rule 5: {edge.target} is private to {owner}"
    owner = edge.target if edge.target_is_package else edge.target.rpartition(".")[0]
    private = [n for n in edge.names if n.startswith("_") and not n.startswith("__")]
    if private and not _under(edge.source, owner):
        return f"rule 5: {', '.join(private)} private to {edge.target}"
    return None


RULES: list[Callable[[Edge, str], str | None]] = [rule_pure, rule_storage, rule_worker, rule_front, rule_private]


def violations(root: Path) -> list[str]:
    """Every import of ``root``'s package that breaks rules 1 to 5, one line each."""
    out = []
    for edge in edges(root):
        for rule in RULES:
            why = rule(edge, root.name)
            if why is not None:
                out.append(f"{edge}: {why}")
    return out


def runtime_cycles(root: Path) -> list[list[str]]:
    """Rule 6: the import cycles among modules of ``root`` that run (``TYPE_CHECKING`` imports aside)."""
    graph: dict[str, set[str]] = {}
    for edge in edges(root):
        if not edge.type_only and edge.target != edge.source:
            graph.setdefault(edge.source, set()).add(edge.target)
    return [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]


def _strongly_connected(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Tarjan's algorithm, iterative enough for a package of a few hundred modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            out.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    yield from out


# -- the tests -----------------------------------------------------------------------------------


def test_the_source_tree_is_found() -> None:
    # The checker reads the installed-from source; an empty walk would pass every rule.
    assert len(module_names(SRC)) > 40
    assert any(e.target == "conveyor.errors" for e in edges(SRC))


def test_conveyor_keeps_the_import_rules() -> None:
    assert violations(SRC) == []


def test_conveyor_has_no_import_cycle_at_run_time() -> None:
    assert runtime_cycles(SRC) == []


PLANTED = [
    ("errors.py", "from pkg.message import Message\n", "rule 1"),
    ("message.py", "def f() -> None:\n    from pkg.states import State\n", "rule 1"),
    ("backends/redis.py", "from pkg.brokers.redis.broker import RedisBroker\n", "rule 2"),
    ("backends/__init__.py", "from pkg.brokers import load_class\n", "rule 2"),
    ("brokers/redis/broker.py", "from pkg.brokers.sqlite.connection import SQLiteConnection\n", "rule 2"),
    ("brokers/memory.py", "from pkg.task import Task\n", "rule 2"),
    ("worker/child.py", "from pkg.brokers.redis.broker import RedisBroker\n", "rule 3"),
    (
        "worker/child.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.backends.sqlite import B\n",
        "rule 3",
    ),
    ("cli/status.py", "from pkg.brokers import Broker\n", "rule 4"),
    ("app.py", "from pkg.brokers.redis import _helper\n", "rule 5"),
    ("app.py", "from pkg.worker.child import _private_name\n", "rule 5"),
]


def _scratch_package(tmp_path: Path) -> Path:
    """A package ``pkg`` shaped like conveyor, whose modules import nothing."""
    root = tmp_path / "pkg"
    for name in [
        "__init__.py", "errors.py", "message.py", "states.py", "task.py", "app.py",
        "brokers/__init__.py", "brokers/base.py", "brokers/memory.py",
        "brokers/redis/__init__.py", "brokers/redis/broker.py", "brokers/redis/connection.py",
        "brokers/redis/_helper.py", "brokers/sqlite/__init__.py", "brokers/sqlite/connection.py",
        "backends/__init__.py", "backends/base.py", "backends/redis.py", "backends/sqlite.py",
        "worker/__init__.py", "worker/child.py", "cli/__init__.py", "cli/status.py",
    ]:  # fmt: skip
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text('"""A module."""\n')
    return root


def test_a_clean_scratch_package_passes(tmp_path: Path) -> None:
    root = _scratch_package(tmp_path)
    (root / "backends/redis.py").write_text(
        "from pkg.brokers.redis.connection import C\nfrom pkg.backends.base import B\n"
    )
    (root / "brokers/redis/broker.py").write_text("from pkg.brokers.redis import _helper\nfrom pkg.errors import E\n")
    (root / "worker/child.py").write_text("from pkg.brokers import Delivery\nfrom pkg.backends.base import B\n")
    assert violations(root) == []
    assert runtime_cycles(root) == []


@pytest.mark.parametrize(("module", "source", "rule"), PLANTED, ids=[f"{m}-{r}" for m, _, r in PLANTED])
def test_a_planted_violation_is_reported(tmp_path: Path, module: str, source: str, rule: str) -> None:
    # Given a scratch package that keeps the rules, with one bad import planted
    root = _scratch_package(tmp_path)
    (root / module).write_text(source)
    # Then exactly that import is reported, under its rule
    found = violations(root)
    assert len(found) == 1, found
    assert found[0].startswith(f"pkg.{module.removesuffix('.py').removesuffix('/__init__').replace('/', '.')}:")
    assert rule in found[0]


def test_a_planted_runtime_cycle_is_reported_but_a_type_only_one_is_not(tmp_path: Path) -> None:
    root = _scratch_package(tmp_path)
    (root / "task.py").write_text("from pkg.app import App\n")
    (root / "app.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.task import Task\n")
    assert runtime_cycles(root) == []
    (root / "app.py").write_text("def build() -> None:\n    from pkg.task import Task\n")
    assert runtime_cycles(root) == [["pkg.app", "pkg.task"]]
