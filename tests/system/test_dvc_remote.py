"""The pinned data set and the pipeline's outputs survive a round trip through a DVC remote
(push, lose them, pull): a local folder remote, and an S3 remote on a real S3-compatible
server (moto's server mode, the same HTTP API as S3 or MinIO) on 127.0.0.1.

Pointer file: DVC 3 has no ``dvc add --file``, so a top-level ``data.dvc`` that tracks
``data/pinned`` is created as a stub (``outs: [{path: data/pinned}]``) that ``dvc add``
then fills in, and on a re-pin updates in place. DVC also refuses a ``*.dvc`` file as a
stage dependency, so the download stage depends on ``data/pinned.ref`` (written by
``--pin``) instead; the test runs such a ``dvc.yaml`` with ``dvc repro``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cxr.io import sha256_file

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"
SMALL = {"seed": 11, "size": 48, "images_per_patient": [1, 2],
         "patients": {"NORMAL": 2, "PNEUMONIA": 3}, "test_patients": {"NORMAL": 1, "PNEUMONIA": 1}}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DVC.exists(), reason="dvc not installed beside python")]


def sh(cwd: Path, *cmd, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    if ok:
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc


def files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_repo(tmp_path: Path) -> Path:
    """A git + DVC repository whose params read the pinned data set."""
    repo = tmp_path / "repo"
    repo.mkdir()
    sh(repo, "git", "init", "-q")
    sh(repo, DVC, "init", "-q")
    sh(repo, DVC, "config", "core.analytics", "false")
    sh(repo, DVC, "config", "core.site_cache_dir", tmp_path / "site-cache")
    (repo / "params.yaml").write_text(yaml.safe_dump({"download": {
        "source": "pinned", "sha256": None, "cache_dir": "data/downloads",
        "kaggle_dataset": "paultimothymooney/chest-xray-pneumonia", "pinned_dir": "data/pinned",
        "synthetic": SMALL}}))
    return repo


def test_pin_push_pull_round_trip(tmp_path):
    repo, remote = new_repo(tmp_path), tmp_path / "remote"
    stage = [sys.executable, "-m", "stages.download", "--out", "data/raw"]

    # a clone without the data: a clear message, not a traceback
    proc = sh(repo, *stage, ok=False)
    assert proc.returncode == 2 and "data/pinned is missing: run `dvc pull data.dvc`" in proc.stderr

    sh(repo, *stage, "--pin", "synthetic")
    pinned = repo / "data" / "pinned"
    original = files(pinned)
    assert any(k.startswith("test/") for k in original) and "pin.json" in original

    (repo / "data.dvc").write_text("outs:\n- path: data/pinned\n")
    sh(repo, DVC, "add", "data/pinned")
    assert not (repo / "data" / "pinned.dvc").exists()
    assert "md5:" in (repo / "data.dvc").read_text()
    sh(repo, DVC, "remote", "add", "-d", "local", remote)
    sh(repo, DVC, "push")

    shutil.rmtree(pinned)
    shutil.rmtree(repo / ".dvc" / "cache")
    assert "missing" in sh(repo, *stage, ok=False).stderr
    sh(repo, DVC, "pull", "data.dvc")
    assert files(pinned) == original

    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"download": {
        "cmd": f"{sys.executable} -m stages.download --out data/raw", "deps": ["data/pinned.ref"],
        "params": ["download"], "outs": ["data/raw"]}}}))
    sh(repo, DVC, "repro", "download")
    info = yaml.safe_load((repo / "data" / "raw" / "source.json").read_text())
    assert info["kind"] == "pinned" and info["synthetic"] is True
    assert info["n_images"] == sum(1 for k in original if k.endswith(".jpeg"))
    assert info["dataset_hash"] == yaml.safe_load((repo / "data" / "pinned.ref").read_text())["dataset_hash"]
    assert "up to date" in sh(repo, DVC, "status").stdout


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3-compatible server on 127.0.0.1 with an empty bucket; yields the endpoint URL."""
    server_bin = Path(sys.executable).parent / "moto_server"
    if not server_bin.exists():
        pytest.skip("moto[server] not installed beside python")
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    server = subprocess.Popen([str(server_bin), "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "moto.log").read_text()[-2000:]
            time.sleep(0.3)
    # Create the bucket over HTTP (an S3 CreateBucket is a PUT on the bucket's URL).
    urllib.request.urlopen(urllib.request.Request(f"{url}/cxr-dvc", method="PUT"), timeout=10).close()
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_s3_remote_round_trip_of_pinned_data_and_pipeline_outputs(tmp_path, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    repo = new_repo(tmp_path)
    sh(repo, sys.executable, "-m", "stages.download", "--pin", "synthetic")
    (repo / "data.dvc").write_text("outs:\n- path: data/pinned\n")
    sh(repo, DVC, "add", "data/pinned")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"download": {
        "cmd": f"{sys.executable} -m stages.download --out data/raw", "deps": ["data/pinned.ref"],
        "params": ["download"], "outs": ["data/raw"]}}}))
    sh(repo, DVC, "repro", "download")
    pinned, raw = files(repo / "data" / "pinned"), files(repo / "data" / "raw")

    # As docs/pipeline.md sets a team remote up: the bucket URL, then the endpoint of the S3-compatible server.
    sh(repo, DVC, "remote", "add", "-d", "team", "s3://cxr-dvc/store")
    sh(repo, DVC, "remote", "modify", "team", "endpointurl", s3_server)
    pushed = sh(repo, DVC, "push")
    assert "pushed" in pushed.stdout.lower(), pushed.stdout
    listing = urllib.request.urlopen(f"{s3_server}/cxr-dvc?list-type=2&prefix=store/", timeout=10).read().decode()
    assert listing.count("<Key>store/files/md5/") >= len(pinned), listing[:500]

    for gone in (repo / "data" / "pinned", repo / "data" / "raw", repo / ".dvc" / "cache"):
        shutil.rmtree(gone)
    assert sh(repo, DVC, "status").stdout.count("not in cache") == 2
    sh(repo, DVC, "pull")
    assert files(repo / "data" / "pinned") == pinned and files(repo / "data" / "raw") == raw
    assert "up to date" in sh(repo, DVC, "status").stdout
