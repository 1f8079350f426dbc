"""Lung fields on the films (issue 23): where a trained model's Grad-CAM mass sits against the lungs,
and whether giving the network the thorax alone (a lung-box crop) ranks the proxy better.

The lungs are found by ``lungs-finder`` (PyPI; HOG, LBP and Haar detectors inside its wheel, no
download), which needs OpenCV 4 (``opencv-python-headless<5``: OpenCV 5 dropped the HOG descriptor).
Neither is a project dependency: install them into a separate environment for the ``boxes`` step,
which imports nothing but numpy, OpenCV and lungs-finder::

    .venv/bin/python bench/lung_fields.py sets RUN sets.npz          # the films, as the pipeline makes them
    python3.11 -m venv /tmp/lf && /tmp/lf/bin/pip install lungs-finder 'opencv-python-headless<5'
    /tmp/lf/bin/python bench/lung_fields.py boxes sets.npz boxes.npz
    .venv/bin/python bench/lung_fields.py cam sets.npz boxes.npz RUN [RUN ...]
    .venv/bin/python bench/lung_fields.py probe sets.npz boxes.npz RUN

``RUN`` is a project directory after a real-data ``dvc repro`` (``data/prepared``, ``data/raw``,
``models/model.keras``, ``params.yaml``, ``metrics.json``). ``sets`` writes its carved train, validation
and test films, the proxy's NORMAL copies (the test NORMAL films given PNEUMONIA's acquisition,
held-out implementation, as ``metrics.json`` ``proxy``) and one class-mixed re-acquired view of each
training film (the default's ``train.reacquire``). ``cam`` reports the share of each film's Grad-CAM
mass inside the two lung boxes, beside the boxes' share of the film, on films whose two boxes pass
:func:`plausible`. ``probe`` trains a logistic probe on the frozen ImageNet network's pooled features,
the films as they are against cropped to the thorax box (:func:`thorax`), with and without the
class-mixed views, and reads the carved split and the proxy at the validation threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DETECT_SIZE = 512  # the films are upscaled to this before detection (the detectors' window is 32 x 64)
SPLITS = ("train", "val", "test", "proxy_normal", "train_view")


def plausible(right: np.ndarray, left: np.ndarray) -> bool:
    """Both lungs found, the left one (image right) at least 0.6 of the right one's size and beside
    it: on the films looked at, lungs-finder's left box is otherwise a small patch off the lung."""
    return bool(right[0] >= 0 and left[0] >= 0 and left[2] >= 0.6 * right[2] and left[3] >= 0.6 * right[3]
                and left[0] > right[0] + 0.5 * right[2])


def lung_mask(box: np.ndarray, size: int) -> np.ndarray | None:
    """The two lung boxes (``box``: right x, y, w, h, then left, ``-1`` where not found) as a mask,
    or None where they are not :func:`plausible`."""
    right, left = box[:4], box[4:]
    if not plausible(right, left):
        return None
    mask = np.zeros((size, size), bool)
    for x, y, w, h in (right, left):
        mask[int(max(y, 0)):int(np.ceil(y + h)), int(max(x, 0)):int(np.ceil(x + w))] = True
    return mask


def thorax(box: np.ndarray, size: int, pad: float = 0.04, min_side: float = 0.4) -> tuple | None:
    """The crop box (x0, y0, x1, y1) around both lungs, padded; a lung not found or not plausible is
    put where lungs-finder itself guesses it (the other's size, beside it past the spine). None where
    nothing was found or the box is under ``min_side`` of the film (the film is then used whole)."""
    right, left = box[:4].astype(float), box[4:].astype(float)
    if right[0] < 0 and left[0] < 0:
        return None
    if right[0] < 0:
        right = np.array([left[0] - 1.2 * left[2], left[1], left[2], left[3]])
    if not plausible(right, left):
        left = np.array([right[0] + 1.2 * right[2], right[1], right[2], right[3]])
    x0, y0 = min(right[0], left[0]), min(right[1], left[1])
    x1, y1 = max(right[0] + right[2], left[0] + left[2]), max(right[1] + right[3], left[1] + left[3])
    w, h = x1 - x0, y1 - y0
    x0, y0, x1, y1 = max(0.0, x0 - pad * w), max(0.0, y0 - pad * h), min(size, x1 + pad * w), min(size, y1 + pad * h)
    if x1 - x0 < min_side * size or y1 - y0 < min_side * size:
        return None
    return x0, y0, x1, y1


def cropped(images: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """Each film cropped to its :func:`thorax` box and resized back to the film's size (the thorax
    at one scale and shape); the films without a box whole. Returns (films, how many were whole)."""
    from PIL import Image

    out, whole = [], 0
    for image, box in zip(images, boxes):
        size = image.shape[0]
        crop = thorax(box, size)
        if crop is None:
            whole += 1
            out.append(image)
        else:
            out.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=crop)))
    return np.stack(out), whole


def detect(image: np.ndarray) -> list[float]:
    """lungs-finder's own cascade order (``lungs_finder.get_lungs``), returning both boxes in the
    film's pixels instead of the crop: right x, y, w, h, then left; ``-1`` where not found."""
    import cv2
    from lungs_finder import haar_finder, hog_finder, lbp_finder

    im = cv2.resize(image, (DETECT_SIZE, DETECT_SIZE), interpolation=cv2.INTER_LINEAR)
    right, left = hog_finder.find_right_lung_hog(im), hog_finder.find_left_lung_hog(im)
    if right is not None and left is not None and abs(right[0] - left[0]) < min(right[2], left[2]):
        right, left = lbp_finder.find_right_lung_lbp(im), lbp_finder.find_left_lung_lbp(im)
    right = right if right is not None else haar_finder.find_right_lung_haar(im)
    left = left if left is not None else haar_finder.find_left_lung_haar(im)
    right = right if right is not None else lbp_finder.find_right_lung_lbp(im)
    left = left if left is not None else lbp_finder.find_left_lung_lbp(im)
    scale = image.shape[0] / DETECT_SIZE
    return [v * scale for box in (right, left) for v in (box if box is not None else [-1 / scale] * 4)]


def make_sets(run: Path, out: Path) -> None:
    from cxr import params
    from cxr.data.dataset import load_split
    from cxr.imaging.preprocess import ImagingConfig
    from cxr.shift.acquisition import CUES, ClassAcquisition
    from cxr.shift.robustness import Reacquire, acquisition_view, counterfactual_view

    imaging = ImagingConfig.from_params(params.section("imaging", run / "params.yaml"))
    facts = ClassAcquisition.from_params(params.section("acquisition", run / "params.yaml"))
    reacquire = Reacquire.from_params(params.section("train", run / "params.yaml").get("reacquire"))
    sets = {}
    for split in ("train", "val", "test"):
        data = load_split(run / "data/prepared", split)
        sets[split], sets[f"{split}_labels"], sets[f"{split}_paths"] = data.images, data.labels, data.paths
    normal = np.flatnonzero(sets["test_labels"] == 0)
    sets["proxy_normal"] = counterfactual_view(run / "data/raw", sets["test_paths"][normal],
                                               sets["test_labels"][normal], facts, imaging, CUES, held_out=True)
    sets["proxy_normal_index"] = normal
    sets["train_view"] = acquisition_view(run / "data/raw", sets["train_paths"], sets["train_labels"], reacquire,
                                          facts, imaging, seed=3)
    np.savez(out, **sets)


def find_boxes(sets: Path, out: Path) -> None:
    from multiprocessing import Pool

    films = np.load(sets, allow_pickle=True)
    boxes = {}
    with Pool() as pool:
        for split in SPLITS:
            boxes[split] = np.array(pool.map(detect, list(films[split]), chunksize=16), np.float32)
            found = [(boxes[split][:, k] >= 0).mean() for k in (0, 4)]
            both = np.mean([plausible(b[:4], b[4:]) for b in boxes[split]])
            print(f"{split}: {len(boxes[split])} films, right lung found {found[0]:.3f}, left {found[1]:.3f}, "
                  f"both plausible {both:.3f}", flush=True)
    np.savez(out, **boxes)


def cam_mass(sets: Path, boxes: Path, runs: list[Path]) -> list[dict]:
    """Per run and group of films: the mean share of Grad-CAM mass inside the lung boxes. Every run
    must have the test split the films were taken from (``split.seed`` the same)."""
    import keras

    from cxr.data.dataset import load_split
    from cxr.model.network import grad_cam
    from cxr.records.evaluation import Evaluation

    films, found = np.load(sets, allow_pickle=True), np.load(boxes)
    rows = []
    for run in runs:
        if not np.array_equal(load_split(run / "data/prepared", "test").paths, films["test_paths"]):
            raise SystemExit(f"{run}: another test split than the one in {sets}")
        model = keras.saving.load_model(run / "models/model.keras", compile=False)
        threshold = Evaluation.read(run / "metrics.json").threshold
        groups: dict[str, list[tuple[float, float]]] = {}
        for split, labels in (("test", films["test_labels"]), ("proxy_normal", np.zeros(len(films["proxy_normal"])))):
            for image, box, label in zip(films[split], found[split], labels):
                mask = lung_mask(box, image.shape[0])
                if mask is None:
                    continue
                cam, probability = grad_cam(model, image)
                share = (float(cam[mask].sum() / max(float(cam.sum()), 1e-9)), float(mask.mean()))
                name = "carved " + ("PNEUMONIA" if label else "NORMAL") if split == "test" else "proxy NORMAL"
                groups.setdefault(name, []).append(share)
                if label == 0:
                    decided = "flagged" if probability >= threshold else "passed"
                    groups.setdefault(f"{name}, {decided}", []).append(share)
        for name, shares in groups.items():
            a = np.array(shares)
            rows.append({"run": run.name, "films": name, "n": str(len(a)), "CAM mass in lungs": f"{a[:, 0].mean():.3f}",
                         "median": f"{np.median(a[:, 0]):.3f}", "lung area": f"{a[:, 1].mean():.3f}"})
    return rows


def frozen_pooled(run: Path, films, what: str):
    """The frozen ImageNet network of ``run``'s params, up to its pooled features, on LiteRT
    (parity-checked against Keras on a probe batch): what a probe reads."""
    import keras

    from cxr import params
    from cxr.imaging.preprocess import to_model_input
    from cxr.model.inference import runner
    from cxr.model.network import build, resolve_weights

    weights = params.section("train", run / "params.yaml")["weights"]
    alpha = float(params.section("model", run / "params.yaml")["alpha"])
    size = films["test"].shape[1]
    model = build(size, None, resolve_weights(weights, alpha, size))
    return runner(keras.Model(model.input, model.get_layer("pooled").output), "litert",
                  probe=to_model_input(films["val"][:8]), what=what)


def probe_row(name: str, train_x: np.ndarray, train_y: np.ndarray, feats: dict[str, np.ndarray], films, run: Path,
              score=None) -> dict:
    """A logistic probe on ``train_x`` (C chosen on the validation AUC), read as
    :func:`bench.posthoc.figures` reads a model: ``feats`` has the ``val``, ``test`` and ``proxy_normal``
    features; ``score(clf, split)`` overrides how a split is scored (default: its features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from bench.posthoc import figures
    from cxr import params

    cfg = params.section("evaluate", run / "params.yaml")
    scaler = StandardScaler().fit(train_x)
    fits = [LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scaler.transform(train_x), train_y)
            for c in (0.003, 0.01, 0.03, 0.1)]
    score = score or (lambda f, split: f(feats[split]))

    def scorer(clf):
        return lambda x: clf.decision_function(scaler.transform(x))

    clf = max(fits, key=lambda c: roc_auc_score(films["val_labels"], score(scorer(c), "val")))
    z = {s: score(scorer(clf), s) for s in ("val", "test")}
    z["proxy"] = z["test"].copy()
    z["proxy"][films["proxy_normal_index"]] = score(scorer(clf), "proxy_normal")
    labels = {"val": films["val_labels"], "test": films["test_labels"]}
    return figures(f"{name} (C {clf.C})", z, labels, float(cfg["target_recall"]), str(cfg["threshold_rule"]))


def probe(sets: Path, boxes: Path, run: Path) -> list[dict]:
    """The frozen ImageNet network's pooled features, a logistic probe per variant."""
    from cxr.model.cache import run_in_batches

    films, found = np.load(sets, allow_pickle=True), np.load(boxes)
    pooled = frozen_pooled(run, films, "bench/lung_fields.py probe")
    feats = {}
    for split in SPLITS:
        crops, whole = cropped(films[split], found[split])
        print(f"{split}: {whole} of {len(crops)} films left whole (no thorax box)", flush=True)
        for mode, images in (("as acquired", films[split]), ("thorax crop", crops)):
            feats[split, mode] = run_in_batches(pooled, images, 32, desc=f"{split}, {mode}", dtype=np.float32)
    rows = []
    for mixed in (False, True):
        for mode in ("as acquired", "thorax crop"):
            x, y = feats["train", mode], films["train_labels"]
            if mixed:
                x, y = np.concatenate([x, feats["train_view", mode]]), np.concatenate([y, y])
            rows.append(probe_row(f"{mode}{', + one class-mixed view' if mixed else ''}", x, y,
                                  {s: feats[s, mode] for s in SPLITS}, films, run))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    s = sub.add_parser("sets")
    s.add_argument("run", type=Path)
    s.add_argument("out", type=Path)
    s = sub.add_parser("boxes")
    s.add_argument("sets", type=Path)
    s.add_argument("out", type=Path)
    s = sub.add_parser("cam")
    s.add_argument("sets", type=Path)
    s.add_argument("boxes", type=Path)
    s.add_argument("runs", nargs="+", type=Path)
    s = sub.add_parser("probe")
    s.add_argument("sets", type=Path)
    s.add_argument("boxes", type=Path)
    s.add_argument("run", type=Path)
    args = ap.parse_args(argv)
    if args.step == "sets":
        make_sets(args.run, args.out)
    elif args.step == "boxes":
        try:
            import cv2  # noqa: F401
            import lungs_finder  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"boxes: {exc}; run this step where `pip install lungs-finder 'opencv-python-headless<5'` "
                             "was done (see this file's docstring)") from None
        find_boxes(args.sets, args.out)
    else:
        from bench.report import render_table

        if args.step == "cam":
            rows = cam_mass(args.sets, args.boxes, args.runs)
            print(render_table(rows, ["run", "films", "n", "CAM mass in lungs", "median", "lung area"]))
        else:
            from bench.posthoc import COLUMNS

            print(render_table(probe(args.sets, args.boxes, args.run), COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
