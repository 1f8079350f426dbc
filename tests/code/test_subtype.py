"""The second question, bacterial or viral: the head's fit and file, the labels the file names give,
its threshold rule and figures, and its rows in the shortcut audit and the counterfactual."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from cxr import UserError
from cxr.data.dataset import SplitData, known_subtype, subtype_labels
from cxr.metrics import subtype_figures, subtype_threshold
from cxr.model.subtype import SubtypeConfig, SubtypeHead, load
from cxr.model.subtype_fit import fit

D = 64


def features(n: int, seed: int, signal: float = 1.5, bacterial: float = 0.65):
    """Embedding-like rows (non-negative, as after a ReLU and pooling): the subtype moves them
    along one direction, the rest is noise of uneven scale."""
    rng = np.random.default_rng(0)
    direction, scales = rng.normal(size=D), rng.uniform(0.2, 2.0, D)
    direction /= np.linalg.norm(direction)
    r = np.random.default_rng(seed)
    y = (r.random(n) < bacterial).astype(int)
    x = r.normal(size=(n, D)) * scales + np.outer(y - 0.5, direction) * signal * 2 + 3
    return np.maximum(x, 0), y


@pytest.fixture(scope="module")
def fitted():
    (x, y), (vx, vy) = features(600, 1), features(80, 2)
    return fit(x, y, vx, vy, SubtypeConfig())


def test_the_head_learns_ranks_and_is_calibrated(fitted):
    from sklearn.metrics import roc_auc_score

    tx, ty = features(3000, 3)
    p = fitted.probabilities(tx)
    assert fitted.fitted and fitted.info["calibration"]["method"] == "platt"
    assert roc_auc_score(ty, p) > 0.9
    assert abs(p.mean() - ty.mean()) < 0.05  # Platt on validation: the mean probability is the subtype mix
    assert fitted.info["best_step"] <= fitted.info["steps"] <= SubtypeConfig().max_steps


def test_the_fit_is_deterministic_and_draws_no_shared_random_state(fitted):
    (x, y), (vx, vy) = features(600, 1), features(80, 2)
    state = np.random.get_state()[1].copy()
    again = fit(x, y, vx, vy, SubtypeConfig())
    assert np.array_equal(np.random.get_state()[1], state)
    assert np.array_equal(again.kernel, fitted.kernel) and again.bias == fitted.bias


def test_early_stopping_keeps_the_best_validation_step():
    """Labels that validation contradicts: the best validation step is the first one, and it is kept."""
    (x, y), (vx, vy) = features(300, 1), features(80, 2)
    head = fit(x, y, vx, 1 - vy, SubtypeConfig(patience=20))
    assert head.info["best_step"] < 5 and head.info["steps"] == head.info["best_step"] + 20


def test_the_file_round_trips_exactly_and_needs_numpy_only(fitted, tmp_path):
    path = fitted.save(tmp_path / "subtype.npz")
    back = load(path)
    x, _ = features(20, 4)
    assert np.array_equal(back.probabilities(x), fitted.probabilities(x))
    header = back.to_dict()
    assert header["output"] == "P(bacterial | pneumonia)" and header["positive"] == "bacterial"
    assert header["embedding_dim"] == D and header["films"] == fitted.info["films"]
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["header.npy", "kernel.npy"]


def test_no_head_is_a_file_too_and_says_why(tmp_path):
    head = SubtypeHead.none("subtype.fit is false in params.yaml")
    back = load(head.save(tmp_path / "subtype.npz"))
    assert not back.fitted and back.reason == "subtype.fit is false in params.yaml"
    with pytest.raises(UserError, match="no subtype head was fitted"):
        back.probabilities(np.zeros((1, D)))


def test_too_few_films_of_a_subtype_fit_nothing_and_say_so():
    (x, y), (vx, vy) = features(100, 1), features(40, 2)
    keep = np.r_[np.flatnonzero(vy == 1), np.flatnonzero(vy == 0)[:2]]
    head = fit(x, y, vx[keep], vy[keep], SubtypeConfig(min_films=3))
    assert not head.fitted and "have 2 viral in val" in head.reason
    assert head.info["films"]["val"] == {"bacterial": int(vy.sum()), "viral": 2}


@pytest.mark.parametrize("content,message", [
    (None, "not found: run the stage that fits it"),
    (b"not a zip", "is corrupt"),
])
def test_a_bad_head_file_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "subtype.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load(path)


def test_a_head_of_another_format_or_version_is_refused(fitted, tmp_path):
    path = fitted.save(tmp_path / "subtype.npz")
    with np.load(path) as npz:
        header, kernel = json.loads(npz["header"].tobytes()), npz["kernel"]
    for change, message in (({"version": 2}, "format version 2"), ({"format": "other"}, "not a subtype head"),
                            ({"positive": "viral"}, "gives P\\(viral\\)")):
        with open(path, "wb") as fh:
            np.savez(fh, header=np.frombuffer(json.dumps({**header, **change}).encode(), np.uint8), kernel=kernel)
        with pytest.raises(UserError, match=message):
            load(path)
    with pytest.raises(UserError, match="reads 64-dimensional embeddings"):
        fitted.probabilities(np.zeros((2, 8)))


def test_config_from_params():
    cfg = SubtypeConfig.from_params({"fit": True, "step_scale": 1.0, "l2": 0.01, "max_steps": 10, "patience": 5,
                                     "min_films": 3, "threshold_rule": "youden"})
    assert cfg.max_steps == 10 and "threshold_rule" not in cfg.to_dict()  # evaluate's key, read there
    for bad, message in (({"colour": 1}, "unknown 'subtype' keys"), ({"step_scale": 2.5}, "subtype.step_scale"),
                         ({"fit": "yes"}, "'subtype.fit' must be bool"), ({"patience": 0}, "must be >= 1")):
        base = {"fit": True, "step_scale": 1.0, "l2": 0.0, "max_steps": 10, "patience": 5, "min_films": 3}
        with pytest.raises(UserError, match=message):
            SubtypeConfig.from_params({**base, **bad})


def test_labels_come_from_the_file_names():
    paths = ["images/train/PNEUMONIA/person1_bacteria_1.jpeg", "images/train/PNEUMONIA/person2_virus_7.jpeg",
             "images/train/NORMAL/IM-0001-0001.jpeg", "images/train/PNEUMONIA/scan_42.png"]
    assert subtype_labels(paths).tolist() == [1, 0, -1, -1]
    split = SplitData(np.zeros((4, 8, 8), np.uint8), np.array([1, 1, 0, 1], np.int8), np.array(paths))
    idx, kinds = known_subtype(split)
    assert idx.tolist() == [0, 1] and kinds.tolist() == [1, 0]


def test_the_split_summary_gives_the_subtype_balance():
    from cxr.data.splitting import assign, summary
    from tests.code.test_splitting import make_rows

    rows = make_rows(n_normal=20, n_pneu=40)
    for row in rows:
        if row["label"] == "PNEUMONIA" and row["patient_id"].endswith(("1", "3", "5")):
            row["subtype"] = "virus"
    stats = summary(rows, assign(rows, 0.15, 0.15, seed=1))
    for split in ("train", "val", "test"):
        sub = stats[split]["subtypes"]
        assert sum(sub.values()) == stats[split]["PNEUMONIA"] and sub["unknown"] == 0
        assert set(stats[split]["subtype_patients"]) == {"bacterial", "viral", "unknown"}
    assert stats["train"]["subtypes"]["viral"] > 0 and stats["train"]["subtypes"]["bacterial"] > 0


def test_youden_threshold_sits_mid_gap_and_ties_go_to_the_one_nearest_half():
    labels = np.array([0, 0, 0, 1, 1, 1])
    choice = subtype_threshold(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert choice["value"] == 0.5 and choice["youden_j"] == 1.0 and "Youden" in choice["statement"]
    shifted = subtype_threshold(labels, np.array([0.05, 0.1, 0.15, 0.25, 0.8, 0.9]))
    assert shifted["value"] == pytest.approx(0.2)  # the only cut with J = 1: mid-gap between 0.15 and 0.25
    overlap = subtype_threshold(np.array([0, 1, 0, 1]), np.array([0.2, 0.4, 0.6, 0.8]))
    assert overlap["value"] in (0.3, 0.7) and overlap["youden_j"] == 0.5
    assert subtype_threshold(labels, np.linspace(0, 1, 6), "half")["value"] == 0.5
    assert subtype_threshold(np.ones(3), np.array([0.2, 0.5, 0.9]))["value"] == 0.5  # no viral film: 0.5
    with pytest.raises(UserError, match="subtype.threshold_rule"):
        subtype_threshold(labels, np.linspace(0, 1, 6), "f1")


def test_subtype_figures_name_bacterial_the_positive():
    labels = np.array([1, 1, 1, 1, 0, 0])
    m = subtype_figures(labels, np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1]), 0.5)
    assert (m["films"], m["bacterial"], m["viral"]) == (6, 4, 2)
    assert (m["sensitivity"], m["specificity"], m["accuracy"]) == (0.75, 0.5, 0.6667)
    assert m["roc_auc"] == 0.875
    only = subtype_figures(np.ones(2, int), np.array([0.9, 0.2]), 0.5)
    assert only["specificity"] is None and only["roc_auc"] is None  # no viral film: nothing to say


def test_the_audit_row_and_the_head_following_it():
    from cxr.shift.shortcuts import subtype_audit, within_class_reliance

    rng = np.random.default_rng(0)

    def split(n):
        kinds = rng.integers(0, 2, n)
        feats = rng.normal(size=(n, 10))
        feats[:, 0] += 2 * kinds  # an acquisition feature that gives the subtype away
        return feats, kinds, np.arange(n).astype(str)

    parts = {name: split(n) for name, n in (("train", 120), ("val", 30), ("test", 60))}
    feats, kinds, groups = ({k: v[i] for k, v in parts.items()} for i in range(3))
    follower = feats["test"][:, 0]  # a head that reads the acquisition feature, even within a subtype
    out = subtype_audit(feats, kinds, groups, follower)
    assert out["train"]["cv_auc"] > 0.8 and out["train_fitted_on_test_auc"] > 0.8
    assert out["head_follows_shortcut"]["viral"] > 0.3 and out["head_follows_shortcut"]["bacterial"] > 0.3
    assert set(within_class_reliance(follower, follower, kinds["test"], names=("viral", "bacterial"))) == \
        {"viral", "bacterial"}


def test_the_counterfactual_row_reads_the_pneumonia_films_given_normal_acquisition():
    from cxr.shift.robustness import SUBTYPE_VARIANT, SUBTYPE_VIEW, subtype_counterfactual

    labels = np.array([0, 1, 1, 0, 1, 1])
    films, kinds = np.array([1, 2, 5]), np.array([1, 0, 1])  # test index 4: PNEUMONIA of no known subtype
    views = {SUBTYPE_VIEW: np.arange(4)[:, None, None] * np.ones((4, 2, 2))}  # the 4 PNEUMONIA images, in order
    shifted = {0: 0.9, 1: 0.6, 2: 0.1, 3: 0.2}  # what the head says of each shifted image, by its position

    out = subtype_counterfactual(views, labels, films, kinds, np.array([0.9, 0.1, 0.8]),
                                 lambda x: np.array([shifted[int(im[0, 0])] for im in x]), 0.5)
    assert out["clean"]["roc_auc"] == 1.0 and out["clean"]["accuracy"] == 1.0
    moved = out[SUBTYPE_VARIANT]  # films 1, 2, 5 are PNEUMONIA positions 0, 1, 3: 0.9, 0.6, 0.2
    assert moved["accuracy"] == 0.3333 and moved["roc_auc"] == 0.5 and moved["roc_auc_change"] == -0.5
    assert moved["mean_abs_change"] == pytest.approx((0.0 + 0.5 + 0.6) / 3, abs=1e-4)
