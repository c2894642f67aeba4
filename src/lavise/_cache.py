"""Cache integrity: file locks, checksums and the validation of on-disk cache entries.

Everything lavise caches (feature maps, filter statistics, parsed word vectors) is
derived data. A damaged entry -- a truncated file, unreadable metadata, sizes that
disagree with the metadata, a failed checksum -- is therefore never an error: it is
reported as a warning naming the entry, removed, and rebuilt. Writers of one entry
are serialised by an inter-process file lock (``filelock``), so two processes
filling the same entry never interleave: the second waits, then reuses the result.

The feature cache (see :mod:`lavise.features`) is validated here:

* ``features.npy`` must have the ``.npy`` header the metadata implies
  (``(len(ids), d, h, w)`` float16) and be as long as that header says;
* ``meta.json`` must parse and carry the fields lavise writes;
* every finished shard (the rows ``i % world_size == rank`` one process filled) has a
  SHA-256 of its rows, written when the shard finished and checked whenever the
  entry is opened. In entries larger than :data:`DIGEST_BUDGET` bytes each shard's
  checksum covers an evenly spaced sample of its rows (always the same rows), so
  opening an entry reads at most that many bytes; sizes and headers are always
  checked in full.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from filelock import FileLock, Timeout

from lavise._io import save_npy_atomic, write_json_atomic

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bytes of one shard's rows hashed in full; larger shards hash an evenly spaced sample.
DIGEST_BUDGET = 256 << 20
_LOCK_SUFFIX = ".lock"


class CacheDamaged(ValueError):
    """A cache entry disagrees with its metadata or fails its checksum.

    Attributes:
        path: The damaged file or entry folder.
        reason: What is wrong with it.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"damaged cache entry {self.path}: {reason} "
                         "(it is derived data: delete it and run again to rebuild it)")


# --------------------------------------------------------------------------- locks


def lock(path: str | Path, what: str = "cache entry", required: bool = True) -> contextlib.AbstractContextManager:
    """An inter-process lock named after ``path`` (the lock file is ``<path>.lock``).

    Waiting for another process is logged once at INFO level. With ``required=False``
    a lock file that cannot be created (a read-only folder) means no lock, not an error.
    """
    return _Lock(Path(path), what, required)


class _Lock:
    def __init__(self, path: Path, what: str, required: bool) -> None:
        self.path = path
        self.what = what
        self.required = required
        self._lock: FileLock | None = None

    def __enter__(self) -> "_Lock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.path) + _LOCK_SUFFIX)
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                logger.info("waiting for another process writing the %s %s", self.what, self.path)
                self._lock.acquire()
        except OSError:
            if self.required:
                raise
            logger.debug("no lock for the %s %s (cannot create its lock file)", self.what, self.path)
            self._lock = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()


_HELD: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("lavise_held_locks",
                                                                                   default=None)


def holding_locks(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorates a function that takes locks with :func:`hold`: they are released when it returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with contextlib.ExitStack() as stack:
            token = _HELD.set(stack)
            try:
                return fn(*args, **kwargs)
            finally:
                _HELD.reset(token)

    return wrapper


def hold(cm: contextlib.AbstractContextManager) -> None:
    """Enters ``cm`` until the enclosing :func:`holding_locks` function returns."""
    stack = _HELD.get()
    if stack is None:
        raise RuntimeError("hold() outside a @holding_locks function")
    stack.enter_context(cm)


# --------------------------------------------------------------------------- checksums


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(*parts: bytes) -> str:
    """SHA-256 of the concatenated ``parts`` (hex)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def shard_rows(n: int, rank: int, world_size: int, row_bytes: int, budget: int = DIGEST_BUDGET) -> np.ndarray:
    """Rows of shard ``rank`` whose bytes its checksum covers: all, or an even sample.

    The shards of one entry share ``budget`` bytes, so opening an entry reads at most
    that much, whatever the number of shards.
    """
    rows = np.arange(rank, n, world_size, dtype=np.int64)
    cap = max(1, budget // world_size // max(1, row_bytes))
    if len(rows) > cap:
        rows = rows[np.unique(np.linspace(0, len(rows) - 1, num=cap).astype(np.int64))]
    return rows


def digest_rows(arr: np.ndarray, rows: np.ndarray, chunk: int = 64) -> str:
    """SHA-256 of ``arr[rows]`` (rows in the order given), read ``chunk`` rows at a time."""
    h = hashlib.sha256()
    for start in range(0, len(rows), chunk):
        h.update(np.ascontiguousarray(arr[rows[start:start + chunk]]).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- validation


def read_json(path: str | Path) -> Any:
    """Parses a cache entry's JSON file; :class:`CacheDamaged` if it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CacheDamaged(path, f"unreadable JSON ({_short(e)})") from None


def check_npy(path: str | Path, shape: tuple[int, ...], dtype: Any) -> None:
    """Checks that ``path`` is an ``.npy`` file of ``shape`` and ``dtype``, as long as its header says."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            else:
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError) as e:
        raise CacheDamaged(path, f"not a readable .npy file ({_short(e)})") from None
    if tuple(got_shape) != tuple(shape) or np.dtype(got_dtype) != np.dtype(dtype) or fortran:
        raise CacheDamaged(path, f"holds {np.dtype(got_dtype)} {tuple(got_shape)}, "
                                 f"its metadata says {np.dtype(dtype)} {tuple(shape)}")
    need = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size < need:
        raise CacheDamaged(path, f"truncated: {size} bytes, {need} expected")


def load_mask(path: str | Path, n: int) -> np.ndarray:
    """A shard's resume mask (``done-R-of-W.npy``): bool ``(n,)``, or :class:`CacheDamaged`."""
    path = Path(path)
    try:
        done = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CacheDamaged(path, f"unreadable ({_short(e)})") from None
    if done.dtype != np.bool_ or done.shape != (n,):
        raise CacheDamaged(path, f"holds {done.dtype} {done.shape}, expected bool ({n},)")
    return done


def load_failed(path: str | Path) -> dict[str, str]:
    """A shard's unreadable images (``failed-R-of-W.json``): ``{image id: error}``."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CacheDamaged(path, "not a JSON object of image ids to errors")
    return data


_META_FIELDS = {"version": int, "key": str, "layer": str, "shape": list, "ids": list, "failed": dict,
                "complete": bool}


def check_meta(path: Path, meta: Any, *, version: int, key: str | None = None) -> dict:
    """Checks a feature cache entry's ``meta.json`` content (fields, types, version, key)."""
    file = path / "meta.json"
    if not isinstance(meta, dict):
        raise CacheDamaged(file, "not a JSON object")
    for name, kind in _META_FIELDS.items():
        if not isinstance(meta.get(name), kind):
            raise CacheDamaged(file, f"field {name!r} is missing or not a {kind.__name__}")
    if meta["version"] != version:
        raise CacheDamaged(file, f"cache format version {meta['version']}, this lavise writes {version}")
    if key is not None and meta["key"] != key:
        raise CacheDamaged(file, f"belongs to cache key {meta['key']}, not {key}")
    if len(meta["shape"]) != 3 or not all(isinstance(v, int) and v > 0 for v in meta["shape"]):
        raise CacheDamaged(file, f"bad feature shape {meta['shape']!r}")
    return meta


def verify_feature_entry(path: str | Path, meta: dict, dtype: Any = np.float16) -> None:
    """Checks a complete feature cache entry: array size and shape, then each shard's checksum."""
    path = Path(path)
    n = len(meta["ids"])
    shape = (n, *meta["shape"])
    feats = path / "features.npy"
    if not feats.is_file():
        raise CacheDamaged(feats, "missing")
    check_npy(feats, shape, dtype)
    sums = meta.get("checksums")
    if not isinstance(sums, dict) or not sums:
        raise CacheDamaged(path / "meta.json", "no shard checksums")
    arr = np.load(feats, mmap_mode="r")
    row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    for shard, want in sums.items():
        rank, world_size = _parse_shard(shard, path)
        got = digest_rows(arr, shard_rows(n, rank, world_size, row_bytes))
        if got != want:
            raise CacheDamaged(feats, f"shard {shard} fails its checksum")


def _parse_shard(shard: str, path: Path) -> tuple[int, int]:
    try:
        rank, world_size = (int(v) for v in shard.split("-of-"))
    except ValueError:
        raise CacheDamaged(path / "meta.json", f"bad shard name {shard!r}") from None
    if not 0 <= rank < world_size:
        raise CacheDamaged(path / "meta.json", f"bad shard name {shard!r}")
    return rank, world_size


def finish_shard(path: Path, arr: np.ndarray, rank: int, world_size: int) -> str:
    """Records the checksum of a finished shard's rows in ``shard-R-of-W.json``; returns it."""
    n = arr.shape[0]
    row_bytes = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
    digest = digest_rows(arr, shard_rows(n, rank, world_size, row_bytes))
    write_json_atomic(path / f"shard-{rank}-of-{world_size}.json", {"rows": digest, "n": n})
    return digest


def finished_shards(path: Path, arr: np.ndarray, world_size: int,
                    trusted: dict[str, str] | None = None) -> dict[str, str]:
    """Checksums of the finished shards of ``world_size``, each verified against the rows now on disk.

    A shard whose rows fail their checksum is reported, its resume state is removed
    (so that its rows are extracted again) and it is left out of the result. Shards in
    ``trusted`` (just written by this process) are not read again.
    """
    trusted = trusted or {}
    n = arr.shape[0]
    row_bytes = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
    out: dict[str, str] = {}
    for f in sorted(path.glob(f"shard-*-of-{world_size}.json")):
        name = f.name[len("shard-"):-len(".json")]
        if name in trusted:
            out[name] = trusted[name]
            continue
        try:
            rank, _ = _parse_shard(name, path)
            rec = read_json(f)
            if not isinstance(rec, dict) or rec.get("n") != n or not isinstance(rec.get("rows"), str):
                raise CacheDamaged(f, "malformed shard record")
            if digest_rows(arr, shard_rows(n, rank, world_size, row_bytes)) != rec["rows"]:
                raise CacheDamaged(path / "features.npy", f"shard {name} fails its checksum")
        except CacheDamaged as e:
            report(e)
            for stale in (f, path / f"done-{name}.npy", path / f"failed-{name}.json"):
                stale.unlink(missing_ok=True)
            continue
        out[name] = rec["rows"]
    return out


def create_array(path: Path, shape: tuple[int, ...], dtype: Any) -> None:
    """Creates a zero-filled ``.npy`` file atomically (a unique temporary name, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_or_prepare(path: Path, *, key: str, version: int, shape: tuple[int, ...], dtype: Any, rank: int,
                    world_size: int, open_complete: Callable[[Path], T]) -> T | None:
    """A feature cache entry: ``open_complete(path)`` if it is complete and sound, else None
    with the entry ready to (re)fill (its ``features.npy`` of ``shape`` exists).

    A damaged entry is reported and cleared; a damaged resume state of this shard is
    reported and dropped (the shard starts over).
    """
    n = shape[0]
    meta_file = path / "meta.json"
    feats_file = path / "features.npy"
    with lock(path / ".entry", "feature cache entry"):
        try:
            if meta_file.is_file():
                meta = check_meta(path, read_json(meta_file), version=version, key=key)
                if meta["complete"]:
                    return open_complete(path)
            if feats_file.is_file():
                check_npy(feats_file, shape, dtype)
        except CacheDamaged as e:
            report(e)
            clear_entry(path)
        shard = f"{rank}-of-{world_size}"
        done_file, failed_file = path / f"done-{shard}.npy", path / f"failed-{shard}.json"
        try:
            if done_file.is_file():
                load_mask(done_file, n)
            if failed_file.is_file():
                load_failed(failed_file)
        except CacheDamaged as e:
            report(e)
            for f in (done_file, failed_file, path / f"shard-{shard}.json"):
                f.unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        if not feats_file.is_file():
            create_array(feats_file, shape, dtype)
    return None


def gather_shards(path: Path, out: np.ndarray, done: np.ndarray, rank: int,
                  world_size: int) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    """Records this shard's checksum if it is finished and gathers every shard's state.

    Returns ``(done mask of all shards, failed images of all shards, shard checksums)``.
    """
    n = len(done)
    trusted: dict[str, str] = {}
    if done[rank::world_size].all():
        trusted[f"{rank}-of-{world_size}"] = finish_shard(path, out, rank, world_size)
    sums = finished_shards(path, out, world_size, trusted)
    all_done = np.zeros(n, dtype=bool)
    all_failed: dict[str, str] = {}
    for f in sorted(path.glob(f"done-*-of-{world_size}.npy")):
        shard = f.name[len("done-"):-len(".npy")]
        failed_file = path / f"failed-{shard}.json"
        try:
            mask = load_mask(f, n)
            failed = load_failed(failed_file) if failed_file.is_file() else {}
        except CacheDamaged as e:
            report(e)
            for stale in (f, failed_file, path / f"shard-{shard}.json"):
                stale.unlink(missing_ok=True)
            sums.pop(shard, None)
            continue
        all_done |= mask
        all_failed.update(failed)
    return all_done, all_failed, sums


def report(damage: CacheDamaged) -> None:
    """Logs the one warning that a damaged cache entry is being rebuilt."""
    logger.warning("damaged cache entry %s: %s; rebuilding it", damage.path, damage.reason)


def clear_entry(path: Path, keep: Callable[[Path], bool] = lambda p: p.name.endswith(_LOCK_SUFFIX)) -> None:
    """Removes a cache entry folder's files (lock files stay: other processes may hold them)."""
    if not path.is_dir():
        return
    for f in path.iterdir():
        if f.is_file() and not keep(f):
            f.unlink(missing_ok=True)


def save_mask(path: Path, mask: np.ndarray) -> None:
    """Saves a shard's resume mask atomically."""
    save_npy_atomic(path, mask)


def load_or_build(path: str | Path, load: Callable[[Path], T], build: Callable[[], T],
                  save: Callable[[T, Path], Any], what: str = "cache entry") -> T:
    """Loads a single-file cache entry, or builds and saves it; one writer at a time.

    A file that ``load`` rejects with :class:`CacheDamaged` is reported, removed and rebuilt.
    """
    path = Path(path)
    with lock(path, what):
        if path.is_file():
            try:
                return load(path)
            except CacheDamaged as e:
                report(e)
                path.unlink(missing_ok=True)
        value = build()
        save(value, path)
        return value


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
