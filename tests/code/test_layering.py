"""cxr/ keeps its architecture: subpackages by concern in layers, each importing only its own
layer and those below it, no import cycle, a small top level, no module too long to read.

The graph is built from the source (``ast``), with the imports inside functions, so a lazy
import cannot hide an upward dependency. ``from M import x`` is an edge to the module ``M.x``
when there is one, else to ``M``. Importing a submodule also runs its parent packages'
``__init__``; that is not counted as an edge, but every ``__init__`` is a node like any
module and obeys the same rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cxr"

# Bottom to top. A module may import its own layer and the layers before it, never one after.
# A top-level module belongs to the foundation only if it is named here; a subpackage's layer
# holds the subpackage and everything under it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("cxr", "cxr.cli", "cxr.io", "cxr.params", "cxr.layout", "cxr.metrics")),
    ("imaging", ("cxr.imaging",)),  # bytes -> model input; DICOM
    ("records", ("cxr.records",)),  # the typed artefact formats
    ("data", ("cxr.data",)),  # sources, manifest, validation, split, cached arrays, non-X-ray images
    ("shift", ("cxr.shift",)),  # acquisition shift, re-acquired copies, the shortcut audit
    ("model", ("cxr.model",)),  # network, training, inference, the detector, export
    ("ops", ("cxr.ops",)),  # gate, registry, scoring an export, drift
    ("serve", ("cxr.serve",)),  # the served model, request decoding, the service's plumbing
]
MAX_TOP_LEVEL_MODULES = 10
MAX_MODULE_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {module_name(p) for p in PACKAGE.rglob("__init__.py")}


def imports(name: str) -> dict[str, int]:
    """The cxr modules ``name`` imports (anywhere in it), each with the line of its first import."""
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target.split(".")[0] == "cxr" and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if name in PACKAGES else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES]
            for sub in submodules:
                add(sub, node.lineno)
            if len(submodules) < len(node.names):
                add(module, node.lineno)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer_of(name: str) -> int | None:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            subpackage = member != "cxr" and member in PACKAGES
            if name == member or (subpackage and name.startswith(member + ".")):
                return index
    return None


def test_every_import_names_a_module_that_exists():
    missing = [f"{name}:{line} imports {target}" for name, targets in GRAPH.items()
               for target, line in targets.items() if target not in MODULES]
    assert missing == [], "imports of cxr modules that do not exist:\n" + "\n".join(missing)


def test_every_module_has_a_layer():
    """A new module goes into a layer's subpackage, or is named in LAYERS as foundation."""
    assert [name for name in MODULES if layer_of(name) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]}) "
              f"at line {line}"
              for name, targets in GRAPH.items() for target, line in targets.items()
              if None not in (layer_of(name), layer_of(target)) and layer_of(target) > layer_of(name)]
    assert upward == [], "imports running up the layers:\n" + "\n".join(upward)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_the_graph_sees_imports_inside_functions():
    """cxr.imaging.preprocess imports the DICOM decoder only inside open_image (pydicom is
    loaded for DICOM uploads only): still an edge."""
    assert "cxr.imaging.dicom" in GRAPH["cxr.imaging.preprocess"]
    assert "cxr.shift.robustness" in GRAPH["cxr.model.ood_fit"]


def test_the_top_of_the_package_stays_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules at the top of cxr/: {top}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_too_long_to_read(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name].relative_to(REPO)} has {lines} lines: split it along a seam"
