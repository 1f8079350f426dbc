"""The metrics gate: floors, the no-regression rule, and when champion and challenger compare."""

import pytest

import dataclasses

from cxr import UserError
from cxr.ops.gate import GateConfig, decide, verdict_markdown
from cxr.records.evaluation import GatedFigures

CFG = GateConfig(min_recall=0.99, min_specificity=0.8, min_roc_auc=0.95, max_regression=0.01)


def metrics(auc=0.98, recall=0.995, spec=0.85, split="split-a", synthetic=False):
    """The figures of an evaluate-stage metrics.json that the gate reads."""
    return GatedFigures(roc_auc=auc, recall=recall, specificity=spec, threshold=0.3, dataset_hash="d" * 64,
                        test_split_hash=split, synthetic=synthetic)


def failed(verdict):
    return sorted(c["check"] for c in verdict["checks"] if not c["passed"])


def test_a_model_above_every_floor_passes_without_a_champion():
    verdict = decide(metrics(), CFG)
    assert verdict["passed"] and verdict["comparison"].startswith("no champion")
    assert [c["kind"] for c in verdict["checks"]] == ["floor"] * 3


@pytest.mark.parametrize("field,value,check", [
    ("recall", 0.98, "recall at threshold"),
    ("spec", 0.79, "specificity at threshold"),
    ("auc", 0.949, "ROC AUC"),
])
def test_each_floor_fails_on_its_own(field, value, check):
    verdict = decide(metrics(**{field: value}), CFG)
    assert not verdict["passed"]
    assert failed(verdict) == [check]
    assert check in verdict["reason"] and "needs >=" in verdict["reason"]


def test_no_regression_against_a_champion_on_the_same_test_split():
    champion = metrics(auc=0.99, recall=0.995, spec=0.90)
    ok = decide(metrics(auc=0.985, spec=0.895), CFG, champion, "cxr-pneumonia:old")
    assert ok["passed"], ok["reason"]
    assert sum(c["kind"] == "no-regression" for c in ok["checks"]) == 3

    worse = decide(metrics(auc=0.975, spec=0.88), CFG, champion, "cxr-pneumonia:old")
    assert not worse["passed"]
    assert failed(worse) == ["ROC AUC vs champion", "specificity at threshold vs champion"]
    assert "cxr-pneumonia:old" in worse["comparison"]


def test_a_champion_from_another_test_split_is_not_compared():
    champion = metrics(auc=0.999, spec=0.99, split="split-b")
    verdict = decide(metrics(auc=0.96, spec=0.81), CFG, champion, "cxr-pneumonia:old")
    assert verdict["passed"]
    assert "data set differs" in verdict["comparison"] and "floors only" in verdict["comparison"]
    assert all(c["kind"] == "floor" for c in verdict["checks"])


def test_synthetic_models_can_be_refused():
    strict = GateConfig(0.0, 0.0, 0.0, 0.01, on_synthetic="refuse")
    assert decide(metrics(synthetic=False), strict)["passed"]
    verdict = decide(metrics(synthetic=True), strict)
    assert failed(verdict) == ["real (non-synthetic) data"]


def test_on_synthetic_data_floors_can_be_reported_instead_of_enforced():
    report = GateConfig(0.99, 0.8, 0.95, 0.01, on_synthetic="report")
    verdict = decide(metrics(auc=0.6, spec=0.0, synthetic=True), report)
    assert verdict["passed"] and not verdict["enforced"]
    assert "SYNTHETIC" in verdict["reason"] and "2 would fail" in verdict["reason"]
    assert failed(verdict) == ["ROC AUC", "specificity at threshold"]  # still recorded as failing
    enforced = decide(metrics(auc=0.6, spec=0.0, synthetic=True), CFG)  # enforce is the default
    assert not enforced["passed"] and enforced["enforced"]
    # Never over a real-data champion, whatever the mode.
    over_real = decide(metrics(synthetic=True), report, metrics(synthetic=False, split="other"), "cxr-pneumonia:real")
    assert not over_real["passed"] and "would replace a real-data champion" in over_real["reason"]
    over_synthetic = decide(metrics(synthetic=True), report, metrics(synthetic=True, split="other"), "cxr-pneumonia:s")
    assert over_synthetic["passed"]
    # Real data: always enforced, whatever on_synthetic says.
    assert not decide(metrics(auc=0.6, synthetic=False), report)["passed"]


def test_synthetic_floors_apply_to_synthetic_models_only():
    cfg = GateConfig(0.99, 0.8, 0.95, 0.01, synthetic_floors={"min_recall": 0.9, "min_specificity": 0.6,
                                                              "min_roc_auc": 0.9})
    lenient_enough = metrics(auc=0.93, recall=0.92, spec=0.7, synthetic=True)
    verdict = decide(lenient_enough, cfg)
    assert verdict["passed"] and verdict["enforced"] and verdict["floors"] == "synthetic"
    assert [c["threshold"] for c in verdict["checks"]] == [0.9, 0.6, 0.9]
    assert "gate.synthetic_floors" in verdict_markdown(verdict)
    real = decide(dataclasses.replace(lenient_enough, synthetic=False), cfg)
    assert not real["passed"] and real["floors"] == "real"
    with pytest.raises(UserError, match="gate.synthetic_floors"):
        GateConfig.from_params({"min_recall": 0.9, "min_specificity": 0.8, "min_roc_auc": 0.9, "max_regression": 0.0,
                                "synthetic_floors": {"min_recall": 0.9}})


def test_the_default_gate_fails_a_broken_synthetic_default():
    """The repo's own params.yaml: a model at chance on the synthetic test split (what the
    offline default trained before it could learn) is refused, and a working one passes."""
    from cxr import params
    from tests.shared_paths import REPO

    cfg = GateConfig.from_params(params.section("gate", REPO / "params.yaml"))
    assert cfg.on_synthetic == "enforce"
    broken = decide(metrics(auc=0.5, recall=1.0, spec=0.0, synthetic=True), cfg)
    assert not broken["passed"] and broken["enforced"]
    assert failed(broken) == ["ROC AUC", "specificity at threshold"]
    floors = cfg.floors(synthetic=True)
    working = metrics(auc=floors["min_roc_auc"], recall=floors["min_recall"], spec=floors["min_specificity"],
                      synthetic=True)
    assert decide(working, cfg)["passed"]


def test_missing_metrics_and_bad_params_are_user_errors():
    with pytest.raises(UserError, match="evaluate stage"):
        decide(dataclasses.replace(metrics(), roc_auc=None), CFG)
    with pytest.raises(UserError, match="gate.min_recall"):
        GateConfig.from_params({"min_recall": 1.5, "min_specificity": 0.8, "min_roc_auc": 0.9, "max_regression": 0.0})
    with pytest.raises(UserError, match="gate.on_synthetic"):
        GateConfig.from_params({"min_recall": 0.9, "min_specificity": 0.8, "min_roc_auc": 0.9,
                                "max_regression": 0.0, "on_synthetic": "ignore"})
    with pytest.raises(UserError, match="gate.max_regression"):
        GateConfig.from_params({"min_recall": 0.9, "min_specificity": 0.8, "min_roc_auc": 0.9})


def test_the_verdict_artifact_lists_every_figure_and_threshold():
    verdict = decide(metrics(spec=0.5), CFG, metrics(), "cxr-pneumonia:old")
    md = verdict_markdown(verdict)
    assert md.startswith("# Gate FAILED")
    for c in verdict["checks"]:
        assert c["check"] in md
    assert "0.5000" in md and ">= 0.8000" in md and "**FAIL**" in md


def test_the_verdict_artifact_shows_rescored_candidates():
    verdict = decide(metrics(), CFG)
    verdict["rescored"] = [{"name": "challenger", "figures": metrics(auc=0.97).to_dict()}]
    md = verdict_markdown(verdict)
    assert "| challenger | 0.9700 | 0.9950 | 0.8500 | 0.3000 |" in md


def test_a_failed_floor_says_what_happened_in_images_and_what_to_do():
    """The front door's failure, as a user reads it: which images, and the next step."""
    syn = GateConfig(min_recall=0.99, min_specificity=0.8, min_roc_auc=0.95, max_regression=0.01,
                     synthetic_floors={"min_recall": 0.9, "min_specificity": 0.75, "min_roc_auc": 0.93})
    figures = dataclasses.replace(metrics(recall=0.8929, spec=0.9535, synthetic=True),
                                  confusion={"tp": 50, "fn": 6, "tn": 41, "fp": 2})
    verdict = decide(figures, syn)
    assert not verdict["passed"]
    assert "6 of 56 test PNEUMONIA images scored below the threshold 0.3000" in verdict["reason"]
    assert "No model is promoted" in verdict["advice"] and "train.seed" in verdict["advice"]
    assert verdict["advice"] in verdict_markdown(verdict)
    real = decide(dataclasses.replace(metrics(spec=0.7), confusion={"tp": 99, "fn": 0, "tn": 70, "fp": 30}),
                  CFG, None, None)
    assert "30 of 100 test NORMAL images flagged" in real["reason"]
    assert "change training" in real["advice"]
    champion = decide(dataclasses.replace(metrics(spec=0.7), confusion=None), CFG, metrics(spec=0.9), "cxr:old")
    assert "cxr:old keeps serving" in champion["advice"] and "images" not in champion["reason"]
    assert decide(metrics(), CFG)["advice"] is None


SUB_CFG = dataclasses.replace(CFG, subtype_floors={"min_roc_auc": 0.85, "min_accuracy": 0.75})


def with_subtype(figures, auc=0.9, accuracy=0.8):
    return dataclasses.replace(figures, subtype_roc_auc=auc, subtype_accuracy=accuracy, subtype_threshold=0.5,
                               subtype_films=40)


def test_subtype_floors_are_enforced_on_real_data():
    ok = decide(with_subtype(metrics()), SUB_CFG)
    assert ok["passed"] and [c["kind"] for c in ok["checks"]][-2:] == ["subtype floor"] * 2
    assert "subtype judged on 40 test PNEUMONIA films, enforced" in ok["reason"]
    low = decide(with_subtype(metrics(), auc=0.8), SUB_CFG)
    assert not low["passed"] and failed(low) == ["subtype ROC AUC"] and "subtype ROC AUC 0.8000" in low["reason"]


def test_subtype_floors_are_reported_not_enforced_on_synthetic_data():
    verdict = decide(with_subtype(metrics(synthetic=True), auc=0.6, accuracy=0.5), SUB_CFG)
    assert verdict["passed"] and verdict["enforced"]  # the screening floors still decide
    assert failed(verdict) == ["subtype ROC AUC", "subtype accuracy"]  # recorded as failing, not enforced
    assert all(c.get("enforced") is False for c in verdict["checks"] if c["kind"].startswith("subtype"))
    assert "reported, not enforced" in verdict["reason"] and "subtype ROC AUC, subtype accuracy would fail" in \
        verdict["reason"]
    assert "fail (reported, not enforced)" in verdict_markdown(verdict)
    strict = dataclasses.replace(SUB_CFG, subtype_on_synthetic="enforce")
    assert not decide(with_subtype(metrics(synthetic=True), auc=0.6), strict)["passed"]


def test_a_model_without_subtype_figures_is_judged_on_screening_alone_and_told_so():
    verdict = decide(metrics(), SUB_CFG, with_subtype(metrics()), "cxr-pneumonia:new")
    assert verdict["passed"] and not any(c["kind"].startswith("subtype") for c in verdict["checks"])
    assert "no subtype figures" in verdict["subtype"] and "screening figures only" in verdict["reason"]
    assert "Bacterial or viral: no subtype figures" in verdict_markdown(verdict)


def test_no_subtype_regression_against_a_champion_that_has_one_on_the_same_split():
    champion = with_subtype(metrics(), auc=0.95)
    worse = decide(with_subtype(metrics(), auc=0.93), SUB_CFG, champion, "cxr-pneumonia:old")
    assert not worse["passed"] and failed(worse) == ["subtype ROC AUC vs champion"]
    assert "is worse than the champion" in worse["advice"]
    assert decide(with_subtype(metrics(), auc=0.945), SUB_CFG, champion, "cxr-pneumonia:old")["passed"]
    old_champion = decide(with_subtype(metrics(), auc=0.9), SUB_CFG, metrics(), "cxr-pneumonia:old")
    assert old_champion["passed"] and "the champion has no subtype figures" in old_champion["subtype"]
    elsewhere = decide(with_subtype(metrics(), auc=0.9), SUB_CFG, dataclasses.replace(champion, test_split_hash="b"),
                       "cxr-pneumonia:old")
    assert not any(c["check"] == "subtype ROC AUC vs champion" for c in elsewhere["checks"])


def test_subtype_gate_params():
    base = {"min_recall": 0.9, "min_specificity": 0.8, "min_roc_auc": 0.9, "max_regression": 0.01}
    cfg = GateConfig.from_params({**base, "subtype_floors": {"min_roc_auc": 0.8, "min_accuracy": 0.7}})
    assert cfg.subtype_floors == {"min_roc_auc": 0.8, "min_accuracy": 0.7} and cfg.subtype_on_synthetic == "report"
    with pytest.raises(UserError, match="gate.subtype_floors"):
        GateConfig.from_params({**base, "subtype_floors": {"min_roc_auc": 0.8}})
    with pytest.raises(UserError, match="gate.subtype_on_synthetic"):
        GateConfig.from_params({**base, "subtype_on_synthetic": "refuse"})
