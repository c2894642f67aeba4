"""The packaged 300-d word2vec space works offline, right after installation."""

from __future__ import annotations

import torch

from lavise import Config
from lavise.vocabulary import load_vocabulary
from lavise.wordspace import list_word_spaces, load_word_space


def test_packaged_word2vec_loads_offline_with_unit_vectors_and_sensible_neighbours():
    assert "word2vec-300" in list_word_spaces()
    space = load_word_space("word2vec-300")
    assert space.dim == 300 and len(space) == 26423
    norms = space.vectors.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    dog, cat, car = (space.vector(w) for w in ("dog", "cat", "car"))
    assert float(dog @ cat) > float(dog @ car)
    assert space.concept_vector("traffic light") is not None  # multi-word names: token mean
    assert Config().word_space == "word2vec-300-filled"  # word2vec-300 plus GloVe-mapped words


def test_default_vocabulary_in_word2vec_keeps_thousands_of_visual_words():
    vocabulary = load_vocabulary("default", load_word_space("word2vec-300"))
    assert 3000 < len(vocabulary) < 12402
    assert {"dog", "grass", "wall", "sky", "umbrella"} <= set(vocabulary.words)
