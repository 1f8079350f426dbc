"""``reports/predictions.csv``: every validation and test probability of the evaluated model,
for audits, for serving checks and as the reference a drift monitor compares answers with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr import LABELS, UserError
from cxr.io import read_csv, write_csv

COLUMNS = ["split", "path", "label", "probability"]
REMEDY = "rerun the evaluate stage (dvc repro evaluate)"


def write(path: str | Path, splits: dict[str, tuple[list, np.ndarray, np.ndarray]]) -> None:
    """``splits``: name -> (paths, labels, probabilities)."""
    write_csv(path, ({"split": name, "path": p, "label": LABELS[int(y)], "probability": f"{s:.6f}"}
                     for name, (paths, labels, scores) in splits.items()
                     for p, y, s in zip(paths, labels, scores)), COLUMNS)


def probabilities(path: str | Path, split: str) -> np.ndarray:
    """The probabilities of one split, in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found (the evaluate stage's predictions): {REMEDY}")
    rows = read_csv(path)
    if rows and set(COLUMNS) - set(rows[0]):
        raise UserError(f"{path} lacks the columns {sorted(set(COLUMNS) - set(rows[0]))}: {REMEDY}")
    try:
        return np.array([float(r["probability"]) for r in rows if r["split"] == split], dtype=np.float64)
    except ValueError:
        raise UserError(f"{path} has a probability that is not a number: {REMEDY}") from None
