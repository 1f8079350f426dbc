"""The validate stage's work: facts, suites, reports written atomically, the summary, and
:class:`ValidationFailed` for a critical failure."""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from pathlib import Path

from cxr import UserError
from cxr.data.manifest import read_manifest
from cxr.data.validation.config import OFFENDING_SHOWN, ValidateConfig
from cxr.data.validation.facts import build_facts, dataset_table, facts_for
from cxr.data.validation.gx import quiet_gx, run_suites
from cxr.io import atomic_path, write_json

log = logging.getLogger(__name__)


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
    quiet_gx()  # imports GX (~4-5 s), timed apart from the run
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
