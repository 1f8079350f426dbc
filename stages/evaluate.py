"""evaluate: test-split metrics at 0.5 and at the threshold chosen on validation.

Reads params ``evaluate`` (and ``subtype.threshold_rule``); writes ``metrics.json`` (git-tracked,
for ``dvc metrics diff``; the subtype head's figures in its ``subtype`` section),
``reports/plots/`` (ROC, PR, confusion matrix and the subtype's ROC, for ``dvc plots``) and
``reports/predictions.csv`` (every val/test probability, and P(bacterial), for audits and serving checks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cxr import LABELS, SYNTHETIC_WARNING, UserError, cli, params
from cxr.data.dataset import known_subtype, load_split
from cxr.data.manifest import SOURCE_INFO, read_source_info, subtype_of
from cxr.imaging.preprocess import ImagingConfig
from cxr.io import write_csv, write_json
from cxr.metrics import (THRESHOLD_RULES, at_threshold, choose_threshold, curves, ranking, subtype_figures,
                         subtype_threshold, test_split_hash)
from cxr.records import predictions
from cxr.records.evaluation import DataFacts, Evaluation, SplitFigures, SubtypeFigures
from cxr.records.train_summary import TrainSummary
from cxr.shift.acquisition import ClassAcquisition

log = logging.getLogger("evaluate")
THRESHOLD_ON = ("val", "val+counterfactual")


def main(argv: list[str] | None = None) -> None:
    p = cli.paths(argv, "evaluate", model="the trained model", prepared="the prepared splits",
                  raw="the downloaded data set (re-acquired and stressed test images)",
                  train_summary="the train stage's summary.json (the imaging record)",
                  ood="the train stage's not-a-chest-X-ray detector", subtype="the train stage's subtype head",
                  metrics="the metrics.json to write", plots="the plots folder to write",
                  predictions="the predictions CSV to write")
    cfg = params.section("evaluate")
    target_recall = params.require(cfg, "target_recall", float, "evaluate")
    rule = params.require(cfg, "threshold_rule", str, "evaluate")
    confidence = params.require(cfg, "threshold_confidence", float, "evaluate")
    points = params.require(cfg, "plot_points", int, "evaluate")
    stress_images = params.require(cfg, "stress_images", int, "evaluate")
    stress_seed = params.require(cfg, "stress_seed", int, "evaluate")
    threshold_on = cfg.get("threshold_on", "val")
    if threshold_on not in THRESHOLD_ON:
        raise UserError(f"params.yaml: 'evaluate.threshold_on' must be one of {THRESHOLD_ON}, got {threshold_on!r}")
    run_counterfactual = params.require(cfg, "counterfactual", bool, "evaluate")
    run_audit = params.require(cfg, "shortcut_audit", bool, "evaluate")
    originals = cfg.get("originals")
    if originals is not None and not Path(str(originals)).is_dir():
        raise UserError(f"params.yaml: 'evaluate.originals' is {originals!r}, which is not a folder "
                        "(null, or a folder with NORMAL/ and PNEUMONIA/ full-size originals)")
    facts = ClassAcquisition.from_params(params.section("acquisition"))
    runtime = params.require(cfg, "runtime", str, "evaluate")
    subtype_rule = params.require(params.section("subtype"), "threshold_rule", str, "subtype")
    import keras

    from cxr.model.network import Scorer
    from cxr.model.subtype import load as load_subtype

    head = load_subtype(p.subtype)
    model = keras.saving.load_model(p.model)
    imaging = TrainSummary.read(p.train_summary).imaging  # as training recorded it
    val, test = load_split(p.prepared, "val"), load_split(p.prepared, "test")
    scorer = Scorer(model, runtime, probe=val.images[:8])  # every image below: one pass, probability and embedding
    score = scorer.probabilities
    val_scores, test_scores = score(val.images), score(test.images)

    choices = {"val": choose_threshold(val.labels, val_scores, target_recall, rule, confidence)}
    if threshold_on == "val+counterfactual" or run_counterfactual:
        from cxr.shift.robustness import counterfactual_view

        shifted = score(counterfactual_view(p.raw, val.paths, val.labels, facts, imaging))
        choices["val+counterfactual"] = choose_threshold(
            np.concatenate([val.labels, val.labels]), np.concatenate([val_scores, shifted]), target_recall, rule,
            confidence)
    other_rule = next(r for r in THRESHOLD_RULES if r != rule)
    choices[f"val, {other_rule} rule"] = choose_threshold(val.labels, val_scores, target_recall, other_rule, confidence)
    choice = choices[threshold_on]
    thresholds = {name: c.value for name, c in choices.items()}
    threshold = choice.value
    log.info("threshold: %s", choice.describe())
    # The subtype head reads the embeddings the scorer keeps of every array it scored: no second pass.
    p_bacterial = {name: head.probabilities(scorer.embeddings(split.images)) if head.fitted else None
                   for name, split in (("val", val), ("test", test))}
    subtype = _subtype(head, p_bacterial, val, test, test_scores, threshold, subtype_rule)
    source = read_source_info(p.raw / SOURCE_INFO)
    raw_splits = set(source.get("counts", {}).keys()) if isinstance(source.get("counts"), dict) else set()
    diagnostics: dict = {}
    data = DataFacts(synthetic=bool(source.get("synthetic", False)), dataset_hash=source.get("dataset_hash"),
                     test_split="source test/ folder" if "test" in raw_splits else "carved from train by patient",
                     test_split_hash=test_split_hash(source.get("dataset_hash"), test.paths))
    views = None  # the stress sample as other chains would send it, for the stress test and the refusal
    if stress_images > 0:
        from cxr.shift.robustness import perturbed_views, stratified_sample

        idx = stratified_sample(test.labels, stress_images, stress_seed)
        views = perturbed_views([(p.raw / str(test.paths[i])).read_bytes() for i in idx], imaging)
        diagnostics["stress"] = _stress(score, views, test.labels[idx], threshold)
    if run_counterfactual:
        from cxr.shift.robustness import PROXY, counterfactual_report, counterfactual_scores

        cf_views: dict = {}
        variants = counterfactual_scores(p.raw, test.paths, test.labels, test_scores, facts, imaging, score, cf_views)
        cf = counterfactual_report(variants, test.labels, test_scores, threshold, facts)
        if subtype.available:
            from cxr.shift.robustness import subtype_counterfactual

            films, kinds = known_subtype(test)
            cf["subtype"] = subtype_counterfactual(cf_views, test.labels, films, kinds, p_bacterial["test"][films],
                                                   lambda x: head.probabilities(scorer.embeddings(x)),
                                                   subtype.threshold)
            log.info("subtype counterfactual (PNEUMONIA given NORMAL's acquisition): AUC %s -> %s",
                     cf["subtype"]["clean"]["roc_auc"], cf["subtype"]["pneumonia_as_normal"]["roc_auc"])
        diagnostics["counterfactual"] = cf
        # Each way of choosing the threshold, on test and on the proxy: how the choice was made.
        diagnostics["threshold_alternatives"] = {
            name: {"threshold": round(t, 6),
                   "test": {k: v for k, v in at_threshold(test.labels, test_scores, t).items()
                            if k in ("recall", "specificity")},
                   "proxy": {k: v for k, v in at_threshold(test.labels, variants[PROXY], t).items()
                             if k in ("recall", "specificity")}}
            for name, t in thresholds.items()}
        for name in ("clean", *(k for k in cf if isinstance(cf[k], dict) and "cues" in cf[k])):
            m = cf[name]
            log.info("counterfactual %-20s AUC %s recall %.3f specificity %.3f mean p NORMAL %s",
                     name, m["roc_auc"], m["recall"], m["specificity"], m["mean_probability"]["NORMAL"])
        diagnostics["proxy"] = {"roc_auc": cf[PROXY]["roc_auc"], "recall": cf[PROXY]["recall"],
                            "specificity": cf[PROXY]["specificity"], "variant": PROXY}
    if run_audit:
        diagnostics["shortcut_audit"] = _audit(test, test_scores, p.prepared, p_bacterial["test"])
    if originals is not None:
        from cxr.shift.robustness import served_gap

        diagnostics["served_vs_copy"] = served_gap(_original_pairs(Path(str(originals)), p.raw), threshold, imaging,
                                                   score)
        log.info("served (full-size originals) vs evaluated (224-px copies): %s", diagnostics["served_vs_copy"])
    diagnostics["ood"] = _ood(scorer, p.ood, test, imaging, params.section("ood"), views)
    metrics = Evaluation(
        threshold=round(threshold, 6), target_recall=target_recall, threshold_chosen_on=threshold_on,
        threshold_rule=choice.to_dict(),
        test=SplitFigures(**ranking(test.labels, test_scores), images=len(test),
                          at_threshold=at_threshold(test.labels, test_scores, threshold),
                          at_half=at_threshold(test.labels, test_scores, 0.5)),
        val=SplitFigures(**ranking(val.labels, val_scores), images=len(val),
                         at_threshold=at_threshold(val.labels, val_scores, threshold)),
        data=data, diagnostics=diagnostics, subtype=subtype)
    metrics.write(p.metrics)

    test_curves = curves(test.labels, test_scores, points)
    write_json(p.plots / "roc.json", test_curves["roc"])
    write_json(p.plots / "pr.json", test_curves["pr"])
    films, kinds = known_subtype(test)
    both = subtype.available and len(set(kinds.tolist())) == 2
    write_json(p.plots / "subtype_roc.json", curves(kinds, p_bacterial["test"][films], points)["roc"] if both else [])
    predicted = test_scores >= threshold
    write_csv(
        p.plots / "confusion.csv",
        ({"actual": LABELS[int(y)], "predicted": LABELS[int(p)]} for y, p in zip(test.labels, predicted)),
        ["actual", "predicted"],
    )
    predictions.write(p.predictions, {
        name: (split.paths, split.labels, scores, [subtype_of(path) for path in split.paths], p_bacterial[name])
        for name, split, scores in (("val", val, val_scores), ("test", test, test_scores))})
    t = metrics.test
    log.info(
        "test: AUC %s | threshold %.4f (val recall target %.2f): recall %.3f specificity %.3f "
        "accuracy %.3f | at 0.5: recall %.3f specificity %.3f",
        t.roc_auc, threshold, target_recall, t.at_threshold["recall"], t.at_threshold["specificity"],
        t.at_threshold["accuracy"], t.at_half["recall"], t.at_half["specificity"],
    )
    if subtype.available:
        st = subtype.test
        log.info("subtype (bacterial vs viral, %d test PNEUMONIA films): AUC %s | threshold %.4f (%s): accuracy %s "
                 "sensitivity %s specificity %s", st["films"], st["roc_auc"], subtype.threshold,
                 subtype.threshold_rule["rule"], st["accuracy"], st["sensitivity"], st["specificity"])
    else:
        log.warning("no subtype figures: %s", subtype.reason)
    if data.synthetic:
        log.warning(SYNTHETIC_WARNING)


def _subtype(head, p_bacterial: dict, val, test, test_scores: np.ndarray, threshold: float,
             rule: str) -> SubtypeFigures:
    """The subtype head on the PNEUMONIA films with a known subtype: the threshold chosen on
    validation, the figures on test, and on the test films the screening flagged (as served)."""
    if not head.fitted:
        return SubtypeFigures(available=False, reason=head.reason)
    vi, vy = known_subtype(val)
    ti, ty = known_subtype(test)
    if not len(ti):
        return SubtypeFigures(available=False, reason="the test split has no PNEUMONIA film of a known subtype")
    choice = subtype_threshold(vy, p_bacterial["val"][vi], rule)
    t = choice["value"]
    flagged = test_scores[ti] >= threshold
    return SubtypeFigures(available=True, threshold=t, threshold_rule=choice,
                          test=subtype_figures(ty, p_bacterial["test"][ti], t),
                          val=subtype_figures(vy, p_bacterial["val"][vi], t),
                          as_served=subtype_figures(ty[flagged], p_bacterial["test"][ti][flagged], t))


def _ood(scorer, detector_path: Path, test, imaging: ImagingConfig, cfg: dict, views: dict | None) -> dict:
    """The not-a-chest-X-ray refusal on sets it was not fitted or tuned on: the test X-rays (pass
    rate, as they are and as other X-ray chains would send them: the stress test's perturbations)
    and generated non-X-ray images (refusal rate per family)."""
    from cxr.data.non_xray import non_xray_images
    from cxr.imaging.preprocess import preprocess_bytes
    from cxr.model.ood import Features, load, report

    detector = load(detector_path)
    per_family = params.require(cfg, "non_xray_per_family", int, "ood")
    seed = params.require(cfg, "non_xray_seed", int, "ood")
    by_family: dict[str, list[np.ndarray]] = {}
    for family, _, data in non_xray_images(seed, per_family):
        by_family.setdefault(family, []).append(preprocess_bytes(data, imaging))
    embeddings = scorer.embeddings
    features = {family: Features.of(embeddings(np.stack(images)), images) for family, images in by_family.items()}
    out = report(detector, Features.of(embeddings(test.images), test.images), features)
    out["val_pass_rate_achieved"] = detector.info.get("val_pass_rate_achieved")
    if views:
        out["xray_perturbed"] = {
            "images": len(views["clean"]),
            "pass_rate": {name: round(float(detector.passes(Features.of(embeddings(images), images)).mean()), 4)
                          for name, images in views.items()}}
    log.info("not-a-chest-X-ray: test X-rays pass %s (perturbed: %s); non-X-ray images refused %s (%s)",
             out["xray"]["pass_rate"], out.get("xray_perturbed", {}).get("pass_rate"), out["non_xray"]["refusal_rate"],
             ", ".join(f"{f} {m['refusal_rate']}" for f, m in out["non_xray"]["by_family"].items()))
    return out


def _stress(score, views: dict, labels: np.ndarray, threshold: float) -> dict:
    """The acquisition-shift stress test on a stratified sample of the test split."""
    from cxr.shift.robustness import stress_test

    result = stress_test(views, labels, threshold, score)
    for name, m in result["perturbations"].items():
        log.info("stress %-20s AUC %s recall %.3f specificity %.3f (%+.3f)", name, m["roc_auc"], m["recall"],
                 m["specificity"], m["specificity_change"])
    return result


def _audit(test, test_scores: np.ndarray, prepared: Path, p_bacterial: np.ndarray | None) -> dict:
    """The shortcut audit per split, the train-fitted shortcut on test, and whether the
    model's test scores follow it within each class; with a subtype head, the same for bacterial
    vs viral on the PNEUMONIA films of a known subtype (``subtype``)."""
    from cxr.data.manifest import parse_name
    from cxr.shift.shortcuts import Audit, cross_validated, features, subtype_audit, within_class_reliance

    out = {}
    feats, groups, known = {}, {}, {}
    for name in ("train", "val", "test"):
        split = test if name == "test" else load_split(prepared, name)
        groups[name] = np.array([parse_name(Path(str(p)).name).patient_id for p in split.paths])
        feats[name] = (features(split.images), split.labels)
        known[name] = known_subtype(split)
        out[name] = cross_validated(*feats[name], groups[name])
    audit = Audit(*feats["train"])
    shortcut_scores = audit.score(feats["test"][0])
    out["train_fitted_on_test_auc"] = audit.transfer(*feats["test"])
    out["model_follows_shortcut"] = within_class_reliance(test_scores, shortcut_scores, test.labels)
    log.info("shortcut audit: cv AUC train %s val %s test %s; train-fitted on test %s; model-shortcut "
             "correlation within class %s", out["train"]["cv_auc"], out["val"]["cv_auc"], out["test"]["cv_auc"],
             out["train_fitted_on_test_auc"], out["model_follows_shortcut"])
    if p_bacterial is not None:
        sub = out["subtype"] = subtype_audit({n: feats[n][0][idx] for n, (idx, _) in known.items()},
                                             {n: kinds for n, (_, kinds) in known.items()},
                                             {n: groups[n][idx] for n, (idx, _) in known.items()},
                                             p_bacterial[known["test"][0]])
        log.info("shortcut audit, bacterial vs viral: cv AUC train %s val %s test %s; the head follows it within a "
                 "subtype %s", sub["train"]["cv_auc"], sub["val"]["cv_auc"], sub["test"]["cv_auc"],
                 sub.get("head_follows_shortcut"))
    return out


def _original_pairs(originals: Path, raw: Path) -> list[tuple[int, bytes, bytes]]:
    """(label, original, the data set's copy) for every original whose copy is in ``raw``."""
    from cxr.data.manifest import read_manifest

    by_name = {(r["label"], Path(r["path"]).name): r["path"] for r in read_manifest(raw)}
    pairs = []
    for label_i, label in enumerate(LABELS):
        for path in sorted((originals / label).glob("*")):
            rel = by_name.get((label, path.name))
            if rel is not None:
                pairs.append((label_i, path.read_bytes(), (raw / rel).read_bytes()))
    if not pairs:
        raise UserError(f"evaluate.originals: none of the files in {originals}/{{NORMAL,PNEUMONIA}} has a copy "
                        f"in {raw} (matched by label and file name)")
    return pairs


if __name__ == "__main__":
    cli.run(main, "evaluate")
