"""split: patient-level train/val/test, and every image preprocessed once into a cache.

Reads params ``split`` and ``imaging``; writes ``data/prepared/`` and ``reports/split.json``.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from cxr import LABELS, UserError, cli, params
from cxr.data.dataset import SplitData, labels_to_int, preprocess_files, save_split
from cxr.data.manifest import read_manifest
from cxr.data.splitting import SPLITS, assign, check_no_leak, summary
from cxr.imaging.preprocess import ImagingConfig
from cxr.io import atomic_path, write_csv, write_json

log = logging.getLogger("split")


def main(argv: list[str] | None = None) -> None:
    p = cli.paths(argv, "split", raw="the downloaded data set", validation="the validate stage's result.json",
                  out="the prepared splits folder to write", summary="the split summary JSON to write")
    cfg = params.section("split")
    imaging = ImagingConfig.from_params(params.section("imaging"))
    if p.validation.exists() and not json.loads(p.validation.read_text()).get("success", False):
        raise UserError(f"{p.validation} records a failed validation: fix the data set first")
    rows = read_manifest(p.raw)
    seed = params.require(cfg, "seed", int, "split")
    val_fraction = params.require(cfg, "val_fraction", float, "split")
    test_fraction = params.require(cfg, "test_fraction", float, "split")
    splits = assign(rows, val_fraction, test_fraction, seed)
    check_no_leak(rows, splits)
    stats = summary(rows, splits)
    for split in SPLITS:
        for label in LABELS:
            if stats[split][label] == 0:
                raise UserError(
                    f"split '{split}' has no {label} image ({stats[split]['images']} images in all): "
                    f"the data set is too small for split.val_fraction={val_fraction}, "
                    f"split.test_fraction={test_fraction}"
                )
    with atomic_path(p.out) as tmp:
        tmp.mkdir(parents=True)
        for split in SPLITS:
            chosen = [r for r, s in zip(rows, splits) if s == split]
            rel = [r["path"] for r in chosen]
            log.info("%s: preprocessing %d images (%s)", split, len(rel), imaging.to_dict())
            data = SplitData(
                images=preprocess_files(p.raw, rel, imaging),
                labels=labels_to_int([r["label"] for r in chosen]),
                paths=np.array(rel),
            )
            save_split(tmp / f"{split}.npz", data)
        write_csv(
            tmp / "split.csv",
            ({**{k: r[k] for k in ("path", "label", "patient_id", "sha256")}, "split": s}
             for r, s in zip(rows, splits)),
            ["path", "label", "patient_id", "sha256", "split"],
        )
    stats["imaging"] = imaging.to_dict()
    write_json(p.summary, stats)
    for split in SPLITS:
        log.info("%-5s %s", split, stats[split])


if __name__ == "__main__":
    cli.run(main, "split")
