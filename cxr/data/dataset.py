"""The prepared data set: images decoded and preprocessed once, cached per split.

The split stage writes ``data/prepared/{train,val,test}.npz`` (uint8 ``[N, S, S]``,
labels, paths); training and evaluation read them, so no image is decoded twice.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr import LABELS, POSITIVE_LABEL, SUBTYPE_POSITIVE, SUBTYPES, UserError
from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
from cxr.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    images: np.ndarray  # uint8 [N, S, S]
    labels: np.ndarray  # int8 [N], 1 = PNEUMONIA
    paths: np.ndarray  # str [N], relative to data/raw

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        positives = int(self.labels.sum())
        return {LABELS[0]: len(self) - positives, LABELS[1]: positives}


def preprocess_files(raw_dir: Path, rel_paths: list[str], cfg: ImagingConfig, workers: int = 4) -> np.ndarray:
    def one(rel: str) -> np.ndarray:
        try:
            return preprocess_bytes((raw_dir / rel).read_bytes(), cfg)
        except UserError as exc:
            raise UserError(f"{rel}: {exc}") from None

    out = np.zeros((len(rel_paths), cfg.image_size, cfg.image_size), np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, arr in enumerate(pool.map(one, rel_paths, chunksize=32)):
            out[i] = arr
    return out


def save_split(path: Path, data: SplitData) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=data.images, labels=data.labels, paths=data.paths)


def load_split(prepared_dir: str | Path, split: str) -> SplitData:
    path = Path(prepared_dir) / f"{split}.npz"
    if not path.exists():
        raise UserError(f"{path} not found: run the split stage first (dvc repro split)")
    with np.load(path, allow_pickle=False) as npz:
        return SplitData(npz["images"], npz["labels"], npz["paths"])


def labels_to_int(labels: list[str]) -> np.ndarray:
    return np.array([1 if label == POSITIVE_LABEL else 0 for label in labels], np.int8)


UNKNOWN_SUBTYPE = -1


def subtype_labels(paths) -> np.ndarray:
    """int8 per image: 1 bacterial, 0 viral, -1 (:data:`UNKNOWN_SUBTYPE`) when the file name names
    no subtype (NORMAL films, sources named otherwise). The subtype is read from the name, as the
    patient is: the split stage's arrays stay what they were."""
    from cxr.data.manifest import subtype_of

    code = {SUBTYPE_POSITIVE: 1, next(s for s in SUBTYPES if s != SUBTYPE_POSITIVE): 0}
    return np.array([code.get(subtype_of(p), UNKNOWN_SUBTYPE) for p in paths], np.int8)


def known_subtype(split: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """(indices, labels 1 bacterial / 0 viral) of the split's PNEUMONIA films whose names give a subtype."""
    labels = subtype_labels(split.paths)
    idx = np.flatnonzero((labels != UNKNOWN_SUBTYPE) & (split.labels == 1))
    return idx, labels[idx].astype(int)
