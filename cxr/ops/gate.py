"""The metrics gate: may this challenger replace the promoted champion?

Two kinds of rule, thresholds in ``params.yaml`` ``gate``:

- absolute floors on the challenger's test metrics at the decision threshold chosen on
  validation: recall >= ``min_recall``, specificity >= ``min_specificity``, ROC AUC >=
  ``min_roc_auc``;
- no regression against the champion beyond ``max_regression`` (ROC AUC, recall and
  specificity) -- only when both were measured on the *same* test split (same data set and
  same test images, compared by ``test_split_hash``). Otherwise the verdict says the data
  set differs and only the floors decide: figures from different test sets are not
  comparable, and a champion may even have trained on the challenger's test images.

Data a model was trained on is synthetic (the offline default) is not a medical data set:
``on_synthetic`` says what the floors mean then -- ``enforce`` (default: the floors of
``synthetic_floors``, suited to the generated set, decide, so the offline default run makes
a real pass/fail decision; the model is stored labelled ``synthetic=true`` and every answer
of the service says so), ``report`` (computed and shown, not enforced), or ``refuse``
(never promote a synthetic model).

The second question, bacterial or viral, has its own rules (``subtype_floors``: ROC AUC and
accuracy on the test PNEUMONIA films with a known subtype; and no drop of the subtype ROC AUC
beyond ``max_regression`` against a champion that has one, on the same test split). Synthetic
subtypes say nothing of real films, so on synthetic data these are reported, not enforced
(``subtype_on_synthetic``); on real data they are enforced. A model without subtype figures (one
from before the head, or trained on data that names no subtype) is judged on the screening figures
alone, and the verdict says so (``subtype``).

The verdict is plain data (every figure, its threshold, pass/fail, a one-line reason) so
the flow can publish it as an artifact and the registry can store it with the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cxr import UserError, params
from cxr.records.evaluation import GatedFigures

ON_SYNTHETIC = ("report", "enforce", "refuse")
SUBTYPE_ON_SYNTHETIC = ("report", "enforce")


FLOORS = ("min_recall", "min_specificity", "min_roc_auc")
SUBTYPE_FLOORS = ("min_roc_auc", "min_accuracy")


@dataclass(frozen=True)
class GateConfig:
    min_recall: float
    min_specificity: float
    min_roc_auc: float
    max_regression: float
    on_synthetic: str = "enforce"
    synthetic_floors: dict | None = None  # {min_recall, min_specificity, min_roc_auc}; None: the floors above
    subtype_floors: dict | None = None  # {min_roc_auc, min_accuracy}; None: no subtype floor
    subtype_on_synthetic: str = "report"

    @classmethod
    def from_params(cls, cfg: dict) -> "GateConfig":
        out = cls(
            min_recall=params.require(cfg, "min_recall", float, "gate"),
            min_specificity=params.require(cfg, "min_specificity", float, "gate"),
            min_roc_auc=params.require(cfg, "min_roc_auc", float, "gate"),
            max_regression=params.require(cfg, "max_regression", float, "gate"),
            on_synthetic=str(cfg.get("on_synthetic", "enforce")),
            synthetic_floors=_floors(cfg, "synthetic_floors", FLOORS),
            subtype_floors=_floors(cfg, "subtype_floors", SUBTYPE_FLOORS),
            subtype_on_synthetic=str(cfg.get("subtype_on_synthetic", "report")),
        )
        if out.on_synthetic not in ON_SYNTHETIC:
            raise UserError(f"params.yaml: 'gate.on_synthetic' must be one of {ON_SYNTHETIC}, got {out.on_synthetic!r}")
        if out.subtype_on_synthetic not in SUBTYPE_ON_SYNTHETIC:
            raise UserError(f"params.yaml: 'gate.subtype_on_synthetic' must be one of {SUBTYPE_ON_SYNTHETIC}, got "
                            f"{out.subtype_on_synthetic!r}")
        for name in (*FLOORS, "max_regression"):
            params.in_range(getattr(out, name), 0.0, 1.0, f"gate.{name}")
        return out

    def floors(self, synthetic: bool) -> dict:
        if synthetic and self.synthetic_floors is not None:
            return dict(self.synthetic_floors)
        return {k: getattr(self, k) for k in FLOORS}


def _floors(cfg: dict, key: str, names: tuple[str, ...]) -> dict | None:
    floors = cfg.get(key)
    if floors is None:
        return None
    if not isinstance(floors, dict) or set(floors) != set(names):
        raise UserError(f"params.yaml: 'gate.{key}' must give exactly {list(names)}, got {floors!r}")
    return {k: params.in_range(params.require(floors, k, float, f"gate.{key}"), 0.0, 1.0, f"gate.{key}.{k}")
            for k in names}


def _check(name: str, value, op: str, threshold: float, kind: str, enforced: bool = True) -> dict:
    passed = value is not None and (value >= threshold if op == ">=" else value <= threshold)
    out = {"check": name, "kind": kind, "value": value, "op": op, "threshold": round(threshold, 6), "passed": passed}
    return out if enforced else {**out, "enforced": False}


def _subtype_checks(ch: dict, cfg: GateConfig, champ: dict | None, same_split: bool) -> tuple[list[dict], str]:
    """The subtype's checks and one sentence on how the subtype was judged."""
    if ch.get("subtype_roc_auc") is None:
        return [], ("no subtype figures (a model from before the subtype head, or data naming no subtype): judged on "
                    "the screening figures only")
    enforced = not (ch["synthetic"] and cfg.subtype_on_synthetic == "report")
    checks = [_check(f"subtype {label}", ch[f"subtype_{key}"], ">=", floor, "subtype floor", enforced)
              for key, label in (("roc_auc", "ROC AUC"), ("accuracy", "accuracy"))
              for floor in [(cfg.subtype_floors or {}).get(f"min_{key}")] if floor is not None]
    note = f"subtype judged on {ch.get('subtype_films')} test PNEUMONIA films, " + (
        "enforced" if enforced else "reported, not enforced (synthetic data: gate.subtype_on_synthetic report)")
    if champ is not None and same_split:
        if champ.get("subtype_roc_auc") is None:
            note += "; the champion has no subtype figures: no subtype comparison"
        else:
            checks.append(_check("subtype ROC AUC vs champion", ch["subtype_roc_auc"], ">=",
                                 champ["subtype_roc_auc"] - cfg.max_regression, "subtype no-regression", enforced))
    return checks, note


def decide(challenger: GatedFigures, cfg: GateConfig, champion: GatedFigures | None = None,
           champion_tag: str | None = None) -> dict:
    """The verdict for a challenger (its ``metrics.json`` figures) against an optional champion
    (figures re-measured from its exported files on the challenger's test split)."""
    ch = challenger.to_dict()
    if any(ch[k] is None for k in ("roc_auc", "recall", "specificity")):
        raise UserError("metrics.json lacks test roc_auc/recall/specificity: run the evaluate stage first")
    floors = cfg.floors(ch["synthetic"])
    checks = [
        _check("recall at threshold", ch["recall"], ">=", floors["min_recall"], "floor"),
        _check("specificity at threshold", ch["specificity"], ">=", floors["min_specificity"], "floor"),
        _check("ROC AUC", ch["roc_auc"], ">=", floors["min_roc_auc"], "floor"),
    ]
    if ch["synthetic"] and cfg.on_synthetic == "refuse":
        checks.append({"check": "real (non-synthetic) data", "kind": "floor", "value": "synthetic",
                       "op": "==", "threshold": "real", "passed": False})

    comparison = "no champion: floors only"
    champ, same_split = None, False
    if champion is not None:
        champ = champion.to_dict()
        same_split = bool(ch["test_split_hash"]) and ch["test_split_hash"] == champ["test_split_hash"]
        if not same_split:
            comparison = (f"data set differs from the champion's ({champion_tag}): test split "
                          f"{_short(ch['test_split_hash'])} vs {_short(champ['test_split_hash'])}; floors only")
        else:
            comparison = f"champion {champion_tag} on the same test split {_short(ch['test_split_hash'])}"
            for key, label in (("roc_auc", "ROC AUC"), ("recall", "recall at threshold"),
                               ("specificity", "specificity at threshold")):
                if champ[key] is not None:
                    checks.append(_check(f"{label} vs champion", ch[key], ">=",
                                         champ[key] - cfg.max_regression, "no-regression"))
    subtype_checks, subtype_note = _subtype_checks(ch, cfg, champ, same_split)
    checks += subtype_checks
    failed = [c for c in checks if not c["passed"] and c.get("enforced", True)]
    reported_only = ch["synthetic"] and cfg.on_synthetic == "report"
    if ch["synthetic"] and champion is not None and not champion.synthetic:
        # Never, in any mode: a synthetic model must not replace a real-data champion.
        guard = {"check": "synthetic model would replace a real-data champion", "kind": "floor",
                 "value": "synthetic", "op": "==", "threshold": "real", "passed": False}
        checks.append(guard)
        failed.append(guard)
        reported_only = False
    if reported_only:
        reason = (f"gate passed on SYNTHETIC data: {len(checks)} checks reported, not enforced "
                  f"({len(failed)} would fail: {', '.join(c['check'] for c in failed) or 'none'}); "
                  "NOT a medical model")
        failed = []
    elif failed:
        reason = "gate FAILED: " + "; ".join(
            f"{c['check']} {_fmt(c['value'])} (needs {c['op']} {_fmt(c['threshold'])}{_in_images(c, ch)})"
            for c in failed)
    else:
        reason = f"gate passed: {len(checks)} checks ({comparison})"
    unenforced = [c["check"] for c in subtype_checks if not c["passed"] and not c.get("enforced", True)]
    reason += f"; {subtype_note}" + (f" ({', '.join(unenforced)} would fail)" if unenforced else "")
    return {
        "passed": not failed,
        "enforced": not reported_only,
        "reason": reason,
        "subtype": subtype_note,
        "advice": _advice(failed, ch, champion_tag) if failed else None,
        "comparison": comparison,
        "floors": "synthetic" if ch["synthetic"] and cfg.synthetic_floors is not None else "real",
        "champion": champion_tag,
        "challenger": ch,
        "checks": checks,
        "config": asdict(cfg),
    }


def _in_images(check: dict, ch: dict) -> str:
    """What a failed floor means in test images, when the confusion counts are known."""
    c = ch.get("confusion") or {}
    if not c or check["kind"] != "floor":
        return ""
    if check["check"].startswith("recall"):
        return (f": {c['fn']} of {c['tp'] + c['fn']} test PNEUMONIA images scored below the threshold "
                f"{_fmt(ch['threshold'])} chosen on validation")
    if check["check"].startswith("specificity"):
        return f": {c['fp']} of {c['fp'] + c['tn']} test NORMAL images flagged"
    return ""


def _advice(failed: list[dict], ch: dict, champion_tag: str | None) -> str:
    """What to do next, in one paragraph: the verdict's numbers say what happened, this says why
    it matters and where to look."""
    keep = (f"The promoted model {champion_tag} keeps serving." if champion_tag else
            "No model is promoted, so `make serve` has nothing to serve yet.")
    if any(c["check"].startswith("synthetic model") or c["check"].startswith("real (non") for c in failed):
        return f"{keep} A model trained on synthetic films is never promoted over a real one: train on real data (make real)."
    if ch["synthetic"]:
        return (f"{keep} The offline default is meant to pass its gate on any machine and seed (docs/model.md, "
                "'The offline default'): please report this run with its metrics.json and the processor "
                "(lscpu). To carry on, train another seed (python -m cxr.params set train.seed=2, then make run), "
                "or train on real data (make real).")
    if any(c["kind"].endswith("no-regression") for c in failed):
        return (f"{keep} The challenger is worse than the champion on the same test split: compare them with "
                "`dvc metrics diff` and the gate artifact; promote it anyway only by hand (make rollback TAG=...).")
    return (f"{keep} The model misses a floor of params.yaml gate on its test split: look at metrics.json "
            "(the threshold rule, the stress and proxy sections) and the training curves (dvc plots show); "
            "change training (params.yaml train) or the data, not the floors, unless the floors were wrong.")


def _short(value) -> str:
    return str(value)[:12] if value else "unknown"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def verdict_markdown(verdict: dict) -> str:
    """The verdict as the Prefect artifact shows it: every figure and its threshold."""
    head = "PASSED" if verdict["passed"] else "FAILED"
    if not verdict.get("enforced", True):
        head += " (synthetic data: floors reported, not enforced)"
    elif verdict.get("floors") == "synthetic":
        head += " (synthetic data: the floors for the generated set, gate.synthetic_floors)"
    lines = [
        f"# Gate {head}",
        "",
        verdict["reason"],
        "",
        *([verdict["advice"], ""] if verdict.get("advice") else []),
        f"Comparison: {verdict['comparison']}",
        "",
        "| check | kind | value | rule | result |",
        "|---|---|---|---|---|",
    ]
    for c in verdict["checks"]:
        result = "pass" if c["passed"] else "**FAIL**" if c.get("enforced", True) else "fail (reported, not enforced)"
        lines.append(f"| {c['check']} | {c['kind']} | {_fmt(c['value'])} | {c['op']} {_fmt(c['threshold'])} | "
                     f"{result} |")
    ch = verdict["challenger"]
    lines += ["", f"Decision threshold {ch['threshold']} (chosen on validation); data set "
              f"`{_short(ch['dataset_hash'])}`, test split `{_short(ch['test_split_hash'])}`"
              f"{' (SYNTHETIC: not a medical model)' if ch['synthetic'] else ''}."]
    if verdict.get("subtype"):
        lines += ["", f"Bacterial or viral: {verdict['subtype']}."]
    if verdict.get("rescored"):
        lines += ["", "Re-scored on this test split from the raw image bytes through each exported TFLite file "
                  "(the serving path):", "", "| model | ROC AUC | recall | specificity | threshold | subtype ROC AUC "
                  "| subtype accuracy |", "|---|---|---|---|---|---|---|"]
        for r in verdict["rescored"]:
            f = r["figures"]
            lines.append(f"| {r.get('name')} | {_fmt(f['roc_auc'])} | {_fmt(f['recall'])} | {_fmt(f['specificity'])} | "
                         f"{_fmt(f['threshold'])} | {_fmt(f.get('subtype_roc_auc'))} | "
                         f"{_fmt(f.get('subtype_accuracy'))} |")
    return "\n".join(lines) + "\n"
