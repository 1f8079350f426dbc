"""Would a fine-tuned top read bacterial against viral better than the head on the screening embedding?
(issue 24: the experiment before the build.)

    .venv/bin/python bench/subtype_top.py RUN --weights ../shared/weights/...no_top.h5 [--seeds 1234 1 2]

``RUN`` is a project directory after a real-data ``dvc repro`` (``data/prepared``, ``metrics.json``).
The PNEUMONIA films whose names give their subtype go through the frozen ImageNet bottom once (training
films as acquired and one augmented view, as the screening cache does), then the screening network's
trainable top (``train.fine_tune_from`` on, batch norms frozen) is trained for the subtype from the
ImageNet weights: a head phase on the pooled features, then the top, class-weighted, early-stopped on
the validation films' ROC AUC, once per seed on the one cache. Printed beside the run's own subtype
figures (the logistic head on the screening embedding), on the same test films.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import render_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--weights", required=True, help="the ImageNet MobileNetV2 no-top .h5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2])
    args = ap.parse_args(argv)

    import keras
    from sklearn.metrics import roc_auc_score

    from cxr import params
    from cxr.data.dataset import known_subtype, load_split
    from cxr.imaging.preprocess import to_model_input
    from cxr.model.cache import run_in_batches
    from cxr.model.inference import runner
    from cxr.model.network import build, split_at
    from cxr.model.train_config import TrainConfig, class_weights
    from cxr.model.training import augmenter, fit_member

    run = args.run
    cfg = TrainConfig.from_params({**params.section("train", run / "params.yaml"), "weights": str(args.weights)})
    imaging_size = int(params.section("imaging", run / "params.yaml")["image_size"])
    split = {}
    for name in ("train", "val", "test"):
        data = load_split(run / "data/prepared", name)
        idx, y = known_subtype(data)
        split[name] = (data.images[idx], y)

    t0 = time.time()
    net = build(imaging_size, weights=str(args.weights))
    bottom, _ = split_at(net, cfg.fine_tune_from)
    frozen = runner(bottom, cfg.frozen_runtime, probe=to_model_input(split["train"][0][:8]))
    augment = augmenter(cfg.augment, 0)
    train_acts = np.stack([run_in_batches(frozen, split["train"][0], 32, None, "train as acquired"),
                           run_in_batches(frozen, split["train"][0], 32, augment, "train augmented")], axis=1)
    val_acts = run_in_batches(frozen, split["val"][0], 32, None, "val").astype(np.float32)
    test_acts = run_in_batches(frozen, split["test"][0], 32, None, "test").astype(np.float32)
    cache_s = time.time() - t0

    y_train, y_val, y_test = (split[n][1] for n in ("train", "val", "test"))
    weights = class_weights(y_train)
    sample_w = np.where(y_train == 1, weights[1], weights[0]).astype(np.float32)
    rows = []
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        model = build(imaging_size, weights=str(args.weights))
        _, top = split_at(model, cfg.fine_tune_from)
        cut = model.get_layer(cfg.fine_tune_from).input
        pooled = keras.Model(cut, model.get_layer("pooled").output)
        feats = np.asarray(pooled(train_acts.reshape((-1,) + train_acts.shape[2:]).astype(np.float32)))
        feats = feats.reshape(len(y_train), 2, -1)
        val_feats = np.asarray(pooled(val_acts))
        t0 = time.time()
        # The screening schedule itself (head, then the top), not a copy of it: only the targets differ.
        fit_member(model, top, cfg, feats, val_feats, train_acts, val_acts, y_train, sample_w,
                   y_val.astype(np.float32), seed, 0, 0, {"head_fit_s": 0.0, "fine_tune_fit_s": 0.0}, [])
        scores = {n: np.asarray(top(a)).ravel() for n, a in (("val", val_acts), ("test", test_acts))}
        rows.append({"subtype model": f"fine-tuned top, seed {seed}",
                     "val ROC AUC": f"{roc_auc_score(y_val, scores['val']):.4f}",
                     "test ROC AUC": f"{roc_auc_score(y_test, scores['test']):.4f}",
                     "fit s": f"{time.time() - t0:.0f} (+ {cache_s:.0f} cache, once)"})
    own = json.loads((run / "metrics.json").read_text())["subtype"]
    rows.append({"subtype model": "the run's head on the screening embedding", "val ROC AUC": "",
                 "test ROC AUC": f"{own['test']['roc_auc']:.4f}", "fit s": ""})
    print(f"\n{run}: bacterial (1) against viral (0); {len(y_train)} training, {len(y_val)} validation, "
          f"{len(y_test)} test films\n")
    print(render_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
