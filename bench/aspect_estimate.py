"""Can a film's aspect be read back from the film itself? (issue 23: the feasibility of giving the network
every thorax at one canonical shape, instead of teaching it to ignore the shape.)

    .venv/bin/python bench/aspect_estimate.py RUN --weights ../shared/weights/...no_top.h5 [--films 300]

``RUN`` is a project directory after a real-data ``dvc repro`` (``data/prepared``, ``data/raw``, its
``params.yaml``). Healthy training films are moved a random ``t`` in [-0.5, 1.5] of the way towards
PNEUMONIA's aspect (the training transform) and a ridge regression learns ``t`` from the *ImageNet*
network's features (never trained on the labels, so it cannot read the finding): the global average,
or the 7 x 7 map averaged along each axis. It is judged, film-grouped, on held-out healthy training
films and then, never trained on, on the test split: healthy films as acquired (should read 0), moved
with the proxy's held-out stretch to ``t = 1`` (should read 1), and PNEUMONIA films as acquired (they
*are* at PNEUMONIA's aspect: should read 1 if the estimate reads the anatomy's shape and not the disease).
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


def read_back(train: dict[str, np.ndarray], t: np.ndarray, probes: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """One row per feature set of ``train``: a ridge regression of ``t`` on it, its cross-validated R² and
    error (5 folds), then its reading (mean ± sd) of each probe's features of that set."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    rows = []
    for name, feats in train.items():
        ridge = RidgeCV(alphas=np.logspace(-1, 4, 11))
        cv = cross_val_predict(ridge, feats, t, cv=KFold(5, shuffle=True, random_state=0))
        ridge.fit(feats, t)
        row = {"features": name, "healthy train, cross-validated: R^2 / error sd":
               f"{1 - np.var(cv - t) / np.var(t):.2f} / {np.std(cv - t):.2f}"}
        for probe, probe_feats in probes.items():
            p = ridge.predict(probe_feats[name])
            row[probe] = f"{p.mean():+.2f} ± {p.std():.2f}"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--weights", required=True, help="the ImageNet MobileNetV2 no-top .h5")
    ap.add_argument("--films", type=int, default=300, help="films per group (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import keras

    from cxr import params
    from cxr.data.dataset import load_split
    from cxr.imaging.preprocess import preprocess_image
    from cxr.model.network import build
    from cxr.records.train_summary import TrainSummary
    from cxr.shift.acquisition import ClassAcquisition, decode_gray, shift, squash_stretched

    run = args.run
    imaging = TrainSummary.read(run / "reports/train/summary.json").imaging
    facts = ClassAcquisition.from_params(params.section("acquisition", run / "params.yaml"))
    net = build(imaging.image_size, weights=str(args.weights))
    fmap = keras.Model(net.input, net.get_layer("out_relu").output)
    rng = np.random.default_rng(args.seed)

    def films(split: str, label: int, n: int) -> list:
        data = load_split(run / "data/prepared", split)
        idx = np.flatnonzero(data.labels == label)
        idx = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
        return [decode_gray((run / "data/raw" / str(data.paths[i])).read_bytes()) for i in idx]

    def features(imgs) -> dict[str, np.ndarray]:
        x = np.stack([preprocess_image(im, imaging) for im in imgs]).astype(np.float32)[..., None]
        maps = np.concatenate([np.asarray(fmap(x[i:i + 32], training=False)) for i in range(0, len(x), 32)])
        return {"global average (1,280)": maps.mean(axis=(1, 2)),
                "rows and columns (7 x 1,280 each)": np.concatenate([maps.mean(axis=2).reshape(len(maps), -1),
                                                                    maps.mean(axis=1).reshape(len(maps), -1)], 1)}

    train_normal = films("train", 0, args.films)
    t_train = rng.uniform(-0.5, 1.5, len(train_normal))
    f_train = features([shift(im, 0, facts, t, 0.0) for im, t in zip(train_normal, t_train)])
    test_normal, test_pneumonia = films("test", 0, args.films), films("test", 1, args.films)
    to_pneumonia = facts.squash_towards_other(0)
    probes = {"healthy test films as acquired (0)": features(test_normal),
              "healthy test films, held-out stretch to t = 1 (1)": features(
                  [squash_stretched(im, to_pneumonia) for im in test_normal]),
              "PNEUMONIA test films as acquired (1)": features(test_pneumonia)}

    rows = read_back(f_train, t_train, probes)
    print(f"\n{run}: the estimated aspect position t (0 NORMAL's, 1 PNEUMONIA's), mean ± sd over films\n")
    print(render_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
