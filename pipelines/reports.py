"""What the flow publishes as Prefect artifacts, built from the stages' own output files.

Pure functions over the JSON the stages write, so they are testable without Prefect and
the UI shows exactly what ``dvc metrics show`` shows.
"""

from __future__ import annotations

from pathlib import Path

from cxr import SCREENING_NOTICE, SYNTHETIC_WARNING, layout


def metrics_table(metrics: dict) -> list[dict]:
    """One row per metric: test at the chosen threshold, test at 0.5, validation."""
    test, val = metrics.get("test") or {}, metrics.get("val") or {}
    at_thr, at_half, val_thr = test.get("at_threshold") or {}, test.get("at_0.5") or {}, val.get("at_threshold") or {}
    rows = []
    for key in ("accuracy", "precision", "recall", "specificity", "f1"):
        rows.append({"metric": key, "test @ chosen threshold": at_thr.get(key), "test @ 0.5": at_half.get(key),
                     "val @ chosen threshold": val_thr.get(key)})
    for key in ("roc_auc", "pr_auc"):
        rows.append({"metric": key, "test @ chosen threshold": test.get(key), "test @ 0.5": test.get(key),
                     "val @ chosen threshold": val.get(key)})
    rows.append({"metric": f"threshold (chosen on {metrics.get('threshold_chosen_on', 'val')})",
                 "test @ chosen threshold": metrics.get("threshold"),
                 "test @ 0.5": 0.5, "val @ chosen threshold": metrics.get("threshold")})
    proxy = metrics.get("proxy") or {}
    for key in ("roc_auc", "recall", "specificity") if proxy else ():
        rows.append({"metric": f"proxy {key} ({proxy.get('variant')}: test NORMAL given PNEUMONIA's acquisition)",
                     "test @ chosen threshold": proxy.get(key), "test @ 0.5": None, "val @ chosen threshold": None})
    rows.append({"metric": "images", "test @ chosen threshold": test.get("images"),
                 "test @ 0.5": test.get("images"), "val @ chosen threshold": val.get("images")})
    return rows


def confusion_markdown(metrics: dict) -> str:
    test = metrics.get("test") or {}
    data = metrics.get("data") or {}
    lines = [f"# Confusion matrix (test split: {data.get('test_split')})", ""]
    if data.get("synthetic"):
        lines += [f"> **{SYNTHETIC_WARNING}**", ""]
    for title, key in ((f"at the chosen threshold {metrics.get('threshold')}", "at_threshold"), ("at 0.5", "at_0.5")):
        c = (test.get(key) or {}).get("confusion") or {}
        lines += [f"## {title}", "", "| actual \\ predicted | NORMAL | PNEUMONIA |", "|---|---|---|",
                  f"| NORMAL | {c.get('tn')} | {c.get('fp')} |", f"| PNEUMONIA | {c.get('fn')} | {c.get('tp')} |", ""]
    lines += [f"_{SCREENING_NOTICE}_", ""]
    return "\n".join(lines)


def validation_markdown(summary: dict, docs_index: Path | None) -> str:
    exp = summary.get("expectations") or {}
    lines = [f"# Data validation: {'passed' if summary.get('success') else 'FAILED'}", "",
             f"{exp.get('passed')} of {exp.get('evaluated')} expectations passed.", ""]
    failed = summary.get("failed_expectations") or []
    if failed:
        lines += ["Failed:", *[f"- {e}" for e in failed], ""]
    if summary.get("warnings"):
        lines += ["Warnings (non-critical): " + ", ".join(map(str, summary["warnings"])), ""]
    lines += ["| split | NORMAL | PNEUMONIA |", "|---|---|---|"]
    for split, c in (summary.get("counts") or {}).items():
        lines.append(f"| {split} | {c.get('NORMAL', 0)} | {c.get('PNEUMONIA', 0)} |")
    lines += ["", f"{summary.get('images')} images; PNEUMONIA:NORMAL {summary.get('ratio_pneumonia_to_normal')}; "
              f"decode failures {summary.get('decode_failures')}; label conflicts {summary.get('label_conflicts')}; "
              f"duplicates {summary.get('duplicates')}", ""]
    if docs_index is not None:
        lines += [f"Great Expectations Data Docs: `{docs_index}`", ""]
    return "\n".join(lines)


def plots_markdown(project: Path) -> str:
    lines = ["# Plots of this run", "",
             "Render them with `dvc plots show` (or `dvc plots diff HEAD~1` against a commit):", ""]
    for path in layout.plot_files(project):
        lines.append(f"- `{path}`" + ("" if path.exists() else " (missing)"))
    return "\n".join(lines) + "\n"
