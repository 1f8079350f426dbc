"""The raw data set's manifest: one row per image, and what a file name says.

Kermany et al. name files after the patient: ``person1234_bacteria_3456.jpeg`` and
``person12_virus_34.jpeg`` (PNEUMONIA, with subtype), ``IM-0115-0001.jpeg`` and
``NORMAL2-IM-0041-0001.jpeg`` (NORMAL; the patient is the ``IM-XXXX`` part). Splits
group by this patient id so that no patient lands on both sides.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cxr import LABELS, SUBTYPES, UserError
from cxr.io import read_csv, write_csv

MANIFEST_NAME = "manifest.csv"
IMAGES_DIR = "images"
SOURCE_INFO = "source.json"  # what the download stage records of the source, beside the manifest
COLUMNS = ["path", "label", "source_split", "patient_id", "subtype", "sha256", "bytes"]
SOURCE_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# The file names' words for the subtype, and the words the model and its answers use (cxr.SUBTYPES).
SUBTYPE_NAMES = {"bacteria": SUBTYPES[0], "virus": SUBTYPES[1]}

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_IM = re.compile(r"(IM-\d+)-\d+", re.IGNORECASE)


@dataclass(frozen=True)
class NameFacts:
    patient_id: str
    subtype: str  # "bacteria", "virus" or "" when the name does not say


def parse_name(filename: str) -> NameFacts:
    """Patient id and pneumonia subtype from a Kermany-style file name.

    Unknown names fall back to the file stem as the patient (one image, one patient):
    that can only under-group, never merge different patients.
    """
    stem = Path(filename).stem
    m = _PERSON.match(stem)
    if m:
        return NameFacts(m.group(1).lower(), m.group(2).lower())
    m = _IM.search(stem)
    if m:
        return NameFacts(m.group(1).upper(), "")
    return NameFacts(stem, "")


def subtype_of(path: str | Path) -> str:
    """``bacterial``, ``viral`` or "" (the file name names no subtype) for an image path."""
    return SUBTYPE_NAMES.get(parse_name(Path(str(path)).name).subtype, "")


def read_manifest(raw_dir: str | Path) -> list[dict]:
    path = Path(raw_dir) / MANIFEST_NAME
    if not path.exists():
        raise UserError(f"{path} not found: run the download stage first (dvc repro download)")
    rows = read_csv(path)
    missing = set(COLUMNS) - set(rows[0].keys() if rows else COLUMNS)
    if missing:
        raise UserError(f"{path} lacks columns {sorted(missing)}")
    for row in rows:
        row["bytes"] = int(row["bytes"])
    return rows


def read_source_info(path: str | Path) -> dict:
    """The download stage's ``source.json`` (source, synthetic, dataset hash, counts); empty when a
    data folder has none (one made by hand), which the stages treat as real data of unknown origin."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not valid JSON: rerun the download stage (dvc repro download)") from None
    return info if isinstance(info, dict) else {}


def write_manifest(raw_dir: str | Path, rows: list[dict]) -> Path:
    path = Path(raw_dir) / MANIFEST_NAME
    for row in rows:
        if row["label"] not in LABELS:
            raise UserError(f"unknown label {row['label']!r} for {row['path']}")
    write_csv(path, sorted(rows, key=lambda r: r["path"]), COLUMNS)
    return path
