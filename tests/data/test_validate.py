"""The validate stage: per-image facts and the Great Expectations suites, on tiny real layouts.

Most cases call ``validate_dataset`` in-process (GX is imported once); one runs the stage
CLI in a subprocess to check exit codes, stderr and where the files land.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr import UserError
from cxr.data.manifest import COLUMNS, read_manifest, write_manifest
from cxr.io import write_csv
from cxr.data.validation import (FACT_COLUMNS, FILE_FACT_COLUMNS, ValidateConfig, ValidationFailed, facts_for,
                            validate_dataset)
from tests.helpers import add_image, make_raw, manifest_row, noise_jpeg

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data" / "chest_xray_224"
CFG = {"min_side": 32, "max_side": 10000, "min_bytes": 500, "max_bytes": 20_000_000,
       "allowed_modes": ["L", "RGB", "RGBA", "LA", "P", "I;16", "I"], "min_per_class": 10,
       "ratio_bounds": [0.2, 5.0], "workers": 2}


def validate(tmp_path: Path, raw: Path, docs: bool = False, **overrides) -> dict:
    """validate_dataset into tmp_path/reports; Data Docs (~1 s of rendering) only if asked."""
    out = tmp_path / "reports" / "validation"
    return validate_dataset(raw, {**CFG, **overrides}, out, build_docs=docs,
                            summary_path=tmp_path / "reports" / "validation_summary.json")


def fails(tmp_path: Path, raw: Path, check: str, *needles: str, docs: bool = False,
          **overrides) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        validate(tmp_path, raw, docs, **overrides)
    msg = str(info.value)
    assert check in msg, msg
    for needle in needles:
        assert needle in msg, msg
    # The reports are still written, and none of them looks like a pass.
    result = json.loads((tmp_path / "reports" / "validation" / "result.json").read_text())
    summary = json.loads((tmp_path / "reports" / "validation_summary.json").read_text())
    assert result["success"] is False and summary["success"] is False
    assert check in summary["failed_expectations"]
    entry = next(e for e in result["expectations"] if e["name"] == check)
    assert entry["critical"] and not entry["success"] and entry["offending"]
    if docs:
        index = tmp_path / "reports" / "validation" / "data_docs" / "index.html"
        assert "images" in index.read_text()
    return info.value


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    make_raw(raw)
    return raw


def replace_rows(raw: Path, rows: list[dict]) -> None:
    """Write a manifest as-is (``write_manifest`` refuses unknown labels)."""
    write_csv(raw / "manifest.csv", rows, COLUMNS)


# --------------------------------------------------------------------------- passing


def test_clean_set_passes_and_writes_reports(tmp_path, raw):
    summary = validate(tmp_path, raw, docs=True)
    out = tmp_path / "reports" / "validation"
    assert summary["success"] is True
    assert summary["counts"]["train"] == {"NORMAL": 12, "PNEUMONIA": 12}
    assert summary["failed_expectations"] == [] and summary["warnings"] == []
    assert summary["duplicates"]["extra_files"] == 0 and summary["decode_failures"] == 0
    result = json.loads((out / "result.json").read_text())
    assert result["success"] is True and result["summary"] == summary
    names = {e["name"] for e in result["expectations"]}
    assert {"files_decode", "sha256_matches_manifest", "label_set", "no_label_conflict",
            "width_in_bounds", "bytes_in_bounds", "mode_allowed", "min_images_NORMAL",
            "class_ratio", "duplicates_same_label", "patient_id_from_name"} <= names
    assert set(result["great_expectations"]) == {"images", "dataset"}
    assert result["great_expectations"]["images"]["statistics"]["evaluated_expectations"] > 10
    index = (out / "data_docs" / "index.html").read_text()
    assert "<html" in index.lower() and "images" in index and "dataset" in index
    assert list((out / "data_docs" / "validations").rglob("*.html"))  # result pages, not just suites
    facts = (out / "facts.csv").read_text().splitlines()
    assert facts[0].split(",") == FACT_COLUMNS and len(facts) == 25
    assert {p.name for p in out.iterdir()} == {"result.json", "facts.csv", "data_docs"}
    assert json.loads((tmp_path / "reports" / "validation_summary.json").read_text()) == summary


def test_warnings_do_not_fail(tmp_path, raw):
    rows = read_manifest(raw)
    # a byte-identical copy under the same label, and a name that is not Kermany-style
    copy = add_image(raw, "PNEUMONIA", "person1011_bacteria_999.jpeg",
                     (raw / rows[-1]["path"]).read_bytes())
    odd = add_image(raw, "NORMAL", "scan_17.jpeg", noise_jpeg(999))
    rows += [manifest_row(raw, copy, "PNEUMONIA"), manifest_row(raw, odd, "NORMAL")]
    write_manifest(raw, rows)
    summary = validate(tmp_path, raw)
    assert summary["success"] is True
    assert set(summary["warnings"]) == {"duplicates_same_label", "patient_id_from_name"}
    assert summary["duplicates"] == {"extra_files": 1, "groups": 1, "groups_across_patients": 0,
                                     "groups_across_splits": 0}
    assert summary["patient_id_fallbacks"] == 1
    result = json.loads((tmp_path / "reports" / "validation" / "result.json").read_text())
    dup = next(e for e in result["expectations"] if e["name"] == "duplicates_same_label")
    assert not dup["critical"] and dup["offending_count"] == 1
    assert "person1011_bacteria_999.jpeg" in dup["offending"][0]


def test_facts_per_shard_match_the_whole(tmp_path, raw):
    paths = [r["path"] for r in read_manifest(raw)]
    whole = facts_for(paths, raw, workers=2)
    import pandas as pd

    shards = pd.concat([facts_for(paths[:7], raw, workers=1), facts_for(paths[7:], raw)],
                       ignore_index=True)
    assert list(whole.columns) == FILE_FACT_COLUMNS
    pd.testing.assert_frame_equal(whole, shards)
    assert whole["decodes"].all() and (whole["width"] == 64).all() and (whole["mode"] == "L").all()
    outside = facts_for(["../escape.jpeg", "images/train/NORMAL/nope.jpeg"], raw, workers=1)
    assert list(outside["error"]) == ["path leads outside the raw data folder", "file not found"]
    assert not outside["decodes"].any()
    # the precomputed facts are accepted as they are
    assert validate_dataset(raw, CFG, tmp_path / "out", file_facts=shards)["success"] is True


# --------------------------------------------------------------------------- critical failures


def test_corrupt_file(tmp_path, raw):
    rel = read_manifest(raw)[3]["path"]
    (raw / rel).write_bytes(os.urandom(4000))
    rows = [manifest_row(raw, r["path"], r["label"]) for r in read_manifest(raw)]
    write_manifest(raw, rows)
    err = fails(tmp_path, raw, "files_decode", rel, "not an image", docs=True)
    assert err.summary["decode_failures"] == 1


def test_truncated_jpeg(tmp_path, raw):
    rel = read_manifest(raw)[20]["path"]
    data = (raw / rel).read_bytes()
    (raw / rel).write_bytes(data[: len(data) // 2])
    write_manifest(raw, [manifest_row(raw, r["path"], r["label"]) for r in read_manifest(raw)])
    fails(tmp_path, raw, "files_decode", rel, "truncated")


def test_missing_file(tmp_path, raw):
    rel = read_manifest(raw)[0]["path"]
    (raw / rel).unlink()
    fails(tmp_path, raw, "files_decode", rel, "file not found")


def test_decompression_bomb(tmp_path, raw):
    rel = add_image(raw, "NORMAL", "IM-0001-0001.jpeg", noise_jpeg(5, 200))
    write_manifest(raw, read_manifest(raw) + [manifest_row(raw, rel, "NORMAL")])
    fails(tmp_path, raw, "files_decode", rel, "decompression bomb", max_pixels=100 * 100)


def test_what_the_preprocessing_refuses_does_not_validate(tmp_path, raw):
    # A GIF decodes in Pillow, but the split stage's preprocessing refuses it: so does validation
    # (the decode budget is checked the same way; tests/code/test_imaging.py covers it).
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (64, 64), 90).save(buf, "GIF")
    rel = add_image(raw, "NORMAL", "IM-0002-0001.jpeg", buf.getvalue())
    write_manifest(raw, read_manifest(raw) + [manifest_row(raw, rel, "NORMAL")])
    fails(tmp_path, raw, "files_decode", rel, "refused by the preprocessing: unsupported image format GIF")


def test_same_bytes_under_both_labels(tmp_path, raw):
    rows = read_manifest(raw)
    normal = rows[0]["path"]
    twin = add_image(raw, "PNEUMONIA", "person9_virus_9.jpeg", (raw / normal).read_bytes())
    write_manifest(raw, rows + [manifest_row(raw, twin, "PNEUMONIA")])
    err = fails(tmp_path, raw, "no_label_conflict", normal, twin)
    assert err.summary["label_conflicts"] == 2


def test_class_below_min_per_class(tmp_path):
    raw = tmp_path / "raw"
    make_raw(raw, n_normal=12, n_pneumonia=3)
    fails(tmp_path, raw, "min_images_PNEUMONIA", "class PNEUMONIA: 3 images")


def test_empty_class(tmp_path):
    raw = tmp_path / "raw"
    make_raw(raw, n_normal=12, n_pneumonia=0)
    err = fails(tmp_path, raw, "min_images_PNEUMONIA", "class PNEUMONIA: 0 images")
    assert {"label_set", "class_ratio"} <= set(err.summary["failed_expectations"])
    assert "missing values ['PNEUMONIA']" in str(err)


def test_class_ratio_out_of_bounds(tmp_path, raw):
    err = fails(tmp_path, raw, "class_ratio", "ratio 1.000", ratio_bounds=[2.0, 5.0])
    assert err.summary["failed_expectations"] == ["class_ratio"]


def test_wrong_label_value(tmp_path, raw):
    rows = read_manifest(raw)
    rows[5]["label"] = "normal"
    replace_rows(raw, rows)
    fails(tmp_path, raw, "label_values", rows[5]["path"], "'normal'")


def test_image_too_small(tmp_path, raw):
    rel = add_image(raw, "NORMAL", "IM-0002-0001.jpeg", noise_jpeg(3, 8, quality=100))
    write_manifest(raw, read_manifest(raw) + [manifest_row(raw, rel, "NORMAL")])
    err = fails(tmp_path, raw, "width_in_bounds", rel, "(8x8)")
    assert "height_in_bounds" in err.summary["failed_expectations"]


def test_path_listed_twice(tmp_path, raw):
    rows = read_manifest(raw)
    replace_rows(raw, rows + [dict(rows[4])])
    fails(tmp_path, raw, "paths_unique", rows[4]["path"])


def test_sha256_mismatch(tmp_path, raw):
    rows = read_manifest(raw)
    rows[7]["sha256"] = "0" * 64
    write_manifest(raw, rows)
    err = fails(tmp_path, raw, "sha256_matches_manifest", rows[7]["path"], "manifest 000000000000")
    assert err.summary["failed_expectations"] == ["sha256_matches_manifest"]


def test_many_offenders_are_capped(tmp_path, raw):
    rows = read_manifest(raw)
    for r in rows:
        r["sha256"] = "f" * 64
    write_manifest(raw, rows)
    err = fails(tmp_path, raw, "sha256_matches_manifest", "+14 more")
    assert sum(r["path"] in str(err) for r in rows) == 10


def test_a_failure_replaces_an_earlier_pass(tmp_path, raw):
    validate(tmp_path, raw)
    docs = tmp_path / "reports" / "validation" / "data_docs"
    docs.mkdir()
    (docs / "index.html").write_text("an earlier run's site")
    (raw / read_manifest(raw)[0]["path"]).write_bytes(b"\xff\xd8broken" * 200)
    with pytest.raises(ValidationFailed):
        validate(tmp_path, raw)
    assert "earlier" not in (docs / "index.html").read_text()
    assert json.loads((tmp_path / "reports" / "validation_summary.json").read_text())["success"] is False
    assert json.loads((tmp_path / "reports" / "validation" / "result.json").read_text())["success"] is False


def test_params_are_checked():
    with pytest.raises(UserError, match="validate.min_side"):
        ValidateConfig.from_params({k: v for k, v in CFG.items() if k != "min_side"})
    with pytest.raises(UserError, match="ratio_bounds"):
        ValidateConfig.from_params({**CFG, "ratio_bounds": [5, 1]})


# --------------------------------------------------------------------------- the stage CLI


def run_stage(cwd: Path, cfg: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump({"validate": cfg}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXR_LOG_LEVEL": "INFO"}
    env.pop("CXR_PARAMS", None)
    paths = ["--raw", "data/raw", "--reports", "reports/validation", "--summary", "reports/validation_summary.json"]
    return subprocess.run([sys.executable, "-m", "stages.validate", *paths], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_stage_cli_fails_with_exit_2_and_names_the_file(tmp_path):
    """One subprocess (GX import ~5 s): the stage's exit code, stderr and output places."""
    raw = tmp_path / "data" / "raw"
    rows = make_raw(raw)
    bad = rows[2]["path"]
    data = (raw / bad).read_bytes()
    (raw / bad).write_bytes(data[: len(data) // 2])
    write_manifest(raw, [manifest_row(raw, r["path"], r["label"]) for r in rows])
    proc = run_stage(tmp_path, CFG)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error [validate]" in proc.stderr and "files_decode" in proc.stderr and bad in proc.stderr
    assert "great_expectations" not in proc.stderr, "GX's INFO chatter is silenced"
    summary = json.loads((tmp_path / "reports" / "validation_summary.json").read_text())
    assert summary["success"] is False and summary["failed_expectations"] == ["files_decode"]
    out = tmp_path / "reports" / "validation"
    assert {p.name for p in out.iterdir()} == {"result.json", "facts.csv", "data_docs"}
    assert (out / "data_docs" / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml", "reports"]


# --------------------------------------------------------------------------- real data


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/chest_xray_224 is absent")
def test_real_subset_passes(tmp_path):
    raw = tmp_path / "raw"
    rows = []
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((SHARED / "train" / label).glob("*.jpeg"))[:30 if label == "NORMAL" else 60]
        for f in files:
            rel = add_image(raw, label, f.name, f.read_bytes())
            rows.append(manifest_row(raw, rel, label))
    write_manifest(raw, rows)
    summary = validate(tmp_path, raw)
    assert summary["success"] and summary["counts"]["total"] == {"NORMAL": 30, "PNEUMONIA": 60}
    assert summary["patient_id_fallbacks"] == 0 and summary["decode_failures"] == 0
    shutil.rmtree(raw)
