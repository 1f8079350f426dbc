"""Patient-level, stratified, seeded train/val/test split.

Leaks are ruled out by construction: images are grouped into connected components that
share a patient id *or* a byte-identical file (union-find), and whole components are
assigned to one side. A source's own ``test/`` folder is kept unchanged as the test split
(that is how results compare with the literature); components touching it are removed
from train/val instead. The Kaggle 16-image ``val/`` is folded into train, and validation
is carved out by patient.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

import numpy as np

from cxr import LABELS, UserError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def groups(rows: list[dict]) -> list[int]:
    """Component id per row: rows sharing a patient or a sha256 share a component."""
    uf = _UnionFind()
    for row in rows:
        uf.union("p:" + row["patient_id"], "s:" + row["sha256"])
    roots: dict[str, int] = {}
    return [roots.setdefault(uf.find("p:" + r["patient_id"]), len(roots)) for r in rows]


def assign(rows: list[dict], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Split name per row ("" for rows dropped because they would leak into test)."""
    if not rows:
        raise UserError("the manifest is empty: nothing to split")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"params.yaml: 'split.{name}' must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 0.9:
        raise UserError("params.yaml: split.val_fraction + split.test_fraction must stay below 0.9")

    comp = groups(rows)
    has_test = any(r["source_split"] == "test" for r in rows)
    test_components = {c for c, r in zip(comp, rows) if r["source_split"] == "test"}
    out = [""] * len(rows)
    if has_test:
        for i, r in enumerate(rows):
            if r["source_split"] == "test":
                out[i] = "test"
        dropped = sum(1 for c, r in zip(comp, rows) if c in test_components and r["source_split"] != "test")
        if dropped:
            log.warning("dropped %d train/val images whose patient or bytes also appear in test/", dropped)

    # Stratify by the component's majority label; shuffle components with the seed.
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(comp):
        if c not in test_components:
            members[c].append(i)
    by_label: dict[str, list[int]] = defaultdict(list)
    for c in sorted(members):
        label = Counter(rows[i]["label"] for i in members[c]).most_common(1)[0][0]
        by_label[label].append(c)

    rng = np.random.default_rng(seed)
    fractions = {"val": val_fraction, "test": 0.0 if has_test else test_fraction}
    for label in LABELS:
        comps = list(by_label.get(label, []))
        rng.shuffle(comps)
        n_images = sum(len(members[c]) for c in comps)
        quota = {name: frac * n_images for name, frac in fractions.items()}
        filled = {"val": 0, "test": 0}
        for c in comps:
            size = len(members[c])
            # Greedy fill by images, so quotas hold even when patients have many images.
            target = next((s for s in ("test", "val") if filled[s] + size / 2 < quota[s]), "train")
            if target != "train":
                filled[target] += size
            for i in members[c]:
                out[i] = target
    return out


def check_no_leak(rows: list[dict], splits: list[str]) -> None:
    """Raise if any patient or byte-identical image sits in two splits (a programming error)."""
    for key in ("patient_id", "sha256"):
        seen: dict[str, str] = {}
        for row, split in zip(rows, splits):
            if not split:
                continue
            prev = seen.setdefault(row[key], split)
            if prev != split:
                raise AssertionError(f"leak: {key} {row[key]} in both {prev} and {split}")


def summary(rows: list[dict], splits: list[str]) -> dict:
    """Per split: images, patients, images per label, and the PNEUMONIA images (and patients) per
    subtype the file names give ("unknown": a PNEUMONIA name without one): the subtype head's data."""
    from cxr.data.manifest import SUBTYPE_NAMES

    out: dict = {}
    for split in SPLITS:
        chosen = [r for r, s in zip(rows, splits) if s == split]
        pneumonia = [r for r in chosen if r["label"] == LABELS[1]]
        kinds = (*SUBTYPE_NAMES.values(), "unknown")
        kind = [SUBTYPE_NAMES.get(r.get("subtype", ""), "unknown") for r in pneumonia]
        out[split] = {
            "images": len(chosen),
            "patients": len({r["patient_id"] for r in chosen}),
            **{label: sum(r["label"] == label for r in chosen) for label in LABELS},
            "subtypes": {k: kind.count(k) for k in kinds},
            "subtype_patients": {k: len({r["patient_id"] for r, c in zip(pneumonia, kind) if c == k}) for k in kinds},
        }
    out["dropped"] = sum(1 for s in splits if not s)
    return out
