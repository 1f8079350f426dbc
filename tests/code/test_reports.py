"""The flow's metrics artifact shows how the threshold was chosen and the proxy when present."""

from pipelines.reports import metrics_table


def test_metrics_table_has_the_proxy_rows_only_when_evaluated():
    base = {"threshold": 0.3, "threshold_chosen_on": "val+counterfactual",
            "test": {"roc_auc": 0.99, "at_threshold": {"specificity": 0.9}}, "val": {}}
    rows = {r["metric"]: r for r in metrics_table(base)}
    assert "threshold (chosen on val+counterfactual)" in rows
    assert not any(m.startswith("proxy") for m in rows)
    with_proxy = {**base, "proxy": {"roc_auc": 0.97, "recall": 0.99, "specificity": 0.62,
                                    "variant": "normal_as_pneumonia"}}
    rows = {r["metric"]: r for r in metrics_table(with_proxy)}
    spec = [r for m, r in rows.items() if m.startswith("proxy specificity")]
    assert len(spec) == 1 and spec[0]["test @ chosen threshold"] == 0.62
