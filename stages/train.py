"""train: MobileNetV2 transfer learning on the prepared splits (with ``train.weights: none``,
the ``model.from_scratch`` network trained whole).

Reads params ``train``, ``model``, ``imaging``, ``acquisition``, ``ood`` and ``subtype``; writes
``models/model.keras`` (calibrated, the full inference model), ``models/ood.npz`` (the
not-a-chest-X-ray detector on its embedding), ``models/subtype.npz`` (the bacterial-or-viral head on
the same embedding, fitted last: the screening model is saved before it), ``reports/train/history.csv``
(per-epoch curves, a DVC plot) and ``reports/train/summary.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cxr import UserError, cli, params
from cxr.data.dataset import SplitData, load_split
from cxr.imaging.preprocess import ImagingConfig
from cxr.io import atomic_path, write_csv
from cxr.model.network import Architecture, build, embeddings, resolve_weights, weights_fingerprint
from cxr.model.ood import OodConfig
from cxr.model.ood_fit import fit_on_views
from cxr.model.subtype import SubtypeConfig
from cxr.model.subtype_fit import fit_on_model
from cxr.model.train_config import TrainConfig
from cxr.model.training import history_columns, train
from cxr.records.train_summary import TrainSummary
from cxr.shift.acquisition import ClassAcquisition

log = logging.getLogger("train")


def architecture(arch: Architecture, members: int) -> dict:
    """What the card says the network is; with members, that one frozen bottom feeds their tops."""
    if members == 1:
        return {**arch.to_dict(), "description": arch.describe()}
    return {**arch.to_dict(), "members": members,
            "description": f"{arch.describe()}: {members} tops trained on one frozen bottom, their logits averaged"}


def main(argv: list[str] | None = None) -> None:
    p = cli.paths(argv, "train", prepared="the prepared splits", raw="the downloaded data set (re-acquired views)",
                  model="the model file to write", reports="the folder for history.csv and summary.json",
                  ood="the not-a-chest-X-ray detector to write", subtype="the subtype head to write")
    cfg = TrainConfig.from_params(params.section("train"))
    arch = Architecture.from_params(params.section("model"), from_scratch=cfg.weights is None)
    imaging = ImagingConfig.from_params(params.section("imaging"))
    facts_acq = ClassAcquisition.from_params(params.section("acquisition"))
    ood_cfg = OodConfig.from_params(params.section("ood"))  # a bad knob fails before training, not after
    subtype_cfg = SubtypeConfig.from_params(params.section("subtype"))
    weights = resolve_weights(cfg.weights, arch.alpha, imaging.image_size)
    train_split, val_split = load_split(p.prepared, "train"), load_split(p.prepared, "val")
    if train_split.images.shape[1] != imaging.image_size:
        raise UserError(f"{p.prepared} was made with another imaging.image_size: rerun the split stage")
    log.info("train %s, val %s, %s, weights=%s", train_split.counts(), val_split.counts(), arch.describe(), weights)

    import keras

    keras.utils.set_random_seed(cfg.seed)
    model = build(imaging.image_size, arch, weights=weights)
    started = time.time()
    view_sources = None
    if cfg.reacquire.active and weights is not None:  # from scratch uses no cached views
        from cxr.shift.robustness import acquisition_view

        count = cfg.views - 1 if cfg.clean_view else cfg.views
        view_sources = [acquisition_view(p.raw, train_split.paths, train_split.labels, cfg.reacquire, facts_acq, imaging,
                                         seed=cfg.seed + v) for v in range(1, count + 1)]
        log.info("%d views from re-acquired raw images (%.0f s)", len(view_sources), time.time() - started)
    view_positions = None
    if view_sources and cfg.reacquire.moves_aspect:
        # where each cached view's aspect was moved, in the cache's view order (train.decorrelation; the summary)
        from cxr.shift.robustness import aspect_positions

        columns = [aspect_positions(train_split.labels, cfg.reacquire, seed=cfg.seed + v) for v in range(1, count + 1)]
        if cfg.clean_view:
            columns.insert(0, np.full(len(train_split), np.nan))
        view_positions = np.stack(columns, axis=1)
    selection = val_split
    if cfg.select_on == "val+counterfactual":
        from cxr.shift.robustness import counterfactual_view

        selection = concat(val_split, counterfactual_view(p.raw, val_split.paths, val_split.labels, facts_acq, imaging))
    audit = views_audit(train_split, view_sources)
    model, history, facts, cache = train(model, train_split, selection, cfg, view_sources, view_positions)
    with atomic_path(p.model.parent) as tmp:
        tmp.mkdir(parents=True)
        model.save(tmp / p.model.name)
    write_csv(p.reports / "history.csv", history, history_columns(history))
    fit_started = time.time()
    if cache is None:  # from scratch: the network is small, every image goes through it
        detector = fit_on_views(lambda x: embeddings(model, x), train_split.images, val_split.images, imaging,
                                ood_cfg, seed=cfg.seed)
    else:  # the images training saw reuse its cache; only their re-acquired copies are new
        val_embedding = cache.embed_activations(cache.val[:len(val_split)])
        detector = fit_on_views(cache.embed_images, train_split.images, val_split.images, imaging, ood_cfg,
                                seed=cfg.seed,
                                train_embedding=None if cache.train_clean is None
                                else cache.embed_activations(cache.train_clean),
                                val_embedding=val_embedding)
    detector.save(p.ood)
    facts.setdefault("timings_s", {})["ood_fit_s"] = round(time.time() - fit_started, 1)
    fit_started = time.time()  # last: nothing it does can reach the screening model or the detector
    subtype = fit_on_model(model, cache, train_split, val_split, cfg, subtype_cfg,
                           val_embedding=None if cache is None else val_embedding)
    subtype.save(p.subtype)
    facts["timings_s"]["subtype_fit_s"] = round(time.time() - fit_started, 1)
    head = subtype.to_dict()
    facts["subtype"] = {k: head[k] for k in ("fitted", "reason", "films", "views_per_film", "steps", "best_step",
                                             "val_auc", "calibration") if head.get(k) is not None}
    facts["peak_rss_mib"] = peak_rss_mib()
    summary = TrainSummary(
        imaging=imaging, architecture=architecture(arch, facts.get("members", 1)),
        weights=weights_fingerprint(weights), calibration=facts.pop("calibration"),
        wall_time_s=round(time.time() - started, 1), selected_on=cfg.select_on,
        reacquire={**cfg.reacquire.to_dict(), "views": len(view_sources or []), "clean_view": cfg.clean_view},
        acquisition=facts_acq.to_dict(), shortcut_audit_views=audit, training=facts)
    log.info("not-a-chest-X-ray detector (%.0f s): %s of %d validation X-rays and their re-acquired copies pass",
             facts["timings_s"]["ood_fit_s"], detector.info["val_pass_rate_achieved"], detector.info["val_images"])
    if subtype.fitted:
        log.info("subtype head, P(bacterial | pneumonia) (%.1f s): %s; validation AUC %s after %s steps",
                 facts["timings_s"]["subtype_fit_s"], subtype.info["films"], subtype.info["val_auc"],
                 subtype.info["best_step"])
    else:
        log.warning("no subtype head: %s", subtype.reason)
    summary.write(p.reports / "summary.json")
    log.info("saved %s (%.0f s): %s", p.model, summary.wall_time_s, summary.calibration)


def peak_rss_mib() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def concat(split: SplitData, shifted: np.ndarray) -> SplitData:
    """``split`` followed by its counterfactual copies (same labels and paths)."""
    return SplitData(np.concatenate([split.images, shifted]), np.concatenate([split.labels, split.labels]),
                     np.concatenate([split.paths, split.paths]))


def views_audit(split: SplitData, view_sources: list[np.ndarray] | None) -> dict:
    """The shortcut audit on what training sees: the images as acquired, and the re-acquired
    views (whether re-acquisition took the class-conditional cues away)."""
    from cxr.data.manifest import parse_name
    from cxr.shift.shortcuts import cross_validated, features

    groups = np.array([parse_name(Path(str(p)).name).patient_id for p in split.paths])
    out = {"as_acquired": cross_validated(features(split.images), split.labels, groups)}
    if view_sources:
        stacked = np.concatenate(view_sources)
        reps = len(view_sources)
        out["reacquired_views"] = cross_validated(features(stacked), np.tile(split.labels, reps), np.tile(groups, reps))
    log.info("shortcut audit on training images: as acquired AUC %s, re-acquired views AUC %s",
             out["as_acquired"]["cv_auc"], out.get("reacquired_views", {}).get("cv_auc"))
    return out


if __name__ == "__main__":
    cli.run(main, "train")
