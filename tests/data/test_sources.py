"""Data sources: the synthetic generator, folder/zip layouts and their errors, Kaggle credentials."""

from __future__ import annotations

import io
import shutil
import stat
import sys
import tarfile
import types
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr import UserError
from cxr.data.manifest import parse_name
from cxr.data.sources import fetch, folder, kaggle, synthetic
from cxr.io import sha256_file
from tests.shared_paths import DATA as SHARED
from tests.shared_paths import needs_data

SMALL = {"seed": 5, "size": 64, "images_per_patient": [2, 3],
         "patients": {"NORMAL": 3, "PNEUMONIA": 4}, "test_patients": {"NORMAL": 1, "PNEUMONIA": 2}}


def jpeg(value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), value).save(buf, "JPEG")
    return buf.getvalue()


def make_layout(root: Path, splits=("train", "val", "test"), n: int = 2, labels=("NORMAL", "PNEUMONIA")) -> Path:
    for split in splits:
        for label in labels:
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                name = f"IM-{i:04d}-0001.jpeg" if label == "NORMAL" else f"person{i}_virus_{i}.jpeg"
                (d / name).write_bytes(jpeg(i * 20))
    return root


def zip_dir(src: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, prefix + f.relative_to(src).as_posix())
    return archive


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


# --- synthetic ----------------------------------------------------------------------


def test_synthetic_is_deterministic_for_a_seed(tmp_path):
    a = digests(synthetic.generate(SMALL, tmp_path / "a"))
    b = digests(synthetic.generate(SMALL, tmp_path / "b"))
    c = digests(synthetic.generate({**SMALL, "seed": 6}, tmp_path / "c"))
    assert a == b and len(a) >= 2 * (3 + 4 + 1 + 2)
    assert set(a.values()).isdisjoint(c.values())


def test_synthetic_names_group_into_patients_with_subtypes(tmp_path):
    root = synthetic.generate(SMALL, tmp_path / "s")
    patients = defaultdict(lambda: defaultdict(list))  # split -> label -> patient -> images
    for f in root.rglob("*.jpeg"):
        split, label = f.parts[-3], f.parts[-2]
        facts = parse_name(f.name)
        patients[split][(label, facts.patient_id)].append(facts.subtype)
        if label == "PNEUMONIA":
            assert facts.subtype in ("bacteria", "virus"), f.name
        else:
            assert facts.subtype == "" and f.name.startswith("IM-")
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (64, 64)
    train, test = patients["train"], patients["test"]
    assert sum(1 for lab, _ in train if lab == "NORMAL") == 3
    assert sum(1 for lab, _ in train if lab == "PNEUMONIA") == 4
    assert all(len(v) >= 2 for v in train.values())  # several images per patient
    assert all(len(set(v)) == 1 for v in train.values())  # one subtype per patient
    assert len(test) == 3 and set(test).isdisjoint(train)  # disjoint test patients


def test_synthetic_classes_not_separable_by_global_intensity(tmp_path):
    """A consolidation brightens the pixels it covers, nothing else: the image mean alone
    barely tells the classes apart (exposure is drawn per image for both classes)."""
    from sklearn.metrics import roc_auc_score

    cfg = {**SMALL, "patients": {"NORMAL": 50, "PNEUMONIA": 50}, "images_per_patient": [1, 1],
           "test_patients": {"NORMAL": 0, "PNEUMONIA": 0}}
    root = synthetic.generate(cfg, tmp_path / "s")
    assert not (root / "test").exists()
    means, labels = [], []
    for lab in ("NORMAL", "PNEUMONIA"):
        for f in (root / "train" / lab).iterdir():
            means.append(np.asarray(Image.open(f), np.float32).mean())
            labels.append(lab == "PNEUMONIA")
    assert roc_auc_score(labels, means) < 0.7


def test_synthetic_lesion_masks_mark_where_the_consolidation_was_drawn(tmp_path):
    root = synthetic.generate(SMALL, tmp_path / "s")
    masks = synthetic.lesions(SMALL)
    assert sorted(masks) == sorted(f.name for f in (root / "test" / "PNEUMONIA").iterdir())
    assert synthetic.lesions(SMALL, "train").keys() == {f.name for f in (root / "train" / "PNEUMONIA").iterdir()}
    for name, mask in masks.items():
        image = np.asarray(Image.open(root / "test" / "PNEUMONIA" / name), np.float32)
        assert mask.shape == image.shape and 0.01 < mask.mean() < 0.5, name
        assert image[mask].mean() > image[~mask].mean(), name  # consolidation is brighter than the rest


def test_synthetic_bad_params_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="images_per_patient"):
        synthetic.generate({**SMALL, "images_per_patient": [3, 1]}, tmp_path)
    with pytest.raises(UserError, match="patients.NORMAL"):
        synthetic.generate({**SMALL, "patients": {"NORMAL": -1, "PNEUMONIA": 2}}, tmp_path)


# --- folders ------------------------------------------------------------------------


def test_kaggle_layout_is_scanned(tmp_path):
    root = folder.find_root(make_layout(tmp_path / "k"))
    layout = folder.scan(root)
    assert layout.splits == ["train", "val", "test"]
    assert len(layout.items) == 12 and not layout.skipped


def test_mendeley_layout_wrapped_in_a_folder(tmp_path):
    make_layout(tmp_path / "m" / "chest_xray", splits=("train", "test"))
    root = folder.find_root(tmp_path / "m")
    assert root == tmp_path / "m" / "chest_xray"
    assert folder.scan(root).splits == ["train", "test"]


def test_shallowest_root_wins_and_junk_is_ignored(tmp_path):
    top = tmp_path / "z" / "chest_xray"
    make_layout(top)
    make_layout(top / "chest_xray", n=1)  # Kaggle's nested duplicate
    make_layout(tmp_path / "z" / "__MACOSX" / "chest_xray")
    (top / "train" / "NORMAL" / "._IM-0000-0001.jpeg").write_bytes(b"mac junk")
    assert folder.find_root(tmp_path / "z") == top
    assert len(folder.scan(top).items) == 12


def test_unknown_label_folder_is_named(tmp_path):
    root = make_layout(tmp_path / "k")
    (root / "train" / "COVID").mkdir()
    with pytest.raises(UserError, match=r"unknown label folder 'COVID' in train/"):
        folder.scan(root)


def test_empty_class_folder_is_named(tmp_path):
    root = make_layout(tmp_path / "k", splits=("train",))
    for f in (root / "train" / "NORMAL").iterdir():
        f.unlink()
    (root / "train" / "NORMAL" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"train/NORMAL .*has no images"):
        folder.scan(root)


def test_missing_path_and_missing_train_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="'nowhere' does not exist"):
        fetch("nowhere", {"cache_dir": "cache"}, tmp_path)
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(UserError, match="no train/ folder"):
        fetch("empty", {"cache_dir": "cache"}, tmp_path)


def test_non_image_files_are_skipped_and_counted(tmp_path, caplog):
    root = make_layout(tmp_path / "k", splits=("train",))
    (root / "train" / "PNEUMONIA" / "readme.txt").write_text("hello")
    (root / "train" / "PNEUMONIA" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "NORMAL" / "IM-0009-0001.PNG").write_bytes(jpeg())  # upper-case suffix: still an image
    layout = folder.scan(root)
    assert [p.name for p in layout.skipped] == ["readme.txt"]
    assert len(layout.items) == 5
    assert "skipped 1 non-image file" in caplog.text


def test_relative_folder_resolves_against_cwd(tmp_path, monkeypatch):
    make_layout(tmp_path / "data" / "mine", splits=("train",))
    monkeypatch.chdir(tmp_path)
    got = fetch("data/mine", {"cache_dir": "cache"}, tmp_path)
    assert got.kind == "folder" and got.synthetic is False
    assert got.root.resolve() == (tmp_path / "data" / "mine").resolve()


# --- archives -----------------------------------------------------------------------


def test_zip_is_extracted_once_and_reused(tmp_path, monkeypatch):
    src = make_layout(tmp_path / "src")
    archive = zip_dir(src, tmp_path / "ChestXRay2017.zip", prefix="chest_xray/")
    got = fetch(str(archive), {"cache_dir": str(tmp_path / "cache")}, tmp_path)
    assert got.kind == "zip" and got.root.name == "chest_xray"
    assert digests(got.root) == digests(src)

    def boom(*a, **k):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(folder, "_extract_zip", boom)
    again = fetch(str(archive), {"cache_dir": str(tmp_path / "cache")}, tmp_path)
    assert again.root == got.root


@pytest.mark.parametrize("evil", ["../evil.jpeg", "/abs/evil.jpeg", "chest_xray/../../evil.jpeg"])
def test_zip_slip_is_rejected(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", jpeg())
        zf.writestr(zipfile.ZipInfo(evil), b"pwned")
    with pytest.raises(UserError, match="unsafe entry"):
        folder.extract(archive, tmp_path / "cache")
    assert not (tmp_path / "evil.jpeg").exists()
    assert not any((tmp_path / "cache").rglob("*.jpeg"))


@pytest.mark.parametrize("kind,target,words", [(tarfile.SYMTYPE, "/etc/passwd", "is a link or device"),
                                               (tarfile.LNKTYPE, "../../etc/passwd", "is a hard link")])
def test_tar_links_are_rejected(tmp_path, kind, target, words):
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("chest_xray/train/NORMAL/IM-0001-0001.jpeg")
        info.type, info.linkname = kind, target
        tf.addfile(info)
    with pytest.raises(UserError, match=words):
        folder.extract(archive, tmp_path / "cache")
    assert not (tmp_path / "cache" / "extracted").exists() or not any((tmp_path / "cache" / "extracted").iterdir())


def test_local_tar_gz_works(tmp_path):
    src = make_layout(tmp_path / "src", splits=("train", "test"))
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="chest_xray")
    got = fetch(str(archive), {"cache_dir": str(tmp_path / "cache")}, tmp_path)
    assert got.kind == "tar" and digests(got.root) == digests(src)


# --- kaggle -------------------------------------------------------------------------


@pytest.fixture
def no_kaggle_credentials(tmp_path, monkeypatch):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_kaggle_without_credentials_says_how_before_importing(no_kaggle_credentials, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    with pytest.raises(UserError, match="Kaggle credentials not found.*kaggle.json.*KAGGLE_USERNAME"):
        fetch("kaggle", {"cache_dir": str(tmp_path / "c"), "kaggle_dataset": "a/b"}, tmp_path)
    assert "kaggle" not in sys.modules  # the client (which authenticates on import) was not loaded


def test_kaggle_credential_sources(no_kaggle_credentials, tmp_path):
    home = no_kaggle_credentials
    assert kaggle.credential_sources({}, home) == []
    assert kaggle.credential_sources({"KAGGLE_USERNAME": "u"}, home) == []  # a key is needed too
    assert kaggle.credential_sources({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home)
    assert kaggle.credential_sources({"KAGGLE_API_TOKEN": "t"}, home)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text("{}")
    assert kaggle.credential_sources({"KAGGLE_CONFIG_DIR": str(tmp_path / "cfg")}, home)
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text("{}")
    assert kaggle.credential_sources({}, home) == [str(home / ".kaggle" / "kaggle.json")]


def test_kaggle_zip_is_handed_to_the_zip_path(no_kaggle_credentials, tmp_path, monkeypatch):
    src = make_layout(tmp_path / "src")
    calls = []

    class FakeApi:
        def authenticate(self):
            print("noise on stdout")

        def dataset_download_files(self, dataset, path=None, **kw):
            calls.append(dataset)
            zip_dir(src, Path(path) / "chest-xray-pneumonia.zip", prefix="chest_xray/")

    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(KaggleApi=FakeApi))
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    cfg = {"cache_dir": str(tmp_path / "cache"), "kaggle_dataset": "paultimothymooney/chest-xray-pneumonia"}
    got = fetch("kaggle", cfg, tmp_path)
    assert calls == ["paultimothymooney/chest-xray-pneumonia"]
    assert got.kind == "kaggle" and got.facts["kaggle_dataset"] == cfg["kaggle_dataset"]
    assert digests(got.root) == digests(src)


# --- the real data set (development copy) -------------------------------------------


@pytest.mark.shared
@needs_data
def test_real_subset_from_shared(tmp_path):
    sub = tmp_path / "real"
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((SHARED / "train" / label).iterdir())[:5]
        (sub / "train" / label).mkdir(parents=True)
        for f in files:
            shutil.copy(f, sub / "train" / label / f.name)
    layout = folder.scan(folder.find_root(sub))
    assert len(layout.items) == 10
    facts = [parse_name(i.path.name) for i in layout.items]
    pneu = [f for f, i in zip(facts, layout.items) if i.label == "PNEUMONIA"]
    assert all(f.patient_id.startswith("person") and f.subtype in ("bacteria", "virus") for f in pneu)
    norm = [f for f, i in zip(facts, layout.items) if i.label == "NORMAL"]
    assert all(f.patient_id.startswith("IM-") for f in norm)


# --- archive limits -----------------------------------------------------------------


def test_zip_bomb_is_refused_by_its_compression_ratio(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", jpeg())
        zf.writestr("chest_xray/train/NORMAL/zeros.jpeg", b"\0" * (64 << 20))
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(UserError, match="fold.*max_ratio.*bomb"):
        folder.extract(archive, tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.jpeg"))


def test_archive_file_count_and_total_size_are_capped(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(30):
            zf.writestr(f"chest_xray/train/NORMAL/IM-{i:04d}-0001.jpeg", jpeg())
    with pytest.raises(UserError, match="30 entries exceed download.archive_limits.max_files"):
        folder.extract(archive, tmp_path / "c1", limits=folder.ArchiveLimits(max_files=20))
    with pytest.raises(UserError, match="exceed download.archive_limits.max_bytes"):
        folder.extract(archive, tmp_path / "c2", limits=folder.ArchiveLimits(max_bytes=1000))
    tar = tmp_path / "many.tar"
    with tarfile.open(tar, "w") as tf:
        for i in range(30):
            data = jpeg()
            info = tarfile.TarInfo(f"chest_xray/train/NORMAL/IM-{i:04d}-0001.jpeg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="max_files"):
        folder.extract(tar, tmp_path / "c3", limits=folder.ArchiveLimits(max_files=20))
    assert folder.extract(tar, tmp_path / "c4").is_dir()  # the defaults take it


def test_zip_entry_larger_than_its_header_declares_is_refused(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", b"A" * 5000)
    raw = bytearray(archive.read_bytes())
    # Shrink the declared size in the central directory (the index extraction trusts) to 100.
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24:central + 28] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="more bytes than its header declares|corrupt"):
        folder.extract(archive, tmp_path / "cache")


def test_zip_symlinks_are_refused(tmp_path):
    archive = tmp_path / "sym.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("chest_xray/train/NORMAL/IM-0001-0001.jpeg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UserError, match="is a link"):
        folder.extract(archive, tmp_path / "c2")


def test_archive_limits_params_are_checked():
    assert folder.ArchiveLimits.from_cfg({}) == folder.ArchiveLimits()
    with pytest.raises(UserError, match="max_ratio"):
        folder.ArchiveLimits.from_cfg({"archive_limits": {"max_ratio": 0}})
    with pytest.raises(UserError, match="takes max_files"):
        folder.ArchiveLimits.from_cfg({"archive_limits": {"max_size": 3}})
