"""Class acquisition transforms: squash and detail do what they claim, shifts interpolate,
the facts are parsed and measured, and the shortcut audit finds a planted cue."""

import io

import numpy as np
import pytest
from PIL import Image

from cxr import UserError
from cxr.shift.acquisition import ClassAcquisition, class_mixed, counterfactual, detail, measure, shift, squash
from cxr.shift.shortcuts import FEATURES, Audit, cross_validated, features, within_class_reliance


def textured(seed: int = 0, size=(120, 100)) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    img = 120 + 50 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 8, (size[1], size[0]))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "L")


def bar(width: int, height: int = 80) -> Image.Image:
    a = np.zeros((height, height), np.uint8)
    a[:, height // 2 - width // 2 : height // 2 + width // 2] = 255
    return Image.fromarray(a, "L")


def laplacian(img) -> float:
    a = np.asarray(img, np.float32)
    return float(np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).mean())


def test_squash_narrows_or_widens_the_anatomy_and_keeps_the_size():
    src = Image.fromarray(np.pad(np.full((40, 40), 255, np.uint8), 20), "L")  # a centred square
    narrower, wider = squash(src, 1.25), squash(src, 1 / 1.25)
    assert narrower.size == wider.size == src.size
    cols = lambda im: int((np.asarray(im) > 128).any(axis=0).sum())  # noqa: E731
    rows = lambda im: int((np.asarray(im) > 128).any(axis=1).sum())  # noqa: E731
    assert cols(narrower) == cols(src) and rows(narrower) == pytest.approx(50, abs=1)  # taller, so narrower relatively
    assert rows(wider) == rows(src) and cols(wider) == pytest.approx(50, abs=1)
    assert squash(src, 1.0) is src


def test_detail_gain_scales_fine_structure_and_keeps_the_coarse_image():
    img = textured()
    softer, crisper = detail(img, 0.6), detail(img, 1.6)
    assert laplacian(softer) < 0.75 * laplacian(img) < laplacian(img) < laplacian(crisper)
    coarse = lambda im: np.asarray(im.resize((6, 5), Image.Resampling.BOX), np.float32)  # noqa: E731
    assert np.abs(coarse(softer) - coarse(img)).max() < 6
    assert detail(img, 1.0) is img


def test_shift_interpolates_towards_the_other_class():
    facts = ClassAcquisition(aspect=(1.0, 1.44), detail_gain=(1.0, 1.0))
    src = bar(20)
    cols = lambda im: int((np.asarray(im) > 128).any(axis=0).sum())  # noqa: E731
    # NORMAL -> PNEUMONIA squashes more: done by stretching the height, so a vertical bar keeps
    # its width; PNEUMONIA -> NORMAL widens, by 1.44 at t = 1 and by its square root 1.2 at t = 0.5.
    assert cols(shift(src, 0, facts, 1.0, 0.0)) == cols(src) == 20
    assert np.array_equal(np.asarray(shift(src, 0, facts, 0.0, 0.0)), np.asarray(src))
    assert cols(shift(src, 1, facts, 1.0, 0.0)) == pytest.approx(20 * 1.44, abs=1.5)
    assert cols(shift(src, 1, facts, 0.5, 0.0)) == pytest.approx(20 * 1.2, abs=1.5)


def test_class_mixed_is_seeded_and_counterfactual_checks_cues():
    facts = ClassAcquisition(aspect=(1.2, 1.5), detail_gain=(0.8, 1.5))
    img = textured(1)
    a = class_mixed(img, 0, facts, (-0.25, 1.25), np.random.default_rng(4))
    b = class_mixed(img, 0, facts, (-0.25, 1.25), np.random.default_rng(4))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    # joint: the one t drawn moves both cues; independent: the detail gets a t of its own.
    t = np.random.default_rng(4).uniform(-0.25, 1.25, size=2)
    assert np.array_equal(np.asarray(a), np.asarray(shift(img, 0, facts, t[0], t[0])))
    c = class_mixed(img, 0, facts, (-0.25, 1.25), np.random.default_rng(4), "independent")
    assert np.array_equal(np.asarray(c), np.asarray(shift(img, 0, facts, t[0], t[1])))
    with pytest.raises(UserError, match="mixing mode"):
        class_mixed(img, 0, facts, (0, 1), np.random.default_rng(0), "sideways")
    # to_other: that share of the images goes all the way, every cue at t = 1; the rest as drawn.
    other = np.asarray(shift(img, 0, facts, 1.0, 1.0))
    assert np.array_equal(np.asarray(class_mixed(img, 0, facts, (-0.25, 1.25), np.random.default_rng(4),
                                                 to_other=1.0)), other)
    all_the_way = [np.array_equal(np.asarray(class_mixed(img, 0, facts, (-0.25, 0.5), np.random.default_rng(s),
                                                         to_other=0.25)), other) for s in range(80)]
    assert 10 <= sum(all_the_way) <= 30
    buf = io.BytesIO()
    img.save(buf, "PNG")
    softer = counterfactual(buf.getvalue(), 0, facts, ["detail"])
    assert laplacian(softer) < laplacian(img)
    with pytest.raises(UserError, match="unknown acquisition cues"):
        counterfactual(buf.getvalue(), 0, facts, ["colour"])


def test_facts_from_params_are_checked():
    ok = {"aspect": {"NORMAL": 1.2, "PNEUMONIA": 1.5}, "detail_gain": {"NORMAL": 0.85, "PNEUMONIA": 1.8}}
    facts = ClassAcquisition.from_params(ok)
    assert facts.aspect == (1.2, 1.5) and facts.squash_towards_other(0) == pytest.approx(1.25)
    assert ClassAcquisition.from_params(facts.to_dict()) == facts
    for bad in ({**ok, "aspect": {"NORMAL": 1.2}}, {**ok, "detail_gain": {"NORMAL": 0, "PNEUMONIA": 1}},
                {**ok, "aspect": [1.2, 1.5]}, {"aspect": ok["aspect"]}):
        with pytest.raises(UserError, match="acquisition"):
            ClassAcquisition.from_params(bad)


def test_measure_recovers_a_planted_aspect_and_detail_difference(tmp_path):
    """Originals of two aspects; training copies where class 1 is the softer one: the measured
    gains make class 0 softer and class 1 crisper. (With equal aspects the gains are the pure
    detail difference; with unequal ones they also make up for the softening of the squash.)"""
    for folder, aspects in (("unequal", (1.2, 1.5)), ("equal", (1.3, 1.3))):
        for label, aspect in zip(("NORMAL", "PNEUMONIA"), aspects):
            (tmp_path / folder / label).mkdir(parents=True)
            for i in range(3):
                textured(i, (round(100 * aspect), 100)).save(tmp_path / folder / label / f"{i}.png")
    images = {0: [textured(i, (96, 96)) for i in range(6)],
              1: [detail(textured(10 + i, (96, 96)), 0.5) for i in range(6)]}
    assert measure(tmp_path / "unequal", images).aspect == (1.2, 1.5)
    pure = measure(tmp_path / "equal", images)
    assert pure.aspect == (1.3, 1.3)
    assert pure.detail_gain[0] < 0.8 and pure.detail_gain[1] > 1.3
    with pytest.raises(UserError, match="no full-size originals"):
        measure(tmp_path / "missing", images)


def test_measure_command_prints_a_params_section(tmp_path, capsys):
    from cxr.shift.acquisition import main

    for label, aspect in (("NORMAL", 1.2), ("PNEUMONIA", 1.5)):
        (tmp_path / "orig" / label).mkdir(parents=True)
        (tmp_path / "data" / "train" / label).mkdir(parents=True)
        for i in range(3):
            textured(i, (round(100 * aspect), 100)).save(tmp_path / "orig" / label / f"{i}.png")
            textured(i, (64, 64)).save(tmp_path / "data" / "train" / label / f"{i}.png")
    assert main(["measure", str(tmp_path / "orig"), str(tmp_path / "data"), "--sample", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("acquisition:") and "NORMAL: 1.2" in out and "PNEUMONIA: 1.5" in out
    assert main(["measure", str(tmp_path / "nowhere"), str(tmp_path / "data")]) == 2
    assert "error:" in capsys.readouterr().out


def planted(n: int, seed: int, cue: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images whose class shows only in their detail level (when ``cue``), 2 per patient."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int8)
    images = []
    for y in labels:
        img = textured(int(rng.integers(1e6)), (48, 48))
        if cue and y == 1:
            img = detail(img, 0.4)
        images.append(np.asarray(img))
    return np.stack(images), labels, np.arange(n) // 2 * 2 + labels  # patients never span classes


def test_shortcut_audit_finds_a_planted_cue_and_not_an_absent_one():
    images, labels, groups = planted(80, 0, cue=True)
    feats = features(images)
    assert feats.shape == (80, len(FEATURES)) and np.isfinite(feats).all()
    found = cross_validated(feats, labels, groups)
    assert found["cv_auc"] > 0.9 and found["features"]["laplacian"] > 0.9
    plain_images, plain_labels, plain_groups = planted(80, 1, cue=False)
    none = cross_validated(features(plain_images), plain_labels, plain_groups)
    assert 0.25 < none["cv_auc"] < 0.75
    audit = Audit(feats, labels)
    other_images, other_labels, _ = planted(40, 2, cue=True)
    assert audit.transfer(features(other_images), other_labels) > 0.9


def test_within_class_reliance_sees_a_model_that_follows_the_shortcut():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 50)
    shortcut = rng.random(100)
    follows = labels + 0.3 * shortcut
    ignores = labels + 0.3 * rng.random(100)
    assert all(v > 0.9 for v in within_class_reliance(follows, shortcut, labels).values())
    assert all(abs(v) < 0.4 for v in within_class_reliance(ignores, shortcut, labels).values())
    assert within_class_reliance(follows[:2], shortcut[:2], labels[:2]) == {"NORMAL": None, "PNEUMONIA": None}


def test_squash_leaves_the_same_traces_in_both_directions():
    """On isotropic noise (no anatomy), squashing one class and widening the other must not
    leave a directional trace that tells them apart; the held-out stretch does."""
    from cxr.shift.acquisition import squash_stretched

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160)).astype(np.uint8), "L")

    def anisotropy(img):
        a = np.asarray(img, np.float32)
        return float(np.log(np.abs(np.diff(a, axis=1)).mean() / np.abs(np.diff(a, axis=0)).mean()))

    narrower, wider = squash(noise, 1.25), squash(noise, 1 / 1.25)
    stretched, widened = squash_stretched(noise, 1.25), squash_stretched(noise, 1 / 1.25)
    assert laplacian(narrower) == pytest.approx(laplacian(wider), rel=0.05)
    # A residual trace remains (Lanczos anti-aliasing is not the exact inverse of upsampling),
    # at most a quarter of the plain stretch's.
    for mine, plain in ((narrower, stretched), (wider, widened)):
        assert abs(anisotropy(plain)) > 0.25 and abs(anisotropy(mine)) < 0.25 * abs(anisotropy(plain))


def test_held_out_detail_reaches_the_same_detail_level_another_way():
    from cxr.shift.acquisition import _fine_detail, detail_held_out

    img = textured(3, (96, 96))
    for gain in (0.7, 1.6):
        mine, other = detail(img, gain), detail_held_out(img, gain)
        assert _fine_detail(other) == pytest.approx(_fine_detail(mine), rel=0.05)
        assert np.abs(np.asarray(mine, np.float32) - np.asarray(other, np.float32)).mean() > 0.5  # not the same image
    assert detail_held_out(img, 1.0) is img
