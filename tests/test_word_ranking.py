"""Tests of the word rankings of lavise.words (issue 11) and the shipped hypernym table."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import lavise
from lavise.hypernyms import load_hypernyms
from lavise.words import WordRanking, get_word_ranking, list_word_rankings, select_words

ROOT = Path(__file__).resolve().parents[1]

# One-hot words: only the voted words are near any image; ancestors get no similarity.
WORDS = ["dog", "cat", "bird", "animal", "car", "bus", "vehicle", "mammal"]


def _vocab(words=WORDS) -> SimpleNamespace:
    return SimpleNamespace(words=list(words), vectors=torch.eye(len(words)))


def _images(*words: str, vocab=None) -> torch.Tensor:
    """One filter whose top images each point at one word (s = 1)."""
    vocab = vocab or _vocab()
    return torch.stack([vocab.vectors[vocab.words.index(w)] for w in words])[None]


def _words(ranked) -> list[str]:
    return [r.word for r in ranked[0]]


def test_shipped_table_has_the_animal_ancestors():
    table = load_hypernyms()
    for word in ("dog", "cat", "bird", "horse"):
        ancestors = {a.word: a for a in table[word]}
        assert ancestors["animal"].depth == 6
        assert "entity" not in ancestors and "object" not in ancestors  # not vocabulary words / too high
    assert "vehicle" in {a.word for a in table["car"]}


def test_registry_and_config():
    names = list_word_rankings()
    assert names[0] == "votes" and {"hypernyms", "centroid", "dedupe", "decay"} <= set(names)
    assert lavise.Config().ranking == "votes"
    with pytest.raises(ValueError, match="unknown word ranking"):
        lavise.Config(ranking="hypernym")
    with pytest.raises(ValueError, match="hypernyms"):
        get_word_ranking("hypernym")
    with pytest.raises(ValueError, match="cap"):
        WordRanking("x", hypernyms=1.0, cap="most")


def test_cli_choices_come_from_the_registry():
    from lavise.cli import build_parser

    parser = build_parser()
    for command in ("explain", "evaluate"):
        sub = parser._subparsers._group_actions[0].choices[command]
        action = next(a for a in sub._actions if a.dest == "ranking")
        assert list(action.choices) == list_word_rankings()
    from lavise.cli import _config_from

    args = parser.parse_args(["explain", "--checkpoint", "c", "--images", "i", "--out", "o", "--ranking", "hypernyms"])
    assert _config_from(args).ranking == "hypernyms"
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "--checkpoint", "c", "--images", "i", "--out", "o", "--ranking", "nope"])


def test_votes_never_say_the_unvoted_ancestor():
    ranked = select_words(_images("dog", "cat", "bird"), _vocab(), s=1, x=4, fill=False)
    assert _words(ranked) == ["dog", "cat", "bird"]


def test_hypernym_votes_name_the_common_ancestor():
    rule = WordRanking("h", hypernyms=1.0, min_children=3, min_depth=6)
    ranked = select_words(_images("dog", "cat", "bird"), _vocab(), s=1, x=4, fill=False, ranking=rule)
    assert _words(ranked)[0] == "animal"  # 3 children x 1 vote x 1.0 beats each single vote
    top = ranked[0][0]
    assert top.count == 0 and top.weight == pytest.approx(3.0)
    # mammal (depth 9) has only two voted children (dog, cat): below min_children.
    assert "mammal" not in _words(ranked)


def test_hypernym_min_children_depth_and_discount():
    two = select_words(_images("dog", "cat"), _vocab(), s=1, x=5, fill=False,
                       ranking=WordRanking("h", hypernyms=1.0, min_children=2, min_depth=6))
    assert set(_words(two)) == {"dog", "cat", "animal", "mammal"}
    shallow_only = select_words(_images("dog", "cat"), _vocab(), s=1, x=5, fill=False,
                                ranking=WordRanking("h", hypernyms=1.0, min_children=2, min_depth=7))
    assert set(_words(shallow_only)) == {"dog", "cat", "mammal"}  # animal is at depth 6
    discounted = select_words(_images("dog", "cat", "bird"), _vocab(), s=1, x=4, fill=False,
                              ranking=WordRanking("h", hypernyms=0.25, min_children=3))
    assert _words(discounted)[-1] == "animal" and discounted[0][-1].weight == pytest.approx(0.75)


def test_hypernym_cap_keeps_ancestors_below_their_children():
    images = _images("dog", "dog", "cat", "bird", "car")  # dog 2 votes; cat, bird, car 1
    least = select_words(images, _vocab(), s=1, x=5, fill=False,
                         ranking=WordRanking("h", hypernyms=1.0, min_children=3, cap="least"))
    assert _words(least) == ["dog", "cat", "bird", "car", "animal"]  # ties: vocabulary order
    best = select_words(images, _vocab(), s=1, x=5, fill=False,
                        ranking=WordRanking("h", hypernyms=1.0, min_children=3, cap="best"))
    assert _words(best)[:2] == ["dog", "animal"]


def test_missing_table_falls_back_to_votes(monkeypatch, caplog):
    import lavise.hypernyms as hyp

    def missing(path=None):
        raise FileNotFoundError("hypernym table not found: test")

    monkeypatch.setattr(hyp, "load_hypernyms", missing)
    with caplog.at_level(logging.WARNING, logger="lavise.words"):
        ranked = select_words(_images("dog", "cat", "bird"), _vocab(), s=1, x=4, fill=False, ranking="hypernyms")
    assert _words(ranked) == ["dog", "cat", "bird"]
    assert "ranked by votes alone" in caplog.text


def test_centroid_votes_for_the_words_nearest_the_mean():
    vocab = SimpleNamespace(words=["a", "b", "ab"],
                            vectors=F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1))
    images = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # each image's nearest word: a, b; the mean: ab
    assert _words(select_words(images, vocab, s=1, x=3, fill=False)) == ["a", "b"]
    ranked = select_words(images, vocab, s=1, x=3, fill=False, ranking=WordRanking("c", centroid=2.0))
    assert _words(ranked)[0] == "ab" and ranked[0][0].count == 0
    # An image without a vote (weight 0) does not move the mean.
    weighted = select_words(images, vocab, s=1, x=3, fill=False, weights=torch.tensor([[1.0, 0.0]]),
                            ranking=WordRanking("c", centroid=2.0))
    assert _words(weighted)[0] == "a"


def test_dedupe_drops_near_synonyms_and_keeps_x():
    vocab = SimpleNamespace(words=["couch", "sofa", "dog", "cat"],
                            vectors=F.normalize(torch.tensor([[1.0, 0.05, 0], [1.0, 0.0, 0], [0, 1.0, 0],
                                                              [0, 0, 1.0]]), dim=1))
    images = vocab.vectors[[0, 1, 2, 3]][None]  # one vote each
    plain = select_words(images, vocab, s=1, x=3, fill=False)
    assert len({"couch", "sofa"} & set(_words(plain))) == 2
    ranked = select_words(images, vocab, s=1, x=3, fill=False, ranking=WordRanking("d", dedupe=0.9))
    assert len({"couch", "sofa"} & set(_words(ranked))) == 1 and len(ranked[0]) == 3


def test_decay_weights_the_nearer_words():
    vocab = SimpleNamespace(words=["a", "b", "c"],
                            vectors=F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=1))
    # Image 1: a then b; image 2: b then c (s=2): votes a 1, b 2, c 1; decayed: a 1, b 1.5, c 0.5.
    images = torch.tensor([[[1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]])
    ranked = select_words(images, vocab, s=2, x=3, fill=False, ranking=WordRanking("x", decay=0.5))
    assert _words(ranked) == ["b", "a", "c"]
    assert [r.weight for r in ranked[0]] == pytest.approx([1.5, 1.0, 0.5])


def test_explain_records_the_ranking():
    from lavise.explain import _ranking_setting

    assert _ranking_setting(get_word_ranking("hypernyms")) == "hypernyms"
    assert _ranking_setting(WordRanking("mine", centroid=0.5))["centroid"] == 0.5


@pytest.mark.slow
def test_shipped_table_is_what_the_script_builds(tmp_path):
    wordnet = Path("/usr/share/wordnet")
    if not (wordnet / "data.noun").is_file():
        pytest.skip("WordNet (wordnet-base) is not installed")
    out = tmp_path / "hypernyms.tsv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_hypernyms.py"), "--wordnet", str(wordnet),
                    "--out", str(out)], check=True, capture_output=True)
    shipped = (ROOT / "src" / "lavise" / "data" / "hypernyms.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert out.read_text(encoding="utf-8").splitlines()[1:] == shipped
