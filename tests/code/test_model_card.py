"""The model card says how the threshold was chosen and carries the proxy, audit and served gap."""

import pytest

from cxr import UserError
from cxr.export import THRESHOLD_METHODS, model_card, model_card_markdown


def metrics(**extra):
    at = {"accuracy": 0.9, "precision": 0.9, "recall": 0.99, "specificity": 0.8, "f1": 0.9}
    figures = {"roc_auc": 0.97, "recall": 0.99, "specificity": 0.7, "mean_probability": {"NORMAL": 0.3, "PNEUMONIA": 0.9}}
    return {"threshold": 0.3, "target_recall": 0.99, "threshold_chosen_on": "val+counterfactual",
            "test": {"roc_auc": 0.99, "pr_auc": 0.99, "images": 10, "at_threshold": at, "at_0.5": at},
            "counterfactual": {"images": 10, "threshold": 0.3, "clean": figures,
                               "normal_as_pneumonia": {**figures, "specificity": 0.55}},
            "shortcut_audit": {"train": {"cv_auc": 0.97}, "val": {"cv_auc": 0.96}, "test": {"cv_auc": 0.95},
                               "model_follows_shortcut": {"NORMAL": 0.1, "PNEUMONIA": 0.05}},
            "served_vs_copy": {"images": 40, "abs_change": {"median": 0.01, "p90": 0.05, "max": 0.2},
                               "label_agreement": 0.975},
            **extra}


def card(m, summary=None):
    summary = {"imaging": {"image_size": 224, "intensity": "none"},
               "architecture": {"backbone": "small_cnn", "description": "a small CNN"}} if summary is None else summary
    return model_card(metrics=m, params={}, source={"source": "x"}, train_summary=summary, parity_checks=[], files={})


def test_card_records_the_threshold_method_and_the_proxy():
    c = card(metrics())
    assert c["decision_threshold_method"] == THRESHOLD_METHODS["val+counterfactual"]
    assert c["model"]["imaging"] == {"image_size": 224, "intensity": "none"}  # read from the train record
    md = model_card_markdown(c)
    assert "counterfactual copies" in md and "## Counterfactual proxy" in md
    assert "| normal_as_pneumonia | 0.97 | 0.99 | 0.55 | 0.3 |" in md
    assert "## Shortcut audit" in md and "- train: 0.97" in md
    assert "## Served versus evaluated" in md and "98%" in md
    plain = model_card_markdown(card({k: v for k, v in metrics().items() if k not in ("threshold_chosen_on",
                                                                                      "counterfactual")}))
    assert THRESHOLD_METHODS["val"] in plain and "## Counterfactual proxy" not in plain


def test_card_refuses_a_train_summary_without_its_imaging_record():
    with pytest.raises(UserError, match="imaging"):
        card(metrics(), summary={"weights": None})


def test_card_names_the_architecture_training_recorded():
    c = card(metrics())
    assert c["model"]["backbone"]["backbone"] == "small_cnn" and c["name"] == "cxr-pneumonia-smallcnn"
    assert c["model"]["architecture"].startswith("a small CNN")
    with pytest.raises(UserError, match="architecture"):
        card(metrics(), summary={"imaging": {"image_size": 224, "intensity": "none"}})
