"""What the flow publishes as Prefect artifacts, built from the stages' own output files.

Pure functions over the records the stages write, so they are testable without Prefect and
the UI shows exactly what ``dvc metrics show`` shows.
"""

from __future__ import annotations

from pathlib import Path

from cxr import SCREENING_NOTICE, SYNTHETIC_WARNING, layout
from cxr.records.evaluation import Evaluation


def metrics_table(metrics: Evaluation) -> list[dict]:
    """One row per metric: test at the chosen threshold, test at 0.5, validation."""
    test, val = metrics.test, metrics.val
    at_thr, at_half, val_thr = test.at_threshold, test.at_half or {}, val.at_threshold
    rows = []
    for key in ("accuracy", "precision", "recall", "specificity", "f1"):
        rows.append({"metric": key, "test @ chosen threshold": at_thr.get(key), "test @ 0.5": at_half.get(key),
                     "val @ chosen threshold": val_thr.get(key)})
    for key in ("roc_auc", "pr_auc"):
        rows.append({"metric": key, "test @ chosen threshold": getattr(test, key), "test @ 0.5": getattr(test, key),
                     "val @ chosen threshold": getattr(val, key)})
    rows.append({"metric": f"threshold (chosen on {metrics.threshold_chosen_on})",
                 "test @ chosen threshold": metrics.threshold,
                 "test @ 0.5": 0.5, "val @ chosen threshold": metrics.threshold})
    proxy = metrics.get("proxy") or {}
    for key in ("roc_auc", "recall", "specificity") if proxy else ():
        rows.append({"metric": f"proxy {key} ({proxy.get('variant')}: test NORMAL given PNEUMONIA's acquisition)",
                     "test @ chosen threshold": proxy.get(key), "test @ 0.5": None, "val @ chosen threshold": None})
    rows.append({"metric": "images", "test @ chosen threshold": test.images,
                 "test @ 0.5": test.images, "val @ chosen threshold": val.images})
    sub = metrics.subtype
    if sub is not None and sub.available:  # bacterial vs viral, at its own threshold (chosen on validation)
        for key in ("roc_auc", "accuracy", "sensitivity", "specificity", "films"):
            rows.append({"metric": f"subtype {key} (bacterial vs viral, PNEUMONIA films; threshold {sub.threshold})",
                         "test @ chosen threshold": sub.test.get(key), "test @ 0.5": None,
                         "val @ chosen threshold": (sub.val or {}).get(key)})
    return rows


def confusion_markdown(metrics: Evaluation) -> str:
    lines = [f"# Confusion matrix (test split: {metrics.data.test_split})", ""]
    if metrics.data.synthetic:
        lines += [f"> **{SYNTHETIC_WARNING}**", ""]
    for title, at in ((f"at the chosen threshold {metrics.threshold}", metrics.test.at_threshold),
                      ("at 0.5", metrics.test.at_half or {})):
        c = at.get("confusion") or {}
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
