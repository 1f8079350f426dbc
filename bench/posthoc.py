"""Two after-training levers on trained runs, without retraining (issue 23): several seeds' models
averaged, and each model averaged over the film at three shapes (test-time augmentation).

    .venv/bin/python bench/posthoc.py RUN [RUN ...] [--tta 0.5]

Each ``RUN`` is a project directory after a real-data ``dvc repro`` of the same split (``data/prepared``,
``data/raw``, ``models/model.keras``, its ``params.yaml``); typically the seeds of one configuration.
Scored: validation (where each variant's threshold is chosen with ``evaluate.target_recall`` and
``evaluate.threshold_rule``, as the evaluate stage does), the carved test split, and the proxy (the
test split with its NORMAL films given PNEUMONIA's acquisition, held-out implementation, as
``metrics.json`` ``proxy``). Variants: each run as trained; the mean logit of all runs; each run with
its logit averaged over the film as acquired and squashed / widened by the training transform
(:func:`cxr.shift.acquisition.squash`, ``--tta`` of the way between the classes' aspects, the same for
every film: at test time the label is not known).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import render_table  # noqa: E402

COLUMNS = ["variant", "threshold", "carved AUC", "carved spec", "carved recall", "proxy AUC", "proxy spec"]


def figures(name: str, logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], target_recall: float,
            rule: str) -> dict:
    """One row: the threshold chosen on validation logits, then the carved split's and the proxy's
    ranking and specificity at it (the proxy's PNEUMONIA films are the carved split's)."""
    from sklearn.metrics import roc_auc_score

    from cxr.metrics import choose_threshold

    prob = {split: 1 / (1 + np.exp(-z)) for split, z in logits.items()}  # the evaluate stage's rule reads probabilities
    thr = choose_threshold(labels["val"], prob["val"], target_recall, rule).value
    row = {"variant": name, "threshold": f"{thr:.3f}"}
    for split, short in (("test", "carved"), ("proxy", "proxy")):
        y, z = labels["test"], prob[split]
        row[f"{short} AUC"] = f"{roc_auc_score(y, z):.4f}"
        row[f"{short} spec"] = f"{np.mean(z[y == 0] < thr):.3f}"
        if short == "carved":
            row["carved recall"] = f"{np.mean(z[y == 1] >= thr):.3f}"
    return row


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--tta", type=float, default=0.5, help="how far the squashed and widened copies are moved")
    args = ap.parse_args(argv)

    import keras

    from cxr import params
    from cxr.data.dataset import load_split
    from cxr.imaging.preprocess import preprocess_image
    from cxr.model.network import Scorer
    from cxr.records.train_summary import TrainSummary
    from cxr.shift.acquisition import CUES, ClassAcquisition, decode_gray, squash
    from cxr.shift.robustness import counterfactual_view

    first = args.runs[0]
    cfg = params.section("evaluate", first / "params.yaml")
    target_recall, rule = float(cfg["target_recall"]), str(cfg["threshold_rule"])
    imaging = TrainSummary.read(first / "reports/train/summary.json").imaging
    facts = ClassAcquisition.from_params(params.section("acquisition", first / "params.yaml"))
    val, test = load_split(first / "data/prepared", "val"), load_split(first / "data/prepared", "test")
    for run in args.runs[1:]:
        if not np.array_equal(load_split(run / "data/prepared", "test").paths, test.paths):
            raise SystemExit(f"{run}: another test split than {first}'s")
    normal = np.flatnonzero(test.labels == 0)
    proxy = test.images.copy()
    proxy[normal] = counterfactual_view(first / "data/raw", test.paths[normal], test.labels[normal], facts, imaging,
                                        CUES, held_out=True)
    images = {"val": val.images, "test": test.images, "proxy": proxy}
    labels = {"val": val.labels, "test": test.labels}
    factor = (facts.aspect[1] / facts.aspect[0]) ** args.tta
    shaped = {}
    for split, imgs in images.items():  # squashed and widened, from the 224-px copies (the proxy's made ones too)
        for f in (factor, 1 / factor):
            shaped[(split, f)] = np.stack([preprocess_image(squash(_gray(im), f), imaging) for im in imgs])

    rows, singles = [], []
    for run in args.runs:
        scorer = Scorer(keras.saving.load_model(run / "models/model.keras"), "litert")
        z = {split: logit(scorer.probabilities(imgs)) for split, imgs in images.items()}
        singles.append(z)
        rows.append(figures(f"{run.name}", z, labels, target_recall, rule))
        tta = {split: np.mean([z[split]] + [logit(scorer.probabilities(shaped[(split, f)])) for f in (factor, 1 / factor)],
                              axis=0) for split in images}
        rows.append(figures(f"{run.name}, averaged over 3 shapes (±{args.tta})", tta, labels, target_recall, rule))
    if len(args.runs) > 1:
        mean = {split: np.mean([z[split] for z in singles], axis=0) for split in images}
        rows.append(figures(f"mean logit of the {len(args.runs)} runs", mean, labels, target_recall, rule))
    print()
    print(render_table(rows, COLUMNS))
    return 0


def _gray(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.asarray(array, np.uint8), "L")


if __name__ == "__main__":
    raise SystemExit(main())
