"""The acquisition-shift stress test: perturbations do what they say; the report adds up."""

import io

import numpy as np
from PIL import Image

from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
from cxr.shift.robustness import PERTURBATIONS, perturb_bytes, perturbed_views, stratified_sample, stress_test
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


def six_films(folder) -> tuple[list[str], np.ndarray]:
    """Six smooth films written to ``folder``, NORMAL and PNEUMONIA in turn: (names, labels)."""
    rels = [f"img{i}.jpeg" for i in range(6)]
    for i, rel in enumerate(rels):
        (folder / rel).write_bytes(smooth_xray(i))
    return rels, np.array([0, 1] * 3)

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
    report = stress_test(perturbed_views(shifted, cfg), labels, threshold, predict)
    p = report["perturbations"]
    assert set(p) == set(PERTURBATIONS) and report["images"] == 12
    assert p["clean"]["recall"] == 1.0 and p["clean"]["specificity_change"] == 0.0
    assert p["brighter_gamma_0.67"]["specificity"] < p["clean"]["specificity"]
    assert p["darker_gamma_1.5"]["recall"] < 1.0
    assert report["worst_specificity"] == min(m["specificity"] for n, m in p.items() if n != "clean")


def test_acquisition_view_is_seeded_per_image_and_differs_from_the_clean_images(tmp_path):
    from cxr.shift.acquisition import ClassAcquisition, decode_gray
    from cxr.shift.robustness import Reacquire, acquisition_view, random_acquisition

    rels, labels = six_films(tmp_path)
    cfg = ImagingConfig(48)
    facts = ClassAcquisition(aspect=(1.2, 1.5), detail_gain=(0.8, 1.6))
    how = Reacquire(class_mix=(-0.25, 1.25), generic=True)
    a = acquisition_view(tmp_path, rels, labels, how, facts, cfg, seed=3)
    b = acquisition_view(tmp_path, rels, labels, how, facts, cfg, seed=3)
    c = acquisition_view(tmp_path, rels, labels, how, facts, cfg, seed=4)
    clean = np.stack([preprocess_bytes((tmp_path / r).read_bytes(), cfg) for r in rels])
    assert a.shape == clean.shape == (6, 48, 48) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a, clean)
    # Every generic re-acquired copy is a decodable JPEG of the original size.
    out = random_acquisition(decode_gray(smooth_xray(0)), np.random.default_rng(0))
    assert Image.open(io.BytesIO(out)).format == "JPEG" and Image.open(io.BytesIO(out)).size == (160, 128)
    # Class mixing alone, with identical facts for both classes and no generic part, changes
    # nothing: the image is decoded in full (no JPEG draft) and preprocessed.
    from cxr.imaging.preprocess import preprocess_image

    same = ClassAcquisition()
    plain = acquisition_view(tmp_path, rels, labels, Reacquire(class_mix=(0.0, 1.0)), same, cfg, seed=3)
    full = np.stack([preprocess_image(decode_gray((tmp_path / r).read_bytes()), cfg) for r in rels])
    assert np.array_equal(plain, full)
    # Only the classes named are moved: with NORMAL alone, PNEUMONIA views are the images as decoded.
    normal_only = Reacquire.from_params({"class_mix": [1.0, 1.0], "mix_classes": ["NORMAL"]})
    moved = acquisition_view(tmp_path, rels, labels, normal_only, facts, cfg, seed=3)
    assert np.array_equal(moved[labels == 1], full[labels == 1]) and not np.array_equal(moved[labels == 0],
                                                                                         full[labels == 0])


def test_reacquire_params_are_checked():
    import pytest

    from cxr import UserError
    from cxr.shift.robustness import Reacquire

    assert Reacquire.from_params({"class_mix": [-0.25, 1.25], "generic": False}).class_mix == (-0.25, 1.25)
    assert not Reacquire.from_params({"class_mix": None}).active
    assert Reacquire.from_params({"class_mix": [0, 1], "mix_cues": ["aspect"]}).mix_cues == ("aspect",)
    assert Reacquire.from_params({"class_mix": [0, 1], "to_other": 0.5}).to_dict()["to_other"] == 0.5
    assert Reacquire.from_params({"class_mix": [0, 1]}).to_other == 0.0
    for bad in ({"to_other": 1.5}, {"to_other": "half"}, {"to_other": True}, {"class_mix": [1.0, 0.0]}, {"class_mix": [0, 3]}, {"class_mix": "wide"}, {"generic": "yes"},
                {"colour": True}, {"mix_mode": "both"}, {"mix_cues": ["colour"]}, {"mix_cues": []},
                {"mix_classes": ["COVID"]}):
        with pytest.raises(UserError, match="train.reacquire"):
            Reacquire.from_params(bad)


def wide_film(seed: int, aspect: float, height: int = 120) -> Image.Image:
    """A 'chest' drawn as a disc on a film of the given aspect, squashed to a square as the
    data set's copies are: a wider film gives a narrower disc."""
    width = round(height * aspect)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((xx - width / 2) / (0.35 * height)) ** 2 + ((yy - height / 2) / (0.35 * height)) ** 2 < 1
    rng = np.random.default_rng(seed)
    img = np.where(disc, 200.0, 40.0) + rng.normal(0, 3, disc.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "L").resize((96, 96), Image.Resampling.BILINEAR)


def disc_width(img: np.ndarray) -> float:
    """Width / height of the bright disc in a preprocessed image."""
    mask = img > 120
    return mask.any(axis=0).sum() / max(1, mask.any(axis=1).sum())


def test_counterfactual_proxy_catches_a_model_that_reads_the_aspect(tmp_path):
    """Train-like data where the class *is* the film aspect: a 'model' that scores how narrow
    the chest looks separates the classes on clean images and loses specificity (NORMAL made to
    look like PNEUMONIA) on the proxy, while a model that ignores the aspect keeps it."""
    from cxr.shift.acquisition import ClassAcquisition
    from cxr.shift.robustness import PROXY, counterfactual_test

    facts = ClassAcquisition(aspect=(1.2, 1.5), detail_gain=(1.0, 1.0))
    labels = np.array([0] * 8 + [1] * 8)
    rels = []
    for i, label in enumerate(labels):
        buf = io.BytesIO()
        wide_film(i, facts.aspect[label]).save(buf, "PNG")
        (tmp_path / f"{i}.png").write_bytes(buf.getvalue())
        rels.append(f"{i}.png")
    cfg = ImagingConfig(96, intensity="none")
    clean = np.stack([preprocess_bytes((tmp_path / r).read_bytes(), cfg) for r in rels])

    def aspect_reader(images):  # narrower disc -> higher PNEUMONIA score
        return np.array([1.0 / disc_width(x) for x in images]) - 0.5

    scores = aspect_reader(clean)
    threshold = float(scores[labels == 0].max() + scores[labels == 1].min()) / 2
    report = counterfactual_test(tmp_path, rels, labels, scores, threshold, facts, cfg, aspect_reader)
    assert report["clean"]["specificity"] == 1.0 and report["clean"]["roc_auc"] == 1.0
    assert report[PROXY]["specificity"] <= 0.25 and report[PROXY]["specificity_change"] <= -0.75
    assert report["normal_aspect_only"]["specificity"] <= 0.25
    assert report["normal_detail_only"]["specificity"] == 1.0  # detail gain 1: nothing moves
    assert report["swapped"]["roc_auc"] <= 0.25  # the shortcut reversed
    assert report[PROXY]["mean_probability"]["NORMAL"] > report["clean"]["mean_probability"]["NORMAL"]

    def aspect_blind(images):  # reads brightness inside the disc only: the same for both classes
        return np.array([x[x > 120].mean() for x in images]) / 255.0

    scores = aspect_blind(clean)
    blind = counterfactual_test(tmp_path, rels, labels, scores, 0.5, facts, cfg, aspect_blind)
    assert blind[PROXY]["specificity"] == blind["clean"]["specificity"]


def test_served_gap_is_zero_for_identical_files_and_measures_a_chain_change():
    from cxr.shift.robustness import served_gap

    cfg = ImagingConfig(32, intensity="none")
    pairs = [(i % 2, smooth_xray(i), smooth_xray(i)) for i in range(6)]
    mean = lambda x: x.reshape(len(x), -1).mean(axis=1) / 255.0  # noqa: E731
    same = served_gap(pairs, 0.5, cfg, mean)
    assert same["images"] == 6 and same["abs_change"]["max"] == 0.0 and same["label_agreement"] == 1.0
    brighter = [(y, perturb_bytes(a, "brighter_gamma_0.67"), b) for y, a, b in pairs]
    moved = served_gap(brighter, 0.5, cfg, mean)
    assert moved["abs_change"]["median"] > 0.02
    assert moved["mean_probability"]["served"]["NORMAL"] > moved["mean_probability"]["copy"]["NORMAL"]
    assert served_gap([], 0.5, cfg, mean) == {"images": 0}


def test_aspect_positions_say_where_acquisition_view_put_each_image(tmp_path):
    """The position drawn again is the one the view was made with: each image rebuilt from its
    position alone (shift by t, NORMAL at t, PNEUMONIA at 1 - t) equals the re-acquired view."""
    from cxr.imaging.preprocess import preprocess_image
    from cxr.shift.acquisition import ClassAcquisition, decode_gray, shift
    from cxr.shift.robustness import Reacquire, acquisition_view, aspect_positions

    rels, labels = six_films(tmp_path)
    cfg = ImagingConfig(48)
    facts = ClassAcquisition(aspect=(1.2, 1.5), detail_gain=(0.8, 1.6))
    how = Reacquire.from_params({"class_mix": [-0.25, 1.25], "mix_cues": ["aspect"], "to_other": 0.5})
    views = acquisition_view(tmp_path, rels, labels, how, facts, cfg, seed=3)
    pos = aspect_positions(labels, how, seed=3)
    assert pos.shape == (6,) and np.all((pos >= -0.25) & (pos <= 1.25))
    assert not np.array_equal(pos, aspect_positions(labels, how, seed=4))
    for i, rel in enumerate(rels):
        t = pos[i] if labels[i] == 0 else 1.0 - pos[i]
        rebuilt = preprocess_image(shift(decode_gray((tmp_path / rel).read_bytes()), int(labels[i]), facts, t, 0.0), cfg)
        assert np.array_equal(rebuilt, views[i])
    # Images not moved have no position: an unmixed class, or no aspect mixing at all.
    normal_only = Reacquire.from_params({"class_mix": [0.0, 1.0], "mix_classes": ["NORMAL"]})
    assert np.isnan(aspect_positions(labels, normal_only, 3)[labels == 1]).all()
    assert not np.isnan(aspect_positions(labels, normal_only, 3)[labels == 0]).any()
    for unmoved in (Reacquire(), Reacquire.from_params({"class_mix": [0.0, 1.0], "mix_cues": ["detail"]})):
        assert np.isnan(aspect_positions(labels, unmoved, 3)).all()
