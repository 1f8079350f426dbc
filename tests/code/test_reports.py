"""The flow's metrics artifact shows how the threshold was chosen and the proxy when present."""

from pipelines.reports import confusion_markdown, metrics_table
from tests.code.test_model_card import metrics

from cxr.records.evaluation import Evaluation


def test_metrics_table_has_the_proxy_rows_only_when_evaluated():
    base = Evaluation.from_dict(metrics())
    rows = {r["metric"]: r for r in metrics_table(base)}
    assert "threshold (chosen on val+counterfactual)" in rows
    assert rows["specificity"]["test @ chosen threshold"] == 0.8 and rows["images"]["val @ chosen threshold"] == 8
    assert not any(m.startswith("proxy") for m in rows)
    with_proxy = Evaluation.from_dict(metrics(proxy={"roc_auc": 0.97, "recall": 0.99, "specificity": 0.62,
                                                     "variant": "normal_as_pneumonia"}))
    rows = {r["metric"]: r for r in metrics_table(with_proxy)}
    spec = [r for m, r in rows.items() if m.startswith("proxy specificity")]
    assert len(spec) == 1 and spec[0]["test @ chosen threshold"] == 0.62


def test_confusion_markdown_shows_both_operating_points():
    at = {"confusion": {"tp": 5, "fp": 1, "tn": 3, "fn": 0}}
    m = metrics(test={"roc_auc": 0.9, "pr_auc": 0.9, "images": 9, "at_threshold": at,
                      "at_0.5": {"confusion": {"tp": 4, "fp": 0, "tn": 4, "fn": 1}}})
    md = confusion_markdown(Evaluation.from_dict(m))
    assert "| NORMAL | 3 | 1 |" in md and "| PNEUMONIA | 1 | 4 |" in md and "carved from train" in md
