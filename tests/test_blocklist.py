"""Offensive words never reach an explanation unless asked for (lavise.vocabulary blocklist)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest
import torch

from lavise import Config, explain
from lavise.cli import build_parser
from lavise.explainer import Explainer, ExplainerHead, split_concepts
from lavise.vocabulary import (
    BLOCKLIST_FILE,
    blocklist_key,
    default_words,
    is_offensive,
    load_vocabulary,
    offensive_words,
    remove_offensive,
)
from lavise.wordspace import WordSpace, load_word_space
from tiny import image_folder, tiny_model

# Known English slurs (racial, ethnic, homophobic, transphobic, ableist) and obscenities.
# Kept here, independent of the shipped blocklist, so that a rebuilt list that loses one fails.
KNOWN_OFFENSIVE = """
    nigger nigga niggers coon darkie jigaboo pickaninny sambo kike yid hymie chink chinky gook
    jap nip? spic spick wetback beaner dago wop guido greaseball polack kraut honky whitey
    redskin injun squaw raghead towelhead paki wog gringo coolie kaffir halfbreed
    faggot fag fags faggots dyke dykes homo tranny shemale poofter queers
    retard retards spaz mongoloid
    fuck fucking fucked fucker motherfucker shit shitty bullshit cunt cunts twat pussy cock
    dick dickhead prick asshole arsehole bitch bitches whore slut skank wanker bollocks
    cocksucker blowjob dildo jizz cum porn porno
""".split()
KNOWN_OFFENSIVE = [w for w in KNOWN_OFFENSIVE if not w.endswith("?")]
# Ordinary words that sound like, or share a sense with, an offensive one: never blocked.
ORDINARY = ["dog", "pot", "screw", "spade", "shrimp", "taco", "boy", "queen", "black", "white",
            "colored", "slope", "strip", "organ", "rum", "weed", "tool", "bull", "fairy", "gay",
            "woman", "man", "person", "hoe", "knob", "bush", "beaver", "rooster", "donkey"]


@pytest.fixture(scope="module")
def glove():
    return load_word_space("glove-6b-50d")


def test_known_offensive_words_are_blocked_and_ordinary_words_are_not():
    assert len(offensive_words()) > 1000
    missing = [w for w in KNOWN_OFFENSIVE if not is_offensive(w)]
    assert not missing, missing
    blocked = [w for w in ORDINARY if is_offensive(w)]
    assert not blocked, blocked
    assert is_offensive("Blow Job") and is_offensive("blow-job") and is_offensive("FAGGOT")
    assert blocklist_key("Blow  Job") == "blow_job" == blocklist_key("blow-job")
    assert remove_offensive(["dog", "cunt", "cat", "Nigger"]) == (["dog", "cat"], ["cunt", "Nigger"])


def test_blocklist_file_names_its_sources():
    rows = [line.split("\t") for line in BLOCKLIST_FILE.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    assert rows[0] == ["word", "sources"]
    sources = {s for _, srcs in rows[1:] for s in srcs.split(",")}
    assert sources == {"wordnet-usage", "wordnet-gloss", "better-profanity", "supplement"}


def test_default_vocabulary_holds_no_offensive_word():
    words = set(default_words())
    assert not words & set(KNOWN_OFFENSIVE)
    assert not {blocklist_key(w) for w in words} & offensive_words()


def test_glove_vocabulary_is_filtered_unless_allowed(glove, caplog):
    in_glove = [w for w in KNOWN_OFFENSIVE if w in glove]
    assert len(in_glove) >= 40  # the test means something: GloVe knows these words
    with caplog.at_level(logging.INFO, logger="lavise.vocabulary"):
        vocab = load_vocabulary("glove", glove)
    assert not set(vocab.words) & set(KNOWN_OFFENSIVE)
    removed = len(glove) - len(vocab)
    assert removed >= 400
    assert any(f"removed {removed} offensive words" in r.getMessage() for r in caplog.records)
    assert set(in_glove) <= set(remove_offensive(glove.words)[1])  # what allow_offensive would keep


def test_user_word_file_and_concept_names_are_filtered(glove, tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("dog\nnigger\ncat\nfaggot\n", encoding="utf-8")
    assert load_vocabulary(str(f), glove).words == ["dog", "cat"]
    assert load_vocabulary(str(f), glove, allow_offensive=True).words == ["dog", "nigger", "cat", "faggot"]
    assert load_vocabulary(str(f), glove, size=2).words == ["dog", "cat"]  # the size counts clean words
    vocab = load_vocabulary("concepts", glove, concepts=["dog", "bitch", "traffic light"])
    assert vocab.words == ["dog", "traffic", "light"]
    only = tmp_path / "only.txt"
    only.write_text("cunt\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_vocabulary(str(only), glove)


@pytest.fixture
def slur_space_setup(tmp_path):
    """An explainer whose word space is mostly offensive words: unfiltered, they would win."""
    torch.manual_seed(0)
    words = KNOWN_OFFENSIVE[:30] + ["dog", "cat", "car", "tree", "sky", "grass", "road", "wall"]
    space = WordSpace("toy", words, torch.randn(len(words), 8))
    exp = Explainer(tiny_model(), "features", space, "trained", ExplainerHead(6, 8).eval(),
                    split_concepts(words[-8:], 0.5))
    folder = image_folder(tmp_path / "imgs", n=6)
    config = Config(cache_dir=str(tmp_path / "cache"), progress=False, device="cpu", top_images=3, s=3, x=5,
                    vocabulary="glove")
    return exp, folder, config, space


def test_explanations_with_the_glove_vocabulary_never_use_offensive_words(slur_space_setup):
    exp, folder, config, space = slur_space_setup
    result = explain(exp, str(folder), config=config)
    used = {w for f in result for w in f.labels}
    assert used and not used & set(KNOWN_OFFENSIVE)
    allowed = explain(exp, str(folder), config=config.replace(allow_offensive=True))
    assert {w for f in allowed for w in f.labels} & set(KNOWN_OFFENSIVE)  # the filter is what keeps them out
    # a vocabulary handed to explain() directly is filtered too
    direct = explain(exp, str(folder), config=config.replace(vocabulary="default"), vocabulary=space)
    assert not {w for f in direct for w in f.labels} & set(KNOWN_OFFENSIVE)


@pytest.mark.parametrize("command", [
    ["explain", "--checkpoint", "ckpt", "--images", "imgs", "--out", "o"],
    ["evaluate", "--checkpoint", "ckpt", "--reference", "coco-panoptic:x", "--out", "o"],
])
def test_cli_allow_offensive_flag(command):
    from lavise.cli import _config_from

    parser = build_parser()
    assert _config_from(parser.parse_args(command)).allow_offensive is False
    assert _config_from(parser.parse_args(command + ["--allow-offensive"])).allow_offensive is True


BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_vocabulary.py"
WORDNET = Path("/usr/share/wordnet")


@pytest.mark.slow
def test_shipped_blocklist_is_what_the_build_script_makes():
    if not (WORDNET / "data.noun").is_file():
        pytest.skip("WordNet 3.0 database not installed (Debian package wordnet-base)")
    pytest.importorskip("better_profanity", reason="better-profanity (the vocab extra) not installed")
    spec = importlib.util.spec_from_file_location("build_vocabulary", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    built = module.build_blocklist(WORDNET)
    assert set(built) == set(offensive_words())
