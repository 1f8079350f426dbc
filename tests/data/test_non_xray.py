"""The non-X-ray images the refusal is measured on: deterministic, every family, every one an upload."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.data import non_xray
from cxr.data.non_xray import FAMILIES, non_xray_images
from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes

PER_FAMILY = 5


@pytest.fixture(scope="module")
def images():
    return non_xray_images(seed=3, per_family=PER_FAMILY)


def test_same_seed_same_bytes_and_another_seed_other_bytes(images):
    assert non_xray_images(seed=3, per_family=PER_FAMILY) == images
    other = non_xray_images(seed=4, per_family=PER_FAMILY)
    assert [b for _, _, b in other] != [b for _, _, b in images]


def test_every_family_with_unique_names(images):
    families = [family for family, _, _ in images]
    assert set(families) == set(FAMILIES)
    assert all(families.count(f) == PER_FAMILY for f in FAMILIES)
    assert len({name for _, name, _ in images}) == len(images)
    assert set(FAMILIES) >= {"photo", "document", "screenshot", "noise", "blank", "gradient"}


def test_every_image_goes_through_the_upload_preprocessing(images):
    cfg = ImagingConfig()
    for family, name, data in images:
        out = preprocess_bytes(data, cfg)
        assert out.shape == (cfg.image_size, cfg.image_size) and out.dtype == np.uint8, (family, name)


def test_skimage_samples_as_shipped_then_variants():
    images = non_xray_images(seed=0, per_family=4, families=("scanned_text",))
    names = [name for _, name, _ in images]
    assert [n.split("-")[1] for n in names] == ["page", "text", "page", "text"]
    assert images[0][2] != images[2][2]  # the second round is cropped/rotated, not a copy


def test_a_sample_that_cannot_load_is_skipped_not_downloaded(monkeypatch):
    import skimage.data

    def offline():
        raise ConnectionError("no network")

    non_xray._skimage_sample.cache_clear()
    monkeypatch.setattr(skimage.data, "page", offline)
    try:
        images = non_xray_images(seed=0, per_family=3, families=("scanned_text",))
        assert [name.split("-")[1] for _, name, _ in images] == ["text"] * 3
    finally:
        non_xray._skimage_sample.cache_clear()


def test_arguments_are_checked():
    assert non_xray_images(seed=0, per_family=0) == []
    with pytest.raises(ValueError, match="unknown non-X-ray families"):
        non_xray_images(seed=0, per_family=1, families=("selfie",))
    with pytest.raises(ValueError, match="per_family"):
        non_xray_images(seed=0, per_family=-1)


def test_same_seed_same_bytes_in_another_process(images):
    """Every sample is drawn from the seed: skimage's binary_blobs, random by default, is fixed too
    (it made evaluate's not-a-chest-X-ray reason counts differ between two runs of one commit)."""
    import hashlib
    import subprocess
    import sys

    from tests.shared_paths import REPO

    code = ("import hashlib; from cxr.data.non_xray import non_xray_images; h = hashlib.sha256(); "
            f"[h.update(d) for _, _, d in non_xray_images(seed=3, per_family={PER_FAMILY})]; print(h.hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    here = hashlib.sha256()
    for _, _, data in images:
        here.update(data)
    assert out.stdout.strip() == here.hexdigest()
