"""Does the default pass its own gate on any seed and any float path? (issue 20)

    .venv/bin/python bench/seed_study.py PROJECT --seeds 1234,1,2 --path default --out runs.jsonl
    TF_ENABLE_ONEDNN_OPTS=0 .venv/bin/python bench/seed_study.py PROJECT --seeds 1234,1 --path onednn0 --out runs.jsonl
    taskset -c 0 .venv/bin/python bench/seed_study.py PROJECT --seeds 1234,1 --path one-core --out runs.jsonl
    .venv/bin/python bench/seed_study.py PROJECT --table runs.jsonl

``PROJECT`` is a checkout whose split stage has run (``dvc repro split``): ``--seeds`` trains the model
of its ``params.yaml`` once per seed with the project's training code (the train stage's network
and schedule, not its detector or subtype head) and appends the validation and test scores of each
run to ``--out``, one JSON line each, tagged with ``--path`` (the float path the caller set up:
environment variables, a CPU mask). ``--table`` places each run's threshold with
``evaluate.threshold_rule`` on validation and prints, per path, how many runs passed
``gate.synthetic_floors`` (``gate`` floors on real data) and the spread of the figures and of
the margins to the floors, as the markdown table in docs/model.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def train_one(project: Path, seed: int) -> dict:
    import keras

    from cxr import params
    from cxr.data.dataset import load_split
    from cxr.model.network import Architecture, build, predict
    from cxr.model.train_config import TrainConfig
    from cxr.model.training import train

    cfg = TrainConfig.from_params({**params.section("train", project / "params.yaml"), "seed": seed})
    arch = Architecture.from_params(params.section("model", project / "params.yaml"), from_scratch=cfg.weights is None)
    tr, va, te = (load_split(project / "data/prepared", s) for s in ("train", "val", "test"))
    keras.utils.set_random_seed(seed)
    model = build(tr.images.shape[1], arch, weights=cfg.weights)
    start = time.perf_counter()
    train(model, tr, va, cfg)
    return {"seed": seed, "train_s": round(time.perf_counter() - start, 1),
            "val": {"labels": va.labels.tolist(), "p": predict(model, va.images).round(6).tolist()},
            "test": {"labels": te.labels.tolist(), "p": predict(model, te.images).round(6).tolist()}}


def judge(run: dict, evaluate: dict, floors: dict) -> dict:
    """One run's threshold (the project's rule, on validation) and its test figures against ``floors``."""
    import numpy as np

    from cxr.metrics import at_threshold, choose_threshold, ranking

    val_y, val_p = np.array(run["val"]["labels"]), np.array(run["val"]["p"])
    test_y, test_p = np.array(run["test"]["labels"]), np.array(run["test"]["p"])
    choice = choose_threshold(val_y, val_p, evaluate["target_recall"], evaluate["threshold_rule"],
                              evaluate["threshold_confidence"])
    at = at_threshold(test_y, test_p, choice.value)
    figures = {"roc_auc": ranking(test_y, test_p)["roc_auc"], "recall": at["recall"], "specificity": at["specificity"]}
    margins = {k: round(figures[k] - floors[f"min_{k}"], 4) for k in figures}
    return {"path": run["path"], "seed": run["seed"], "threshold": round(choice.value, 4), **figures,
            "margins": margins, "passed": all(m >= 0 for m in margins.values()), "train_s": run["train_s"]}


def table(judged: list[dict], floors: dict) -> str:
    """Markdown: per float path, runs passed, min / median of each figure, the smallest margins."""
    lines = [f"Floors: recall {floors['min_recall']}, specificity {floors['min_specificity']}, "
             f"ROC AUC {floors['min_roc_auc']}.", "",
             "| float path | runs | passed | ROC AUC min / median | recall min / median | "
             "specificity min / median | threshold min / max | smallest margin: AUC / recall / specificity |",
             "|---|---|---|---|---|---|---|---|"]
    for path in dict.fromkeys(r["path"] for r in judged):
        rows = [r for r in judged if r["path"] == path]

        def spread(key):
            values = [r[key] for r in rows]
            return f"{min(values):.3f} / {statistics.median(values):.3f}"

        thresholds = [r["threshold"] for r in rows]
        margin = {k: min(r["margins"][k] for r in rows) for k in ("roc_auc", "recall", "specificity")}
        lines.append(f"| {path} | {len(rows)} | {sum(r['passed'] for r in rows)} | {spread('roc_auc')} | "
                     f"{spread('recall')} | {spread('specificity')} | {min(thresholds):.3f} / {max(thresholds):.3f} | "
                     f"{margin['roc_auc']:+.3f} / {margin['recall']:+.3f} / {margin['specificity']:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", type=Path, help="a checkout whose split stage has run")
    ap.add_argument("--seeds", help="train these (comma-separated, e.g. 1234,1,2) and append their scores to --out")
    ap.add_argument("--path", default="default", help="a name for the float path this process runs on")
    ap.add_argument("--out", type=Path, help="the JSON-lines file the runs are appended to")
    ap.add_argument("--table", type=Path, help="judge the runs in this file and print the markdown table")
    ap.add_argument("--rows", action="store_true", help="with --table: also one line per run")
    args = ap.parse_args(argv)
    if bool(args.seeds) == bool(args.table) or (args.seeds and not args.out):
        ap.error("give --seeds with --out (train), or --table (judge)")
    sys.path.insert(0, str(args.project))

    from cxr import params

    if args.seeds:
        for seed in (int(s) for s in args.seeds.split(",")):
            result = {"path": args.path, **train_one(args.project, seed)}
            with open(args.out, "a") as fh:
                fh.write(json.dumps(result) + "\n")
            print(f"{args.path} seed {seed}: trained in {result['train_s']} s", flush=True)
        return
    evaluate = params.section("evaluate", args.project / "params.yaml")
    gate = params.section("gate", args.project / "params.yaml")
    runs = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
    from cxr.data.manifest import SOURCE_INFO, read_source_info

    synthetic = read_source_info(args.project / "data/raw" / SOURCE_INFO).get("synthetic", False)
    floors = gate["synthetic_floors"] if synthetic else {k: gate[k] for k in ("min_recall", "min_specificity",
                                                                               "min_roc_auc")}
    judged = [judge(run, evaluate, floors) for run in runs]
    print(table(judged, floors))
    if args.rows:
        for j in judged:
            print(json.dumps(j))


if __name__ == "__main__":
    main()
