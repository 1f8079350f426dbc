"""Running the catalogue with Great Expectations 1.x (an ephemeral context, Data Docs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cxr.data.validation.checks import Check, checks
from cxr.data.validation.config import DOCS_SITE, OFFENDING_KEPT, ValidateConfig


def quiet_gx() -> None:
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
    quiet_gx()
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
