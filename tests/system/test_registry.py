"""The BentoML store as a registry: promotion with lineage, atomicity, list and rollback.

A real BentoML store in a temporary BENTOML_HOME. The registry only copies files and
records metadata, so the "exported model" here is an export folder of small stand-in
files plus a real model card: no model is loaded (the service tests load real ones).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cxr import UserError


@pytest.fixture
def store(tmp_path, monkeypatch):
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    import bentoml._internal.configuration.containers as containers

    from bentoml._internal.models import ModelStore

    # BentoML caches its home and store per process: override them with this test's store.
    c = containers.BentoMLContainer
    (home / "models").mkdir(parents=True)
    c.bentoml_home.set(str(home))
    c.model_store_dir.set(str(home / "models"))
    c.model_store.set(ModelStore(str(home / "models")))
    yield home
    for provider in (c.bentoml_home, c.model_store_dir, c.model_store):
        provider.reset()


def export_dir(tmp_path, name: str, auc: float, spec: float, split: str = "split-a"):
    out = tmp_path / name
    out.mkdir()
    for f in ("model.keras", "model.tflite", "ood.npz", "subtype.npz"):  # the optional two: hashed and copied when present
        (out / f).write_bytes(os.urandom(256))
    card = {
        "schema": "cxr-model-card/1", "name": "cxr-pneumonia-mobilenetv2",
        "decision_threshold": 0.25, "target_recall": 0.99,
        "model": {"imaging": {"image_size": 224, "intensity": "equalize"}},
        "data": {"dataset_hash": "ab" * 32, "synthetic": False, "source": "folder", "test_split": "carved",
                 "test_split_hash": split},
        "git": {"commit": "c0ffee" * 6 + "1234", "dirty": False},
        "params": {"train": {"seed": 1}},
        "metrics": {"test": {"roc_auc": auc, "pr_auc": 0.99,
                             "at_threshold": {"recall": 0.995, "specificity": spec, "precision": 0.9, "accuracy": 0.95}}},
    }
    (out / "model_card.json").write_text(json.dumps(card))
    (out / "model_card.md").write_text("# card\n")
    return out


def test_promotion_records_lineage_and_is_what_promoted_returns(store, tmp_path):
    from cxr.ops import registry

    verdict = {"passed": True, "reason": "gate passed: 3 checks", "champion": None,
               "checks": [{"check": "ROC AUC", "value": None, "passed": False}]}
    tag = registry.promote(export_dir(tmp_path, "a", 0.98, 0.85), verdict)
    model = registry.promoted()
    assert str(model.tag) == tag
    md = model.info.metadata
    assert md["decision_threshold"] == 0.25 and md["roc_auc"] == 0.98 and md["specificity"] == 0.85
    assert md["dataset_hash"] == "ab" * 32 and md["test_split_hash"] == "split-a"
    assert md["git_commit"].startswith("c0ffee") and md["gate"]["reason"].startswith("gate passed")
    assert md["params"] == {"train": {"seed": 1}} and "not a diagnosis" in md["notice"]
    assert "champion" not in md["gate"] and md["gate"]["checks"][0] == {"check": "ROC AUC", "passed": False}
    lineage = json.loads(open(model.path_of(registry.LINEAGE_FILE)).read())
    assert lineage["metadata"]["gate"]["champion"] is None  # the full record, nulls kept
    assert model.info.labels["dataset_hash"] == "ab" * 6 and model.info.labels["synthetic"] == "false"
    for f in registry.EXPORT_FILES:
        assert (model.path_of(f)).endswith(f) and os.path.exists(model.path_of(f))


def test_interrupted_promotion_leaves_the_champion(store, tmp_path, monkeypatch):
    from cxr.ops import registry

    champion = registry.promote(export_dir(tmp_path, "a", 0.98, 0.85), {"passed": True})
    real_copy = shutil.copy2
    calls = {"n": 0}

    def dies_midway(src, dst, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # fault injection: the process "dies" after copying one file
            raise KeyboardInterrupt("killed during promotion")
        return real_copy(src, dst, *a, **kw)

    monkeypatch.setattr(registry.shutil, "copy2", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        registry.promote(export_dir(tmp_path, "b", 0.99, 0.9), {"passed": True})
    monkeypatch.setattr(registry.shutil, "copy2", real_copy)
    assert registry.promoted_tag() == champion
    assert [r["tag"] for r in registry.list_models()] == [champion]  # no half-made store entry


def test_an_incomplete_export_is_refused(store, tmp_path):
    from cxr.ops import registry

    out = export_dir(tmp_path, "a", 0.98, 0.85)
    (out / "model.tflite").unlink()
    with pytest.raises(UserError, match="model.tflite"):
        registry.promote(out, None)
    assert registry.promoted_tag() is None
    with pytest.raises(UserError, match="no promoted"):
        registry.promoted()


def test_list_and_rollback(store, tmp_path):
    from cxr.ops import registry

    first = registry.promote(export_dir(tmp_path, "a", 0.98, 0.85), {"passed": True})
    second = registry.promote(export_dir(tmp_path, "b", 0.99, 0.90), {"passed": True})
    rows = registry.list_models()
    assert [r["tag"] for r in rows] == [first, second]
    assert [r["promoted"] for r in rows] == [False, True]
    assert registry.rollback() == first and registry.promoted_tag() == first
    assert registry.rollback(second.split(":")[1]) == second
    with pytest.raises(UserError, match="no model"):
        registry.rollback("cxr-pneumonia:doesnotexist")
    assert registry.promoted_tag() == second
    history = json.loads(registry.alias_path().read_text())["history"]
    assert [h["tag"] for h in history] == [first, second, first, second]


def test_the_cli_lists_shows_and_rolls_back(store, tmp_path):
    from cxr.ops import registry

    first = registry.promote(export_dir(tmp_path, "a", 0.98, 0.85), {"passed": True})
    second = registry.promote(export_dir(tmp_path, "b", 0.99, 0.90), {"passed": True})
    env = {**os.environ, "BENTOML_HOME": str(store)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cxr.ops.registry", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    listed = cli("list")
    assert listed.returncode == 0
    lines = [ln for ln in listed.stdout.splitlines() if "cxr-pneumonia" in ln]
    assert lines[0].startswith("  " + first) and lines[1].startswith("* " + second)
    assert "AUC 0.99" in lines[1] and "spec 0.9" in lines[1]
    assert json.loads(cli("show").stdout)["tag"] == second
    assert cli("rollback").stdout.strip() == f"promoted: {first}"
    bad = cli("rollback", "nope")
    assert bad.returncode == 2 and "no model" in bad.stderr and "Traceback" not in bad.stderr


def test_file_hashes_are_recorded_and_verified(store, tmp_path):
    from cxr.io import sha256_file
    from cxr.ops import registry

    out = export_dir(tmp_path, "a", 0.98, 0.85)
    tag = registry.promote(out, {"passed": True})
    model = registry.verify(tag)
    assert model.info.metadata["files_sha256"] == {f: sha256_file(out / f)
                                                   for f in registry.EXPORT_FILES + registry.OPTIONAL_FILES}
    # One flipped byte in the served file: refused, naming the file.
    tflite = model.path_of("model.tflite")
    data = bytearray(open(tflite, "rb").read())
    data[10] ^= 0xFF
    open(tflite, "wb").write(bytes(data))
    with pytest.raises(UserError, match="model.tflite is missing or differs"):
        registry.verify(tag)
    os.unlink(tflite)
    with pytest.raises(UserError, match="model.tflite is missing"):
        registry.verify(tag)
    with pytest.raises(UserError, match="not in the BentoML store"):
        registry.verify("cxr-pneumonia:gone1234")
    # An export from before the subtype head: promoted, hashed without it, verified.
    older = export_dir(tmp_path, "b", 0.98, 0.85)
    os.unlink(older / "subtype.npz")
    hashed = registry.verify(registry.promote(older, {"passed": True})).info.metadata["files_sha256"]
    assert "subtype.npz" not in hashed and "ood.npz" in hashed


def test_promotion_refuses_an_export_changed_after_the_gate_scored_it(store, tmp_path):
    from cxr.io import file_digests
    from cxr.ops import registry

    out = export_dir(tmp_path, "a", 0.98, 0.85)
    scored = {"name": "challenger", "files_sha256": file_digests(out, ("model.tflite", "model_card.json"))}
    verdict = {"passed": True, "rescored": [scored]}
    (out / "model.tflite").write_bytes(os.urandom(256))  # a re-export between gate and promotion
    with pytest.raises(UserError, match="model.tflite changed after the gate scored it"):
        registry.promote(out, verdict)
    assert registry.promoted_tag() is None
    scored["files_sha256"] = file_digests(out, ("model.tflite", "model_card.json"))
    assert registry.promote(out, verdict) == registry.promoted_tag()


def test_concurrent_promotions_keep_every_history_entry(store, tmp_path):
    """Alias writes from many threads at once: the lock keeps each read-modify-write whole."""
    import threading

    from cxr.ops import registry

    tags = [registry.promote(export_dir(tmp_path, n, 0.98, 0.85), {"passed": True}) for n in "abc"]
    barrier = threading.Barrier(12)

    def promote(i):
        barrier.wait()
        registry._write_alias(tags[i % 3], f"thread {i}")

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    history = json.loads(registry.alias_path().read_text())["history"]
    assert sorted(h["reason"] for h in history if h["reason"].startswith("thread")) == sorted(
        f"thread {i}" for i in range(12))
