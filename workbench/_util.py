"""Small helpers every module shares: hashing, atomic files, disk caches, frozen parameters,
empty KV caches and their truncation, and top-k / top-p selection.

Internal to the package (the leading underscore of the module), but the names inside are
public so that modules import them without reaching into each other's private names.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import numbers
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")

HASH_CHARS = 16
"""Hex characters kept of a SHA-256 for cache keys: 64 bits, no collision in any realistic cache."""


# ---- hashing ----------------------------------------------------------------------------------

def stable_hash(obj: Any, length: int | None = HASH_CHARS) -> str:
    """SHA-256 of ``obj``'s canonical JSON: the same on every run, machine and Python
    (``hash()`` is salted per process). ``length=None`` keeps all 64 hex characters."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return digest if length is None else digest[:length]


def slug(text: str, limit: int = 80) -> str:
    """``text`` as a safe file-name part (model names hold ``/``). For text that comes from
    data (user ids, example ids) use :func:`safe_name`: a slug may collide and be cut short."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))[:limit]


SAFE_NAME_CHARS = 80
"""Characters kept of a name's cleaned text; with the hash suffix a safe name stays far below
every file system's 255-byte limit."""


def safe_name(text: Any, limit: int = SAFE_NAME_CHARS) -> str:
    """``text`` (anything from data: a user id, an example id, a method name) as one file name
    that stays where it is put: the one place workbench turns data into file names.

    ASCII letters, digits and ``-_.`` are kept, everything else (``/``, ``\\``, NUL, spaces,
    non-ASCII) becomes ``_``, and a leading ``.`` too (no ``..``, no hidden files); a name that
    had to change, or is longer than ``limit``, gets ``-`` and a hash of the original text, so
    two different texts never share a file. A name already safe and short comes back as it is
    (existing cache entries keep their names). A short, clean extension (``.json``, ``.pt``)
    stays at the end.
    """
    text = str(text)
    stem, dot, ext = text.rpartition(".")
    if not (dot and stem and 1 <= len(ext) <= 8 and ext.isascii() and ext.isalnum()):
        stem, ext = text, ""
    clean = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in stem)
    clean = "_" * (len(clean) - len(clean.lstrip("."))) + clean.lstrip(".")
    if clean != stem or len(stem) > limit or not clean:
        clean = f"{clean[:limit]}-{stable_hash(text, 12)}"
    return clean + (f".{ext}" if ext else "")


# ---- files ---------------------------------------------------------------------------------------

def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    A reader (or a run killed half-way) never sees a half-written file, and two writers never
    share a temporary name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file private (0600); a saved file gets the permissions any new
        # file would (the umask's), or those of the file it replaces.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give the path of a file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or choose another path")


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Raise a clear error unless ``path`` is, or can be created as, a directory we may write in.

    Checked before any slow work starts, so that a bad ``--out`` fails in a second, not after
    the model has loaded or the analysis has run. Nothing is created.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a directory; choose a directory (or a new name)")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {path} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path} is not writable (no write permission in {existing}); "
                              "choose a directory you can write to")
    try:
        # Permission bits don't tell everything (root, read-only mounts, /proc): try for real,
        # with a file that is gone again at once.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise PermissionError(f"{what} {path} is not writable ({existing}: {e.strerror}); "
                              "choose a directory you can write to") from None
    return path


def free_path(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first name not taken yet (for keeping
    copies whose natural names, e.g. a time stamp to the second, can collide)."""
    candidate, i = path, 1
    while candidate.exists():
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate


LOCK_FILE = ".workbench.lock"


class DirectoryBusyError(RuntimeError):
    """Another live process is writing the directory (see :func:`dir_lock`)."""


_HELD_LOCKS: dict[tuple[str, int], list] = {}


@contextmanager
def dir_lock(path: str | Path, what: str = "run directory", fix: str = "use another --out") -> Iterator[Path]:
    """Hold ``path`` (created if needed) for one writer while the block runs: the one lock of
    every directory workbench writes results into (``bench``, ``tune``).

    An exclusive ``fcntl.flock`` on ``path/.workbench.lock``: a second process is refused at
    once with a :class:`DirectoryBusyError` naming the holder (its pid and command); the lock
    belongs to the open file, so the system releases it when the holder exits or is killed —
    a dead run never leaves a directory stuck (its lock file stays, unlocked, and is taken
    over). Re-entrant within one thread (the CLI takes the lock before loading the model,
    ``run_bench`` again inside). On release the lock file is removed, and so is the directory
    if this call created it and nothing else was written (a command refused after taking the
    lock leaves no trace). Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    import sys
    import threading

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield Path(path)
        return
    path = Path(path).expanduser()
    created = []  # the directories this call makes, deepest first
    missing = path
    while not missing.exists() and missing.parent != missing:
        created.append(missing)
        missing = missing.parent
    path.mkdir(parents=True, exist_ok=True)
    key = (os.path.realpath(path), threading.get_ident())
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        try:
            yield path
        finally:
            _HELD_LOCKS[key][1] -= 1
        return
    lock_path = path / LOCK_FILE
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            raise DirectoryBusyError(
                f"{what} {path} is being written by another workbench process"
                + (f" ({holder})" if holder else "") + f"; wait for it to finish, or {fix}. "
                "(One writer per directory: two runs at once would mix their results.)") from None
        try:  # the holder before us may have removed the file as we opened it: lock the one in place
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        about = f"pid {os.getpid()}: " + " ".join(["workbench", *sys.argv[1:]] if sys.argv else [])
        os.ftruncate(fd, 0)
        os.pwrite(fd, about[:4000].encode("utf-8", "replace"), 0)
    except OSError:
        pass  # who holds it is a courtesy; the lock is what counts
    _HELD_LOCKS[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD_LOCKS[key]
        try:
            lock_path.unlink()  # still ours: removed before the lock is let go
            for made in created:
                made.rmdir()  # only if empty: a refused command leaves no directory behind
        except OSError:
            pass
        os.close(fd)  # releases the lock


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in chunks); of the decompressed bytes for a ``.gz`` file."""
    h = hashlib.sha256()
    with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _existing_file(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a Path, if it names a file; else an error naming it and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {fix}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not {what}; give the file's path")
    return path


def read_json_file(path: str | Path, what: str, fix: str) -> Any:
    """The JSON in ``path``; a missing, unreadable or damaged file is an error naming the path,
    what the file should have been and how to get a good one (``fix``)."""
    path = _existing_file(path, what, fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not {what}: it is damaged or another kind of file "
                         f"({type(e).__name__}: {e}); {fix}") from None


def load_torch_file(path: str | Path, what: str, fix: str) -> Any:
    """``torch.load`` of ``path`` with only tensors and plain data allowed (``weights_only``:
    a file can't run code); a missing, damaged or foreign file is an error naming the path."""
    path = _existing_file(path, what, fix)
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file, whatever torch says about it
        raise ValueError(f"{path} is not {what}: it could not be read ({type(e).__name__}); {fix}") from None


# ---- checking arguments ------------------------------------------------------------------------------

def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int, or a ValueError naming ``name``: a whole number (numpy ints too, not
    bools or floats such as 2.5) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be a whole number (int), got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} must be <= {maximum}")
    return value


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None) -> float:
    """``value`` as a finite float, or a ValueError naming ``name``: a real number (not a bool,
    string, NaN or inf), ``>= minimum``, ``<= maximum`` and ``> above`` where given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} must be a number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name}={value!r} must be a finite number (not NaN or inf)")
    if minimum is not None and x < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum:g}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name}={value} must be <= {maximum:g}")
    if above is not None and not x > above:
        raise ValueError(f"{name}={value} must be > {above:g}")
    return x


def check_sampling(temperature: Any, top_p: Any, top_k: Any, do_sample: bool, seed: Any = None) -> None:
    """The sampling arguments of a generation call: ``temperature > 0`` (when sampling), ``top_p``
    in (0, 1], ``top_k >= 1``, an int ``seed`` (each None = not used)."""
    if do_sample:
        check_number("temperature", temperature, above=0)
    if top_p is not None:
        p = check_number("top_p", top_p)
        if not 0 < p <= 1:
            raise ValueError(f"top_p={top_p} must be in (0, 1] (the probability mass kept, e.g. 0.9)")
    if top_k is not None:
        check_int("top_k", top_k, minimum=1)
    if seed is not None:
        check_int("seed", seed)


def cache_file(kind: str, model_name: str, name: str) -> Path:
    """Where a derived artifact of ``kind`` for ``model_name`` lives in the workbench cache.

    ``name`` is a file name, or ``folder/file name`` (one sub-folder, the caller's own): what
    follows the first ``/`` is one file name whatever it holds, so a user id with ``../``, an
    absolute path, NUL or 500 characters in it still names one file inside the cache
    (:func:`safe_name`). Every path of the derived-artifact cache is built here.
    """
    from workbench._cache import cache_root

    folder, sep, file = str(name).partition("/")
    parts = [safe_name(folder), safe_name(file)] if sep else [safe_name(name)]
    model_part = slug(model_name)  # as before, so existing entries keep their place
    if model_part.strip(".") == "":
        model_part = safe_name(model_name)  # "." or "..": not a folder of its own
    base = cache_root() / safe_name(kind)
    path = base.joinpath(model_part, *parts)
    if os.path.commonpath([os.path.abspath(base), os.path.abspath(path)]) != os.path.abspath(base):
        raise ValueError(f"cache path for {name!r} would leave the cache ({base})")  # cannot happen: defence in depth
    return path


def cached(path: Path, load: Callable[[Path], T], build: Callable[[], T], save: Callable[[T, Path], Any],
           enabled: bool = True) -> T:
    """``load(path)`` if a sound entry is there, else ``build()`` and ``save`` it (atomically).

    A damaged entry (any error while loading) is rebuilt, never trusted and never fatal.
    """
    if enabled and path.exists():
        try:
            return load(path)
        except Exception:  # noqa: BLE001 - a cache entry is disposable, whatever is wrong with it
            path.unlink(missing_ok=True)
    value = build()
    if enabled:
        save(value, path)
    return value


# ---- the model --------------------------------------------------------------------------------------

@contextmanager
def frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients for the block, so a backward pass computes only the
    gradients we ask for (a steering vector, an input); restored even after an exception."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def empty_kv_cache() -> Any:
    """An empty KV cache (``transformers.DynamicCache``) for a pass to fill, then share."""
    from transformers import DynamicCache

    return DynamicCache()


def truncate_kv_cache(cache: Any, length: int) -> None:
    """Cut a KV cache back to its first ``length`` positions (in place).

    A pass run on top of a shared prefix appends its own positions; cutting them off lets the
    next pass reuse the prefix without recomputing it.
    """
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


# ---- selection ------------------------------------------------------------------------------------

def filter_logits(scores: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering: tokens outside get ``-inf``."""
    if top_k:
        kth = scores.topk(min(top_k, scores.shape[-1])).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs, order = scores.softmax(-1).sort(descending=True)
        cut = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
        scores = scores.masked_fill(cut.scatter(-1, order, cut), float("-inf"))
    return scores


def n_selected(sorted_scores: "np.ndarray | list[float]", top_k: int | None = None, top_p: float | None = None,
               threshold: float | None = None) -> int:
    """How many of ``sorted_scores`` (best first, all > 0 for ``top_p``) one selection rule keeps.

    Exactly one of ``top_k`` (the best k), ``top_p`` (the fewest whose share of the total
    reaches p) or ``threshold`` (every score >= it) must be given.
    """
    given = [x is not None for x in (top_k, top_p, threshold)]
    if sum(given) != 1:
        raise ValueError("give exactly one selection rule: top_k=..., top_p=... or threshold=... "
                         "(set the others to None)")
    s = np.asarray(sorted_scores, dtype=float)
    if top_k is not None:
        if int(top_k) < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        return min(int(top_k), len(s))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must be in (0, 1]")
        if not len(s):
            return 0
        share = np.cumsum(s) / max(float(s.sum()), 1e-12)
        return min(len(s), int(np.searchsorted(share, top_p - 1e-12) + 1))
    if math.isnan(threshold):
        raise ValueError("threshold is NaN; give a number")
    return int((s >= threshold).sum())


def verify_count(verify: Any, n: int, what: str) -> int:
    """How many of ``n`` entries a verified mode recomputes exactly: ``verify`` is a share
    (``0 < verify < 1``, rounded up, at least one) or a whole count (``>= 1``, at most ``n``)."""
    fix = f"give a share of the {what} (0 < verify < 1, e.g. 0.25) or a whole count (>= 1)"
    if isinstance(verify, bool) or not isinstance(verify, (int, float, np.integer, np.floating)) or not np.isfinite(verify):
        raise ValueError(f"verify={verify!r}: {fix}")
    if 0 < verify < 1:
        return max(1, int(np.ceil(verify * n)))
    if verify >= 1 and float(verify).is_integer():
        return min(int(verify), n)
    raise ValueError(f"verify={verify!r}: {fix}")


RESULTS_ENV = "WORKBENCH_RESULTS"


def results_dir(directory: str | Path | None = None) -> Path:
    """Where saved results are read (preference scores DPS reuses, the tables the demo shows).

    ``directory`` if given, else ``$WORKBENCH_RESULTS``, else the results that travel with the
    package (``workbench._results``: the checkout's ``results/`` folder in an editable install,
    a copy inside the wheel otherwise), so an installed package finds them from any directory.
    """
    if directory is not None:
        return Path(directory).expanduser()
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]).expanduser()
    import importlib.util

    spec = importlib.util.find_spec("workbench._results")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # a checkout imported without installing (or installed before the mapping existed)
    return Path(__file__).resolve().parent.parent / "results"


def pad_right(seqs: list[torch.Tensor], pad: int) -> torch.Tensor:
    """``[1, pos_i]`` token id rows as one ``[n, max pos]`` batch, right-padded with ``pad``."""
    n = max(s.shape[-1] for s in seqs)
    out = torch.full((len(seqs), n), pad, dtype=seqs[0].dtype, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[-1]] = s[0]
    return out
