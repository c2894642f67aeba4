"""Tests of lavise.words: nearest-word collection, frequency ranking, allow/block lists."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lavise.words import RankedWord, select_words


def _vocab(words: list[str], vectors: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(words=words, vectors=F.normalize(vectors.float(), dim=1))


# Six words in 3-d: the axes and the three diagonals between them.
TINY = _vocab(["a", "b", "c", "ab", "ac", "bc"],
              torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]]))
# One filter, two top images: image 1 -> {a, ab}, image 2 -> {b, ab} (s=2).
QUERIES = torch.tensor([[[1.0, 0.2, 0.0], [0.3, 1.0, 0.0]]])


def _cos(q: list[float], word: str) -> float:
    v = TINY.vectors[TINY.words.index(word)]
    return float(F.normalize(torch.tensor(q), dim=0) @ v)


def test_hand_built_example_with_similarity_tie_break():
    (ranked,) = select_words(QUERIES * 3.0, TINY, s=2, x=3)  # scale does not matter (cosine)
    q1, q2 = QUERIES[0].tolist()
    # "a" and "b" both occur once; "a" is closer to its image (0.981 > 0.958).
    assert [w.word for w in ranked] == ["ab", "a", "b"]
    assert [w.count for w in ranked] == [2, 1, 1]
    assert ranked[0].score == pytest.approx(_cos(q1, "ab") + _cos(q2, "ab"), abs=1e-6)
    assert ranked[1].score == pytest.approx(_cos(q1, "a"), abs=1e-6)
    assert ranked[2].score == pytest.approx(_cos(q2, "b"), abs=1e-6)
    assert ranked[0].weight == 2.0
    assert RankedWord(**ranked[0].to_dict()) == ranked[0]


def test_weights_change_the_ranking_not_the_count():
    (ranked,) = select_words(QUERIES, TINY, s=2, x=3, weights=torch.tensor([[1.0, 3.0]]))
    assert [(w.word, w.count, w.weight) for w in ranked] == [("ab", 2, 4.0), ("b", 1, 3.0), ("a", 1, 1.0)]


def test_allow_and_block_lists():
    (allowed,) = select_words(QUERIES, TINY, s=2, x=3, allow={"a", "b", "c", "unknown"})
    assert [(w.word, w.count) for w in allowed] == [("a", 2), ("b", 2), ("c", 0)]
    (blocked,) = select_words(QUERIES, TINY, s=2, x=4, block={"ab"})
    assert [w.word for w in blocked] == ["a", "b", "ac", "bc"]
    assert all(w.count == 1 for w in blocked)
    (both,) = select_words(QUERIES, TINY, s=1, x=2, allow={"a", "ab", "b"}, block={"ab"}, fill=False)
    assert [w.word for w in both] == ["a", "b"]


def test_fill_completes_short_lists_by_summed_similarity():
    q = torch.tensor([[[1.0, 0.2, 0.05]]])
    (short,) = select_words(q, TINY, s=1, x=4, fill=False)
    assert [w.word for w in short] == ["a"]
    (full,) = select_words(q, TINY, s=1, x=4)
    assert [w.word for w in full] == ["a", "ab", "ac", "b"]
    assert [w.count for w in full] == [1, 0, 0, 0]
    assert full[1].score == pytest.approx(_cos([1.0, 0.2, 0.05], "ab"), abs=1e-6)
    (everything,) = select_words(q, TINY, s=1, x=10)
    assert len(everything) == 6 and len({w.word for w in everything}) == 6


def _naive(emb: torch.Tensor, vocab, s: int, x: int, weights=None) -> list[list[tuple[str, int, float]]]:
    out = []
    for u in range(emb.shape[0]):
        count, score, rank = Counter(), Counter(), Counter()
        for p in range(emb.shape[1]):
            sims = F.normalize(emb[u, p], dim=0) @ vocab.vectors.t()
            top = sims.topk(s)
            for val, i in zip(top.values.tolist(), top.indices.tolist()):
                count[i] += 1
                score[i] += val
                rank[i] += 1.0 if weights is None else float(weights[u, p])
        order = sorted(count, key=lambda i: (-rank[i], -score[i], i))[:x]
        out.append([(vocab.words[i], count[i], score[i]) for i in order])
    return out


@pytest.mark.parametrize("weighted", [False, True])
def test_vectorised_equals_naive_counting(weighted):
    g = torch.Generator().manual_seed(0)
    vocab = _vocab([f"w{i}" for i in range(40)], torch.randn(40, 8, generator=g))
    # Queries near a few words, so that words repeat across images.
    centres = vocab.vectors[torch.randint(0, 40, (5, 1, 4), generator=g)]
    emb = (centres + 0.4 * torch.randn(5, 6, 4, 8, generator=g)).sum(2)
    weights = torch.rand(5, 6, generator=g) if weighted else None
    got = select_words(emb, vocab, s=3, x=7, weights=weights, fill=False)
    want = _naive(emb, vocab, 3, 7, weights)
    assert len(got) == 5
    for g_u, w_u in zip(got, want):
        assert [(w.word, w.count) for w in g_u] == [(w, c) for w, c, _ in w_u]
        assert [w.score for w in g_u] == pytest.approx([sc for _, _, sc in w_u], abs=1e-5)


def test_every_filter_gets_x_words():
    g = torch.Generator().manual_seed(1)
    vocab = _vocab([f"w{i}" for i in range(30)], torch.randn(30, 6, generator=g))
    emb = torch.randn(9, 4, 6, generator=g)
    emb[3] = emb[3, :1]  # a filter whose images all give the same words
    emb[4] = 0.0  # and one with zero embeddings
    for ranked in select_words(emb, vocab, s=2, x=12):
        assert len(ranked) == 12 and len({w.word for w in ranked}) == 12
        assert all(torch.isfinite(torch.tensor(w.score)) for w in ranked)


def test_invalid_arguments():
    for kwargs in ({"s": 0}, {"x": 0}, {"s": 7}):
        with pytest.raises(ValueError):
            select_words(QUERIES, TINY, **kwargs)
    with pytest.raises(ValueError, match="allowed vocabulary"):
        select_words(QUERIES, TINY, s=3, allow={"a", "b"})
    with pytest.raises(ValueError):
        select_words(QUERIES[0], TINY)
    with pytest.raises(ValueError):
        select_words(torch.zeros(1, 2, 4), TINY)
    with pytest.raises(ValueError):
        select_words(QUERIES, TINY, weights=torch.ones(2, 1))
