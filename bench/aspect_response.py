"""How a trained model's score moves with a film's aspect, on films it trained on and films it did not
(issue 23: what the counterfactual proxy's drop is made of).

    .venv/bin/python bench/aspect_response.py RUN [RUN ...] [--per-class 200] [--seed 0]

``RUN`` is a project directory whose evaluate stage has run (``models/model.keras``, ``data/prepared``,
``data/raw``, ``metrics.json``, ``reports/train/summary.json``): a ``dvc repro`` on real data. For a
sample of each class's films in the training split and in the test split, the films are moved ``t`` of
the way towards the other class's aspect with the training transform
(:func:`cxr.shift.acquisition.shift`, as ``train.reacquire`` does), at ``t = 1`` also with the
proxy's held-out implementation (a one-axis stretch); and the NORMAL test films are given the
softening of a one-axis resampling without its change of shape. Each cell: mean P(PNEUMONIA), and
the share on the right side of the run's threshold (specificity for NORMAL, recall for PNEUMONIA).
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
from cxr.shift.acquisition import ClassAcquisition, decode_gray, shift, squash_stretched  # noqa: E402

STEPS = (-0.5, 0.0, 0.5, 1.0, 1.5)


def moved(img, label: int, facts: ClassAcquisition, t: float, held_out: bool = False):
    """``img`` of class ``label`` moved ``t`` of the way to the other class's aspect (its detail kept)."""
    if held_out:
        return squash_stretched(img, facts.squash_towards_other(label) ** t)
    return shift(img, label, facts, t, 0.0)


def softened(img, axis: str, factor: float):
    """The softening of resampling one axis by ``factor`` (up, bilinear, then box-averaged back down),
    without the change of shape that a stretch brings with it."""
    from PIL import Image

    w, h = img.size
    up = (w, round(h * factor)) if axis == "y" else (round(w * factor), h)
    return img.resize(up, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BOX)


RESPONSE_COLUMNS = ["split", "class", "films"] + [f"t = {t:+.1f}" for t in STEPS] + ["t = 1, held-out stretch"]


def response(score, films: dict[tuple[str, int], list], facts: ClassAcquisition, threshold: float,
             to_input) -> list[dict]:
    """One row per (split, class) of ``films``, a "mean P / share right" cell per :data:`RESPONSE_COLUMNS`
    variant. ``score`` maps model inputs to P(PNEUMONIA); ``to_input`` a list of PIL images to model
    inputs (the project's preprocessing)."""
    rows = []
    for (split, label), imgs in films.items():
        row = {"split": split, "class": ("NORMAL", "PNEUMONIA")[label], "films": str(len(imgs))}
        for column, (t, held_out) in zip(RESPONSE_COLUMNS[3:], [(t, False) for t in STEPS] + [(1.0, True)]):
            p = score(to_input([moved(im, label, facts, t, held_out) for im in imgs]))
            right = np.mean(p < threshold) if label == 0 else np.mean(p >= threshold)
            row[column] = f"{p.mean():.3f} / {right:.2f}"
        rows.append(row)
    return rows


def softening_rows(score, imgs: list, facts: ClassAcquisition, threshold: float, to_input) -> list[dict]:
    """NORMAL films: the held-out stretch against its softening alone, along each axis."""
    factor = facts.squash_towards_other(0)
    out = []
    for name, fn in (("as acquired", lambda im: im),
                     ("stretched in height (the proxy's aspect change)", lambda im: squash_stretched(im, factor)),
                     ("softened along the height only", lambda im: softened(im, "y", factor)),
                     ("softened along the width only", lambda im: softened(im, "x", factor))):
        p = score(to_input([fn(im) for im in imgs]))
        out.append({"NORMAL test films": name, "mean P": f"{p.mean():.3f}", "specificity": f"{np.mean(p < threshold):.2f}"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--per-class", type=int, default=200, help="films per class and split (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import keras

    from cxr import params
    from cxr.data.dataset import load_split
    from cxr.imaging.preprocess import preprocess_image
    from cxr.model.network import Scorer
    from cxr.records.evaluation import Evaluation
    from cxr.records.train_summary import TrainSummary

    for run in args.runs:
        threshold = Evaluation.read(run / "metrics.json").threshold
        imaging = TrainSummary.read(run / "reports/train/summary.json").imaging
        facts = ClassAcquisition.from_params(params.section("acquisition", run / "params.yaml"))
        scorer = Scorer(keras.saving.load_model(run / "models/model.keras"), "litert")
        rng = np.random.default_rng(args.seed)
        films = {}
        for split in ("train", "test"):
            data = load_split(run / "data/prepared", split)
            for label in (0, 1):
                idx = np.flatnonzero(data.labels == label)
                idx = np.sort(rng.choice(idx, size=min(args.per_class, len(idx)), replace=False))
                films[(split, label)] = [decode_gray((run / "data/raw" / str(data.paths[i])).read_bytes()) for i in idx]

        def to_input(imgs):
            return np.stack([preprocess_image(im, imaging) for im in imgs])

        print(f"\n{run} (threshold {threshold:.4f}): mean P(PNEUMONIA) / specificity (NORMAL) or recall (PNEUMONIA)\n")
        print(render_table(response(scorer.probabilities, films, facts, threshold, to_input), RESPONSE_COLUMNS))
        print()
        print(render_table(softening_rows(scorer.probabilities, films[("test", 0)], facts, threshold, to_input),
                           ["NORMAL test films", "mean P", "specificity"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
