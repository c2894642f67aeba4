"""Word selection (paper section 3.2, "Word Selection Method").

For each filter u and each of its top p images, the explainer's embedding of the
masked image is compared by cosine similarity with every vocabulary word, and its s
nearest words are collected. The ``s * p`` words of a filter are ranked by frequency
(optionally weighted per image, e.g. by activation), ties broken by the summed cosine
similarity, then by vocabulary order; the top x words explain the filter.

A :class:`WordRanking` can add to these votes (issue 11): discounted votes for the
WordNet ancestors of the voted words (``hypernyms``: dog + cat + bird -> animal),
votes for the nearest words of the mean of the p image embeddings (``centroid``), the
removal of near-synonyms from the kept words (``dedupe``), and smaller votes for an
image's farther words (``decay``). Rankings are registered by name
(:func:`list_word_rankings`); ``votes``, the paper's rule, is the default: none of the
others beat it on the development protocol (``docs/results.md``, "Levers").

Everything is vectorised: one chunked ``(U*P, e) x (e, V)`` matmul with ``topk``, and
the counting is done with ``torch.unique`` / ``index_add`` over ``u * V + word`` keys.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

from lavise._registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["RankedWord", "Vocabulary", "WordRanking", "get_word_ranking", "list_word_rankings",
           "select_words", "nearest_words"]

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


@dataclass(frozen=True)
class WordRanking:
    """How a filter's words are ranked across its top images (on top of the votes).

    Attributes:
        name: Registered name.
        decay: An image's j-th nearest word (j = 0 .. s-1) votes ``decay ** j``
            (1: every collected word votes 1, the paper's rule).
        hypernyms: Discount of an ancestor's vote: each ancestor of a voted word (from
            :func:`lavise.hypernyms.load_hypernyms`, in the vocabulary) gets this times
            the summed votes of its voted descendants (0: off).
        min_children: An ancestor is voted for only when at least this many distinct
            voted words of the filter descend from it.
        min_depth: Only ancestors at least this deep below WordNet's root (``animal``
            6, ``furniture`` 7; drops ``object``, ``whole``, ``artifact``, ``organism``).
        max_hops: Only ancestors at most this many hypernym links above the word.
        cap: ``least``: an ancestor never outranks the least-voted of its voted
            descendants (it takes the place after them); ``best``: never its best-voted
            one; None: no cap.
        centroid: Vote given to each of the ``s`` nearest words of the (weighted) mean
            of the filter's normalised image embeddings (0: off).
        centroid_ties: Break ties between equal votes by the cosine similarity to that
            mean instead of the summed similarity over the images that collected the word.
        dedupe: Cosine similarity above which a word is dropped when a better-ranked
            kept word is that close to it (None: off).
    """

    name: str = "votes"
    decay: float = 1.0
    hypernyms: float = 0.0
    min_children: int = 2
    min_depth: int = 6
    max_hops: int = 10
    cap: str | None = None
    centroid: float = 0.0
    centroid_ties: bool = False
    dedupe: float | None = None

    def __post_init__(self) -> None:
        if self.cap not in (None, "least", "best"):
            raise ValueError(f"unknown hypernym cap {self.cap!r} (valid: least, best, None)")
        if self.decay <= 0 or self.hypernyms < 0 or self.centroid < 0 or self.min_children < 1:
            raise ValueError(f"invalid word ranking {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


WORD_RANKINGS: Registry[WordRanking] = Registry("word ranking")


def _register(ranking: WordRanking) -> None:
    WORD_RANKINGS.register(ranking.name)(ranking)


# Settings measured on the development protocol (docs/results.md, "Levers"):
# none beat ``votes``; they are options, not defaults.
_register(WordRanking("votes"))
_register(WordRanking("hypernyms", hypernyms=0.25, min_children=3, min_depth=6))
_register(WordRanking("hypernyms-after", hypernyms=0.5, min_children=3, min_depth=6, cap="least"))
_register(WordRanking("centroid", centroid=1.0))
_register(WordRanking("dedupe", dedupe=0.8))
_register(WordRanking("decay", decay=0.6))


def list_word_rankings() -> list[str]:
    """Names of the registered word rankings (``votes`` is the paper's rule)."""
    return WORD_RANKINGS.names()


def get_word_ranking(ranking: str | WordRanking) -> WordRanking:
    """A :class:`WordRanking` by name (or itself); ValueError naming close names."""
    return ranking if isinstance(ranking, WordRanking) else WORD_RANKINGS.get(ranking)


def _ancestor_rows(words: Sequence[str], rows: torch.Tensor, ranking: WordRanking) -> tuple[torch.Tensor, torch.Tensor] | None:
    """CSR ``(ptr (V+1,), ancestor columns)`` over the allowed sub-vocabulary, or None without a table."""
    from lavise.hypernyms import load_hypernyms

    try:
        table = load_hypernyms()
    except FileNotFoundError as err:
        logger.warning("%s; words are ranked by votes alone", err)
        return None
    sub_words = [words[i] for i in rows.tolist()]
    col = {w: j for j, w in enumerate(sub_words)}
    ptr, cols = [0], []
    for w in sub_words:
        for a in table.get(w, ()):
            if a.depth >= ranking.min_depth and a.hops <= ranking.max_hops and a.word in col:
                cols.append(col[a.word])
        ptr.append(len(cols))
    return torch.tensor(ptr, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


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
    ranking: str | WordRanking = "votes",
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
        ranking: A registered :class:`WordRanking` name (``votes``: the paper's rule)
            or one; ancestors and centroid words it adds have ``count=0`` unless voted
            for directly.

    Returns:
        For each filter, its :class:`RankedWord` s, best first: ``min(x, V)`` words with
        ``fill`` (V = allowed vocabulary size), else at most ``x``.

    Raises:
        ValueError: On invalid ``s``/``x``, shapes, an allowed vocabulary smaller than s,
            or an unknown ranking.
    """
    rule = get_word_ranking(ranking)
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
    if weights is None:
        hit_rank = torch.ones(keys.numel(), dtype=torch.float64, device=dev)
    else:
        hit_rank = weights.to(dev, torch.float64).repeat_interleave(s, dim=1).reshape(-1)
    if rule.decay != 1.0:
        hit_rank = hit_rank * (rule.decay ** torch.arange(s, device=dev, dtype=torch.float64)).repeat(u * p)
    # Parts of (key, count, score, rank); summed per key below.
    parts = [(keys, torch.ones_like(keys), sims.reshape(-1).double(), hit_rank)]
    if rule.centroid > 0 or rule.centroid_ties:
        w = torch.ones(u, p, device=dev) if weights is None else weights.to(dev, torch.float32)
        mean = F.normalize((queries.reshape(u, p, e) * w[..., None]).sum(1), dim=1, eps=1e-12)
    if rule.centroid > 0:
        _, cidx = nearest_words(mean, sub, s)  # zero means (no voting image) give arbitrary words, masked:
        has = (w.sum(1) > 0).repeat_interleave(s)
        ckeys = (torch.arange(u, device=dev).repeat_interleave(s) * v + cidx.reshape(-1))[has]
        parts.append((ckeys, torch.zeros_like(ckeys), torch.zeros(ckeys.numel(), dtype=torch.float64, device=dev),
                      torch.full((ckeys.numel(),), float(rule.centroid), dtype=torch.float64, device=dev)))
    uniq, counts, score, rank = _sum_parts(parts, dev)
    if rule.hypernyms > 0:
        csr = _ancestor_rows(vocabulary.words, rows.cpu(), rule)
        if csr is not None:
            parts = [(uniq, counts, score, rank)]
            voted = counts > 0
            hypernym = _ancestor_votes(uniq[voted], rank[voted], csr, v, rule, dev)
            if hypernym is not None:
                parts.append(hypernym)
                uniq, counts, score, rank = _sum_parts(parts, dev)
    n = uniq.numel()
    if rule.centroid_ties:
        score = (mean[uniq // v] * sub[uniq % v]).sum(1).double()

    # Lexicographic order (filter asc, rank desc, score desc, word asc) by stable sorts.
    order = torch.arange(n, device=dev)
    for key, desc in ((score, True), (rank, True), (uniq // v, False)):
        pos = torch.sort(key[order], descending=desc, stable=True).indices
        order = order[pos]
    group = uniq[order] // v
    start = torch.searchsorted(group, torch.arange(u, device=dev))
    depth = x if rule.dedupe is None else 4 * x
    keep = order[(torch.arange(n, device=dev) - start[group]) < depth]
    if rule.dedupe is not None:
        keep = _dedupe(keep, uniq, v, sub, rule.dedupe, x)

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


def _sum_parts(parts, dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums ``(key, count, score, rank)`` parts per key: ``(unique keys, counts, scores, ranks)``."""
    keys = torch.cat([q[0] for q in parts])
    uniq, inverse = torch.unique(keys, return_inverse=True)  # sorted: filter, then word
    n = uniq.numel()
    counts = torch.zeros(n, dtype=torch.long, device=dev).index_add_(0, inverse, torch.cat([q[1] for q in parts]))
    score = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, inverse, torch.cat([q[2] for q in parts]))
    rank = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, inverse, torch.cat([q[3] for q in parts]))
    return uniq, counts, score, rank


def _ancestor_votes(keys: torch.Tensor, rank: torch.Tensor, csr: tuple[torch.Tensor, torch.Tensor], v: int,
                    rule: WordRanking, dev: torch.device):
    """The ancestor part ``(key, count 0, score 0, rank)`` of voted ``filter * v + word`` keys, or None."""
    ptr, cols = (t.to(dev) for t in csr)
    word = keys % v
    n_anc = ptr[word + 1] - ptr[word]
    if int(n_anc.sum()) == 0:
        return None
    src = torch.arange(keys.numel(), device=dev).repeat_interleave(n_anc)
    offset = torch.arange(src.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(n_anc, 0) - n_anc, n_anc)
    anc = cols[ptr[word[src]] + offset]
    akeys = (keys[src] // v) * v + anc
    auniq, inverse = torch.unique(akeys, return_inverse=True)
    children = torch.zeros(auniq.numel(), dtype=torch.long, device=dev).index_add_(
        0, inverse, torch.ones_like(inverse))  # distinct voted words below (keys are unique)
    votes = torch.zeros(auniq.numel(), dtype=torch.float64, device=dev).index_add_(0, inverse, rank[src])
    ok = children >= rule.min_children
    auniq, votes = auniq[ok], votes[ok] * rule.hypernyms
    if rule.cap is not None:
        cap = torch.zeros(children.numel(), dtype=torch.float64, device=dev).scatter_reduce_(
            0, inverse, rank[src], reduce="amin" if rule.cap == "least" else "amax", include_self=False)[ok]
        votes = torch.minimum(votes, cap - 1e-6)
    zeros = torch.zeros(auniq.numel(), dtype=torch.float64, device=dev)
    return auniq, torch.zeros_like(auniq), zeros, votes


def _dedupe(keep: torch.Tensor, uniq: torch.Tensor, v: int, sub: torch.Tensor, threshold: float,
            x: int) -> torch.Tensor:
    """Greedily drops, per filter in ranked order, words closer than ``threshold`` to a kept one; x kept."""
    out: list[int] = []
    group = (uniq[keep] // v).tolist()
    word = (uniq[keep] % v).tolist()
    kept: list[int] = []
    current = -1
    for pos, (g, w) in enumerate(zip(group, word)):
        if g != current:
            current, kept = g, []
        if len(kept) >= x:
            continue
        if kept and float((sub[kept] @ sub[w]).max()) > threshold:
            continue
        kept.append(w)
        out.append(pos)
    return keep[torch.tensor(out, dtype=torch.long, device=keep.device)]


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
