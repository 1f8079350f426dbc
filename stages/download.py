"""Stage ``download``: materialise ``download.source`` as ``data/raw`` (images + manifest).

Output: ``data/raw/images/{source_split}/{LABEL}/{file}``, ``data/raw/manifest.csv``
(one row per image, with patient id and sha256) and ``data/raw/source.json`` (where the
data came from, whether it is synthetic, a hash of the whole data set, counts), which
the model card reads. The whole of ``data/raw`` is built aside and renamed into place,
so a failed run leaves the previous one intact.

``python -m stages.download --pin SRC`` instead copies SRC (any source) in Kaggle
layout into ``download.pinned_dir`` (for ``dvc add``), and writes ``data/pinned.ref``,
a small git-tracked digest of it that the stage can depend on in ``dvc.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import Counter
from pathlib import Path

from cxr import SYNTHETIC_WARNING, UserError, cli, params
from cxr.data.manifest import IMAGES_DIR, SOURCE_INFO, SOURCE_SPLITS, parse_name, write_manifest
from cxr.data.sources import PIN_INFO, Fetched, dataset_hash, describe, fetch
from cxr.data.sources.folder import Layout, scan
from cxr.io import atomic_path, sha256_bytes, write_json

log = logging.getLogger("download")



def copy_layout(layout: Layout, root: Path, sub: str = IMAGES_DIR) -> list[dict]:
    """Copy every image to ``root/sub/{split}/{LABEL}/{name}``; one manifest row per image
    (``path`` relative to ``root``)."""
    rows = []
    for item in layout.items:
        data = item.path.read_bytes()
        target = root / sub / item.source_split / item.label / item.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        facts = parse_name(item.path.name)
        rows.append({
            "path": target.relative_to(root).as_posix(),
            "label": item.label,
            "source_split": item.source_split,
            "patient_id": facts.patient_id,
            "subtype": facts.subtype,
            "sha256": sha256_bytes(data),
            "bytes": len(data),
        })
    return rows


def counts_of(rows: list[dict]) -> dict[str, dict[str, int]]:
    c = Counter((r["source_split"], r["label"]) for r in rows)
    return {s: {lab: n for (s2, lab), n in sorted(c.items()) if s2 == s}
            for s in SOURCE_SPLITS if any(s2 == s for s2, _ in c)}


def source_info(fetched: Fetched, layout: Layout, rows: list[dict]) -> dict:
    # hash the raw-format paths, so a pinned copy and its data/raw share one dataset_hash
    as_raw = [{**r, "path": f"{IMAGES_DIR}/{r['source_split']}/{r['label']}/{Path(r['path']).name}"} for r in rows]
    info = {
        "source": fetched.source,
        "kind": fetched.kind,
        "synthetic": fetched.synthetic,
        "dataset_hash": dataset_hash(as_raw),
        "n_images": len(rows),
        "counts": counts_of(rows),
        "skipped_files": len(layout.skipped),
        **fetched.facts,
    }
    if fetched.synthetic:
        info["warning"] = SYNTHETIC_WARNING
    return info


def _log_counts(what: str, rows: list[dict], fetched: Fetched) -> None:
    parts = [f"{s}/{lab} {n}" for s, labs in counts_of(rows).items() for lab, n in labs.items()]
    log.info("%s: %d images from %s (%s): %s", what, len(rows), fetched.source, fetched.kind, ", ".join(parts))
    if fetched.synthetic:
        log.warning("%s", SYNTHETIC_WARNING)


def materialise(source: str, cfg: dict, out: Path) -> dict:
    """Build ``out`` (raw format) from ``source``; returns the source facts written."""
    with tempfile.TemporaryDirectory(prefix="cxr-download-") as scratch:
        fetched = fetch(source, cfg, Path(scratch))
        layout = scan(fetched.root)
        with atomic_path(out) as tmp:
            rows = copy_layout(layout, tmp)
            write_manifest(tmp, rows)
            info = source_info(fetched, layout, rows)
            write_json(tmp / SOURCE_INFO, info)
    _log_counts(str(out), rows, fetched)
    return info


def pin(source: str, cfg: dict) -> dict:
    """Copy ``source`` in Kaggle layout into ``download.pinned_dir``, for DVC to track."""
    if describe(source) == "pinned":
        raise UserError("--pin needs a data set to pin (synthetic, kaggle, a folder, zip or URL), not 'pinned'")
    pinned = Path(params.require(cfg, "pinned_dir", str, "download"))
    with tempfile.TemporaryDirectory(prefix="cxr-pin-") as scratch:
        fetched = fetch(source, cfg, Path(scratch))
        layout = scan(fetched.root)
        with atomic_path(pinned) as tmp:
            rows = copy_layout(layout, tmp, sub="")
            info = source_info(fetched, layout, rows)
            write_json(tmp / PIN_INFO, info)
    write_json(pin_ref(pinned), {k: info[k] for k in ("source", "kind", "synthetic", "dataset_hash", "n_images")})
    _log_counts(f"pinned into {pinned}", rows, fetched)
    log.info("now track it: dvc add %s (data.dvc) && dvc push; commit data.dvc and %s", pinned, pin_ref(pinned))
    return info


def pin_ref(pinned: Path) -> Path:
    """``data/pinned.ref``: a git-tracked digest of the pinned data for dvc.yaml to depend on
    (DVC refuses ``*.dvc`` files as stage dependencies)."""
    return pinned.with_name(pinned.name + ".ref")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.download", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, metavar="PATH", help="the data set folder to write (data/raw)")
    parser.add_argument("--pin", metavar="SRC", help="copy SRC into download.pinned_dir instead")
    args = parser.parse_args(argv)
    cfg = params.section("download")
    if args.pin:
        pin(args.pin, cfg)
    elif args.out is None:
        parser.error("--out PATH is required (the folder to write; dvc.yaml passes data/raw)")
    else:
        materialise(params.require(cfg, "source", str, "download"), cfg, args.out)


if __name__ == "__main__":
    cli.run(main, "download")
