"""``reports/predictions.csv``: every validation and test probability of the evaluated model,
for audits, for serving checks and as the reference a drift monitor compares answers with; with a
subtype head, each image's P(bacterial | pneumonia) and the subtype its name gives (files from
before the head lack both columns and still read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr import LABELS, UserError
from cxr.io import read_csv, write_csv

REQUIRED = ["split", "path", "label", "probability"]
COLUMNS = [*REQUIRED, "subtype", "p_bacterial"]
REMEDY = "rerun the evaluate stage (dvc repro evaluate)"


def write(path: str | Path, splits: dict[str, tuple]) -> None:
    """``splits``: name -> (paths, labels, probabilities[, subtypes, P(bacterial)]): the subtype each
    name gives ("" for none) and the head's P(bacterial) (None without a head)."""
    def rows():
        for name, (paths, labels, scores, *rest) in splits.items():
            kinds = rest[0] if rest and rest[0] is not None else [""] * len(paths)
            bacterial = rest[1] if len(rest) > 1 and rest[1] is not None else [None] * len(paths)
            for p, y, s, kind, b in zip(paths, labels, scores, kinds, bacterial):
                yield {"split": name, "path": p, "label": LABELS[int(y)], "probability": f"{s:.6f}",
                       "subtype": kind, "p_bacterial": "" if b is None else f"{b:.6f}"}

    write_csv(path, rows(), COLUMNS)


def rows(path: str | Path, split: str) -> list[dict]:
    """One split's rows, in file order (``split``, ``path``, ``label``, ``probability``, and the
    subtype columns where the file has them)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found (the evaluate stage's predictions): {REMEDY}")
    found = read_csv(path)
    if found and set(REQUIRED) - set(found[0]):
        raise UserError(f"{path} lacks the columns {sorted(set(REQUIRED) - set(found[0]))}: {REMEDY}")
    return [r for r in found if r["split"] == split]


def probabilities(path: str | Path, split: str) -> np.ndarray:
    """The probabilities of one split, in file order."""
    try:
        return np.array([float(r["probability"]) for r in rows(path, split)], dtype=np.float64)
    except ValueError:
        raise UserError(f"{path} has a probability that is not a number: {REMEDY}") from None
