"""The acquisition-shift stress test: perturbations do what they say; the report adds up."""

import io

import numpy as np
from PIL import Image

from cxr.imaging import ImagingConfig, preprocess_bytes
from cxr.robustness import PERTURBATIONS, perturb_bytes, stratified_sample, stress_test
from tests.helpers import noise_jpeg


def smooth_xray(seed: int, size=(160, 128)) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    img = 120 + 60 * np.sin(xx / 9.0 + seed) + rng.normal(0, 5, (size[1], size[0]))
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8), "L").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)


def test_each_perturbation_gives_a_decodable_image_of_the_same_size():
    data = smooth_xray(0)
    for name in PERTURBATIONS:
        out = perturb_bytes(data, name)
        assert Image.open(io.BytesIO(out)).size == (160, 128), name
        assert preprocess_bytes(out, ImagingConfig(64)).shape == (64, 64)


def test_perturbations_change_what_they_claim():
    data = smooth_xray(1)
    clean = decoded(perturb_bytes(data, "clean"))
    assert decoded(perturb_bytes(data, "darker_gamma_1.5")).mean() < clean.mean() - 5
    assert decoded(perturb_bytes(data, "brighter_gamma_0.67")).mean() > clean.mean() + 5
    bordered = decoded(perturb_bytes(data, "black_border_6pct"))
    assert bordered[:5].mean() < 10 and bordered[:, :5].mean() < 10
    blurred = decoded(perturb_bytes(data, "blur_0.5pct"))
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(clean, axis=1)).mean()
    assert len(perturb_bytes(noise_jpeg(3, 128), "jpeg_quality_25")) < len(perturb_bytes(noise_jpeg(3, 128), "clean"))


def test_stratified_sample_keeps_the_class_ratio_and_is_seeded():
    labels = np.array([0] * 30 + [1] * 90)
    idx = stratified_sample(labels, 40, seed=1)
    assert len(idx) == 40 and labels[idx].sum() == 30
    assert np.array_equal(idx, stratified_sample(labels, 40, seed=1))
    assert np.array_equal(stratified_sample(labels, 500, seed=1), np.arange(120))


def test_stress_report_measures_a_brightness_sensitive_model():
    """A 'model' that scores mean brightness loses specificity on brighter images."""
    raw = [smooth_xray(i) for i in range(12)]
    labels = np.array([0, 1] * 6)
    rng = np.random.default_rng(0)
    offsets = {i: (40 if labels[i] else 0) + rng.normal(0, 2) for i in range(12)}
    raw = [perturb_bytes(d, "clean") for d in raw]
    cfg = ImagingConfig(32, intensity="none")

    def predict(images):
        return images.reshape(len(images), -1).mean(axis=1) / 255.0

    # Make positives brighter so the clean images separate perfectly.
    shifted = []
    for i, d in enumerate(raw):
        arr = decoded(d) + offsets[i]
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L").save(buf, "JPEG", quality=95)
        shifted.append(buf.getvalue())
    scores = predict(np.stack([preprocess_bytes(d, cfg) for d in shifted]))
    threshold = float(scores[labels == 1].min()) - 0.03
    report = stress_test(shifted, labels, threshold, cfg, predict)
    p = report["perturbations"]
    assert set(p) == set(PERTURBATIONS) and report["images"] == 12
    assert p["clean"]["recall"] == 1.0 and p["clean"]["specificity_change"] == 0.0
    assert p["brighter_gamma_0.67"]["specificity"] < p["clean"]["specificity"]
    assert p["darker_gamma_1.5"]["recall"] < 1.0
    assert report["worst_specificity"] == min(m["specificity"] for n, m in p.items() if n != "clean")


def test_acquisition_view_is_seeded_per_image_and_differs_from_the_clean_images(tmp_path):
    from cxr.robustness import acquisition_view, random_acquisition

    rels = []
    for i in range(6):
        (tmp_path / f"img{i}.jpeg").write_bytes(smooth_xray(i))
        rels.append(f"img{i}.jpeg")
    cfg = ImagingConfig(48)
    a = acquisition_view(tmp_path, rels, cfg, seed=3)
    b = acquisition_view(tmp_path, rels, cfg, seed=3)
    c = acquisition_view(tmp_path, rels, cfg, seed=4)
    clean = np.stack([preprocess_bytes((tmp_path / r).read_bytes(), cfg) for r in rels])
    assert a.shape == clean.shape == (6, 48, 48) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a, clean)
    # Every re-acquired copy is a decodable JPEG of the original size.
    out = random_acquisition(smooth_xray(0), np.random.default_rng(0))
    assert Image.open(io.BytesIO(out)).format == "JPEG" and Image.open(io.BytesIO(out)).size == (160, 128)
