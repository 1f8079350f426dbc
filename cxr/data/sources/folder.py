"""Local folders and archives in Kaggle or Mendeley layout, checked before anything is copied.

Kaggle: ``{train,val,test}/{NORMAL,PNEUMONIA}``; Mendeley (``ChestXRay2017.zip``):
``train/`` and ``test/`` only. Archives usually wrap the layout in a folder
(``chest_xray/``), Kaggle's zip even holds a nested duplicate ``chest_xray/chest_xray/``
plus ``__MACOSX`` junk, so the *shallowest* folder holding a ``train/`` is the root.
Mistakes (an unknown class folder, an empty class) are reported by name, because a
silently dropped class makes a model that looks fine and is not.
Archives are extracted once into the cache (temp dir, then rename: never half there);
entries that would land outside it (absolute paths, ``..``, links) are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cxr import LABELS, UserError
from cxr.data.manifest import IMAGE_SUFFIXES, SOURCE_SPLITS
from cxr.io import atomic_path

log = logging.getLogger(__name__)

JUNK_DIRS = {"__MACOSX"}
MAX_ROOT_DEPTH = 4
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class Item:
    source_split: str  # train | val | test
    label: str  # NORMAL | PNEUMONIA
    path: Path  # the file on disk


@dataclass
class Layout:
    root: Path
    items: list[Item] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # non-image files left out

    @property
    def splits(self) -> list[str]:
        return sorted({i.source_split for i in self.items}, key=SOURCE_SPLITS.index)


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name not in JUNK_DIRS


def find_root(path: Path) -> Path:
    """The shallowest folder under ``path`` that holds a ``train/`` folder."""
    level = [path]
    for _ in range(MAX_ROOT_DEPTH + 1):
        found = sorted(d for d in level if (d / "train").is_dir())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(d.relative_to(path)) or "." for d in found)
            raise UserError(f"{path}: several data sets side by side ({names}); point at one")
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and _visible(c)]
        if not level:
            break
    raise UserError(
        f"{path}: no train/ folder found (expected {{train,val,test}}/{{NORMAL,PNEUMONIA}}, "
        "the Kaggle or Mendeley chest_xray layout)"
    )


def scan(root: Path) -> Layout:
    """List the images of a layout root, refusing unknown or empty class folders."""
    layout = Layout(root)
    for entry in sorted(root.iterdir()):
        if _visible(entry) and entry.name not in SOURCE_SPLITS:
            log.debug("ignoring %s (not a split folder)", entry)
    for split in SOURCE_SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        labels = {}
        for entry in sorted(split_dir.iterdir()):
            if not _visible(entry):
                continue
            if not entry.is_dir():
                layout.skipped.append(entry)
                continue
            if entry.name.upper() not in LABELS:
                raise UserError(
                    f"unknown label folder '{entry.name}' in {split}/ of {root} "
                    f"(expected only {' and '.join(LABELS)})"
                )
            labels[entry.name.upper()] = entry
        for label in LABELS:
            if label not in labels:
                raise UserError(f"{root}: {split}/ has no {label} folder")
            images = []
            for f in sorted(labels[label].iterdir()):
                if not _visible(f):
                    continue
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(Item(split, label, f))
                else:
                    layout.skipped.append(f)
            if not images:
                raise UserError(f"class folder {split}/{labels[label].name} in {root} has no images")
            layout.items.extend(images)
    if layout.skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in layout.skipped[:5])
        log.warning("skipped %d non-image file(s): %s%s", len(layout.skipped), shown,
                    " ..." if len(layout.skipped) > 5 else "")
    return layout


# --- archives ------------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_kind(path: Path) -> str:
    """``zip`` or ``tar``, from the file's first bytes (URLs often lack a suffix)."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        with tarfile.open(path, "r:*"):
            return "tar"
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        pass
    raise UserError(f"{path} is neither a .zip nor a .tar(.gz) archive, or it is corrupt")


def _safe_name(name: str, archive: Path) -> PurePosixPath | None:
    """The relative path of an archive entry, or a UserError for one that escapes."""
    name = name.replace("\\", "/")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in p.parts:
        raise UserError(f"{archive}: unsafe entry {name!r} (absolute path or '..'); refusing to extract")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts or parts[0] in JUNK_DIRS:
        return None
    return PurePosixPath(*parts)


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may expand to (params ``download.archive_limits``): the file count, the
    total extracted bytes, and the ratio of extracted to archive bytes (images barely compress,
    so a large ratio is a bomb, not a data set)."""

    max_files: int = 100_000
    max_bytes: int = 20_000_000_000
    max_ratio: float = 100.0

    @classmethod
    def from_cfg(cls, cfg: dict) -> "ArchiveLimits":
        raw = cfg.get("archive_limits") or {}
        if not isinstance(raw, dict) or set(raw) - {"max_files", "max_bytes", "max_ratio"}:
            raise UserError("params.yaml: 'download.archive_limits' takes max_files, max_bytes, max_ratio")
        out = cls(**raw)
        for key in ("max_files", "max_bytes", "max_ratio"):
            value = getattr(out, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"params.yaml: 'download.archive_limits.{key}' must be a positive number, got {value!r}")
        return out

    def check(self, archive: Path, files: int, total: int) -> None:
        """Refuse, before writing a byte, what the archive's own index declares beyond the limits."""
        if files > self.max_files:
            raise UserError(f"{archive}: {files} entries exceed download.archive_limits.max_files "
                            f"({self.max_files}); refusing to extract")
        if total > self.max_bytes:
            raise UserError(f"{archive}: {total} bytes when extracted exceed download.archive_limits.max_bytes "
                            f"({self.max_bytes}); refusing to extract")
        size = max(archive.stat().st_size, 1)
        if total > 1 << 20 and total / size > self.max_ratio:
            raise UserError(f"{archive}: expands {total / size:.0f}-fold ({size} -> {total} bytes), over "
                            f"download.archive_limits.max_ratio ({self.max_ratio:g}): an archive bomb; "
                            "refusing to extract")


def _copy_at_most(src, out, limit: int, archive: Path, name: str) -> int:
    """Copy at most ``limit`` bytes; an entry that yields more than its index declared is refused."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > limit:
            raise UserError(f"{archive}: entry {name!r} holds more bytes than its header declares; "
                            "refusing to extract")
        out.write(chunk)
    return written


def _extract_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        plan = []
        for info in zf.infolist():
            rel = _safe_name(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UserError(f"{archive}: entry {info.filename!r} is a link; refusing to extract")
            if rel is not None:
                plan.append((info, rel))
        limits.check(archive, len(plan), sum(info.file_size for info, _ in plan))
        for info, rel in plan:
            target = dest / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                _copy_at_most(src, out, info.file_size, archive, info.filename)


def _extract_tar(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    with tarfile.open(archive, "r:*") as tf:
        plan = []
        for member in tf:  # lazily: the index itself can be the bomb
            rel = _safe_name(member.name, archive)
            if not (member.isfile() or member.isdir()):
                kind = "hard link" if member.islnk() else "link or device"
                raise UserError(f"{archive}: entry {member.name!r} is a {kind}; refusing to extract")
            if rel is not None:
                plan.append((member, rel))
            if len(plan) > limits.max_files:
                limits.check(archive, len(plan), 0)
        limits.check(archive, len(plan), sum(m.size for m, _ in plan if m.isfile()))
        for member, rel in plan:
            target = dest / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            with src, open(target, "wb") as out:
                _copy_at_most(src, out, member.size, archive, member.name)


def local_key(archive: Path) -> str:
    """A cheap identity for a local archive: path, size and mtime (no 1 GB hash per run)."""
    st = archive.stat()
    text = f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def extract(archive: Path, cache_dir: Path, key: str | None = None, limits: ArchiveLimits | None = None) -> Path:
    """Extract ``archive`` into ``cache_dir/extracted/`` once; reuse it on later runs."""
    limits = limits or ArchiveLimits()
    key = key or local_key(archive)
    stem = archive.name.split(".")[0] or "archive"
    dest = Path(cache_dir) / "extracted" / f"{stem}-{key[:16]}"
    if dest.is_dir():
        log.info("using %s (already extracted)", dest)
        return dest
    kind = archive_kind(archive)
    log.info("extracting %s into %s", archive, dest)
    try:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error,
            gzip.BadGzipFile) as exc:
        raise UserError(f"{archive} is corrupt or truncated ({exc}); nothing was extracted") from None
    return dest


def open_local(source: str, cache_dir: Path, limits: ArchiveLimits | None = None) -> tuple[Path, str]:
    """Resolve a local folder or archive to a layout root; returns (root, kind)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(
            f"download.source: {source!r} does not exist (expected synthetic, pinned, kaggle, "
            "a folder, a .zip / .tar.gz or an http(s):// / file:// URL)"
        )
    if path.is_dir():
        return find_root(path), "folder"
    if not is_archive(path):
        raise UserError(f"download.source: {source!r} is a file but not a .zip / .tar.gz archive")
    kind = archive_kind(path)
    return find_root(extract(path, cache_dir, limits=limits)), kind
