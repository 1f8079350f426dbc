"""Drift off the audit trail: PSI and KS against the card's validation probabilities, the refusal
rate by reason, the positive rate; reading rotated trails that carry torn lines; too few answers
as an outcome of its own. Trails are generated from seeded RNGs, as the service would write them."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from cxr import UserError, params
from cxr.ops.drift import (NO_REFERENCE, DriftConfig, compare, figures_table, ks_2samp, psi, psi_edges, read_trail,
                       reference_from_card, summary_line, trail_files)
from cxr.imaging.preprocess import ImagingConfig
from cxr.records.model_card import ModelCard

REPO = Path(__file__).resolve().parents[2]
CFG = DriftConfig(window=5000, min_answers=200, psi_bins=10, psi_epsilon=1e-4, psi_max=0.2, ks_pvalue_min=0.01,
                  ks_statistic_max=0.15, refusal_rate_max_increase=0.05, positive_rate_max_change=0.15)
START = datetime(2026, 12, 1, 19, 30, tzinfo=timezone.utc)
TAG = "cxr-pneumonia:abc123"
THRESHOLD = 0.3931


def probabilities(rng: np.random.Generator, n: int, positive_share: float = 0.6, shift: float = 0.0) -> np.ndarray:
    """A screening model's probabilities: a mixture of confident negatives and positives; ``shift``
    pulls them toward the middle, as an unfamiliar acquisition does."""
    pos = rng.random(n) < positive_share
    p = np.where(pos, rng.beta(8, 2, n), rng.beta(2, 8, n))
    return np.clip(p + shift * (0.5 - p), 0.0, 1.0)


def card(seed: int = 0, n: int = 400, refusal_rate: float | None = 0.01, **monitoring) -> ModelCard:
    """A model card whose drift reference is ``n`` seeded validation probabilities."""
    if not monitoring:
        monitoring = {"val_probabilities": [round(float(p), 4) for p in probabilities(np.random.default_rng(seed), n)]}
        if refusal_rate is not None:
            monitoring["val_refusal_rate"] = refusal_rate
    return ModelCard(name="cxr-pneumonia-smallcnn", decision_threshold=THRESHOLD, imaging=ImagingConfig(),
                     synthetic=True, model={}, data={}, monitoring=monitoring or None)


def audit_lines(seed: int, n: int, *, shift: float = 0.0, positive_share: float = 0.6, refusal_share: float = 0.01,
                reason: str = "not_a_chest_xray", model: str = TAG, start: datetime = START,
                batch_every: int = 7) -> list[str]:
    """``n`` lines of ``cxr-audit/1``: answers, refusals, and every so often a batch of three."""
    rng = np.random.default_rng(seed)
    probs = probabilities(rng, n, positive_share, shift)
    lines, i = [], 0
    while i < n:
        request_id = f"{seed:04x}{i:08x}"
        items = 3 if batch_every and i % batch_every == 0 else 1
        for item in range(min(items, n - i)):
            refused = rng.random() < refusal_share
            p = None if refused else round(float(probs[i]), 4)
            lines.append(json.dumps({
                "schema": "cxr-audit/1", "time": (start + timedelta(seconds=i)).isoformat(timespec="milliseconds"),
                "request_id": request_id, "route": "/predict_batch" if items > 1 else "/predict",
                "item": item if items > 1 else None, "model": model, "input_sha256": f"{i:064x}",
                "bytes": 12345, "format": "jpeg",
                "label": None if refused else ("PNEUMONIA" if p >= THRESHOLD else "NORMAL"),
                "probability": p, "threshold": THRESHOLD, "refusal": reason if refused else None,
                "status": 422 if refused else 200, "latency_ms": 12.3}))
            i += 1
    return lines


def write_trail(path: Path, lines: list[str], rotate_every: int | None = None) -> Path:
    """As RotatingFileHandler leaves it: the newest lines in ``path``, older ones in ``path.1``, ...;
    returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = [lines[i:i + rotate_every] for i in range(0, len(lines), rotate_every)] if rotate_every else [lines]
    for age, chunk in enumerate(reversed(chunks)):
        target = path if age == 0 else path.with_name(f"{path.name}.{age}")
        target.write_text("".join(line + "\n" for line in chunk))
    return path


def verdict_of(tmp_path: Path, lines: list[str], cfg: DriftConfig = CFG, **kw) -> dict:
    trail = read_trail(write_trail(tmp_path / "audit.jsonl", lines), **kw)
    return compare(trail, reference_from_card(card()), cfg)


def test_the_params_section_loads():
    cfg = DriftConfig.from_params(params.section("monitor", REPO / "params.yaml"))
    assert cfg.psi_max > 0 and cfg.min_answers >= 1


def test_a_bad_knob_is_a_user_error_naming_it():
    bad = {**CFG.__dict__, "ks_pvalue_min": 2.0}
    with pytest.raises(UserError, match="monitor.ks_pvalue_min"):
        DriftConfig.from_params(bad)
    with pytest.raises(UserError, match="monitor.psi_max"):
        DriftConfig.from_params({k: v for k, v in CFG.__dict__.items() if k != "psi_max"})


def test_no_shift_is_not_drift(tmp_path):
    verdict = verdict_of(tmp_path, audit_lines(1, 800))
    f = verdict["figures"]
    assert verdict["outcome"] == "stable" and not verdict["drifted"], verdict["reasons"]
    assert f["psi"] < CFG.psi_max and f["ks_pvalue"] > CFG.ks_pvalue_min
    assert abs(f["positive_rate"] - f["positive_rate_reference"]) < CFG.positive_rate_max_change
    assert f["psi_binning"] == "quantile" and f["psi_bins"] == CFG.psi_bins
    assert summary_line(verdict).startswith("no drift: ")


def test_shifted_probabilities_are_drift_by_psi_and_ks(tmp_path):
    verdict = verdict_of(tmp_path, audit_lines(2, 800, shift=0.6))
    f = verdict["figures"]
    assert verdict["outcome"] == "drifted" and verdict["drifted"]
    assert f["psi"] > CFG.psi_max and f["ks_statistic"] > CFG.ks_statistic_max and f["ks_pvalue"] < 1e-6
    assert any(r.startswith("PSI ") for r in verdict["reasons"])
    assert any(r.startswith("KS statistic") for r in verdict["reasons"])
    rows = {r["figure"]: r for r in figures_table(verdict)}
    assert rows["PSI"]["drifted"] is True and rows["refusal rate"]["drifted"] is False


def test_more_positives_is_drift_by_positive_rate(tmp_path):
    verdict = verdict_of(tmp_path, audit_lines(3, 800, positive_share=0.95))
    assert verdict["drifted"]
    assert any(r.startswith("PNEUMONIA rate") for r in verdict["reasons"]), verdict["reasons"]


def test_a_refusal_surge_is_drift_by_refusal_reason(tmp_path):
    verdict = verdict_of(tmp_path, audit_lines(4, 800, refusal_share=0.3, reason="not_a_chest_xray"))
    f = verdict["figures"]
    assert verdict["drifted"] and f["refusal_rate"] > 0.2 and f["refusal_rate_reference"] == 0.01
    assert list(f["refusals_by_reason"]) == ["not_a_chest_xray"]
    assert [r for r in verdict["reasons"] if r.startswith("refusal rate")][0].endswith("not_a_chest_xray "
                                                                                        f"{f['refusals']}")
    assert f["psi"] < CFG.psi_max  # the answered images themselves did not move


def test_nearly_everything_refused_is_drift_not_too_few_answers(tmp_path):
    verdict = verdict_of(tmp_path, audit_lines(5, 400, refusal_share=0.9, reason="corrupt"))
    assert verdict["figures"]["answers"] < CFG.min_answers
    assert verdict["outcome"] == "drifted" and "corrupt" in verdict["reasons"][0]


def test_too_few_answers_is_its_own_outcome(tmp_path):
    verdict = verdict_of(tmp_path, audit_lines(6, 50, shift=0.8))
    assert verdict["outcome"] == "insufficient" and not verdict["drifted"]
    assert verdict["reasons"][0].startswith("not enough answers: ") and "nor the refusal rate" in verdict["reasons"][0]
    assert "psi" not in verdict["figures"]
    assert summary_line(verdict) == verdict["reasons"][0]


def test_malformed_lines_are_counted_never_fatal(tmp_path):
    lines = audit_lines(7, 300)
    torn = lines[10][: len(lines[10]) // 2]
    bad = [torn, "not json at all", "[1, 2]", json.dumps({"schema": "other/9"}),
           json.dumps({"schema": "cxr-audit/1", "probability": 7.0}),
           json.dumps({"schema": "cxr-audit/1", "time": "yesterday", "probability": 0.5}),
           "\x00\xff garbage", ""]
    mixed = lines[:100] + bad + lines[100:]
    path = write_trail(tmp_path / "audit.jsonl", mixed)
    with open(path, "ab") as fh:
        fh.write(b"\xff\xfe\x00 invalid utf-8\n")
    trail = read_trail(path)
    assert len(trail.records) == 300
    assert trail.summary()["malformed"] == 8
    assert trail.malformed["not JSON"] == 5 and trail.malformed["other schema"] == 1
    assert trail.malformed["bad probability"] == 1 and trail.malformed["bad time"] == 1
    verdict = compare(trail, reference_from_card(card()), CFG)
    assert any("malformed" in n for n in verdict["notes"])


def test_a_logger_prefix_before_the_object_is_read(tmp_path):
    lines = [f"2026-12-01 19:30:00 INFO cxr.audit: {line}" for line in audit_lines(8, 20)]
    trail = read_trail(io.StringIO("\n".join(lines) + "\n"))
    assert len(trail.records) == 20 and not trail.malformed


def test_every_rotated_file_is_read_oldest_first(tmp_path):
    lines = audit_lines(9, 1000)
    path = write_trail(tmp_path / "audit.jsonl", lines, rotate_every=300)
    assert [p.name for p in trail_files(path)] == ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    (tmp_path / "audit.jsonl.bak").write_text("ignored\n")
    trail = read_trail(path)
    assert len(trail.records) == 1000 and trail.summary()["lines"] == 1000
    times = [r["time"] for r in trail.records]
    assert times == sorted(times)
    last = read_trail(path, last=250)
    assert len(last.records) == 250 and last.records[-1]["time"] == times[-1] and last.before_last == 750


def test_the_window_by_time_and_by_model(tmp_path):
    old = audit_lines(10, 300, shift=0.8, start=START - timedelta(days=2))
    other = audit_lines(11, 100, model="cxr-pneumonia:other")
    new = audit_lines(12, 400)
    path = write_trail(tmp_path / "audit.jsonl", old + other + new)
    trail = read_trail(path, since=START - timedelta(hours=1), model=TAG)
    assert len(trail.records) == 400 and trail.before_since == 300
    assert trail.other_models == {"cxr-pneumonia:other": 100}
    assert compare(trail, reference_from_card(card()), CFG)["outcome"] == "stable"
    naive = read_trail(path, since=(START - timedelta(hours=1)).replace(tzinfo=None), model=TAG)
    assert len(naive.records) == 400  # a time without a zone is UTC
    assert compare(read_trail(path), reference_from_card(card()), CFG)["drifted"]


def test_a_missing_trail_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_trail(tmp_path / "audit.jsonl")


def test_the_reference_comes_from_the_card():
    ref = reference_from_card(card(refusal_rate=None))
    assert ref["refusal_rate"] == 0.0 and ref["threshold"] == THRESHOLD and len(ref["probabilities"]) == 400
    for broken in (dataclasses.replace(card(), monitoring=None), card(unrelated=1), card(val_probabilities=[])):
        with pytest.raises(UserError, match=NO_REFERENCE):
            reference_from_card(broken)
    with pytest.raises(UserError, match="val_probabilities"):
        reference_from_card(card(val_probabilities=[0.2, 1.5]))
    with pytest.raises(UserError, match="decision_threshold"):
        reference_from_card(dataclasses.replace(card(), decision_threshold=1.5))


def test_psi_of_a_sample_with_itself_is_zero_and_an_empty_bin_is_finite():
    ref = probabilities(np.random.default_rng(13), 500)
    inner, binning = psi_edges(ref, 10)
    assert binning == "quantile" and psi(ref, ref, inner, 1e-4) == pytest.approx(0.0, abs=1e-12)
    only_high = np.full(300, 0.99)
    assert 1.0 < psi(ref, only_high, inner, 1e-4) < 50.0


def test_tied_reference_probabilities_fall_back_to_fixed_bins():
    inner, binning = psi_edges(np.full(100, 0.999), 10)
    assert binning == "fixed" and inner.size == 9


def test_ks_agrees_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(14)
    for shift, n in ((0.0, 300), (0.1, 300), (0.3, 1000)):
        a, b = probabilities(rng, 400), probabilities(rng, n, shift=shift)
        d, p = ks_2samp(a, b)
        ref = scipy_stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, abs=0.02)
