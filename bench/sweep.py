"""Summarise a DVC experiment sweep: one row per configuration, mean ± sd over its seeds.

    .venv/bin/python bench/sweep.py [--names 'A-*,B-*'] [--json out.json]

Reads ``dvc exp show --json -A`` (every experiment on every commit), groups experiments by their
params with ``train.seed`` left out, and prints a markdown table of the figures that decide
(carved test, the counterfactual proxy, the served-versus-copy gap, the shortcut audit,
training time). A difference between two rows counts only when it is outside their spread.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import subprocess
import sys

# column -> (file, dotted path) in the experiment's metrics
FIGURES = {
    "test AUC": ("metrics.json", "test.roc_auc"),
    "test spec@thr": ("metrics.json", "test.at_threshold.specificity"),
    "test recall@thr": ("metrics.json", "test.at_threshold.recall"),
    "proxy AUC": ("metrics.json", "proxy.roc_auc"),
    "proxy spec@thr": ("metrics.json", "proxy.specificity"),
    "proxy recall@thr": ("metrics.json", "proxy.recall"),
    "aspect-only spec": ("metrics.json", "counterfactual.normal_aspect_only.specificity"),
    "proxy spec (training transform)": ("metrics.json",
                                        "counterfactual.normal_as_pneumonia_training_transform.specificity"),
    "swapped AUC": ("metrics.json", "counterfactual.swapped.roc_auc"),
    "served p90 |Δp|": ("metrics.json", "served_vs_copy.abs_change.p90"),
    "served label agreement": ("metrics.json", "served_vs_copy.label_agreement"),
    "stress JPEG-25 spec": ("metrics.json", "stress.perturbations.jpeg_quality_25.specificity"),
    "model~shortcut NORMAL": ("metrics.json", "shortcut_audit.model_follows_shortcut.NORMAL"),
    "threshold": ("metrics.json", "threshold"),
    "train s": ("reports/train/summary.json", "wall_time_s"),
}
IGNORED_PARAMS = ("train.seed",)


def dig(tree, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value)
    return out


def experiments(show: list) -> list[dict]:
    """(name, params, metrics) of every finished experiment in ``dvc exp show --json`` output."""
    out = []
    for commit in show:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                metrics = {f: m.get("data", {}) for f, m in (data.get("metrics") or {}).items()}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                if metrics.get("metrics.json"):
                    out.append({"name": rev.get("name") or rev.get("rev"), "params": flatten(params),
                                "metrics": metrics})
    return out


def group(exps: list[dict]) -> dict[tuple, list[dict]]:
    """Experiments by the params in which any two of them differ (seed left out)."""
    keys = sorted({k for e in exps for k in e["params"]})
    varying = [k for k in keys if k not in IGNORED_PARAMS and len({e["params"].get(k) for e in exps}) > 1]
    groups: dict[tuple, list[dict]] = {}
    for e in exps:
        groups.setdefault(tuple((k, e["params"].get(k)) for k in varying), []).append(e)
    return groups


def spread(values: list) -> str:
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}" if abs(mean) < 10 else f"{mean:.0f}"
    sd = statistics.stdev(values)
    return f"{mean:.3f} ± {sd:.3f}" if abs(mean) < 10 else f"{mean:.0f} ± {sd:.0f}"


def table(groups: dict[tuple, list[dict]]) -> str:
    head = ["configuration", "runs (seeds)", *FIGURES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, exps in groups.items():
        label = ", ".join(f"{k}={json.loads(v) if v else v}" for k, v in config) or "(defaults)"
        seeds = ", ".join(sorted(str(json.loads(e["params"].get("train.seed", "null"))) for e in exps))
        cells = [spread([dig(e["metrics"].get(f, {}), path) for e in exps]) for f, path in FIGURES.values()]
        lines.append(f"| {label} | {len(exps)} ({seeds}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", help="comma-separated glob patterns of experiment names to include")
    parser.add_argument("--json", help="also write the per-experiment figures to this file")
    parser.add_argument("--from-file", help="read a saved 'dvc exp show --json -A' instead of running it")
    args = parser.parse_args(argv)
    if args.from_file:
        show = json.loads(open(args.from_file).read())
    else:
        proc = subprocess.run(["dvc", "exp", "show", "--json", "-A"], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"error: dvc exp show failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
            return 2
        show = json.loads(proc.stdout)
    exps = experiments(show)
    if args.names:
        patterns = args.names.split(",")
        exps = [e for e in exps if any(fnmatch.fnmatch(e["name"], p) for p in patterns)]
    if not exps:
        print("error: no finished experiment matches", file=sys.stderr)
        return 2
    print(table(group(exps)))
    if args.json:
        rows = [{"name": e["name"], **{f: dig(e["metrics"].get(file, {}), path) for f, (file, path) in FIGURES.items()}}
                for e in exps]
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
