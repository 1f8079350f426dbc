"""Where the raw data set comes from: one ``download.source`` string, one local layout.

Every source ends as a local folder in Kaggle layout (``{train,val,test}/{NORMAL,PNEUMONIA}``)
or Mendeley layout (``train``/``test`` only), so the download stage has a single path
from there on. ``source`` is one of ``synthetic``, ``pinned`` (the DVC-tracked
``pinned_dir``), ``kaggle``, a local folder / ``.zip`` / ``.tar.gz``, or an
``http(s)://`` / ``file://`` URL to an archive.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cxr import UserError
from cxr.params import require

log = logging.getLogger(__name__)

PIN_INFO = "pin.json"  # written beside a pinned layout: where it came from


@dataclass
class Fetched:
    root: Path  # the layout root: holds train/ (and val/, test/)
    source: str  # download.source as given
    kind: str  # synthetic | pinned | folder | zip | tar | url | kaggle
    synthetic: bool
    facts: dict = field(default_factory=dict)  # e.g. archive_sha256, kaggle_dataset, pinned_from


def describe(source) -> str:
    """The kind a ``download.source`` value names, without touching anything."""
    from cxr.data.sources.url import is_url

    if not isinstance(source, str) or not source.strip():
        raise UserError(f"params.yaml: 'download.source' must be a non-empty string, got {source!r}")
    if source in ("synthetic", "pinned", "kaggle"):
        return source
    return "url" if is_url(source) else "local"


def fetch(source: str, cfg: dict, scratch: Path) -> Fetched:
    """Make ``source`` available locally; ``scratch`` is an empty folder the caller removes."""
    from cxr.data.sources import folder

    cache_dir = Path(require(cfg, "cache_dir", str, "download"))
    limits = folder.ArchiveLimits.from_cfg(cfg)
    kind = describe(source)
    if kind == "synthetic":
        from cxr.data.sources import synthetic

        root = synthetic.generate(require(cfg, "synthetic", dict, "download"), scratch / "synthetic")
        return Fetched(root, source, "synthetic", True, {"seed": cfg["synthetic"].get("seed")})
    if kind == "pinned":
        pinned = Path(require(cfg, "pinned_dir", str, "download"))
        if not (pinned / "train").is_dir():
            raise UserError(
                f"{pinned} is missing: run `dvc pull data.dvc` (needs the DVC remote) or pin a "
                "data set with `make pin SRC=<folder|zip|url>`"
            )
        info = read_pin_info(pinned)
        return Fetched(pinned, source, "pinned", bool(info.get("synthetic", False)),
                       {"pinned_from": info.get("source"), "pinned_kind": info.get("kind")})
    if kind == "kaggle":
        from cxr.data.sources import kaggle

        dataset = require(cfg, "kaggle_dataset", str, "download")
        archive = kaggle.download(dataset, cache_dir)
        root = folder.find_root(folder.extract(archive, cache_dir, limits=limits))
        return Fetched(root, source, "kaggle", False, {"kaggle_dataset": dataset})
    if kind == "url":
        from cxr.data.sources import url

        root, digest = url.open_url(source, cache_dir, cfg.get("sha256"), limits)
        return _with_pin_info(Fetched(root, source, "url", False, {"archive_sha256": digest}))
    root, local_kind = folder.open_local(source, cache_dir, limits)
    return _with_pin_info(Fetched(root, source, local_kind, False))


def read_pin_info(root: Path) -> dict:
    path = Path(root) / PIN_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", path)
        return {}
    return info if isinstance(info, dict) else {}


def _with_pin_info(fetched: Fetched) -> Fetched:
    """A copy of a pinned layout remembers whether it was synthetic."""
    info = read_pin_info(fetched.root)
    if info.get("synthetic"):
        fetched.synthetic = True
        fetched.facts["pinned_from"] = info.get("source")
    return fetched


def dataset_hash(rows: list[dict]) -> str:
    """One hash for the data set's content: sha256 over ``"<sha256> <label> <path>\\n"``, sorted by path."""
    import hashlib

    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["path"]):
        digest.update(f"{row['sha256']} {row['label']} {row['path']}\n".encode())
    return digest.hexdigest()
