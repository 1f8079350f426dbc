"""The expectation catalogue: every check, its suite, whether it is critical, and how an
offending row is described."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from cxr import LABELS, POSITIVE_LABEL
from cxr.data.manifest import SOURCE_SPLITS
from cxr.data.validation.config import ValidateConfig


@dataclass
class Check:
    """One expectation, our name for it, and how to describe an offending row."""

    name: str
    suite: str  # "images" (one row per image) or "dataset" (one row)
    critical: bool
    description: str
    build: Callable[[], Any]  # -> a GX Expectation
    detail: Callable[[dict], str] = field(default=lambda r: r["path"])


def _fmt_int(value) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def checks(cfg: ValidateConfig) -> list[Check]:
    import great_expectations.expectations as gxe

    lo, hi = cfg.ratio_bounds
    crit, warn = "critical", "warning"

    def size(r):
        return f"{r['path']} ({_fmt_int(r['width'])}x{_fmt_int(r['height'])})"

    out = [
        Check("paths_unique", "images", True, "each manifest path is listed once",
              lambda: gxe.ExpectColumnValuesToBeUnique(column="path", severity=crit)),
        Check("files_decode", "images", True,
              "every file exists, is an image and fully decodes (Pillow load())",
              lambda: gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True],
                                                      severity=crit),
              lambda r: f"{r['path']} ({r['error']})"),
        Check("sha256_matches_manifest", "images", True,
              "each file's sha256 equals the manifest's",
              lambda: gxe.ExpectColumnPairValuesToBeEqual(
                  column_A="sha256", column_B="sha256_manifest", severity=crit),
              lambda r: f"{r['path']} (file {r['sha256'][:12] or 'missing'}, "
                        f"manifest {r['sha256_manifest'][:12] or 'empty'})"),
        Check("label_values", "images", True, f"every label is one of {list(LABELS)}",
              lambda: gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(LABELS),
                                                      severity=crit),
              lambda r: f"{r['path']} (label {r['label']!r})"),
        Check("label_set", "images", True, f"the labels are exactly {list(LABELS)}",
              lambda: gxe.ExpectColumnDistinctValuesToEqualSet(column="label",
                                                               value_set=list(LABELS),
                                                               severity=crit)),
        Check("split_values", "images", True, f"every source split is one of {list(SOURCE_SPLITS)}",
              lambda: gxe.ExpectColumnValuesToBeInSet(column="split",
                                                      value_set=list(SOURCE_SPLITS), severity=crit),
              lambda r: f"{r['path']} (split {r['split']!r})"),
        Check("patient_id_present", "images", True, "every image has a patient id",
              lambda: gxe.ExpectColumnValueLengthsToBeBetween(column="patient_id", min_value=1,
                                                              severity=crit)),
        Check("width_in_bounds", "images", True,
              f"decoded width within [{cfg.min_side}, {cfg.max_side}] px",
              lambda: gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_side,
                                                        max_value=cfg.max_side, severity=crit),
              size),
        Check("height_in_bounds", "images", True,
              f"decoded height within [{cfg.min_side}, {cfg.max_side}] px",
              lambda: gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_side,
                                                        max_value=cfg.max_side, severity=crit),
              size),
        Check("bytes_in_bounds", "images", True,
              f"file size within [{cfg.min_bytes}, {cfg.max_bytes}] bytes",
              lambda: gxe.ExpectColumnValuesToBeBetween(
                  column="bytes", min_value=cfg.min_bytes, max_value=cfg.max_bytes,
                  severity=crit),
              lambda r: f"{r['path']} ({r['bytes']} bytes)" if r["bytes"] >= 0
              else f"{r['path']} (missing)"),
        Check("mode_allowed", "images", True, f"image mode in {list(cfg.allowed_modes)}",
              lambda: gxe.ExpectColumnValuesToBeInSet(column="mode",
                                                      value_set=list(cfg.allowed_modes),
                                                      severity=crit),
              lambda r: f"{r['path']} (mode {r['mode']})"),
        Check("no_label_conflict", "images", True,
              "no byte-identical image appears under two labels",
              lambda: gxe.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False],
                                                      severity=crit),
              lambda r: f"{r['path']} ({r['label']}, sha256 {r['sha256'][:12]})"),
        Check("duplicates_same_label", "images", False,
              "no byte-identical duplicates under one label (known in Kermany: a warning)",
              lambda: gxe.ExpectColumnValuesToBeInSet(column="is_duplicate", value_set=[False],
                                                      severity=warn),
              lambda r: f"{r['path']} (= {r['duplicate_of']})"),
        Check("patient_id_from_name", "images", False,
              "patient ids come from Kermany-style file names, not the file-stem fallback",
              lambda: gxe.ExpectColumnValuesToBeInSet(column="patient_id_fallback",
                                                      value_set=[False], severity=warn)),
    ]
    for label in LABELS:
        out.append(Check(
            f"min_images_{label}", "dataset", True,
            f"at least {cfg.min_per_class} {label} images (validate.min_per_class)",
            lambda label=label: gxe.ExpectColumnValuesToBeBetween(
                column=f"n_{label}", min_value=cfg.min_per_class, severity=crit),
            lambda r, label=label: f"class {label}: {r[f'n_{label}']} images"))
    out.append(Check(
        "class_ratio", "dataset", True,
        f"{POSITIVE_LABEL}/NORMAL image ratio within [{lo}, {hi}] (validate.ratio_bounds)",
        lambda: gxe.ExpectColumnValuesToBeBetween(column="ratio", min_value=lo, max_value=hi,
                                                  severity=crit),
        lambda r: f"ratio {r['ratio']:.3f} ({r[f'n_{POSITIVE_LABEL}']} {POSITIVE_LABEL} / "
                  f"{r['images'] - r[f'n_{POSITIVE_LABEL}']} NORMAL)"))
    # A NaN ratio (no images at all) would be skipped as missing by the "between" check.
    out.append(Check(
        "class_ratio_defined", "dataset", True, "the class ratio is defined (some images)",
        lambda: gxe.ExpectColumnValuesToNotBeNull(column="ratio", severity=crit),
        lambda r: "no images"))
    return out
