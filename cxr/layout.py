"""Where the pipeline's files are, for code outside the stages (the flow, scoring, benchmarks):
read from the stage commands in ``dvc.yaml``, the one place the paths live."""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path

import yaml

from cxr import UserError


@lru_cache(maxsize=8)
def _load(dvc_yaml: Path) -> dict:
    try:
        data = yaml.safe_load(dvc_yaml.read_text())
        data["stages"].items()
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the stages of {dvc_yaml}: {exc}") from None
    return data


def _stage_options(dvc_yaml: Path) -> dict[str, dict[str, str]]:
    stages = _load(dvc_yaml)["stages"]
    out = {}
    for name, stage in stages.items():
        words = shlex.split(str(stage.get("cmd", "")))
        out[name] = {w[2:]: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
    return out


def plot_files(project: str | Path = ".") -> list[Path]:
    """The files ``dvc plots show`` renders (``dvc.yaml`` ``plots``), in order, once each."""
    project = Path(project)
    files: list[str] = []
    for entry in _load((project / "dvc.yaml").resolve()).get("plots") or []:
        for spec in (entry.values() if isinstance(entry, dict) else []):
            for name in ((spec or {}).get("y") or {}):
                if name not in files:
                    files.append(name)
    return [project / f for f in files]


def path(stage: str, option: str, project: str | Path = ".") -> Path:
    """``project / <the value of --option in stage's cmd>``, e.g. ``path("export", "out")``."""
    project = Path(project)
    options = _stage_options((project / "dvc.yaml").resolve())
    try:
        return project / options[stage][option]
    except KeyError:
        raise UserError(f"dvc.yaml: stage {stage!r} passes no --{option}") from None
