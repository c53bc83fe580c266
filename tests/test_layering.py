"""The package's import layering, read from the source with ``ast`` (nothing is imported).

Components, lowest first; each may import only itself and the components it lists:

* the leaves (``errors``, ``_version``, ``_deps``, ``_fileutil``, ``_threads``): nothing else of
  bmz;
* ``io`` (readers and writers), ``codec`` (models, entropy and residual coders), ``bitstream``
  (the container) and ``metrics``: the leaves only, not each other;
* ``codec.chunks`` (the chunk formats): ``codec``;
* ``file`` (reading a ``.bmz``): ``codec``, ``codec.chunks``, ``bitstream``, ``io``;
* ``api``: the core below it;
* the tools (``rdcurve``, ``batch``, ``interpolation``, ``train``, ``baselines``,
  ``zarr_codec``, ``target``): the core and each other; the core never imports a tool;
* ``cli``: everything but the package; the package ``bmz`` itself: what it re-exports.

Every import counts, at the top of a module or inside a function, but for those under
``if TYPE_CHECKING:`` (never run). No two modules may import each other, directly or around a
cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bmz"

LEAVES = ("bmz.errors", "bmz._version", "bmz._deps", "bmz._fileutil", "bmz._threads")
TOOLS = ("bmz.rdcurve", "bmz.batch", "bmz.interpolation", "bmz.train", "bmz.baselines",
         "bmz.zarr_codec", "bmz.target")
CORE = ("io", "codec", "codec.chunks", "bitstream", "metrics", "file", "api")

#: component -> the components it may import (besides itself)
ALLOWED = {
    "leaves": set(),
    "io": {"leaves"},
    "codec": {"leaves"},
    "bitstream": {"leaves"},
    "metrics": {"leaves"},
    "codec.chunks": {"leaves", "codec"},
    "file": {"leaves", "codec", "codec.chunks", "bitstream", "io"},
    "api": {"leaves", "codec", "codec.chunks", "bitstream", "io", "metrics", "file"},
    "tools": {"leaves", "codec", "codec.chunks", "bitstream", "io", "metrics", "file", "api"},
    "cli": {"leaves", "codec", "codec.chunks", "bitstream", "io", "metrics", "file", "api",
            "tools"},
    "package": {"leaves", "api"},
}


def component(module: str) -> str:
    """The component of a module name (``bmz.io.dicom.read`` -> ``io``)."""
    if module == "bmz":
        return "package"
    if module in LEAVES:
        return "leaves"
    if module == "bmz.codec.chunks" or module.startswith("bmz.codec.chunks."):
        return "codec.chunks"
    top = module.split(".")[1]
    if f"bmz.{top}" in TOOLS:
        return "tools"
    if top in ("io", "codec", "bitstream", "metrics", "file", "api", "cli"):
        return top
    raise AssertionError(f"{module}: in no component; add it to tests/test_layering.py")


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Every module of the package: name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _runtime_nodes(tree: ast.AST):
    """The nodes of ``tree`` but those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports(name: str, path: Path, is_package: bool, known: set[str]) -> set[tuple[str, int]]:
    """The bmz modules module ``name`` imports, with the line of each import (``from X import
    Y`` counts ``X.Y`` when that is a module, else ``X``)."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source
                       for a in node.names]
        else:
            continue
        found |= {(t, node.lineno) for t in targets if t == "bmz" or t.startswith("bmz.")}
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[tuple[str, int]]]:
    mods = modules(root)
    return {name: imports(name, path, is_pkg, set(mods)) for name, (path, is_pkg) in mods.items()}


def layering_violations(g: dict[str, set[tuple[str, int]]]) -> list[str]:
    out = []
    for name, targets in sorted(g.items()):
        src = component(name)
        for target, line in sorted(targets):
            dst = component(target)
            if dst != src and dst not in ALLOWED[src]:
                out.append(f"{name}:{line} imports {target} ({src} may not import {dst})")
    return out


def cycles(g: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """The import cycles of ``g``: one path per strongly connected component of several modules
    (or a module importing itself)."""
    edges = {n: sorted({t for t, _ in ts if t in g}) for n, ts in g.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in edges[v]:
                found.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def import_graph():
    return graph()


def test_every_module_has_a_component(import_graph):
    assert len(import_graph) > 50
    for name in import_graph:
        component(name)


def test_layers_never_import_upward(import_graph):
    assert layering_violations(import_graph) == []


def test_the_core_never_imports_the_tools(import_graph):
    bad = [f"{name}:{line} imports {target}" for name, targets in sorted(import_graph.items())
           if component(name) in CORE for target, line in sorted(targets)
           if component(target) in ("tools", "cli", "package")]
    assert bad == []


def test_no_import_cycles(import_graph):
    assert cycles(import_graph) == []


def test_the_checks_find_a_bad_import():
    """The graph with one more import, io -> api (upward, and a cycle: the api imports io)."""
    g = graph()
    g["bmz.io.volume"] = g["bmz.io.volume"] | {("bmz.api", 1)}
    assert any(v.startswith("bmz.io.volume:1 imports bmz.api") for v in layering_violations(g))
    assert any({"bmz.io.volume", "bmz.api"} <= set(c) for c in cycles(g))
