"""Atomic file output: a crash or a bad input never leaves a half-written artefact."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Works for files and directories. On error the temporary is removed and an
    existing ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller decides whether it becomes a file or a directory
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def file_digests(folder: str | os.PathLike, names) -> dict[str, str]:
    """sha256 of each named file that exists in ``folder``."""
    folder = Path(folder)
    return {n: sha256_file(folder / n) for n in names if (folder / n).is_file()}


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_csv(path: str | os.PathLike, rows: Iterable[dict], fieldnames: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_npz_with_header(path: str | os.PathLike, header: dict, arrays: dict) -> Path:
    """One ``.npz``: ``arrays`` and ``header`` as JSON (sorted keys) in a uint8 array, written atomically."""
    import numpy as np

    path = Path(path)
    encoded = np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez(fh, header=encoded, **arrays)
    return path


def read_npz_with_header(path: str | os.PathLike, names, what: str, fmt: str) -> tuple[dict, dict]:
    """(header, arrays ``names``) of a file :func:`write_npz_with_header` wrote, its header's
    ``format`` being ``fmt``. ``what`` names the file in the :class:`cxr.UserError` for a missing,
    corrupt or foreign file ("subtype head", ...)."""
    import zipfile

    import numpy as np

    from cxr import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found: run the stage that fits it (dvc repro train)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes().decode())
            arrays = {name: np.asarray(npz[name]) for name in names}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is corrupt ({type(exc).__name__}: {exc}): refit it") from None
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise UserError(f"{path} is not a {what} file (no '{fmt}' header)")
    return header, arrays
