"""The one place knobs come from: ``params.yaml`` (DVC's params file).

Each stage reads its own section, so DVC's ``params:`` declarations in ``dvc.yaml``
say exactly which knobs rerun which stage. ``python -m cxr.params set k=v ...``
edits the file in place, keeping its comments, for the README's one-line switch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from cxr import UserError

PARAMS_FILE = Path(os.environ.get("CXR_PARAMS", "params.yaml"))


def load(path: str | os.PathLike | None = None) -> dict:
    import yaml

    path = Path(path or PARAMS_FILE)
    if not path.exists():
        raise UserError(f"{path} not found: run from the repository root (or set CXR_PARAMS)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of sections")
    return data


def section(name: str, path: str | os.PathLike | None = None) -> dict:
    data = load(path)
    if name not in data or not isinstance(data[name], dict):
        raise UserError(f"params.yaml has no '{name}' section")
    return data[name]


def sections(names: tuple[str, ...], path: str | os.PathLike | None = None) -> dict:
    """Several sections at once (each must exist), e.g. everything a model card records."""
    return {name: section(name, path) for name in names}


def require(cfg: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Fetch ``cfg[key]`` and check its type, with a message naming the param."""
    if key not in cfg:
        raise UserError(f"params.yaml: missing '{where}.{key}'")
    value = cfg[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise UserError(f"params.yaml: '{where}.{key}' must be {names}, got {value!r}")
    return value


def in_range(value: float, lo: float, hi: float, name: str) -> float:
    if not lo <= value <= hi:
        raise UserError(f"params.yaml: '{name}' must be within [{lo}, {hi}], got {value!r}")
    return value


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text != "" else ""


def set_values(assignments: list[str], path: str | os.PathLike | None = None) -> None:
    """Set dotted keys (``train.weights=...``), keeping comments and layout."""
    from ruamel.yaml import YAML

    from cxr.io import atomic_path

    path = Path(path or PARAMS_FILE)
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # keep long paths on one line
    data = yaml_rt.load(path.read_text())
    for item in assignments:
        if "=" not in item:
            raise UserError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if part not in node:
                raise UserError(f"params.yaml has no '{key}' (no '{part}')")
            node = node[part]
        if parts[-1] not in node:
            raise UserError(f"params.yaml has no '{key}'")
        node[parts[-1]] = _parse_value(raw)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            yaml_rt.dump(data, fh)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "set":
        print("usage: python -m cxr.params set section.key=value [...]", file=sys.stderr)
        return 2
    try:
        set_values(argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for item in argv[1:]:
        print(f"params.yaml: {item}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
