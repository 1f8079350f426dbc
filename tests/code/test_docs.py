"""The docs stay true where a test can tell: every `make` target, command-line flag of the
project's own programs, params.yaml key and HTTP route that the README and docs/ name exists.

Parsed, not grepped: make targets from the Makefile's rules, flags from each program's own
``--help`` (argparse), params keys by walking params.yaml, routes from the service's API
methods, its mounted apps and BentoML's system routes.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from tests.shared_paths import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]+)`")
# Programs of this project that take flags, as a doc spells them -> the module to ask for --help.
PROGRAMS = re.compile(r"(?:python(?:3(?:\.11)?)? -m ([\w.]+)|(?:\.venv/bin/)?python (bench/\w+\.py))((?:[ \t]+[^\s|;&#]+)*)")
FILE_EXTENSIONS = {"py", "json", "yaml", "md", "keras", "tflite", "npz", "csv", "h5", "html", "jsonl", "png", "txt"}
BENTOML_SYSTEM_ROUTES = {"/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/docs"}


def texts() -> list[tuple[str, str]]:
    return [(path.relative_to(REPO).as_posix(), path.read_text()) for path in DOCS if path.exists()]


def code_of(text: str) -> list[str]:
    """Fenced blocks (line by line, continuation lines joined) and inline code spans."""
    out = []
    for block in FENCE.findall(text):
        out += [line.split("  #")[0] for line in block.replace("\\\n", " ").splitlines()]
    return out + INLINE.findall(FENCE.sub("", text))


@lru_cache(maxsize=None)
def make_targets() -> set[str]:
    rules = re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M)
    phony = re.findall(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.M)
    return set(rules) | {t for line in phony for t in line.split()}


@lru_cache(maxsize=None)
def help_of(program: str) -> str:
    cmd = [sys.executable, program] if program.endswith(".py") else [sys.executable, "-m", program]
    out = subprocess.run([*cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": str(Path(sys.executable).parent),
                              "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(Path.home())})
    return out.stdout + out.stderr


@lru_cache(maxsize=None)
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def has_param(dotted: str) -> bool:
    node = params()
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@lru_cache(maxsize=None)
def routes() -> set[str]:
    """The service's routes: its @bentoml.api methods, the paths of its Starlette routes and mounts."""
    tree = ast.parse((REPO / "service.py").read_text())
    out = set(BENTOML_SYSTEM_ROUTES)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                "bentoml.api" in ast.unparse(d) for d in node.decorator_list):
            out.add("/" + node.name)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("Route", "mount_asgi_app")):
            for arg in [*node.args, *[k.value for k in node.keywords if k.arg == "path"]]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("/"):
                    out.add(arg.value.rstrip("/") or "/")
    return out


def mentions():
    for name, text in texts():
        for code in code_of(text):
            yield name, code


def test_every_make_target_named_exists():
    named = {(doc, t) for doc, code in mentions() for t in re.findall(r"(?:^|[\s(;&])make ([a-z][\w-]*)", code)}
    assert named, "the README names make targets"
    missing = sorted((doc, t) for doc, t in named if t not in make_targets())
    assert not missing, f"make targets named in the docs but not in the Makefile: {missing}"


def test_every_flag_of_our_programs_named_exists():
    checked, missing = 0, []
    for doc, code in mentions():
        for module, script, args in PROGRAMS.findall(code):
            program = module or script
            if module and not (module.split(".")[0] in ("cxr", "stages", "pipelines", "bench")):
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args):
                checked += 1
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_of(program)):
                    missing.append((doc, program, flag))
    assert checked, "the docs name flags of the project's programs"
    assert not missing, f"flags named in the docs that the program does not take: {missing}"


def test_every_params_key_named_exists():
    sections = set(params())
    named = set()
    for doc, code in mentions():
        for key in re.findall(r"(?<![\w./-])([a-z_]+(?:\.[a-z_0-9]+)+)(?![\w/(-])", code):
            if key.split(".")[0] in sections and key.rsplit(".", 1)[1] not in FILE_EXTENSIONS:
                named.add((doc, key))
    assert len(named) >= 5, named
    missing = sorted((doc, key) for doc, key in named if not has_param(key))
    assert not missing, f"params keys named in the docs but not in params.yaml: {missing}"


def test_every_route_named_exists():
    named = set()
    for doc, code in mentions():
        named |= {(doc, r) for r in re.findall(r"(?:127\.0\.0\.1|localhost):[\d$A-Z{}:-]+(/[\w./-]*)", code)}
        if re.fullmatch(r"/[a-z_]+(?:\.json)?/?", code.strip()) and not code.strip().startswith(("/tmp", "/work")):
            named.add((doc, code.strip()))
    assert named, "the docs name routes"
    missing = sorted((doc, r) for doc, r in named if (r.rstrip("/") or "/") not in routes()
                     and not any(r.startswith(m + "/") for m in routes() if m != "/"))
    assert not missing, f"routes named in the docs that the service does not have: {missing}"


@pytest.mark.parametrize("doc", [d.relative_to(REPO).as_posix() for d in DOCS if d.exists()])
def test_docs_link_to_files_that_exist(doc):
    text = (REPO / doc).read_text()
    links = re.findall(r"\]\((?!https?://|#|mailto:)([^)#\s]+)", text)
    missing = [link for link in links if not ((REPO / doc).parent / link).exists()]
    assert not missing, f"{doc} links to missing files: {missing}"
