"""The BentoML model store as a registry: promote, find, list, roll back.

Every promoted model is an immutable store entry ``cxr-pneumonia:<version>`` holding the
exported files and its lineage (data set hash, git revision, params, metrics, decision
threshold, gate verdict, the sha256 of every file) as labels and metadata. Which entry is
*the* promoted one is an alias file, ``$BENTOML_HOME/aliases/cxr-pneumonia.json``, replaced
by an atomic rename under a lock: an interrupted promotion leaves the previous champion in
place, two promotions at once cannot lose one another's history, and a rollback is one
rename. ``service.py`` serves whatever the alias names, after :func:`verify` has checked its
files against the hashes recorded at promotion.

CLI: ``python -m cxr.ops.registry list | show | rollback [TAG]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from cxr import UserError
from cxr.io import file_digests, write_json
from cxr.model.ood import FILE_NAME as OOD_FILE
from cxr.model.subtype import FILE_NAME as SUBTYPE_FILE
from cxr.records.model_card import JSON_NAME as CARD_JSON
from cxr.records.model_card import MARKDOWN_NAME as CARD_MARKDOWN
from cxr.records.model_card import ModelCard

MODEL_NAME = "cxr-pneumonia"
EXPORT_FILES = ("model.keras", "model.tflite", CARD_JSON, CARD_MARKDOWN)
OPTIONAL_FILES = (OOD_FILE, SUBTYPE_FILE)  # exports from before the detector, or the subtype head, lack them
LINEAGE_FILE = "lineage.json"  # the full metadata, nulls included, beside the files


def bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))


def alias_path(name: str = MODEL_NAME) -> Path:
    return bentoml_home() / "aliases" / f"{name}.json"


def _read_alias(name: str = MODEL_NAME) -> dict:
    path = alias_path(name)
    if not path.exists():
        return {"promoted": None, "history": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is corrupt: fix it or roll back with "
                        "'python -m cxr.ops.registry rollback TAG'") from None


@contextlib.contextmanager
def _alias_lock(name: str = MODEL_NAME):
    """An exclusive lock around the alias's read-modify-write (promotions from two flows)."""
    lock = alias_path(name).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_alias(tag: str, reason: str, name: str = MODEL_NAME) -> None:
    with _alias_lock(name):
        alias = _read_alias(name)
        alias["history"] = (alias.get("history") or []) + [
            {"tag": tag, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "reason": reason}
        ]
        alias["promoted"] = tag
        write_json(alias_path(name), alias)


def lineage(card: ModelCard, verdict: dict | None = None) -> tuple[dict, dict]:
    """(labels, metadata) for a store entry, from the model card and the gate verdict: copies
    for ``bentoml models list`` and the registry CLI; serving reads the card itself."""
    test = card.test_figures
    at_thr = test.get("at_threshold") or {}
    labels = {
        "project": "cxr-screening",
        "dataset_hash": str(card.dataset_hash or "")[:12],
        "git_commit": str(card.git.get("commit") or "")[:12],
        "synthetic": str(card.synthetic).lower(),
    }
    metadata = {
        "decision_threshold": card.decision_threshold,
        "target_recall": card.target_recall,
        "imaging": card.imaging.to_dict(),
        "dataset_hash": card.dataset_hash,
        "dataset_source": card.data.get("source"),
        "synthetic": card.synthetic,
        "test_split": card.data.get("test_split"),
        "test_split_hash": card.test_split_hash,
        "git_commit": card.git.get("commit"),
        "git_dirty": card.git.get("dirty"),
        "roc_auc": test.get("roc_auc"),
        "pr_auc": test.get("pr_auc"),
        "recall": at_thr.get("recall"),
        "specificity": at_thr.get("specificity"),
        "precision": at_thr.get("precision"),
        "accuracy": at_thr.get("accuracy"),
        "subtype": {k: v for k, v in (card.subtype or {}).items() if k in ("available", "reason", "threshold")}
        | {"test": ((card.subtype or {}).get("figures") or {}).get("test")},
        "params": card.params,
        "gate": verdict,
        "notice": "Screening aid, not a diagnosis.",
    }
    return labels, metadata


def store_safe(value):
    """BentoML metadata takes no None: drop null keys, write null list items as "null"."""
    if isinstance(value, dict):
        return {str(k): store_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [("null" if v is None else store_safe(v)) for v in value]
    return value


def add(export_dir: str | Path, verdict: dict | None = None):
    """Copy an export into a new immutable store entry (not yet promoted). Returns the model."""
    import bentoml

    export_dir = Path(export_dir)
    missing = [f for f in EXPORT_FILES if not (export_dir / f).exists()]
    if missing:
        raise UserError(f"{export_dir} lacks {missing}: run the export stage first")
    card = ModelCard.read(export_dir)
    files = EXPORT_FILES + tuple(f for f in OPTIONAL_FILES if (export_dir / f).exists())
    digests = file_digests(export_dir, files)  # recorded at promotion, checked at load
    scored = next((r.get("files_sha256") for r in (verdict or {}).get("rescored") or []
                   if r.get("name") == "challenger"), None)
    changed = sorted(n for n, d in (scored or {}).items() if digests.get(n) != d)
    if changed:
        raise UserError(f"{export_dir}: {', '.join(changed)} changed after the gate scored it: "
                        "not promoted (rerun the flow)")
    labels, metadata = lineage(card, verdict)
    metadata["files_sha256"] = digests
    # create() writes into a temporary directory and saves on a clean exit only.
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=store_safe(metadata)) as model:
        for name in files:
            shutil.copy2(export_dir / name, Path(model.path) / name)
        write_json(Path(model.path) / LINEAGE_FILE, {"labels": labels, "metadata": metadata})
    return bentoml.models.get(model.tag)


def promote(export_dir: str | Path, verdict: dict | None = None) -> str:
    """Add the export to the store and make it the promoted model (alias swap last)."""
    model = add(export_dir, verdict)
    _write_alias(str(model.tag), "promoted by gate" if verdict else "promoted")
    return str(model.tag)


def promoted_tag(name: str = MODEL_NAME) -> str | None:
    return _read_alias(name).get("promoted")


def promoted(name: str = MODEL_NAME):
    """The promoted store entry; a clear error when there is none."""
    import bentoml

    tag = promoted_tag(name)
    if not tag:
        raise UserError(
            f"no promoted {name} model in the BentoML store at {bentoml_home()}: run the pipeline "
            "flow (make run) so a model passes the gate, or 'python -m cxr.ops.registry rollback TAG'"
        )
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise UserError(f"the promoted model {tag} is missing from the store at {bentoml_home()}") from None


def verify(tag: str):
    """The store entry ``tag``, its files checked against the hashes recorded at promotion;
    a :class:`UserError` saying what is wrong otherwise (serving refuses to start)."""
    import bentoml

    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise UserError(f"model {tag} is not in the BentoML store at {bentoml_home()} (the alias names a "
                        "removed model?): promote another with 'python -m cxr.ops.registry rollback TAG'") from None
    recorded = (model.info.metadata or {}).get("files_sha256")
    if not isinstance(recorded, dict) or not recorded:
        raise UserError(f"model {tag} carries no file hashes (stored before integrity records): "
                        "promote it again from its export")
    actual = file_digests(model.path, tuple(recorded))
    bad = sorted(n for n, d in recorded.items() if actual.get(n) != d)
    if bad:
        raise UserError(f"model {tag}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} missing or "
                        f"differ{'s' if len(bad) == 1 else ''} from what was promoted: refusing to serve it")
    return model


def list_models(name: str = MODEL_NAME) -> list[dict]:
    import bentoml

    current = promoted_tag(name)
    rows = []
    # Oldest first, to the microsecond: two promotions can fall within one displayed second.
    for m in sorted(bentoml.models.list(name), key=lambda m: m.info.creation_time):
        md = m.info.metadata
        rows.append({
            "tag": str(m.tag),
            "created": m.info.creation_time.isoformat(timespec="seconds"),
            "promoted": str(m.tag) == current,
            "synthetic": md.get("synthetic"),
            "dataset_hash": (md.get("dataset_hash") or "")[:12],
            "git_commit": (md.get("git_commit") or "")[:12],
            "roc_auc": md.get("roc_auc"),
            "recall": md.get("recall"),
            "specificity": md.get("specificity"),
            "threshold": md.get("decision_threshold"),
        })
    return rows


def rollback(tag: str | None = None, name: str = MODEL_NAME) -> str:
    """Promote ``tag``, or the model promoted before the current one."""
    import bentoml

    alias = _read_alias(name)
    current = alias.get("promoted")
    if tag is None:
        earlier = [h["tag"] for h in alias.get("history", []) if h["tag"] != current]
        if not earlier:
            raise UserError("nothing to roll back to: no earlier promoted model")
        tag = earlier[-1]
    if ":" not in tag:
        tag = f"{name}:{tag}"
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise UserError(f"no model {tag} in the store (see 'python -m cxr.ops.registry list')") from None
    _write_alias(tag, f"rollback from {current}")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.ops.registry", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every stored model with its metrics; * marks the promoted one")
    sub.add_parser("show", help="the promoted model's tag, labels and metadata")
    rb = sub.add_parser("rollback", help="promote TAG, or the previously promoted model")
    rb.add_argument("tag", nargs="?")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            rows = list_models()
            if not rows:
                print(f"no {MODEL_NAME} models in {bentoml_home()}")
            for r in rows:
                print(f"{'*' if r['promoted'] else ' '} {r['tag']:<40} {r['created']}  AUC {r['roc_auc']}  "
                      f"recall {r['recall']}  spec {r['specificity']}  thr {r['threshold']}  "
                      f"data {r['dataset_hash']}{' (synthetic)' if r['synthetic'] else ''}  git {r['git_commit']}")
        elif args.command == "show":
            model = promoted()
            print(json.dumps({"tag": str(model.tag), "labels": model.info.labels,
                              "metadata": model.info.metadata, "path": str(model.path)}, indent=2, default=str))
        else:
            print(f"promoted: {rollback(args.tag)}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
