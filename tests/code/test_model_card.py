"""The model card says how the threshold was chosen and carries the proxy, audit and served gap."""

import pytest

from cxr import UserError
from cxr.records.evaluation import Evaluation
from cxr.records.model_card import THRESHOLD_METHODS, ModelCard
from cxr.records.train_summary import TrainSummary


def metrics(**extra):
    at = {"accuracy": 0.9, "precision": 0.9, "recall": 0.99, "specificity": 0.8, "f1": 0.9}
    figures = {"roc_auc": 0.97, "recall": 0.99, "specificity": 0.7, "mean_probability": {"NORMAL": 0.3, "PNEUMONIA": 0.9}}
    return {"threshold": 0.3, "target_recall": 0.99, "threshold_chosen_on": "val+counterfactual",
            "test": {"roc_auc": 0.99, "pr_auc": 0.99, "images": 10, "at_threshold": at, "at_0.5": at},
            "val": {"roc_auc": 0.98, "pr_auc": 0.98, "images": 8, "at_threshold": at},
            "data": {"synthetic": False, "dataset_hash": "d" * 64, "test_split": "carved from train by patient",
                     "test_split_hash": "s" * 64},
            "counterfactual": {"images": 10, "threshold": 0.3, "clean": figures,
                               "normal_as_pneumonia": {**figures, "specificity": 0.55}},
            "shortcut_audit": {"train": {"cv_auc": 0.97}, "val": {"cv_auc": 0.96}, "test": {"cv_auc": 0.95},
                               "model_follows_shortcut": {"NORMAL": 0.1, "PNEUMONIA": 0.05}},
            "served_vs_copy": {"images": 40, "abs_change": {"median": 0.01, "p90": 0.05, "max": 0.2},
                               "label_agreement": 0.975},
            **extra}


def subtype_metrics(threshold=0.6):
    """metrics.json's ``subtype`` section as evaluate writes it."""
    figures = {"films": 40, "bacterial": 26, "viral": 14, "roc_auc": 0.91, "accuracy": 0.85, "sensitivity": 0.88,
               "specificity": 0.79, "confusion": {"tp": 23, "fp": 3, "tn": 11, "fn": 3}}
    return {"available": True, "positive": "bacterial", "threshold": threshold,
            "threshold_rule": {"value": threshold, "rule": "youden", "statement": f"{threshold}, maximising Youden's J."},
            "test": figures, "val": {**figures, "films": 20}, "as_served": {**figures, "films": 39}}


HEAD = {"fitted": True, "output": "P(bacterial | pneumonia)", "films": {"train": {"bacterial": 90, "viral": 50}},
        "views_per_film": 3, "steps": 120, "best_step": 60, "val_auc": 0.93, "calibration": {"method": "platt"}}


SUMMARY = {"imaging": {"image_size": 224, "intensity": "none"}, "weights": None, "calibration": {"method": "none"},
           "wall_time_s": 1.0, "architecture": {"backbone": "small_cnn", "description": "a small CNN"}}


def card(m, summary=None, **kw) -> ModelCard:
    return ModelCard.build(evaluation=Evaluation.from_dict(m), summary=TrainSummary.from_dict(summary or SUMMARY),
                           params={}, source={"source": "x"}, parity_checks=[], files={}, **kw)


def test_card_records_the_threshold_method_and_the_proxy():
    c = card(metrics())
    assert c.decision_threshold_method == THRESHOLD_METHODS["val+counterfactual"]
    assert c.to_dict()["model"]["imaging"] == {"image_size": 224, "intensity": "none"}  # read from the train record
    md = c.markdown()
    assert "counterfactual copies" in md and "## Counterfactual proxy" in md
    assert "| normal_as_pneumonia | 0.97 | 0.99 | 0.55 | 0.3 |" in md
    assert "## Shortcut audit" in md and "- train: 0.97" in md
    assert "## Served versus evaluated" in md and "98%" in md
    plain = card({k: v for k, v in metrics().items() if k not in ("threshold_chosen_on", "counterfactual")}).markdown()
    assert THRESHOLD_METHODS["val"] in plain and "## Counterfactual proxy" not in plain


def test_card_refuses_a_train_summary_without_its_imaging_record():
    with pytest.raises(UserError, match="'imaging' must be an object, got missing"):
        card(metrics(), summary={k: v for k, v in SUMMARY.items() if k != "imaging"})


def test_card_names_the_architecture_training_recorded():
    c = card(metrics())
    assert c.model["backbone"]["backbone"] == "small_cnn" and c.name == "cxr-pneumonia-smallcnn"
    assert c.model["architecture"].startswith("a small CNN")
    with pytest.raises(UserError, match="architecture"):
        card(metrics(), summary={**SUMMARY, "architecture": {"alpha": 1.0}})


def test_card_carries_the_drift_reference_and_reads_back_unchanged(tmp_path):
    c = card(metrics(), val_probabilities=[0.123456, 0.9])
    assert c.monitoring == {"val_probabilities": [0.1235, 0.9], "val_refusal_rate": 0.0}
    c.write(tmp_path)
    back = ModelCard.read(tmp_path)
    assert back == c and back.to_dict() == c.to_dict()
    assert (tmp_path / "model_card.md").read_text() == c.markdown()


def test_card_carries_the_subtype_its_threshold_and_the_notice():
    from cxr import SUBTYPE_NOTICE

    c = card(metrics(subtype=subtype_metrics()), subtype_head=HEAD)
    assert c.subtype["available"] and c.subtype_threshold == 0.6 and c.no_subtype_reason is None
    assert c.subtype["fit"]["views_per_film"] == 3 and c.subtype["notice"] == SUBTYPE_NOTICE
    md = c.markdown()
    assert "## Bacterial or viral: a second screening aid, given with a PNEUMONIA answer only" in md
    assert "On the 40 test PNEUMONIA films" in md and "ROC AUC 0.91" in md and SUBTYPE_NOTICE in md
    assert "Kermany et al. (2018) report ROC AUC 0.940" in md
    # A model trained on data that names no subtype: a card that says so, and no threshold to serve.
    none = card(metrics(subtype={"available": False, "reason": "too few films of a known subtype"}),
                subtype_head={"fitted": False, "reason": "too few films of a known subtype"})
    assert none.subtype_threshold is None and "too few films" in none.no_subtype_reason
    assert "None: too few films" in none.markdown()
