"""The model card for people (``model_card.md``): every section reads with what the card holds, so
an older card (less in it) renders too. :mod:`cxr.records.model_card` owns the record; this module
only renders its dict, and holds the texts both say."""

from __future__ import annotations

from cxr import SCREENING_NOTICE, SUBTYPE_NOTICE

CITATION = (
    "Kermany, D., Zhang, K., Goldbaum, M. (2018). Large Dataset of Labeled Optical Coherence "
    "Tomography (OCT) and Chest X-Ray Images. Mendeley Data, V2. doi:10.17632/rscbjbr9sj.2. "
    "License: CC BY 4.0."
)
THRESHOLD_METHODS = {
    "val": "chosen for the target recall on the validation split",
    "val+counterfactual": "chosen for the target recall on the validation split and its counterfactual copies "
                          "(each image given the other class's acquisition), so that the recall holds when the "
                          "acquisition changes",
}
KERMANY_SUBTYPE = ("Kermany et al. (2018) report ROC AUC 0.940, accuracy 0.907, sensitivity 0.886 and specificity "
                   "0.909 for bacterial vs viral on their official test split (242 bacterial, 148 viral films): other "
                   "films and another model, so not a like-for-like comparison.")
NO_SUBTYPE = ("this model was exported before the bacterial/viral subtype existed: it answers the screening "
              "question only (re-export it with the current code for the subtype)")


def markdown(card: dict) -> str:
    """The card for people; every section reads with what the card holds (older cards hold less)."""
    data, model, git = card["data"], card["model"], card["git"]
    t = card["metrics"].get("test") or {}
    at_thr = t.get("at_threshold", {})
    at_half = t.get("at_0.5", {})
    lines = [f"# Model card: {card['name']}", ""]
    if card.get("warning"):
        lines += [f"> **{card['warning']}**", ""]
    lines += [
        f"> **{SCREENING_NOTICE}**",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        f"Not intended for: {card['not_intended_for']}",
        "",
        "## Decision threshold",
        f"{card['decision_threshold']}: {card.get('decision_threshold_method') or THRESHOLD_METHODS['val']}, "
        f"for recall {card['target_recall']}. Chosen without the test split, and reported on test unchanged.",
        *(["", f"How: {card['decision_threshold_basis']['statement']}"]
          if (card.get("decision_threshold_basis") or {}).get("statement") else []),
        "",
        "## Test-split metrics",
        f"Test split: {data.get('test_split')}; ROC AUC {t.get('roc_auc')}, PR AUC {t.get('pr_auc')}, "
        f"{t.get('images')} images.",
        "",
        "| at | accuracy | precision | recall | specificity | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in (("chosen threshold", at_thr), ("0.5", at_half)):
        lines.append(
            f"| {name} | {m.get('accuracy')} | {m.get('precision')} | {m.get('recall')} | {m.get('specificity')} | {m.get('f1')} |"
        )
    lines += [
        "",
        *_subtype_lines(card.get("subtype"), card["metrics"].get("counterfactual"), card["metrics"].get("shortcut_audit")),
        *_counterfactual_lines(card["metrics"].get("counterfactual")),
        *_audit_lines(card["metrics"].get("shortcut_audit"), (card.get("training_views") or {}).get("shortcut_audit_views")),
        *_served_lines(card["metrics"].get("served_vs_copy")),
        *_stress_lines(card["metrics"].get("stress")),
        *_ood_lines(card["metrics"].get("ood")),
        "## Data",
        f"Source: `{data.get('source')}`; dataset hash `{data.get('dataset_hash')}`.",
        "",
        f"Citation: {data.get('citation', CITATION)}",
        "",
        "## Model",
        f"{model.get('architecture')}. Input: {model.get('input')}. Imaging: `{model['imaging']}`. "
        f"Weights init: `{model.get('weights_init')}`. Calibration: `{model.get('calibration')}`.",
        "",
        "## Limitations",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Lineage",
        f"Git commit `{git.get('commit')}` (dirty: {git.get('dirty')}); created {card.get('created')}.",
        "",
        "## Export parity",
        *[f"- {p['format']}: max |Δp| {p['max_abs_diff']:.2e} on {p['images']} images (tolerance {p['tolerance']})"
          for p in card["parity"]],
        "",
    ]
    return "\n".join(lines)


def _subtype_lines(sub: dict | None, cf: dict | None, audit: dict | None) -> list[str]:
    head = ["## Bacterial or viral: a second screening aid, given with a PNEUMONIA answer only"]
    if not sub:
        return head + [f"None: {NO_SUBTYPE}.", ""]
    if not sub.get("available"):
        return head + [f"None: {sub.get('reason')}.", ""]
    test, served = sub["figures"]["test"], sub["figures"].get("as_served") or {}
    rule = (sub.get("threshold_rule") or {}).get("statement", "")
    lines = head + [
        f"{sub.get('output')}, from one logit on the screening model's embedding (the screening model is unchanged "
        f"by it). Threshold {rule}",
        "",
        f"On the {test['films']} test PNEUMONIA films whose file names give their subtype ({test['bacterial']} "
        f"bacterial, {test['viral']} viral): ROC AUC {test['roc_auc']}; at the threshold accuracy {test['accuracy']}, "
        f"sensitivity (bacterial called bacterial) {test['sensitivity']}, specificity (viral called viral) "
        f"{test['specificity']}. As served (the {served.get('films')} of them the screening flagged): accuracy "
        f"{served.get('accuracy')}.",
        "",
        sub.get("reference", KERMANY_SUBTYPE),
    ]
    shifted = (cf or {}).get("subtype", {}).get("pneumonia_as_normal")
    if shifted:
        lines += ["", f"Given NORMAL's acquisition (the counterfactual proxy's transform on these PNEUMONIA films): "
                      f"ROC AUC {shifted['roc_auc']}, accuracy {shifted['accuracy']}."]
    sa = (audit or {}).get("subtype")
    if sa:
        lines += ["", f"Acquisition features alone tell bacterial from viral with cross-validated ROC AUC "
                      f"{sa.get('train', {}).get('cv_auc')} (train), {sa.get('test', {}).get('cv_auc')} (test); the "
                      f"head's test scores follow that score within a subtype (Spearman): "
                      f"{sa.get('head_follows_shortcut')}."]
    return lines + ["", f"**{sub.get('notice', SUBTYPE_NOTICE)}**", ""]


def _ood_lines(ood: dict | None) -> list[str]:
    if not ood:
        return []
    xray, non = ood["xray"], ood["non_xray"]
    lines = ["## Not a chest X-ray: refused",
             "Uploads unlike the training X-rays (the model's embedding far from theirs, or image statistics no "
             "radiograph has) are answered 422 with the reason, never labelled (cxr/model/ood.py). The threshold lets "
             f"{ood.get('val_pass_rate_achieved')} of the validation X-rays and their re-acquired copies pass "
             f"(target {ood.get('val_pass_rate')}). Measured on sets it was neither fitted nor tuned on: the test "
             f"X-rays pass at {xray['pass_rate']} ({xray['passed']} of {xray['images']}); generated non-X-ray "
             f"images (cxr/data/non_xray.py) are refused at {non['refusal_rate']} "
             f"({non['refused']} of {non['images']}).",
             "", "| family | images | refused |", "|---|---|---|"]
    lines += [f"| {family} | {m['images']} | {m['refusal_rate']} |" for family, m in non["by_family"].items()]
    perturbed = ood.get("xray_perturbed")
    if perturbed:
        lines += ["", f"Test X-rays as other chains would send them ({perturbed['images']} images, the stress test's "
                  "perturbations), share passing: " + ", ".join(f"{k} {v}" for k, v in perturbed["pass_rate"].items())
                  + "."]
    return lines + [""]


def _stress_lines(stress: dict | None) -> list[str]:
    if not stress:
        return []
    lines = ["## Acquisition-shift stress test",
             f"{stress['images']} test images re-sent as other X-ray chains would send them (cxr/shift/robustness.py), "
             f"at the same threshold {stress['threshold']}. A validation-chosen threshold is known to lose "
             "specificity on a new chain: read these before trusting the test figures elsewhere. Training "
             "re-acquires its augmented views with the same family of changes; the held-out ones were never "
             "trained on.", "",
             "| perturbation | ROC AUC | recall | specificity | Δ specificity |", "|---|---|---|---|---|"]
    for name, m in stress["perturbations"].items():
        name = f"{name} (held out)" if name in stress.get("held_out", []) else name
        lines.append(f"| {name} | {m['roc_auc']} | {m['recall']} | {m['specificity']} | {m['specificity_change']:+.4f} |")
    return lines + [""]


def _counterfactual_lines(cf: dict | None) -> list[str]:
    if not cf:
        return []
    lines = ["## Counterfactual proxy: the class-conditional acquisition shift",
             f"The {cf['images']} test images again, with one class's films re-acquired as the other class's "
             f"chain would have made them (aspect of the film, fine detail: cxr/shift/acquisition.py), at the same "
             f"threshold {cf['threshold']}. `normal_as_pneumonia` is the known shape of the official test split "
             "(its NORMAL films were acquired like the training PNEUMONIA ones). A model that reads the lungs "
             "keeps its figures here; one that reads the acquisition loses specificity. In-house proxy, not "
             "the official split.", "",
             "| variant | ROC AUC | recall | specificity | mean p(NORMAL) |", "|---|---|---|---|---|"]
    for name, m in cf.items():
        if isinstance(m, dict) and "roc_auc" in m:
            lines.append(f"| {name} | {m['roc_auc']} | {m['recall']} | {m['specificity']} | "
                         f"{m['mean_probability']['NORMAL']} |")
    return lines + [""]


def _audit_lines(audit: dict | None, views: dict | None) -> list[str]:
    if not audit:
        return []
    lines = ["## Shortcut audit",
             "How well acquisition features alone (aspect, detail, noise, exposure, borders; cxr/shift/shortcuts.py) "
             "tell the labels, patient-grouped cross-validated ROC AUC (0.5 = nothing to learn):", ""]
    lines += [f"- {split}: {audit[split]['cv_auc']}" for split in ("train", "val", "test") if split in audit]
    if views:
        lines += [f"- training images as acquired: {views.get('as_acquired', {}).get('cv_auc')}; "
                  f"re-acquired training views: {(views.get('reacquired_views') or {}).get('cv_auc')}"]
    follows = audit.get("model_follows_shortcut") or {}
    lines += [f"- the model's test scores follow the shortcut within a class (Spearman): {follows}", ""]
    return lines


def _served_lines(served: dict | None) -> list[str]:
    if not served or not served.get("images"):
        return []
    change = served["abs_change"]
    return ["## Served versus evaluated",
            f"{served['images']} full-size originals as the service preprocesses them, against the data set's "
            f"224-px copies of the same films (another resize chain): |Δp| median {change['median']}, 90th "
            f"percentile {change['p90']}, max {change['max']}; same label for {served['label_agreement']:.0%}.", ""]
