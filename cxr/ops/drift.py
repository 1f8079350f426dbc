"""Drift of the served model's inputs, read off the service's audit trail.

The trail (``cxr-audit/2``, or the older ``cxr-audit/1``: one JSON object per answered or refused
image) carries no
pixels and no patient data: only what the service answered. What it tells against the
promoted model's validation set (the reference, carried by the model card):

- the population stability index (PSI) and the two-sample Kolmogorov-Smirnov test of the
  answered probabilities against the validation probabilities: the images have moved when
  the model sees them differently;
- the refusal rate, by reason: a surge of ``not_a_chest_xray`` or ``corrupt`` means the
  images reaching the service changed before the model had a say;
- the positive (PNEUMONIA) rate at the card's threshold, both sides: what the clinicians
  feel first.

Thresholds in ``params.yaml`` ``monitor``. Three outcomes, never silence: ``drifted``,
``stable``, or ``insufficient`` (too few answers in the window to judge the
probabilities: a report of its own, neither drift nor an all-clear).

numpy only, so the monitor runs wherever the trail is (scipy is not needed).
"""

from __future__ import annotations

import glob
import math
import re
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np

from cxr import POSITIVE_LABEL, UserError, params
from cxr.records import audit_line
from cxr.records.audit_line import is_probability, parse_time  # noqa: F401 - parse_time: for the CLI (--since)
from cxr.records.model_card import ModelCard

NO_REFERENCE = "model card has no monitoring reference: re-export the model"


@dataclass(frozen=True)
class DriftConfig:
    window: int
    min_answers: int
    psi_bins: int
    psi_epsilon: float
    psi_max: float
    ks_pvalue_min: float
    ks_statistic_max: float
    refusal_rate_max_increase: float
    positive_rate_max_change: float

    @classmethod
    def from_params(cls, cfg: dict) -> "DriftConfig":
        def get(key, kind):
            return params.require(cfg, key, kind, "monitor")

        out = cls(window=get("window", int), min_answers=get("min_answers", int), psi_bins=get("psi_bins", int),
                  psi_epsilon=get("psi_epsilon", float), psi_max=get("psi_max", float),
                  ks_pvalue_min=get("ks_pvalue_min", float), ks_statistic_max=get("ks_statistic_max", float),
                  refusal_rate_max_increase=get("refusal_rate_max_increase", float),
                  positive_rate_max_change=get("positive_rate_max_change", float))
        for name in ("window", "min_answers"):
            params.in_range(getattr(out, name), 1, math.inf, f"monitor.{name}")
        params.in_range(out.psi_bins, 2, 1000, "monitor.psi_bins")
        params.in_range(out.psi_epsilon, 1e-12, 0.01, "monitor.psi_epsilon")
        params.in_range(out.psi_max, 0.0, math.inf, "monitor.psi_max")
        for name in ("ks_pvalue_min", "ks_statistic_max", "refusal_rate_max_increase", "positive_rate_max_change"):
            params.in_range(getattr(out, name), 0.0, 1.0, f"monitor.{name}")
        return out


# -- the reference ---------------------------------------------------------------------------------

def reference_from_card(card: ModelCard) -> dict:
    """The monitoring reference a model card carries (validation probabilities and refusal rate)."""
    monitoring = card.monitoring
    if not isinstance(monitoring, dict) or not isinstance(monitoring.get("val_probabilities"), list) \
            or not monitoring["val_probabilities"]:
        raise UserError(NO_REFERENCE)
    probs = monitoring["val_probabilities"]
    if not all(is_probability(p) for p in probs):
        raise UserError("model card: monitoring.val_probabilities must be numbers in [0, 1]: re-export the model")
    refusal_rate = monitoring.get("val_refusal_rate")
    refusal_rate = 0.0 if refusal_rate is None else refusal_rate
    if not is_probability(refusal_rate):
        raise UserError(f"model card: monitoring.val_refusal_rate must be in [0, 1], got {refusal_rate!r}")
    if not is_probability(card.decision_threshold):
        raise UserError(f"model card has no decision_threshold in [0, 1] (got {card.decision_threshold!r}): "
                        "re-export the model")
    return {"probabilities": [float(p) for p in probs], "refusal_rate": float(refusal_rate),
            "threshold": float(card.decision_threshold), "name": card.name}


# -- reading a trail -------------------------------------------------------------------------------

def trail_files(path: str | Path) -> list[Path]:
    """A trail's files, oldest first: ``audit.jsonl.N`` ... ``audit.jsonl.1``, then ``audit.jsonl``
    (RotatingFileHandler's naming: the highest number is the oldest)."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)")
    rotated = sorted(((int(m.group(1)), p) for p in path.parent.glob(f"{glob.escape(path.name)}.*")
                      if (m := pattern.fullmatch(p.name)) and p.is_file()), reverse=True)
    files = [p for _, p in rotated] + ([path] if path.is_file() else [])
    if not files:
        raise UserError(f"audit trail {path} not found (nor any rotated {path.name}.N beside it)")
    return files


@dataclass
class Trail:
    """The window of a trail the monitor judges, and what reading it skipped."""
    records: list[dict]
    files: list[str]
    lines: int = 0
    malformed: Counter = field(default_factory=Counter)
    other_models: Counter = field(default_factory=Counter)
    before_since: int = 0
    undated: int = 0
    before_last: int = 0

    def summary(self) -> dict:
        times = [r["time"] for r in self.records if r["time"] is not None]
        return {"files": self.files, "lines": self.lines, "in_window": len(self.records),
                "malformed": sum(self.malformed.values()), "malformed_by_reason": dict(self.malformed),
                "other_models": dict(self.other_models), "before_since": self.before_since,
                "undated": self.undated, "before_last": self.before_last,
                "first_time": min(times).isoformat() if times else None,
                "last_time": max(times).isoformat() if times else None}


def _lines(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            yield from fh


def read_trail(source: str | Path | IO[str], *, since: datetime | None = None, last: int | None = None,
               model: str | None = None) -> Trail:
    """The lines of a trail (all its rotated files, oldest first, or an open stream such as stdin),
    kept to one model tag, from ``since`` on, the last ``last`` of them. Malformed lines are
    counted by why, never fatal: a trail is a log, and a log gets torn lines."""
    if hasattr(source, "read"):
        files, lines = ["<stream>"], iter(source)
    else:
        paths = trail_files(source)
        files, lines = [str(p) for p in paths], _lines(paths)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    keep: deque | list = deque(maxlen=last) if last else []
    trail = Trail(records=[], files=files)
    for line in lines:
        if not line.strip():
            continue
        trail.lines += 1
        rec, why = audit_line.parse(line)
        if rec is None:
            trail.malformed[why] += 1
            continue
        if model is not None and rec["model"] != model:
            trail.other_models[str(rec["model"])] += 1
            continue
        if since is not None:
            if rec["time"] is None:
                trail.undated += 1
                continue
            if rec["time"] < since:
                trail.before_since += 1
                continue
        if last and len(keep) == last:
            trail.before_last += 1
        keep.append(rec)
    trail.records = list(keep)
    return trail


# -- the statistics --------------------------------------------------------------------------------

def psi_edges(reference: np.ndarray, bins: int) -> tuple[np.ndarray, str]:
    """Inner bin edges at the reference's quantiles, so every bin holds about the same share of
    the reference. Fixed tenths of [0, 1] would put nearly all of a confident screening model's
    probabilities into the two end bins, and the PSI would see a shift only when answers cross
    the middle; quantile bins see it wherever the reference has mass. Tied probabilities (a
    saturating calibration) merge edges; with fewer than two bins left, equal-width bins on
    [0, 1] are used instead and the figures say so."""
    inner = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    if inner.size >= 1 and np.unique(np.searchsorted(inner, reference, side="right")).size >= 2:
        return inner, "quantile"
    return np.linspace(0.0, 1.0, bins + 1)[1:-1], "fixed"


def shares(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(inner_edges, values, side="right"), minlength=inner_edges.size + 1)
    return counts / max(values.size, 1)


def psi(reference: np.ndarray, recent: np.ndarray, inner_edges: np.ndarray, epsilon: float) -> float:
    """Sum over bins of (recent - reference) * ln(recent / reference), each share floored at
    ``epsilon`` so an empty bin counts as a large (not an infinite) shift."""
    expected = np.maximum(shares(reference, inner_edges), epsilon)
    actual = np.maximum(shares(recent, inner_edges), epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two-sample KS statistic (largest gap between the empirical CDFs) and its asymptotic
    p-value with Stephens' small-sample correction (Numerical Recipes' ``kstwo``), within a few
    hundredths of scipy's for the window sizes ``monitor.min_answers`` allows."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    n, m = a.size, b.size
    if not n or not m:
        return 0.0, 1.0
    pooled = np.concatenate([a, b])
    gap = np.abs(np.searchsorted(a, pooled, side="right") / n - np.searchsorted(b, pooled, side="right") / m)
    d = float(gap.max())
    en = math.sqrt(n * m / (n + m))
    return d, kolmogorov_q((en + 0.12 + 0.11 / en) * d)


def kolmogorov_q(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (its alternating series converges fast above the
    small x where the probability is one anyway)."""
    if x < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * x * x) for k in range(1, 101))
    return float(min(max(2.0 * total, 0.0), 1.0))


def histogram(values: np.ndarray, bins: int) -> list[float]:
    """Shares in equal-width bins on [0, 1]: the plot's bins, readable by a person."""
    counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return [round(float(c) / max(values.size, 1), 6) for c in counts]


# -- the verdict -----------------------------------------------------------------------------------

def compare(trail: Trail, reference: dict, cfg: DriftConfig) -> dict:
    """The verdict: ``{outcome, drifted, reasons, figures, checks}``. The probability checks need
    ``min_answers`` answers; the refusal rate needs as many lines (answers and refusals), so a
    window where nearly every image is refused is reported as drift, not as too few answers."""
    ref = np.asarray(reference["probabilities"], float)
    threshold = reference["threshold"]
    answers = [r for r in trail.records if r["kind"] == "answer"]
    refusals = [r for r in trail.records if r["kind"] == "refusal"]
    errors = sum(r["kind"] == "error" for r in trail.records)
    recent = np.asarray([r["probability"] for r in answers], float)
    judged = len(answers) + len(refusals)
    by_reason = Counter(r["refusal"] for r in refusals)

    figures: dict = {"answers": len(answers), "refusals": len(refusals), "errors": errors,
                     "reference_answers": int(ref.size), "threshold": threshold,
                     "reference_name": reference.get("name")}
    refusal_rate = len(refusals) / judged if judged else None
    figures.update(refusal_rate=_round(refusal_rate), refusal_rate_reference=_round(reference["refusal_rate"]),
                   refusals_by_reason=dict(by_reason.most_common()))
    figures["positive_rate_reference"] = _round(float(np.mean(ref >= threshold)))
    figures["mean_probability_reference"] = _round(float(ref.mean()))
    labelled = Counter(r["label"] for r in answers)
    figures["labels"] = {str(k): v for k, v in labelled.items()}
    # the subtype given with the PNEUMONIA answers (none: a model without one, or a cxr-audit/1 line)
    figures["subtypes"] = dict(Counter(str(r.get("subtype") or "none") for r in answers if r["label"] == POSITIVE_LABEL))
    figures["thresholds_in_trail"] = sorted({r["threshold"] for r in answers if r["threshold"] is not None})
    figures["models_in_window"] = dict(Counter(str(r["model"]) for r in trail.records))
    figures["routes"] = dict(Counter(str(r["route"]) for r in trail.records))
    figures["window"] = trail.summary()

    checks = []
    notes = []
    if reference["probabilities"] and ref.size < cfg.min_answers:
        notes.append(f"the reference has {ref.size} validation probabilities, fewer than monitor.min_answers "
                     f"({cfg.min_answers}): its figures are noisy")
    other = [t for t in figures["thresholds_in_trail"] if abs(t - threshold) > 1e-6]
    if other:
        notes.append(f"the trail answered at threshold(s) {other}, the card says {threshold}: "
                     "the trail is from another model? (--model TAG keeps one)")
    if trail.malformed:
        notes.append(f"{sum(trail.malformed.values())} malformed line(s) skipped: "
                     + ", ".join(f"{k} {v}" for k, v in trail.malformed.most_common()))

    enough = len(answers) >= cfg.min_answers
    if enough:
        inner, binning = psi_edges(ref, cfg.psi_bins)
        value = psi(ref, recent, inner, cfg.psi_epsilon)
        d, p = ks_2samp(ref, recent)
        positive = float(np.mean(recent >= threshold))
        figures.update(psi=_round(value), psi_binning=binning, psi_bins=int(inner.size + 1),
                       ks_statistic=_round(d), ks_pvalue=float(f"{p:.4g}"),
                       positive_rate=_round(positive), mean_probability=_round(float(recent.mean())))
        checks.append(_check("PSI of the probabilities", value, value > cfg.psi_max,
                             f"PSI {value:.3f} > monitor.psi_max {cfg.psi_max}"))
        ks_drift = p < cfg.ks_pvalue_min and d > cfg.ks_statistic_max
        checks.append(_check("KS test of the probabilities", d, ks_drift,
                             f"KS statistic {d:.3f} > monitor.ks_statistic_max {cfg.ks_statistic_max} "
                             f"with p-value {p:.2g} < monitor.ks_pvalue_min {cfg.ks_pvalue_min}"))
        change = positive - figures["positive_rate_reference"]
        checks.append(_check("positive rate", positive, abs(change) > cfg.positive_rate_max_change,
                             f"{POSITIVE_LABEL} rate {positive:.3f} vs reference "
                             f"{figures['positive_rate_reference']:.3f} ({change:+.3f}, more than "
                             f"monitor.positive_rate_max_change {cfg.positive_rate_max_change}) "
                             f"at threshold {threshold}"))
    if judged >= cfg.min_answers:
        increase = refusal_rate - reference["refusal_rate"]
        top = ", ".join(f"{k} {v}" for k, v in by_reason.most_common(3))
        checks.append(_check("refusal rate", refusal_rate, increase > cfg.refusal_rate_max_increase,
                             f"refusal rate {refusal_rate:.3f} vs reference {reference['refusal_rate']:.3f} "
                             f"({increase:+.3f} > monitor.refusal_rate_max_increase "
                             f"{cfg.refusal_rate_max_increase}): {top}"))

    figures["histogram"] = {"bins": cfg.psi_bins, "reference": histogram(ref, cfg.psi_bins),
                            "recent": histogram(recent, cfg.psi_bins)}
    failed = [c for c in checks if c["drifted"]]
    if failed:
        outcome = "drifted"
        reasons = [c["reason"] for c in failed]
    elif not enough:
        outcome = "insufficient"
        reasons = [f"not enough answers: {len(answers)} answered image(s) in the window, monitor.min_answers is "
                   f"{cfg.min_answers}; the probabilities were not judged"
                   + ("" if judged >= cfg.min_answers else ", nor the refusal rate")]
    else:
        outcome = "stable"
        reasons = []
    return {"outcome": outcome, "drifted": outcome == "drifted", "reasons": reasons, "notes": notes,
            "figures": figures, "checks": checks, "config": asdict(cfg)}


def _check(name: str, value, drifted: bool, reason: str) -> dict:
    return {"check": name, "value": _round(value), "drifted": bool(drifted), "reason": reason}


def _round(value):
    return None if value is None else round(float(value), 6)


def summary_line(verdict: dict) -> str:
    """One line for a log, a state message or a pager."""
    f = verdict["figures"]
    if verdict["outcome"] == "drifted":
        return "drift: " + "; ".join(verdict["reasons"])
    if verdict["outcome"] == "insufficient":
        return verdict["reasons"][0]
    return (f"no drift: {f['answers']} answers, PSI {f['psi']:.3f}, KS {f['ks_statistic']:.3f} "
            f"(p {f['ks_pvalue']:.2g}), refusal rate {f['refusal_rate']:.3f}")


def figures_table(verdict: dict) -> list[dict]:
    """The figures as table rows: recent vs reference and the limit that decides."""
    f, cfg = verdict["figures"], verdict["config"]
    drifted = {c["check"]: c["drifted"] for c in verdict["checks"]}

    def row(name, recent, ref, limit, check=None):
        return {"figure": name, "recent": recent, "reference": ref, "limit": limit,
                "drifted": drifted.get(check) if check else None}

    return [
        row("answers", f["answers"], f["reference_answers"], f"min_answers {cfg['min_answers']}"),
        row("refusals", f["refusals"], None, None),
        row("PSI", f.get("psi"), 0.0, f"psi_max {cfg['psi_max']}", "PSI of the probabilities"),
        row("KS statistic", f.get("ks_statistic"), 0.0, f"ks_statistic_max {cfg['ks_statistic_max']}",
            "KS test of the probabilities"),
        row("KS p-value", f.get("ks_pvalue"), 1.0, f"ks_pvalue_min {cfg['ks_pvalue_min']}",
            "KS test of the probabilities"),
        row("refusal rate", f["refusal_rate"], f["refusal_rate_reference"],
            f"+{cfg['refusal_rate_max_increase']}", "refusal rate"),
        row(f"{POSITIVE_LABEL} rate", f.get("positive_rate"), f["positive_rate_reference"],
            f"+/-{cfg['positive_rate_max_change']}", "positive rate"),
        row("mean probability", f.get("mean_probability"), f["mean_probability_reference"], None),
        row("malformed lines", f["window"]["malformed"], None, None),
    ]
