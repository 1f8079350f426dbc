"""Does the subtype head gain from where on the film the network's evidence sits? (issue 24)

    .venv/bin/python bench/subtype_pooling.py RUN [RUN ...]

``RUN`` is a project directory after a real-data ``dvc repro`` (``data/prepared``, ``models/model.keras``).
Bacterial pneumonia is typically a lobar consolidation on one side, viral an interstitial pattern on
both; the served subtype head reads the global average of the network's last 7 x 7 map, which keeps
neither the side nor how focal the evidence is. Here the PNEUMONIA films whose names give the subtype
go through each run's trained network once (as acquired), and a class-balanced logistic regression is
fitted on the training films' map pooled in several ways, its L2 strength chosen on the validation
films' ROC AUC, then scored on the test films. "average" is the served head's input.
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

STRENGTHS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)  # sklearn's C


def pooled(maps: np.ndarray, how: str) -> np.ndarray:
    """``[N, H, W, C]`` maps -> ``[N, F]`` features, pooled as ``how`` (one of :data:`WAYS`). The image's
    left half is the patient's right."""
    m = maps.astype(np.float32)
    width = m.shape[2]

    def halves():
        return m[:, :, : width // 2].mean((1, 2)), m[:, :, (width + 1) // 2 :].mean((1, 2))

    if how == "average":
        return m.mean((1, 2))
    if how == "max":
        return m.max((1, 2))
    if how == "average + max":
        return np.concatenate([m.mean((1, 2)), m.max((1, 2))], 1)
    if how == "average + spread":
        return np.concatenate([m.mean((1, 2)), m.std((1, 2))], 1)
    if how == "left, right halves":
        return np.concatenate(halves(), 1)
    if how == "stronger, weaker half":
        left, right = halves()
        return np.concatenate([np.maximum(left, right), np.minimum(left, right)], 1)
    if how == "upper, middle, lower thirds":
        return np.concatenate([band.mean((1, 2)) for band in np.array_split(m, 3, axis=1)], 1)
    raise ValueError(f"unknown pooling {how!r}: one of {WAYS}")


WAYS = ("average", "max", "average + max", "average + spread", "left, right halves", "stronger, weaker half",
        "upper, middle, lower thirds")


def maps_of(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split, the last feature map of the run's network for its films of known subtype, and their labels."""
    import keras
    import tensorflow as tf

    from cxr.data.dataset import known_subtype, load_split
    from cxr.imaging.preprocess import to_model_input

    model = keras.models.load_model(run / "models/model.keras", compile=False)
    last = tf.function(keras.Model(model.inputs, model.get_layer("pooled").input))
    out = {}
    for name in ("train", "val", "test"):
        split = load_split(run / "data/prepared", name)
        idx, labels = known_subtype(split)
        maps = [np.asarray(last(to_model_input(split.images[idx[i:i + 64]]))).astype(np.float16)
                for i in range(0, len(idx), 64)]
        out[name] = (np.concatenate(maps), labels)
    return out


def scores(maps: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Per pooling, (validation, test) ROC AUC of the logistic head whose strength validation chose."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    out = {}
    for how in WAYS:
        x = {name: pooled(m, how) for name, (m, _) in maps.items()}
        y = {name: labels for name, (_, labels) in maps.items()}
        scale = StandardScaler().fit(x["train"])
        best = None
        for c in STRENGTHS:
            head = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scale.transform(x["train"]),
                                                                                      y["train"])
            val = roc_auc_score(y["val"], head.decision_function(scale.transform(x["val"])))
            if best is None or val > best[0]:
                best = (val, roc_auc_score(y["test"], head.decision_function(scale.transform(x["test"]))))
        out[how] = best
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    per_run = {run.name: scores(maps_of(run)) for run in args.runs}
    means = {how: float(np.mean([per_run[r][how][1] for r in per_run])) for how in WAYS}
    rows = [{"pooling of the 7 x 7 map": how, **{f"test AUC {r}": f"{per_run[r][how][1]:.4f}" for r in per_run},
             "mean": f"{means[how]:.4f}", "vs average": f"{means[how] - means['average']:+.4f}"} for how in WAYS]
    print(render_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
