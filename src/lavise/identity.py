"""An image is the hash of its file's bytes, never its dataset id alone.

Dataset ids collide: COCO's image 109 is not a user's COCO-format image 109, and
ADE20K, Pascal VOC and Visual Genome number their images too. Wherever identity
matters (deduplication of combined references, ``--exclude``, the train/evaluation
overlap check, feature-cache keys) lavise compares :func:`content_hashes` instead:
the SHA-256 of each file's bytes. The same file under two ids, or in two datasets, is
one image; two different files with the same id are two images.

Hashing reads each file once, which costs far less than decoding it; digests are kept
in a small SQLite table under the lavise cache directory
(``$LAVISE_CACHE_DIR`` or ``~/.cache/lavise``) keyed by the file's absolute path, size
and modification time, so a second run only ``stat``s the files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["content_hash", "content_hashes", "MISSING_PREFIX"]

# Identity of a file that cannot be read: its absolute path (never equal to a digest).
MISSING_PREFIX = "unreadable:"
_CHUNK = 1 << 20
_DB_NAME = "content-hashes.sqlite3"
# In-process memo: (absolute path, size, mtime_ns) -> digest.
_memo: dict[tuple[str, int, int], str] = {}


def _cache_root() -> Path:
    # Same default as lavise.features.default_cache_dir (not imported: features sits above).
    return Path(os.environ.get("LAVISE_CACHE_DIR") or Path.home() / ".cache" / "lavise")


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks; no cache.

    Raises:
        OSError: The file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _DiskCache:
    """``(path, size, mtime_ns) -> digest`` in SQLite; silently absent if unwritable."""

    def __init__(self, folder: Path) -> None:
        self.db: sqlite3.Connection | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(folder / _DB_NAME), timeout=60)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, digest TEXT)"
            )
        except (OSError, sqlite3.Error) as exc:
            logger.debug("content-hash cache unavailable in %s: %s", folder, exc)
            self.db = None

    def lookup(self, keys: Sequence[tuple[str, int, int]]) -> dict[str, str]:
        if self.db is None or not keys:
            return {}
        wanted = {k[0]: k for k in keys}
        found: dict[str, str] = {}
        paths = list(wanted)
        try:
            for start in range(0, len(paths), 500):
                part = paths[start:start + 500]
                rows = self.db.execute(
                    f"SELECT path, size, mtime_ns, digest FROM files WHERE path IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
                for path, size, mtime, digest in rows:
                    if wanted[path][1:] == (size, mtime):
                        found[path] = digest
        except sqlite3.Error as exc:
            logger.debug("content-hash cache read failed: %s", exc)
        return found

    def store(self, rows: Iterable[tuple[str, int, int, str]]) -> None:
        if self.db is None:
            return
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", list(rows))
        except sqlite3.Error as exc:
            logger.debug("content-hash cache write failed: %s", exc)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def content_hashes(
    paths: Sequence[str | os.PathLike],
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[str]:
    """The identity of each image file: the SHA-256 (hex) of its bytes.

    Digests are cached on disk by absolute path, size and modification time. A file
    that cannot be read gets ``"unreadable:<absolute path>"`` (one warning counts
    them), so a missing file is still one distinct image that later fails to decode.

    Args:
        paths: Image files.
        cache_dir: Root of the lavise cache (default ``$LAVISE_CACHE_DIR`` or
            ``~/.cache/lavise``); the table lives in ``<root>/identity/``.
        progress: Show a progress bar when many files must be hashed.

    Returns:
        One identity string per path, in order.
    """
    keys: list[tuple[str, int, int] | None] = []
    out: list[str | None] = []
    for p in paths:
        absolute = os.path.abspath(os.fspath(p))
        try:
            st = os.stat(absolute)
        except OSError:
            keys.append(None)
            out.append(MISSING_PREFIX + absolute)
            continue
        key = (absolute, st.st_size, st.st_mtime_ns)
        keys.append(key)
        out.append(_memo.get(key))
    todo = [k for k, d in zip(keys, out) if k is not None and d is None]
    if todo:
        cache = _DiskCache(Path(cache_dir) if cache_dir is not None else _cache_root() / "identity")
        try:
            found = cache.lookup(todo)
            fresh: list[tuple[str, int, int, str]] = []
            missing = [k for k in todo if k[0] not in found]
            for key in tqdm(missing, desc="hashing images", unit="img", leave=False,
                            disable=not progress or len(missing) < 500):
                try:
                    digest = content_hash(key[0])
                except OSError:
                    continue
                found[key[0]] = digest
                fresh.append((*key, digest))
            cache.store(fresh)
        finally:
            cache.close()
        for k in todo:
            if k[0] in found:
                _memo[k] = found[k[0]]
        out = [
            d if d is not None else (_memo.get(k) or MISSING_PREFIX + k[0]) if k is not None else d
            for k, d in zip(keys, out)
        ]
    unreadable = sum(1 for d in out if d is not None and d.startswith(MISSING_PREFIX))
    if unreadable:
        logger.warning("%d of %d image files could not be read for hashing (e.g. %s)", unreadable,
                       len(out), next(d for d in out if d and d.startswith(MISSING_PREFIX))[len(MISSING_PREFIX):])
    return [str(d) for d in out]
