"""train: MobileNetV2 transfer learning on the prepared splits.

Reads params ``train``, ``model`` and ``imaging``; writes ``models/model.keras`` (calibrated,
the full inference model), ``reports/train/history.csv`` (per-epoch curves, a DVC plot)
and ``reports/train/summary.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cxr import UserError, cli, params
from cxr.dataset import load_split
from cxr.imaging import ImagingConfig
from cxr.io import atomic_path, write_csv, write_json
from cxr.model import build, resolve_weights, weights_fingerprint
from cxr.training import TrainConfig, train

log = logging.getLogger("train")
PREPARED = Path("data/prepared")
RAW = Path("data/raw")
MODEL = Path("models/model.keras")
REPORTS = Path("reports/train")
HISTORY_COLUMNS = ["epoch", "phase", "loss", "auc", "val_loss", "val_auc"]


def main() -> None:
    cfg = TrainConfig.from_params(params.section("train"))
    model_cfg = params.section("model")
    imaging = ImagingConfig.from_params(params.section("imaging"))
    alpha = params.require(model_cfg, "alpha", float, "model")
    dropout = params.in_range(params.require(model_cfg, "dropout", float, "model"), 0.0, 0.9, "model.dropout")
    weights = resolve_weights(cfg.weights, alpha, imaging.image_size)
    train_split, val_split = load_split(PREPARED, "train"), load_split(PREPARED, "val")
    if train_split.images.shape[1] != imaging.image_size:
        raise UserError("data/prepared was made with another imaging.image_size: rerun the split stage")
    log.info("train %s, val %s, weights=%s", train_split.counts(), val_split.counts(), weights)

    import keras

    keras.utils.set_random_seed(cfg.seed)
    model = build(imaging.image_size, alpha=alpha, dropout=dropout, weights=weights)
    started = time.time()
    view_sources = None
    if cfg.acquisition_views and cfg.views > 1 and weights is not None:  # from scratch uses no views
        from cxr.robustness import acquisition_view

        view_sources = [acquisition_view(RAW, train_split.paths, imaging, seed=cfg.seed + v) for v in range(1, cfg.views)]
        log.info("%d augmented views from re-acquired raw images (%.0f s)", len(view_sources), time.time() - started)
    history, facts = train(model, train_split, val_split, cfg, view_sources)
    facts["acquisition_views"] = bool(view_sources)
    facts["wall_time_s"] = round(time.time() - started, 1)
    facts["weights"] = weights_fingerprint(weights)
    facts["imaging"] = imaging.to_dict()

    with atomic_path(MODEL.parent) as tmp:
        tmp.mkdir(parents=True)
        model.save(tmp / MODEL.name)
    write_csv(REPORTS / "history.csv", history, HISTORY_COLUMNS)
    write_json(REPORTS / "summary.json", facts)
    log.info("saved %s (%.0f s): %s", MODEL, facts["wall_time_s"], facts.get("calibration"))


if __name__ == "__main__":
    cli.run(main, "train")
