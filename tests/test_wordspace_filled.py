"""The filled 300-d space: word2vec where it has a word, GloVe mapped into it elsewhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from lavise.vocabulary import default_words
from lavise.wordspace import WORD2VEC_300, WORD2VEC_300_FILLED, list_word_spaces, load_word_space

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_filled_word_space.py"


def test_filled_space_loads_offline_and_covers_the_vocabulary_and_coco():
    assert WORD2VEC_300_FILLED in list_word_spaces()
    space = load_word_space(WORD2VEC_300_FILLED)
    assert space.dim == 300
    norms = space.vectors.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    for word in ("frisbee", "giraffe", "zebra", "chandelier", "awning", "windowpane"):
        assert word in space
    assert space.concept_vector("giraffe") is not None
    missing = [w for w in default_words() if w not in space]
    assert missing == []
    # A mapped word lands near related real word2vec words, not anywhere.
    real = load_word_space(WORD2VEC_300)
    giraffe = space.vector("giraffe")
    near = {real.words[int(i)] for i in real.nearest(giraffe, 25)[1][0]}
    assert len(near & {"mammal", "creature", "leopard", "animal", "animals", "rabbit", "fox", "monkey",
                       "elephant", "zoo", "lion", "reptile", "cougar", "penguin"}) >= 3


def test_real_word2vec_vectors_are_unchanged():
    real = load_word_space(WORD2VEC_300)
    space = load_word_space(WORD2VEC_300_FILLED)
    assert space.words[: len(real)] == real.words
    assert torch.equal(space.vectors[: len(real)], real.vectors)
    assert not set(space.words[len(real):]) & set(real.words)


def _build_script():
    spec = importlib.util.spec_from_file_location("build_filled_word_space", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["linear", "linear-spread", "knn"])
def test_mapping_recovers_held_out_word2vec_vectors_better_than_chance(kind):
    build = _build_script()
    real = load_word_space(WORD2VEC_300)
    glove = load_word_space("glove-6b-50d")
    shared = [i for i, w in enumerate(real.words[:6000]) if w in glove.index]
    rng = np.random.default_rng(0)
    rng.shuffle(shared)
    held, fit = shared[:200], shared[200:]
    wv = real.vectors.numpy()
    gx = lambda rows: glove.vectors.numpy()[[glove.index[real.words[i]] for i in rows]]  # noqa: E731
    mapping = build.Mapping(kind, gx(fit), wv[fit], k=10, power=4.0)
    mapped = mapping(gx(held))
    assert mapped.shape == (len(held), 300)
    assert np.allclose(np.linalg.norm(mapped, axis=1), 1, atol=1e-4)
    cosine = (mapped * wv[held]).sum(1)
    # Random unit vectors in 300-d: mean cosine ~0 (sd 0.06); real ones are far above.
    assert cosine.mean() > 0.35
    sims = mapped @ wv[:6000].T
    rank = (sims > cosine[:, None]).sum(1)
    assert (rank < 10).mean() > 0.3  # chance: 10 / 6000


def test_mapped_words_are_marked_and_can_be_left_out_of_concept_vectors():
    real = load_word_space(WORD2VEC_300)
    space = load_word_space(WORD2VEC_300_FILLED)
    assert real.mapped == frozenset()
    assert space.mapped == frozenset(space.words[len(real):])
    assert space.concept_vector("giraffe", mapped=False) is None
    assert torch.equal(space.concept_vector("dog", mapped=False), real.concept_vector("dog"))
    # A name with one mapped token: the learned tokens alone, as in word2vec-300.
    assert torch.allclose(space.concept_vector("golden retriever", mapped=False),
                          real.concept_vector("golden retriever"))
    assert not torch.allclose(space.concept_vector("golden retriever"), real.concept_vector("golden retriever"))
    sub = space.subset(["dog", "giraffe", "zebra"])
    assert sub.mapped == {"giraffe", "zebra"}
