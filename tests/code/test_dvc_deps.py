"""dvc.yaml declares exactly what each stage runs and reads: the project files in its import
closure, and the params sections it reads. Editing a module a stage imports must rerun it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cxr", "stages")


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every project module ``path`` imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def closure(module: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += imported_modules(path)
    return seen


def params_read(paths: set[Path]) -> set[str]:
    """Sections read with ``params.section("x")`` or ``params.sections(("x", ...))``."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "params" and node.args):
                continue
            arg = node.args[0]
            if node.func.attr == "section" and isinstance(arg, ast.Constant):
                found.add(arg.value)
            elif node.func.attr == "sections" and isinstance(arg, (ast.Tuple, ast.List)):
                found.update(e.value for e in arg.elts if isinstance(e, ast.Constant))
    return found


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def declared_code(stage: dict) -> set[Path]:
    out: set[Path] = set()
    for dep in stage.get("deps", []):
        path = REPO / dep
        if dep.split("/")[0] not in PACKAGES:
            continue
        out.update(path.rglob("*.py") if path.is_dir() else [path])
    return out


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_exactly_the_code_it_imports(name):
    stage = STAGES[name]
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    needed = closure(module)
    declared = declared_code(stage)
    rel = lambda paths: sorted(str(p.relative_to(REPO)) for p in paths)  # noqa: E731
    assert not needed - declared, f"dvc.yaml '{name}' misses deps {rel(needed - declared)}"
    assert not declared - needed, f"dvc.yaml '{name}' declares code it never imports {rel(declared - needed)}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_exactly_the_params_sections_it_reads(name):
    stage = STAGES[name]
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    read = params_read(closure(module))
    declared = {p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])}
    assert read == declared, f"dvc.yaml '{name}': reads {sorted(read)}, declares {sorted(declared)}"


def test_the_closure_sees_imports_inside_functions():
    """stages/evaluate.py imports cxr.shift.robustness only inside a function: still a dep."""
    assert REPO / "cxr" / "shift" / "robustness.py" in closure("stages.evaluate")
    assert REPO / "cxr" / "serve" / "serving.py" not in closure("stages.train")


# ---------------------------------------------------------------- paths live in dvc.yaml only

PIPELINE_ROOTS = ("data/", "models/", "reports/", "metrics.json")


def _cmd_paths(stage: dict) -> set[str]:
    import shlex

    words = shlex.split(stage["cmd"])
    return {words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def _declared(stage: dict) -> set[str]:
    out = set()
    for key in ("deps", "outs", "metrics"):
        for entry in stage.get(key) or []:
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            if not name.endswith(".py") and not name.startswith(("cxr/", "stages/", "data/pinned")):
                out.add(name)
    return out


def _within(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_gets_its_data_paths_on_the_cmd_line(name):
    """Every data dep and output is passed to the stage (or lies in a folder that is), and
    the stage is passed nothing dvc.yaml does not declare."""
    stage = STAGES[name]
    cmd, declared = _cmd_paths(stage), _declared(stage)
    assert all(_within(d, cmd) for d in declared), (name, sorted(d for d in declared if not _within(d, cmd)))
    known = [c for c in cmd if _within(c, declared) or any(_within(d, {c}) for d in declared)]  # or a folder of them
    assert sorted(known) == sorted(cmd), (name, sorted(set(cmd) - set(known)))


def _string_literals(path: Path) -> list[str]:
    """String constants of a module, docstrings aside."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("path", sorted([*REPO.glob("stages/*.py"), REPO / "cxr" / "ops" / "scoring.py",
                                         *REPO.glob("pipelines/*.py")]), ids=lambda p: p.name)
def test_no_stage_or_reader_restates_a_pipeline_path(path):
    """Stages take their paths from the command line, other readers from dvc.yaml (cxr.layout)."""
    restated = [s for s in _string_literals(path) if s.startswith(PIPELINE_ROOTS)]
    assert not restated, f"{path.relative_to(REPO)} restates {restated}: take it from dvc.yaml"


def test_layout_reads_the_paths_from_dvc_yaml():
    from cxr import layout

    assert layout.path("export", "out", REPO) == REPO / "models/export"
    assert layout.path("evaluate", "metrics", REPO) == REPO / "metrics.json"
    assert REPO / "reports/plots/roc.json" in layout.plot_files(REPO)
    from cxr import UserError

    with pytest.raises(UserError, match="passes no --nothing"):
        layout.path("export", "nothing", REPO)
