"""Tests for lavise.vocabulary (the shipped default list, sizes, user lists, concepts)."""

from __future__ import annotations

import logging

import pytest

from lavise.vocabulary import default_words, list_vocabularies, load_vocabulary
from lavise.wordspace import load_word_space


@pytest.fixture(scope="module")
def glove():
    return load_word_space("glove-6b-50d")


def test_default_vocabulary(glove):
    vocab = load_vocabulary("default", glove)
    assert 10_000 <= len(vocab) <= 25_000
    assert len(vocab) == len(default_words())  # every shipped word is in GloVe 6B
    for word in ["dog", "grass", "sky", "wooden", "red", "pizza", "car"]:
        assert word in vocab, word
    for word in ["whereabouts", "consequence", "idea", "john"]:
        assert word not in vocab, word
    # visual: objects, body parts, animals, food, materials, scenes, colours, visible people
    for word in ["hand", "wrist", "face", "zebra", "beer", "sand", "beach", "kitchen", "blue",
                 "texture", "man", "woman", "child", "skier", "surfer", "people", "crowd"]:
        assert word in vocab, word
    # no chemical or biological jargon, abstractions or person roles no picture shows
    for word in ["scopolamine", "transferase", "corticosterone", "metazoan", "bourgeoisie",
                 "humour", "reader", "customer", "someone", "enzyme", "protein", "gonad"]:
        assert word not in vocab, word
    assert vocab.vectors.shape == (len(vocab), 50)
    assert load_vocabulary(None, glove).words == vocab.words
    assert set(list_vocabularies()) >= {"default", "glove", "concepts"}


def test_size(glove):
    full = load_vocabulary("default", glove)
    top = load_vocabulary("default", glove, size=100)
    assert top.words == full.words[:100]
    assert load_vocabulary("glove", glove, size=5).words == glove.words[:5]
    with pytest.raises(ValueError):
        load_vocabulary("default", glove, size=0)


def test_user_list(glove, tmp_path, caplog):
    f = tmp_path / "words.txt"
    f.write_text("# my words\ncat\n\n  dog  # pet\nqqzzxxnotaword\ncat\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="lavise.vocabulary"):
        vocab = load_vocabulary(str(f), glove)
    assert vocab.words == ["cat", "dog"]
    assert sum("qqzzxxnotaword" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(FileNotFoundError):
        load_vocabulary(str(tmp_path / "missing.txt"), glove)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\nqqzzxxnotaword\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_vocabulary(str(empty), glove)


def test_concepts(glove):
    vocab = load_vocabulary("concepts", glove,
                            concepts=["wall-other-merged", "traffic light", "dog", "playingfield"])
    assert vocab.words == ["wall", "traffic", "light", "dog", "playing", "field"]
    with pytest.raises(ValueError):
        load_vocabulary("concepts", glove)
