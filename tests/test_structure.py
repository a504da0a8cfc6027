"""Import structure of `hf_hem`, read from the source with `ast` (nothing is imported).

Two rules:

- No import cycles among `hf_hem` modules. Imports inside functions count: a late import only hides a loop until
  the function first runs, and it still ties the two modules together. Imports under `if TYPE_CHECKING:` do not
  run and are left out.
- No private names across units. A unit is the first package below `hf_hem` (`hf_hem.losses.kernels._upsample`
  belongs to `losses`); a top-level module (`hf_hem/counting.py`) is a unit of its own. Importing from another unit
  a module whose path has a `_`-component, or a `_`-name, couples the two units through something that may change
  without notice. Here type-only imports count too: they name the private object just the same.

Edges are the imports as written. `from pkg import name` is an edge to `pkg.name` when that is a module, else to
`pkg` (its `__init__.py`). Importing `pkg.sub` also runs `pkg/__init__.py` at run time, but that implied edge is not
drawn: every module importing a sibling would otherwise close a loop with a parent `__init__` that re-exports it.
A child that explicitly imports its parent package while the parent imports the child is a cycle, and is found.
`importlib.import_module(...)` calls are dynamic and are not followed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hf_hem"


@dataclass(frozen=True)
class Module:
    name: str
    path: str
    is_package: bool
    tree: ast.Module


@dataclass(frozen=True)
class ImportRecord:
    """One imported name (or, for `import a.b`, one module) as written at `path:lineno`."""

    importer: str
    path: str
    lineno: int
    source_module: str  # absolute module path the import reads from
    name: str | None  # imported name for `from ... import name`; None for `import a.b`
    target: str  # the module the import depends on: `source_module.name` when that is a module, else `source_module`
    type_checking: bool

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


def parse_sources(sources: Mapping[str, str]) -> dict[str, Module]:
    """Modules keyed by dotted name, from `{relative path: source}` (`pkg/a/__init__.py` is the module `pkg.a`)."""
    modules = {}
    for path, source in sources.items():
        parts = list(Path(path).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package, ast.parse(source, filename=path))
    return modules


def package_sources(root: Path, package: str) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted((root / package).rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement below `node`, at any depth (functions, classes, try blocks), and whether it only runs
    for type checkers."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, type_checking
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]), True)
            for statement in child.orelse:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]), type_checking)
        else:
            yield from _import_nodes(child, type_checking)


def _resolve_relative(module: Module, level: int, written: str | None) -> str:
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if level - 1 > len(base) - 1:
        raise ValueError(f"{module.path}: relative import beyond the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([written] if written else [])])


def import_records(modules: Mapping[str, Module], package: str) -> list[ImportRecord]:
    """The imports of `package` modules among themselves (imports of other packages are dropped)."""
    records = []
    for module in modules.values():
        for node, type_checking in _import_nodes(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        record = ImportRecord(
                            module.name, module.path, node.lineno, alias.name, None, alias.name, type_checking
                        )
                        records.append(record)
                continue
            source = _resolve_relative(module, node.level, node.module) if node.level else node.module
            if source != package and not source.startswith(package + "."):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                target = submodule if submodule in modules else source
                records.append(
                    ImportRecord(module.name, module.path, node.lineno, source, alias.name, target, type_checking)
                )
    return records


def unresolved_imports(modules: Mapping[str, Module], records: list[ImportRecord]) -> list[str]:
    return [f"{record.where}: no module {record.target}" for record in records if record.target not in modules]


def import_graph(records: list[ImportRecord]) -> dict[str, dict[str, ImportRecord]]:
    """`importer -> {imported module: first import that draws the edge}`, leaving out type-checking imports."""
    graph: dict[str, dict[str, ImportRecord]] = {}
    for record in records:
        if not record.type_checking:
            graph.setdefault(record.importer, {}).setdefault(record.target, record)
    return graph


def find_cycles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """One cycle `[a, b, ..., a]` per strongly connected component that has one (a self-import included).

    Tarjan's algorithm, written iteratively so that deep import chains cannot hit the recursion limit.
    """
    nodes = sorted(set(graph) | {target for targets in graph.values() for target in targets})
    successors = {node: sorted(graph.get(node, ())) for node in nodes}
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(successors[root]))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in successors[node]:
                    components.append(sorted(component))
    return [_cycle_in(component, successors) for component in sorted(components)]


def _cycle_in(component: list[str], successors: Mapping[str, list[str]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth-first search)."""
    start, members = component[0], set(component)
    previous = {start: None}
    queue = [start]
    for node in queue:
        for child in successors[node]:
            if child == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{component} is not strongly connected")


def describe_cycle(cycle: list[str], graph: Mapping[str, Mapping[str, ImportRecord]]) -> str:
    steps = []
    for importer, imported in zip(cycle, cycle[1:]):
        record = graph[importer][imported]
        steps.append(f"{record.where} ({importer} imports {record.name or imported} from {record.source_module})")
    return "cycle " + " -> ".join(cycle) + ":\n    " + "\n    ".join(steps)


def unit_of(module: str) -> str:
    """`pkg.losses.kernels._upsample` -> `losses`; `pkg.counting` -> `counting`; `pkg` -> `pkg`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_private(name: str) -> bool:
    is_dunder = name.startswith("__") and name.endswith("__")
    return name.startswith("_") and not is_dunder


def private_imports(records: list[ImportRecord]) -> list[str]:
    """`path:line: name` for every private module or name imported from another unit."""
    violations = []
    for record in records:
        if unit_of(record.importer) == unit_of(record.target):
            continue
        private_parts = [part for part in record.source_module.split(".") if _is_private(part)]
        if record.name is not None and _is_private(record.name):
            private_parts.append(record.name)
        if private_parts:
            shown = f"{record.source_module}.{record.name}" if record.name else record.source_module
            violations.append(f"{record.where}: {shown} (private: {', '.join(private_parts)})")
    return violations


# ------------------------------------------------------------------------------------------------ the package


@pytest.fixture(scope="module")
def package():
    modules = parse_sources(package_sources(REPO_ROOT, PACKAGE))
    return modules, import_records(modules, PACKAGE)


def test_the_package_is_found(package):
    modules, records = package
    # Guards against a silently empty scan (a moved package would make every other test here pass vacuously).
    assert {"hf_hem", "hf_hem.losses", "hf_hem.losses.hem", "hf_hem.trainer"} <= set(modules)
    assert any(record.importer == "hf_hem.losses.hem" for record in records)


def test_every_internal_import_names_a_module_that_exists(package):
    modules, records = package
    assert unresolved_imports(modules, records) == []


def test_no_import_cycles(package):
    _, records = package
    graph = import_graph(records)
    cycles = [describe_cycle(cycle, graph) for cycle in find_cycles(graph)]
    if cycles:
        pytest.fail("import cycles in hf_hem:\n" + "\n".join(cycles), pytrace=False)


def test_no_private_names_across_units(package):
    _, records = package
    violations = private_imports(records)
    if violations:
        pytest.fail("private names imported from another unit:\n" + "\n".join(violations), pytrace=False)


# ------------------------------------------------------------------------------------------------ the checkers


def _synthetic(sources: dict[str, str]) -> tuple[dict[str, Module], list[ImportRecord]]:
    modules = parse_sources(sources)
    return modules, import_records(modules, "pkg")


def _cycles(sources: dict[str, str]) -> list[list[str]]:
    return find_cycles(import_graph(_synthetic(sources)[1]))


DAG = {
    "pkg/__init__.py": "from .a import run\nfrom . import sub\n",
    "pkg/a.py": "import os\nfrom .b import helper\n\ndef run():\n    from .sub.c import late\n",
    "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import run\n",
    "pkg/sub/__init__.py": "from .c import late\n",
    "pkg/sub/c.py": "from .._common import check\nfrom ..b import helper\nimport numpy\n",
    "pkg/_common.py": "",
}


def test_a_dag_has_no_cycles_and_type_checking_imports_are_left_out():
    assert _cycles(DAG) == []
    modules, records = _synthetic(DAG)
    graph = import_graph(records)
    assert set(graph["pkg"]) == {"pkg.a", "pkg.sub"}  # `from . import sub` is an edge to the subpackage
    assert set(graph["pkg.a"]) == {"pkg.b", "pkg.sub.c"}  # the import inside run() counts
    assert "pkg.b" not in graph  # its only import is under TYPE_CHECKING
    assert set(graph["pkg.sub.c"]) == {"pkg._common", "pkg.b"}  # relative imports resolved, numpy dropped
    assert unresolved_imports(modules, records) == []


def test_a_late_import_closing_a_loop_is_a_cycle():
    sources = dict(DAG, **{"pkg/b.py": "def helper():\n    from .sub.c import late\n"})
    assert _cycles(sources) == [["pkg.b", "pkg.sub.c", "pkg.b"]]
    graph = import_graph(_synthetic(sources)[1])
    message = describe_cycle(_cycles(sources)[0], graph)
    assert "pkg/b.py:2" in message and "pkg/sub/c.py:2" in message


def test_a_child_importing_its_parent_package_that_imports_it_is_a_cycle():
    sources = dict(DAG, **{"pkg/sub/c.py": "from .. import run\n"})
    # `from .. import run` reads the parent's __init__ (run is not a module), which imports a, which imports c late.
    assert _cycles(sources) == [["pkg", "pkg.a", "pkg.sub.c", "pkg"]]
    direct = {"pkg/__init__.py": "from .child import x\n", "pkg/child.py": "import pkg\n"}
    assert _cycles(direct) == [["pkg", "pkg.child", "pkg"]]


def test_a_child_importing_a_sibling_is_no_cycle_with_a_parent_that_re_exports_both():
    sources = {
        "pkg/__init__.py": "from .a import x\nfrom .b import y\n",
        "pkg/a.py": "x = 1\n",
        "pkg/b.py": "from .a import x\ny = x\n",
    }
    assert _cycles(sources) == []


def test_self_import_and_several_cycles_are_all_reported():
    sources = {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.a\n",
        "pkg/b.py": "from pkg import c\n",
        "pkg/c.py": "from pkg.b import thing\n",
    }
    assert _cycles(sources) == [["pkg.a", "pkg.a"], ["pkg.b", "pkg.c", "pkg.b"]]


def test_a_missing_module_is_reported():
    modules, records = _synthetic({"pkg/__init__.py": "from .gone import x\n"})
    assert unresolved_imports(modules, records) == ["pkg/__init__.py:1: no module pkg.gone"]


def test_private_names_across_units_are_reported_with_file_line_and_name():
    sources = {
        "pkg/__init__.py": "from .losses import __all__ as names\n__version__ = '1'\n",
        "pkg/counting.py": "from .losses._common import check\n",
        "pkg/losses/__init__.py": "from .hem import loss\n__all__ = ['loss']\n",
        "pkg/losses/_common.py": "",
        "pkg/losses/hem.py": "from ._common import check\nfrom .kernels._fast import _kernel\n",
        "pkg/losses/kernels/__init__.py": "",
        "pkg/losses/kernels/_fast.py": "",
        "pkg/trainer/__init__.py": "",
        "pkg/trainer/run.py": (
            "from .. import __version__\n"
            "from ..losses.hem import loss, _helper\n"
            "from ..losses import kernels\n"
            "def late():\n"
            "    import pkg.losses.kernels._fast\n"
            "    from ..losses.kernels import _fast\n"
        ),
    }
    assert private_imports(_synthetic(sources)[1]) == [
        "pkg/counting.py:1: pkg.losses._common.check (private: _common)",
        "pkg/trainer/run.py:2: pkg.losses.hem._helper (private: _helper)",
        "pkg/trainer/run.py:5: pkg.losses.kernels._fast (private: _fast)",
        "pkg/trainer/run.py:6: pkg.losses.kernels._fast (private: _fast)",
    ]


def test_units():
    assert unit_of("hf_hem.losses.kernels._upsample") == "losses"
    assert unit_of("hf_hem.counting") == "counting"
    assert unit_of("hf_hem") == "hf_hem"
