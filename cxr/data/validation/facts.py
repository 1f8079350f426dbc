"""Per-image facts: each file read, hashed and fully decoded (:func:`facts_for`, one shard or
all), then joined with the manifest into the table the suites check (:func:`build_facts`)."""

from __future__ import annotations

import logging
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from cxr import LABELS, POSITIVE_LABEL, UserError
from cxr.data.validation.config import FACT_COLUMNS, FILE_FACT_COLUMNS, PILLOW_DEFAULT_MAX_PIXELS, default_workers

log = logging.getLogger(__name__)


class _TooBig(Exception):
    pass


def _file_facts(raw_dir: Path, rel: str, max_pixels: int, max_read_bytes: int) -> dict:
    from PIL import Image

    from cxr.imaging.preprocess import check_decode_budget, open_image
    from cxr.imaging.primitives import ImageError
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
