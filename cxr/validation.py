"""Data validation: per-image facts checked by a Great Expectations (1.x) suite.

Two steps, so that the expensive one can fan out:

* :func:`facts_for` reads, hashes and fully decodes a list of files (one shard or all
  of them) and returns one row per file. It needs no manifest and no GX, so the Prefect
  flow can run it per shard on Dask workers and concatenate the frames.
* :func:`validate_dataset` joins those file facts with the manifest, derives the
  cross-file facts (duplicates, labels in conflict, patient ids), runs the expectation
  suites, writes the reports and returns a small summary. A failed *critical*
  expectation raises :class:`ValidationFailed` (a :class:`cxr.UserError`), after the
  reports are written, so that ``python -m stages.validate`` exits 2 and DVC stops.

Outputs under ``out_dir`` (``reports/validation/``): ``facts.csv`` (one row per image),
``result.json`` (our per-expectation summary and GX's raw validation results),
``data_docs/index.html`` (GX Data Docs). The stage also writes the small, git-tracked
``reports/validation_summary.json``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from cxr import LABELS, POSITIVE_LABEL, UserError
from cxr.io import atomic_path, write_json
from cxr.manifest import SOURCE_SPLITS, read_manifest
from cxr.params import require

log = logging.getLogger(__name__)

PILLOW_DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default for Image.MAX_IMAGE_PIXELS
OFFENDING_KEPT = 20  # offending files kept per expectation in result.json / the summary
OFFENDING_SHOWN = 10  # ... and named in the error message
DOCS_SITE = "cxr_validation"

FILE_FACT_COLUMNS = [
    "path", "exists", "bytes", "sha256", "decodes", "error", "width", "height", "mode", "format",
]
FACT_COLUMNS = [
    "path", "label", "split", "patient_id", "subtype",
    "exists", "bytes", "bytes_manifest", "sha256", "sha256_manifest",
    "decodes", "error", "width", "height", "mode", "format",
    "label_conflict", "is_duplicate", "duplicate_of", "patient_id_fallback",
]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ValidateConfig:
    min_side: int
    max_side: int
    min_bytes: int
    max_bytes: int
    allowed_modes: tuple[str, ...]
    min_per_class: int
    ratio_bounds: tuple[float, float]
    max_pixels: int
    workers: int

    @classmethod
    def from_params(cls, cfg: dict) -> "ValidateConfig":
        where = "validate"
        ints = {k: require(cfg, k, int, where) for k in
                ("min_side", "max_side", "min_bytes", "max_bytes", "min_per_class")}
        for key, value in ints.items():
            if value < 0:
                raise UserError(f"params.yaml: '{where}.{key}' must be >= 0, got {value}")
        if ints["min_side"] > ints["max_side"]:
            raise UserError("params.yaml: 'validate.min_side' must be <= 'validate.max_side'")
        if ints["min_bytes"] > ints["max_bytes"]:
            raise UserError("params.yaml: 'validate.min_bytes' must be <= 'validate.max_bytes'")
        modes = require(cfg, "allowed_modes", list, where)
        if not modes or not all(isinstance(m, str) for m in modes):
            raise UserError("params.yaml: 'validate.allowed_modes' must be a non-empty list of "
                            "Pillow modes (e.g. [L, RGB])")
        bounds = require(cfg, "ratio_bounds", list, where)
        if (len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                        for b in bounds) or not 0 <= bounds[0] <= bounds[1]):
            raise UserError("params.yaml: 'validate.ratio_bounds' must be [low, high] with "
                            f"0 <= low <= high, got {bounds!r}")
        max_pixels = cfg.get("max_pixels")
        if max_pixels is None:
            max_pixels = min(ints["max_side"] ** 2, PILLOW_DEFAULT_MAX_PIXELS)
        elif isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise UserError(f"params.yaml: 'validate.max_pixels' must be a positive int, "
                            f"got {max_pixels!r}")
        workers = cfg.get("workers")
        if workers is None:
            workers = default_workers()
        elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UserError(f"params.yaml: 'validate.workers' must be a positive int, got {workers!r}")
        return cls(allowed_modes=tuple(modes), ratio_bounds=(float(bounds[0]), float(bounds[1])),
                   max_pixels=max_pixels, workers=workers, **ints)


def default_workers() -> int:
    """Threads for decoding: Pillow and hashlib release the GIL, so ~2x cores helps I/O."""
    return max(1, min(16, 2 * (os.cpu_count() or 1)))


# --------------------------------------------------------------------------- per-file facts


class _TooBig(Exception):
    pass


def _file_facts(raw_dir: Path, rel: str, max_pixels: int, max_read_bytes: int) -> dict:
    from PIL import Image

    from cxr.imaging import ImageError, check_decode_budget, open_image
    from cxr.io import sha256_bytes, sha256_file

    row: dict[str, Any] = {"path": rel, "exists": False, "bytes": -1, "sha256": "",
                           "decodes": False, "error": "", "width": math.nan,
                           "height": math.nan, "mode": None, "format": None}
    if PurePosixPath(rel).is_absolute() or os.path.normpath(rel).split(os.sep)[0] == "..":
        row["error"] = "path leads outside the raw data folder"
        return row
    path = raw_dir / rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        row["error"] = "file not found"
        return row
    except OSError as exc:
        row["error"] = f"cannot stat: {type(exc).__name__}: {exc}"
        return row
    row["exists"] = True
    row["bytes"] = size
    if size > max_read_bytes:  # never pull a huge file into memory just to reject it
        row["sha256"] = sha256_file(path)
        row["error"] = f"not decoded: {size} bytes is over the {max_read_bytes}-byte read limit"
        return row
    try:
        data = path.read_bytes()
    except OSError as exc:
        row["error"] = f"cannot read: {type(exc).__name__}: {exc}"
        return row
    row["sha256"] = sha256_bytes(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            row.update(width=float(width), height=float(height), mode=img.mode, format=img.format)
            if width * height > max_pixels:
                raise _TooBig(f"decompression bomb: {width}x{height} = {width * height} pixels "
                              f"is over the limit of {max_pixels} (validate.max_pixels)")
            img.load()  # a full decode: truncated or corrupt data fails here, not later
        # The preprocessing's own limits (format, pixels, scans, decode memory before draft
        # scaling, so never looser than split's): what validates, split will decode.
        check_decode_budget(open_image(data))
    except ImageError as exc:
        row["error"] = f"refused by the preprocessing: {exc}"
    except _TooBig as exc:
        row["error"] = str(exc)
    except Image.DecompressionBombError as exc:
        row["error"] = f"decompression bomb: {exc}"
    except Image.UnidentifiedImageError:
        row["error"] = "not an image Pillow can identify"
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a fact, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}".strip()
    else:
        row["decodes"] = True
    return row


def facts_for(
    paths: Iterable[str | os.PathLike],
    raw_dir: str | os.PathLike,
    *,
    max_pixels: int = PILLOW_DEFAULT_MAX_PIXELS,
    max_read_bytes: int = 256 << 20,
    workers: int | None = None,
):
    """Facts about each file (relative to ``raw_dir``): bytes, sha256, full decode, width,
    height, mode, format.

    One row per path, in the given order, columns :data:`FILE_FACT_COLUMNS`. Never raises
    for a bad file: a missing, unreadable, truncated, corrupt or oversized (decompression
    bomb) image is a row with ``decodes=False`` and the reason in ``error``. Runs on any
    shard of the data set (e.g. one Dask task per shard); concatenate the frames.
    """
    import pandas as pd
    from PIL import Image, ImageFile

    raw_dir = Path(raw_dir)
    rels = []
    for p in paths:
        p = Path(p)
        if p.is_absolute():
            try:
                p = p.relative_to(raw_dir)
            except ValueError:
                raise UserError(f"{p} is not inside {raw_dir}") from None
        rels.append(PurePosixPath(p).as_posix())
    # Pillow's own guard, at our limit (process-wide): it warns above it and raises at
    # twice it. The explicit check in _file_facts rejects anything above the limit from the
    # header alone, before a single pixel is decoded.
    Image.MAX_IMAGE_PIXELS = max_pixels
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process: "
                    "truncated images will pass the decode check")
    workers = workers or default_workers()

    def one(rel: str) -> dict:
        return _file_facts(raw_dir, rel, max_pixels, max_read_bytes)

    if workers == 1 or len(rels) < 2:
        rows = [one(r) for r in rels]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate") as pool:
            rows = list(pool.map(one, rels))
    frame = pd.DataFrame(rows, columns=FILE_FACT_COLUMNS)
    return frame.astype({"exists": bool, "decodes": bool, "bytes": "int64",
                         "width": "float64", "height": "float64"})


# --------------------------------------------------------------------------- joined facts


def build_facts(manifest_rows: list[dict], file_facts):
    """The manifest joined with the file facts, plus the facts that span files."""
    import pandas as pd

    man = pd.DataFrame(manifest_rows)
    if man.empty:
        raise UserError("the manifest lists no images")
    man = man.rename(columns={"source_split": "split", "sha256": "sha256_manifest",
                              "bytes": "bytes_manifest"})
    man = man[["path", "label", "split", "patient_id", "subtype", "sha256_manifest",
               "bytes_manifest"]].astype(str)
    man["bytes_manifest"] = pd.to_numeric(man["bytes_manifest"], errors="coerce")
    missing = set(man["path"]) - set(file_facts["path"])
    if missing:
        raise UserError(f"file facts lack {len(missing)} manifest paths, e.g. {sorted(missing)[0]}")
    # m:1 - a path listed twice in the manifest is for the paths_unique expectation to report
    facts = man.merge(file_facts.drop_duplicates("path"), on="path", how="left", validate="m:1")

    # Byte-identical files: under different labels they are a labelling error (critical);
    # under one label they are duplicates (known in this data set: a warning).
    hashed = facts[facts["sha256"] != ""]
    labels_per_sha = hashed.groupby("sha256")["label"].nunique()
    conflict_shas = set(labels_per_sha[labels_per_sha > 1].index)
    facts["label_conflict"] = facts["sha256"].isin(conflict_shas)
    first = (hashed.sort_values("path").groupby(["sha256", "label"])["path"].first()
             .rename("duplicate_of"))
    facts = facts.merge(first, left_on=["sha256", "label"], right_index=True, how="left")
    facts["duplicate_of"] = facts["duplicate_of"].fillna("")
    facts["is_duplicate"] = (facts["duplicate_of"] != "") & (facts["duplicate_of"] != facts["path"])
    facts.loc[~facts["is_duplicate"], "duplicate_of"] = ""

    # The manifest falls back to the file stem when a name is not Kermany-style; then a
    # patient's images are not grouped and the patient-level split cannot see them.
    stems = facts["path"].map(lambda p: PurePosixPath(p).stem)
    facts["patient_id_fallback"] = facts["patient_id"] == stems
    return facts[FACT_COLUMNS].sort_values("path").reset_index(drop=True)


def dataset_table(facts):
    """The one-row, table-level facts: images per class and the class ratio."""
    import pandas as pd

    counts = facts["label"].value_counts()
    row: dict[str, Any] = {"images": len(facts)}
    for label in LABELS:
        row[f"n_{label}"] = int(counts.get(label, 0))
    negatives = [lab for lab in LABELS if lab != POSITIVE_LABEL]
    n_neg = sum(row[f"n_{lab}"] for lab in negatives)
    n_pos = row[f"n_{POSITIVE_LABEL}"]
    row["ratio"] = n_pos / n_neg if n_neg else (math.inf if n_pos else math.nan)
    return pd.DataFrame([row])


# --------------------------------------------------------------------------- the suites


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


# --------------------------------------------------------------------------- running GX


def _quiet_gx() -> None:
    """Analytics off, and GX's INFO chatter (config saves, registrations) out of our logs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # before: import logs too
    import great_expectations  # noqa: F401 - some GX modules set their own loggers to INFO on import

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (name.startswith("great_expectations.") and isinstance(logger, logging.Logger)
                and logger.level and logger.level < logging.WARNING):
            logger.setLevel(logging.NOTSET)  # inherit WARNING from "great_expectations"


def run_suites(facts, dataset, cfg: ValidateConfig, docs_dir: Path | None = None
               ) -> tuple[list[dict], dict]:
    """Run the suites in a fresh ephemeral GX context; build Data Docs into ``docs_dir``.

    Returns (per-check entries, GX validation results as JSON dicts by suite name).
    ``docs_dir`` must not hold an earlier site (GX would index those pages too).
    """
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # Ephemeral: no great_expectations.yml, stores in memory (a file-mode context re-reads
    # its YAML config ~100 times a run). Only the Data Docs site touches the disk.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.enable_analytics(False)
    if docs_dir is not None:
        context.add_data_docs_site(DOCS_SITE, {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    source = context.data_sources.add_pandas("cxr")

    all_checks = checks(cfg)
    frames = {"images": facts, "dataset": dataset}
    index_cols = {"images": ["path"], "dataset": []}
    raw_results: dict[str, dict] = {}
    entries: list[dict] = []
    for suite_name, frame in frames.items():
        mine = [c for c in all_checks if c.suite == suite_name]
        batch = source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe("all")
        expectations = []
        for check in mine:
            expectation = check.build()
            expectation.description = check.description
            expectation.meta = {"check": check.name, "critical": check.critical}
            expectations.append(expectation)
        # Built whole, then stored once (add_expectation() on a stored suite saves it each time).
        suite = context.suites.add(gx.ExpectationSuite(
            name=suite_name, expectations=expectations,
            meta={"notes": f"cxr validate: {suite_name} suite"}))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
        result_format: dict[str, Any] = {"result_format": "SUMMARY",
                                         "partial_unexpected_count": OFFENDING_KEPT}
        if index_cols[suite_name]:
            result_format["unexpected_index_column_names"] = index_cols[suite_name]
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        raw_results[suite_name] = result.to_json_dict()
        by_name = {r.expectation_config.meta.get("check"): r for r in result.results}
        for check in mine:
            entries.append(_entry(check, by_name[check.name], frame))
    if docs_dir is not None:
        context.build_data_docs(site_names=[DOCS_SITE])
        if not (Path(docs_dir) / "index.html").is_file():
            raise RuntimeError(f"GX built no Data Docs in {docs_dir}")
    return entries, raw_results


def _entry(check: Check, res, frame) -> dict:
    result = dict(res.result or {})
    entry: dict[str, Any] = {"name": check.name, "critical": check.critical,
                             "success": bool(res.success), "description": check.description,
                             "expectation": res.expectation_config.type}
    if res.exception_info and res.exception_info.get("raised_exception"):
        entry["success"] = False
        entry["observed"] = {"exception": res.exception_info.get("exception_message")}
        entry["offending"], entry["offending_count"] = [], 0
        return entry
    if "partial_missing_list" in result:  # distinct-set expectations: observed_value is None
        entry["observed"] = {"unexpected_values": list(result.get("partial_unexpected_list", [])),
                             "missing_values": list(result.get("partial_missing_list", []))}
    elif "observed_value" in result:
        observed = result["observed_value"]
        entry["observed"] = sorted(observed) if isinstance(observed, (set, list)) else observed
    else:
        entry["observed"] = {k: result.get(k) for k in
                             ("element_count", "unexpected_count", "missing_count")}
    offending: list[str] = []
    count = 0
    if not res.success:
        if check.suite == "images" and "partial_unexpected_index_list" in result:
            rows = frame.drop_duplicates("path").set_index("path", drop=False)
            paths = [item["path"] for item in result["partial_unexpected_index_list"]
                     if isinstance(item, dict) and "path" in item]
            offending = [check.detail(rows.loc[p].to_dict()) for p in paths[:OFFENDING_KEPT]]
            count = int(result.get("unexpected_count") or len(paths))
        elif check.suite == "dataset":
            offending = [check.detail(frame.to_dict("records")[0])]
            count = 1
        else:  # table-level over images, e.g. the distinct label set
            observed = entry["observed"]
            if isinstance(observed, dict) and "missing_values" in observed:
                offending = [f"unexpected values {observed['unexpected_values']}, "
                             f"missing values {observed['missing_values']}"]
            else:
                offending = [f"observed {observed}"]
            count = 1
    entry["offending"] = offending
    entry["offending_count"] = count
    return entry


# --------------------------------------------------------------------------- the stage


class ValidationFailed(UserError):
    """A critical expectation failed; ``summary`` is what was written."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def summarise(facts, dataset, entries: list[dict]) -> dict:
    failed = [e["name"] for e in entries if e["critical"] and not e["success"]]
    warned = [e["name"] for e in entries if not e["critical"] and not e["success"]]
    counts: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(Counter(zip(facts["split"], facts["label"])).items()):
        counts.setdefault(split, {})[label] = int(n)
    counts["total"] = {lab: int(n) for lab, n in sorted(Counter(facts["label"]).items())}
    dups = facts[facts["is_duplicate"]]
    groups = facts[facts["sha256"].isin(set(dups["sha256"]))].groupby(["sha256", "label"])
    ratio = float(dataset["ratio"].iloc[0])
    return {
        "success": not failed,
        "images": int(len(facts)),
        "counts": counts,
        "ratio_pneumonia_to_normal": round(ratio, 4) if math.isfinite(ratio) else None,
        "decode_failures": int((~facts["decodes"]).sum()),
        "label_conflicts": int(facts["label_conflict"].sum()),
        "duplicates": {
            "extra_files": int(len(dups)),
            "groups": int(groups.ngroups),
            "groups_across_patients": int((groups["patient_id"].nunique() > 1).sum()),
            "groups_across_splits": int((groups["split"].nunique() > 1).sum()),
        },
        "patient_id_fallbacks": int(facts["patient_id_fallback"].sum()),
        "expectations": {"evaluated": len(entries),
                         "passed": sum(e["success"] for e in entries)},
        "failed_expectations": failed,
        "warnings": warned,
    }


def failure_message(entries: list[dict], out_dir: Path | None = None) -> str:
    lines = []
    for e in entries:
        if e["critical"] and not e["success"]:
            shown = e["offending"][:OFFENDING_SHOWN]
            more = e["offending_count"] - len(shown)
            tail = f", +{more} more" if more > 0 else ""
            lines.append(f"  - {e['name']} ({e['description']}): "
                         f"{'; '.join(shown) if shown else e['observed']}{tail}")
    where = f"{out_dir}/" if out_dir else ""
    return ("data validation failed, critical expectations not met:\n" + "\n".join(lines)
            + f"\n  (details: {where}result.json, {where}data_docs/index.html, {where}facts.csv)")


def _json_safe(obj):
    """Strict JSON: non-finite floats become strings (GX reports an infinite ratio as inf)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        try:
            return _json_safe(obj.item())
        except (TypeError, ValueError):
            return str(obj)
    return obj


def validate_dataset(
    raw_dir: str | os.PathLike,
    cfg: dict,
    out_dir: str | os.PathLike,
    *,
    summary_path: str | os.PathLike | None = None,
    file_facts=None,
    build_docs: bool = True,
) -> dict:
    """Validate ``raw_dir`` (manifest + images) against the ``validate`` params.

    Writes ``facts.csv``, ``result.json`` and ``data_docs/`` under ``out_dir`` (and
    ``summary_path`` if given), each atomically, and returns the summary. Pass
    ``file_facts`` (the concatenated :func:`facts_for` frames) when the per-file work
    was done elsewhere, e.g. sharded over Dask. ``build_docs=False`` skips the Data Docs
    (about a second of HTML rendering) and blanks an earlier ``data_docs/``. Raises
    :class:`ValidationFailed` after writing the reports when a critical expectation fails.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    config = ValidateConfig.from_params(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Whatever happens next, no earlier run's pass may survive beside a new failure.
    for stale in (out_dir / "result.json", Path(summary_path) if summary_path else None):
        if stale is not None and stale.exists():
            stale.unlink()

    rows = read_manifest(raw_dir)
    t0 = time.perf_counter()
    if file_facts is None:
        file_facts = facts_for([r["path"] for r in rows], raw_dir, max_pixels=config.max_pixels,
                               workers=config.workers)
    t_files = time.perf_counter() - t0
    facts = build_facts(rows, file_facts)
    dataset = dataset_table(facts)
    log.info("facts for %d images in %.1f s (%d do not decode)", len(facts), t_files,
             int((~facts["decodes"]).sum()))

    with atomic_path(out_dir / "facts.csv") as tmp:
        facts.astype({"width": "Int64", "height": "Int64"}).to_csv(tmp, index=False)

    t1 = time.perf_counter()
    _quiet_gx()  # imports GX (~4-5 s), timed apart from the run
    t_import = time.perf_counter() - t1
    t1 = time.perf_counter()
    if build_docs:
        with atomic_path(out_dir / "data_docs") as docs_tmp:  # replaced whole, or not at all
            entries, raw_results = run_suites(facts, dataset, config, docs_tmp)
    else:
        if (out_dir / "data_docs").exists():  # an earlier run's site must not outlive it
            with atomic_path(out_dir / "data_docs") as docs_tmp:
                docs_tmp.mkdir()
                (docs_tmp / "index.html").write_text(
                    "<!doctype html><title>no Data Docs</title><p>This validation run was made "
                    "without Data Docs; see result.json.</p>\n")
        entries, raw_results = run_suites(facts, dataset, config, None)
    t_gx = time.perf_counter() - t1

    summary = summarise(facts, dataset, entries)
    result = {
        "success": summary["success"],
        "summary": summary,
        "expectations": entries,
        "timing_s": {"file_facts": round(t_files, 2), "gx_import": round(t_import, 2),
                     "gx_run": round(t_gx, 2)},
        "params": {k: v for k, v in config.__dict__.items()},
        "great_expectations": raw_results,
    }
    write_json(out_dir / "result.json", _json_safe(result))
    if summary_path:
        write_json(summary_path, _json_safe(summary))
    for e in entries:
        if not e["success"] and not e["critical"]:
            log.warning("warning: %s: %d files, e.g. %s", e["name"], e["offending_count"],
                        "; ".join(e["offending"][:3]))
    log.info("validation %s: %d/%d expectations met; GX took %.1f s (+%.1f s import)",
             "passed" if summary["success"] else "FAILED", summary["expectations"]["passed"],
             summary["expectations"]["evaluated"], t_gx, t_import)
    if not summary["success"]:
        raise ValidationFailed(failure_message(entries, out_dir), summary)
    return summary
