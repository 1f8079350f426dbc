"""Tiny builders for test inputs: a raw data set (images + manifest) in a temp folder."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from cxr.data.manifest import IMAGES_DIR, parse_name, write_manifest
from cxr.io import sha256_bytes


def noise_jpeg(seed: int, size: int | tuple[int, int] = 64, mode: str = "L", quality: int = 90) -> bytes:
    """A JPEG of seeded noise: distinct bytes per seed, a few KB at 64x64."""
    w, h = (size, size) if isinstance(size, int) else size
    rng = random.Random(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    img = Image.frombytes(mode, (w, h), rng.randbytes(w * h * channels))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def kermany_name(label: str, i: int) -> str:
    return f"IM-{1000 + i:04d}-0001.jpeg" if label == "NORMAL" else f"person{1000 + i}_bacteria_{i}.jpeg"


def manifest_row(raw_dir: Path, rel: str, label: str, split: str = "train") -> dict:
    data = (raw_dir / rel).read_bytes()
    facts = parse_name(Path(rel).name)
    return {"path": rel, "label": label, "source_split": split, "patient_id": facts.patient_id,
            "subtype": facts.subtype, "sha256": sha256_bytes(data), "bytes": len(data)}


def add_image(raw_dir: Path, label: str, name: str, data: bytes, split: str = "train") -> str:
    """Write ``data`` as ``images/{split}/{label}/{name}``; return the manifest path."""
    rel = f"{IMAGES_DIR}/{split}/{label}/{name}"
    target = raw_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return rel


def make_raw(raw_dir: Path, n_normal: int = 12, n_pneumonia: int = 12, size: int = 64,
             split: str = "train", seed: int = 0, write: bool = True) -> list[dict]:
    """A clean raw layout like the download stage's; returns the manifest rows."""
    rows = []
    for label, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneumonia)):
        for i in range(n):
            seed_i = seed * 100_000 + (0 if label == "NORMAL" else 50_000) + i
            rel = add_image(raw_dir, label, kermany_name(label, i), noise_jpeg(seed_i, size), split)
            rows.append(manifest_row(raw_dir, rel, label, split))
    if write:
        write_manifest(raw_dir, rows)
    return rows
