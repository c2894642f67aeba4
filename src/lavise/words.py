"""Word selection (paper section 3.2, "Word Selection Method").

For each filter u and each of its top p images, the explainer's embedding of the
masked image is compared by cosine similarity with every vocabulary word, and its s
nearest words are collected. The ``s * p`` words of a filter are ranked by frequency
(optionally weighted per image, e.g. by activation), ties broken by the summed cosine
similarity, then by vocabulary order; the top x words explain the filter.

Everything is vectorised: one chunked ``(U*P, e) x (e, V)`` matmul with ``topk``, and
the counting is done with ``torch.unique`` / ``index_add`` over ``u * V + word`` keys.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["RankedWord", "Vocabulary", "select_words", "nearest_words"]

# Elements of one (queries x words) similarity block: 2**24 floats = 64 MiB.
_BLOCK_ELEMENTS = 1 << 24


class Vocabulary(Protocol):
    """What :func:`select_words` needs: ``words`` and L2-normalised ``vectors (V, e)``."""

    words: list[str]
    vectors: torch.Tensor


@dataclass(frozen=True)
class RankedWord:
    """One word of a filter's explanation.

    Attributes:
        word: The word.
        count: In how many of the filter's top images the word was among the s nearest.
        score: Summed cosine similarity of the word over those images.
        weight: The ranking value: the summed per-image weights when weights were
            given, else ``count``. ``None`` when not recorded.
    """

    word: str
    count: int
    score: float
    weight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``RankedWord(**d)`` rebuilds it)."""
        return asdict(self)


def _word_index(vocabulary: Any, allow: set[str] | None, block: set[str] | None) -> torch.Tensor:
    """Rows of the vocabulary that may be chosen, ascending."""
    words: Sequence[str] = vocabulary.words
    if allow is None and not block:
        return torch.arange(len(words))
    block = block or set()
    keep = [i for i, w in enumerate(words) if (allow is None or w in allow) and w not in block]
    if allow is not None:
        unknown = len(set(allow) - set(words))
        if unknown:
            logger.info("allow-list: %d of %d words are not in the vocabulary", unknown, len(allow))
    return torch.tensor(keep, dtype=torch.long)


def nearest_words(queries: torch.Tensor, vectors: torch.Tensor, k: int,
                  block_elements: int = _BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The k rows of ``vectors`` with the highest cosine similarity to each query.

    Args:
        queries: ``(Q, e)``; normalised here (zero rows give similarity 0).
        vectors: ``(V, e)`` L2-normalised rows, on the queries' device.
        k: Neighbours per query (<= V).
        block_elements: Bound on one ``(chunk, V)`` similarity block.

    Returns:
        ``(similarities (Q, k), indices (Q, k))``, most similar first.
    """
    q = F.normalize(queries.float(), dim=1, eps=1e-12)
    step = max(1, block_elements // max(1, vectors.shape[0]))
    sims, idx = [], []
    for chunk in q.split(step):
        top = (chunk @ vectors.t()).topk(k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    if not sims:
        empty = torch.empty(0, k, device=q.device)
        return empty, empty.long()
    return torch.cat(sims), torch.cat(idx)


def select_words(
    embeddings: torch.Tensor,
    vocabulary: Vocabulary,
    s: int = 5,
    x: int = 10,
    weights: torch.Tensor | None = None,
    allow: set[str] | None = None,
    block: set[str] | None = None,
    fill: bool = True,
) -> list[list[RankedWord]]:
    """Ranks words for each filter from the embeddings of its top images.

    Args:
        embeddings: ``(U, P, e)`` word-space vectors of each filter's P top images
            (any device; computed on it).
        vocabulary: Words and their L2-normalised vectors (e.g. a ``WordSpace``).
        s: Nearest words collected per image.
        x: Words kept per filter.
        weights: Optional ``(U, P)`` non-negative per-image weights (e.g. the image's
            max activation); a word's ranking value is then the sum of the weights of
            the images it was collected from (``count`` stays the raw count).
        allow: Only these words may be chosen (applied before the nearest search).
        block: These words may never be chosen.
        fill: When a filter collected fewer than ``x`` distinct words, complete its list
            with the uncollected words of highest summed similarity over its P images
            (``count=0``): the same ranking rule, extended to the whole vocabulary.

    Returns:
        For each filter, its :class:`RankedWord` s, best first: ``min(x, V)`` words with
        ``fill`` (V = allowed vocabulary size), else at most ``x``.

    Raises:
        ValueError: On invalid ``s``/``x``, shapes, or an allowed vocabulary smaller than s.
    """
    if s < 1 or x < 1:
        raise ValueError(f"s and x must be >= 1 (got s={s}, x={x})")
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be (U, P, e), got {tuple(embeddings.shape)}")
    u, p, e = embeddings.shape
    vectors = vocabulary.vectors
    if vectors.ndim != 2 or vectors.shape[1] != e:
        raise ValueError(f"vocabulary vectors {tuple(vectors.shape)} do not match embeddings of dimension {e}")
    if weights is not None and tuple(weights.shape) != (u, p):
        raise ValueError(f"weights must be (U, P) = ({u}, {p}), got {tuple(weights.shape)}")
    rows = _word_index(vocabulary, allow, block)
    v = rows.numel()
    if s > v:
        what = "allowed vocabulary" if allow is not None or block else "vocabulary"
        raise ValueError(f"s={s} exceeds the {what} size {v}")
    if u == 0:
        return []
    if p == 0:
        return [[] for _ in range(u)]
    dev = embeddings.device
    rows = rows.to(dev)
    sub = vectors.to(dev, torch.float32)
    if v != vectors.shape[0]:
        sub = sub[rows]

    queries = F.normalize(embeddings.reshape(u * p, e).float(), dim=1, eps=1e-12)
    sims, idx = nearest_words(queries, sub, s)  # (U*P, s)
    filt = torch.arange(u, device=dev).repeat_interleave(p * s)  # filter of each hit
    keys = filt * v + idx.reshape(-1)
    uniq, inverse = torch.unique(keys, return_inverse=True)  # sorted: filter, then word
    n = uniq.numel()
    counts = torch.zeros(n, dtype=torch.long, device=dev).index_add_(
        0, inverse, torch.ones_like(inverse))
    score = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(
        0, inverse, sims.reshape(-1).double())
    if weights is None:
        rank = counts.double()
    else:
        w = weights.to(dev, torch.float64).repeat_interleave(s, dim=1).reshape(-1)
        rank = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, inverse, w)

    # Lexicographic order (filter asc, rank desc, score desc, word asc) by stable sorts.
    order = torch.arange(n, device=dev)
    for key, desc in ((score, True), (rank, True), (uniq // v, False)):
        pos = torch.sort(key[order], descending=desc, stable=True).indices
        order = order[pos]
    group = uniq[order] // v
    start = torch.searchsorted(group, torch.arange(u, device=dev))
    keep = order[(torch.arange(n, device=dev) - start[group]) < x]

    k_group = (uniq[keep] // v).tolist()
    k_word = rows[uniq[keep] % v].tolist()
    k_count = counts[keep].tolist()
    k_score = score[keep].tolist()
    k_rank = rank[keep].tolist()
    out: list[list[RankedWord]] = [[] for _ in range(u)]
    words = vocabulary.words
    for g, wi, c, sc, r in zip(k_group, k_word, k_count, k_score, k_rank):
        out[g].append(RankedWord(words[wi], int(c), float(sc), float(r)))
    if fill:
        _fill(out, queries.reshape(u, p, e).sum(1), sub, rows, words, min(x, v))
    return out


def _fill(out: list[list[RankedWord]], qsum: torch.Tensor, sub: torch.Tensor, rows: torch.Tensor,
          words: Sequence[str], need: int) -> None:
    """Appends count-0 words by summed similarity to the filters with fewer than ``need``."""
    short = [g for g, ranked in enumerate(out) if len(ranked) < need]
    if not short:
        return
    k = min(sub.shape[0], 2 * need)
    _, cand = nearest_words(qsum[short], sub, k)  # the direction of the summed unit queries
    cand_rows = rows[cand]
    summed = torch.einsum("ue,uke->uk", qsum[short], sub[cand])
    for g, wr, sc in zip(short, cand_rows.tolist(), summed.tolist()):
        have = {r.word for r in out[g]}
        for wi, score in zip(wr, sc):
            if len(out[g]) >= need:
                break
            if words[wi] not in have:
                out[g].append(RankedWord(words[wi], 0, float(score), 0.0))
