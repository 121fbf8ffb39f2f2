"""On-disk cache of dequantized model weights.

Dequantizing a GGUF file takes ~20 s on a laptop CPU; loading the same weights
from safetensors takes ~2 s. Each cache entry is a directory written by
``save_pretrained`` plus a ``workbench-manifest.json`` that lists every file with
its size and SHA-256. The manifest is written last and the directory is moved
into place with one rename, so an interrupted build never looks complete; an
entry whose files do not match its manifest is reported and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the rename below still keeps entries whole
    fcntl = None

MANIFEST = "workbench-manifest.json"
_FORMAT = 1


def cache_root() -> Path:
    """The workbench cache directory: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "workbench"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_entry(path: Path, key: dict) -> str | None:
    """Why the cache entry at ``path`` can't be used, or None when it is sound."""
    manifest_path = path / MANIFEST
    if not path.exists():
        return "missing"
    if not manifest_path.exists():
        return "no manifest (an interrupted build?)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable manifest ({e})"
    if manifest.get("format") != _FORMAT or manifest.get("key") != key:
        return "built from a different source or workbench version"
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not f.exists():
            return f"file {name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"file {name} has {f.stat().st_size} bytes, expected {meta['size']}"
        if _sha256(f) != meta["sha256"]:
            return f"file {name} does not match its checksum"
    if not manifest.get("files"):
        return "manifest lists no files"
    return None


@contextmanager
def _building(name: str) -> Iterator[None]:
    """Hold the build lock of entry ``name``: two first runs at once (two workers, two notebooks)
    would otherwise both build it, and the later one would move the earlier one's entry away
    while that process is reading it."""
    locks = cache_root() / "locks"  # beside models/, so a listing of the entries shows only entries
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def cached_dir(name: str, key: dict, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``(directory, was_cached)`` for the entry ``name``, building it if needed.

    ``key`` describes the source (file, size, versions); an entry built from another
    key is rebuilt. ``build(tmpdir)`` must write the model files into ``tmpdir``. Processes
    that ask for the same missing entry at once build it once: the others wait for it.
    """
    root = cache_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if check_entry(final, key) is None:
        return final, True
    with _building(name):
        return _build_entry(root, name, key, build)


def _build_entry(root: Path, name: str, key: dict, build: Callable[[Path], None]) -> tuple[Path, bool]:
    final = root / name
    problem = check_entry(final, key)  # again: another process may have built it while we waited
    if problem is None:
        return final, True
    if problem != "missing":
        warnings.warn(
            f"workbench: the cached weights in {final} can't be used ({problem}); rebuilding them.",
            stacklevel=4,
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=root))
    try:
        build(tmp)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        manifest = {"format": _FORMAT, "key": key, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():
            # Move the bad entry aside first so the rename below is atomic.
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.stale-", dir=root))
            os.replace(final, trash / name)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same entry first; use theirs if it is sound.
            if check_entry(final, key) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, False
