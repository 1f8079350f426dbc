"""`python -m stages.download` end to end: data/raw, manifest, source.json, atomicity, errors, --pin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cxr import SYNTHETIC_WARNING, UserError
from cxr.data.manifest import parse_name, read_manifest
from cxr.data.sources import dataset_hash
from cxr.io import sha256_file

REPO = Path(__file__).resolve().parents[2]
SMALL = {"seed": 3, "size": 64, "images_per_patient": [1, 2],
         "patients": {"NORMAL": 3, "PNEUMONIA": 4}, "test_patients": {"NORMAL": 0, "PNEUMONIA": 0}}


def write_params(root: Path, **download) -> None:
    cfg = {"source": "synthetic", "sha256": None, "cache_dir": "data/downloads",
           "kaggle_dataset": "paultimothymooney/chest-xray-pneumonia", "pinned_dir": "data/pinned",
           "synthetic": SMALL, **download}
    (root / "params.yaml").write_text(yaml.safe_dump({"download": cfg}))


def run_stage(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    args = args if "--pin" in args else ("--out", "data/raw", *args)  # what dvc.yaml passes
    return subprocess.run([sys.executable, "-m", "stages.download", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def make_layout(root: Path, splits=("train", "val", "test")) -> Path:
    for split in splits:
        for label, name in (("NORMAL", "IM-0007-000{}.jpeg"), ("PNEUMONIA", "person7_bacteria_{}.jpeg")):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                buf = io.BytesIO()
                Image.new("L", (16, 16), 40 * i).save(buf, "JPEG")
                (root / split / label / name.format(i)).write_bytes(buf.getvalue())
    return root


def snapshot(raw: Path) -> dict[str, str]:
    return {p.relative_to(raw).as_posix(): sha256_file(p) for p in sorted(raw.rglob("*")) if p.is_file()}


def test_synthetic_end_to_end(tmp_path):
    write_params(tmp_path)
    proc = run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert SYNTHETIC_WARNING in proc.stderr and "train/NORMAL" in proc.stderr
    raw = tmp_path / "data" / "raw"
    rows = read_manifest(raw)
    on_disk = {p.relative_to(raw).as_posix() for p in (raw / "images").rglob("*") if p.is_file()}
    assert {r["path"] for r in rows} == on_disk and len(rows) >= 7
    for r in rows:
        f = raw / r["path"]
        assert r["path"] == f"images/{r['source_split']}/{r['label']}/{f.name}"
        assert r["sha256"] == sha256_file(f) and r["bytes"] == f.stat().st_size
        assert r["patient_id"] == parse_name(f.name).patient_id
        assert (r["subtype"] != "") == (r["label"] == "PNEUMONIA")
    info = yaml.safe_load((raw / "source.json").read_text())
    assert info["synthetic"] is True and info["kind"] == "synthetic" and info["source"] == "synthetic"
    assert info["dataset_hash"] == dataset_hash(rows) and info["n_images"] == len(rows)
    assert sum(info["counts"]["train"].values()) == len(rows)
    assert not any(p.name.startswith(".raw") for p in (tmp_path / "data").iterdir())


def test_failures_leave_the_previous_data_raw_intact(tmp_path, monkeypatch):
    write_params(tmp_path)
    assert run_stage(tmp_path).returncode == 0
    raw = tmp_path / "data" / "raw"
    before = snapshot(raw)

    write_params(tmp_path, source="no/such/folder")
    proc = run_stage(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error [download]: ")
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr

    bad = make_layout(tmp_path / "bad", splits=("train",))
    (bad / "train" / "COVID").mkdir()
    write_params(tmp_path, source="bad")
    proc = run_stage(tmp_path)
    assert proc.returncode == 2 and "unknown label folder 'COVID'" in proc.stderr

    # a crash half-way through writing data/raw (in process, to inject it)
    from stages import download

    calls, real_copy = [], download.copy_layout

    def copy_then_fail(layout, root, sub="images"):
        calls.append(root)
        real_copy(layout, root, sub)
        raise OSError("disk full")

    monkeypatch.setattr(download, "copy_layout", copy_then_fail)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        download.materialise("synthetic", {"cache_dir": "c", "synthetic": {**SMALL, "seed": 99}}, Path("data/raw"))
    assert calls and not calls[0].exists()  # the half-built copy is gone
    assert snapshot(raw) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


def test_folder_with_val_and_test_and_a_skipped_file(tmp_path):
    src = make_layout(tmp_path / "wrap" / "chest_xray")
    (src / "val" / "NORMAL" / "notes.txt").write_text("not an image")
    write_params(tmp_path, source="wrap")
    proc = run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    raw = tmp_path / "data" / "raw"
    rows = read_manifest(raw)
    assert {r["source_split"] for r in rows} == {"train", "val", "test"} and len(rows) == 12
    info = yaml.safe_load((raw / "source.json").read_text())
    assert info["kind"] == "folder" and info["synthetic"] is False and info["skipped_files"] == 1
    assert info["counts"]["val"] == {"NORMAL": 2, "PNEUMONIA": 2}
    assert "warning" not in info and SYNTHETIC_WARNING not in proc.stderr
    assert not (raw / "images" / "val" / "NORMAL" / "notes.txt").exists()


def test_pin_then_use_pinned(tmp_path):
    write_params(tmp_path, source="pinned")
    proc = run_stage(tmp_path)
    assert proc.returncode == 2
    assert "data/pinned is missing: run `dvc pull data.dvc`" in proc.stderr and "make pin SRC=" in proc.stderr

    assert run_stage(tmp_path, "--pin", "synthetic").returncode == 0
    pinned = tmp_path / "data" / "pinned"
    assert (pinned / "pin.json").exists() and not (pinned / "manifest.csv").exists()
    ref = yaml.safe_load((tmp_path / "data" / "pinned.ref").read_text())  # for dvc.yaml to depend on
    assert ref["synthetic"] is True and ref["dataset_hash"]
    assert list((pinned / "train" / "NORMAL").glob("IM-*.jpeg"))  # Kaggle layout, not raw format

    proc = run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = yaml.safe_load((tmp_path / "data" / "raw" / "source.json").read_text())
    assert info["kind"] == "pinned" and info["synthetic"] is True  # carried through the pin
    assert info["pinned_from"] == "synthetic" and SYNTHETIC_WARNING in proc.stderr
    assert info["dataset_hash"] == ref["dataset_hash"]  # same data, same identity, pinned or not
    pinned_images = {p.name: sha256_file(p) for p in pinned.rglob("*.jpeg")}
    raw_rows = read_manifest(tmp_path / "data" / "raw")
    assert {Path(r["path"]).name: r["sha256"] for r in raw_rows} == pinned_images

    proc = run_stage(tmp_path, "--pin", "pinned")
    assert proc.returncode == 2 and "not 'pinned'" in proc.stderr


def test_kaggle_without_credentials_exits_2(tmp_path):
    write_params(tmp_path, source="kaggle")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"),
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "stages.download", "--out", "data/raw"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Kaggle credentials not found" in proc.stderr
    assert not (tmp_path / "home" / ".config" / "kaggle").exists()  # the client was never imported


def test_bad_params_are_user_errors(tmp_path):
    write_params(tmp_path, synthetic={**SMALL, "size": 5})
    proc = run_stage(tmp_path)
    assert proc.returncode == 2 and "download.synthetic.size" in proc.stderr
    with pytest.raises(UserError):
        from cxr.data.sources import describe

        describe("")
