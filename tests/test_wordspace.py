"""Tests for lavise.wordspace: names, nearest search, loaders and the binary cache."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from lavise import wordspace
from lavise.wordspace import (
    WordSpace,
    list_word_spaces,
    load_text_word_space,
    load_word_space,
    normalise_concept_name,
)


@pytest.fixture
def small() -> WordSpace:
    words = ["playing", "field", "wall", "door", "floor", "wood", "hot", "dog", "sky", "zero"]
    vecs = torch.randn(len(words), 8, generator=torch.Generator().manual_seed(0))
    vecs[-1] = 0
    return WordSpace("small", words, vecs)


@pytest.mark.parametrize("name, tokens", [
    ("wall-other-merged", ["wall"]),
    ("door-stuff", ["door"]),
    ("sky-other-merged", ["sky"]),
    ("floor-wood", ["floor", "wood"]),
    ("traffic light", ["traffic", "light"]),
    ("Dining_Table", ["dining", "table"]),
    ("cat/dog, bird", ["cat", "dog", "bird"]),
    ("other", ["other"]),
])
def test_normalise_concept_name(name, tokens):
    assert normalise_concept_name(name) == tokens


def test_compound_split(small):
    assert normalise_concept_name("playingfield", known=small) == ["playing", "field"]
    assert normalise_concept_name("playingfield") == ["playingfield"]
    both = WordSpace("b", ["playing", "field", "playingfield"], torch.eye(3))
    assert normalise_concept_name("playingfield", known=both) == ["playingfield"]


def test_word_space_basics(small):
    assert len(small) == 10 and small.dim == 8 and "dog" in small and "cat" not in small
    norms = small.vectors.norm(dim=1)
    assert torch.allclose(norms[:-1], torch.ones(9)) and norms[-1] == 0
    assert torch.equal(small.vector("dog"), small.vectors[small.index["dog"]])
    with pytest.raises(ValueError):
        small.vector("cat")
    fp = small.fingerprint
    assert fp == WordSpace("small", small.words, small.vectors).fingerprint and len(fp) == 16
    assert fp != WordSpace("other", small.words, small.vectors).fingerprint
    sub = small.subset(["sky", "cat", "dog", "sky"])
    assert sub.words == ["sky", "dog"]
    assert torch.equal(sub.vectors[0], small.vector("sky"))


def test_duplicates_keep_first():
    ws = WordSpace("d", ["a", "b", "a"], torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0]]))
    assert ws.words == ["a", "b"] and ws.vector("a")[0] == 1


def test_concept_vectors(small, caplog):
    v = small.concept_vector("floor-wood")
    expected = small.vector("floor") + small.vector("wood")
    assert torch.allclose(v, expected / expected.norm(), atol=1e-6)
    assert torch.equal(small.concept_vector("wall-other-merged"), small.vector("wall"))
    assert small.concept_vector("playingfield") is not None
    assert small.concept_vector("unicorn") is None
    with caplog.at_level(logging.WARNING, logger="lavise.wordspace"):
        mat, kept, missing = small.concept_matrix(["dog", "unicorn", "sky-other-merged", "yeti"])
    assert kept == ["dog", "sky-other-merged"] and missing == ["unicorn", "yeti"]
    assert mat.shape == (2, 8)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unicorn" in warnings[0].getMessage()
    assert "yeti" in warnings[0].getMessage()


def test_nearest_matches_brute_force(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    ws = WordSpace("r", [f"w{i}" for i in range(500)], torch.randn(500, 16, generator=gen))
    q = torch.randn(37, 16, generator=gen) * 3
    monkeypatch.setattr(wordspace, "_NEAREST_BLOCK", 500 * 5)  # force chunks of 5 queries
    scores, idx = ws.nearest(q, 7)
    full = torch.nn.functional.normalize(q, dim=1) @ ws.vectors.T
    ref = full.topk(7, dim=1)
    assert torch.equal(idx, ref.indices)
    assert torch.allclose(scores, ref.values, atol=1e-6)
    s1, i1 = ws.nearest(q[0], 1000)
    assert s1.shape == (1, 500)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_text_loader_and_cache(tmp_path, monkeypatch):
    f = tmp_path / "vecs.txt"
    _write(f, ["cat 1 0 0", "dog 0.9 0.1 0", "car 0 0 2", "cat 5 5 5"])
    ws = load_text_word_space(f)
    assert ws.words == ["cat", "dog", "car"] and ws.dim == 3
    assert torch.allclose(ws.vector("car"), torch.tensor([0.0, 0, 1]))
    cache = tmp_path / ("vecs.txt" + wordspace._CACHE_SUFFIX)
    assert cache.is_file()

    def boom(*a, **k):
        raise AssertionError("re-parsed although the cache is valid")

    monkeypatch.setattr(wordspace, "_parse_text", boom)
    again = load_text_word_space(f)
    assert again.words == ws.words and torch.equal(again.vectors, ws.vectors)
    assert again.fingerprint == ws.fingerprint
    monkeypatch.undo()

    _write(f, ["cat 1 0 0", "bus 0 1 0"])  # changed file: size/mtime key invalidates the cache
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = load_text_word_space(f)
    assert changed.words == ["cat", "bus"]


def test_word2vec_header_and_memo(tmp_path):
    f = tmp_path / "w2v.txt"
    _write(f, ["3 2", "king 1 0 ", "queen 0.8 0.2", "two words 0 1"])
    ws = load_word_space(str(f))
    assert ws.words == ["king", "queen", "two words"] and ws.dim == 2
    assert load_word_space(str(f)) is ws


def test_cache_falls_back_to_cache_dir(tmp_path, monkeypatch):
    src = tmp_path / "ro"
    src.mkdir()
    f = src / "v.txt"
    _write(f, ["a 1 2", "b 3 4"])
    monkeypatch.setenv("LAVISE_CACHE_DIR", str(tmp_path / "cache"))
    real_write = wordspace._write_cache

    def no_beside(caches, *a):
        return real_write(caches[1:], *a)  # as if the file's directory were read-only

    monkeypatch.setattr(wordspace, "_write_cache", no_beside)
    load_text_word_space(f)
    assert list((tmp_path / "cache" / "wordspace").glob("*.npz"))
    assert not list(src.glob("*.npz"))
    monkeypatch.setattr(wordspace, "_parse_text", lambda *a: (_ for _ in ()).throw(AssertionError))
    assert load_text_word_space(f).words == ["a", "b"]


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_word_space(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="glove-6b-50d"):
        load_word_space("glove-6b-5od")
    bad = tmp_path / "bad.txt"
    _write(bad, ["a 1 2", "b 3"])
    with pytest.raises(ValueError, match="bad.txt:2"):
        load_text_word_space(bad, use_cache=False)


def test_default_space_is_the_configs():
    from lavise import Config
    from lavise.wordspace import DEFAULT_WORD_SPACE

    assert Config().word_space == DEFAULT_WORD_SPACE == "word2vec-300-filled"
    assert load_word_space().name == DEFAULT_WORD_SPACE


def test_glove_space():
    assert "glove-6b-50d" in list_word_spaces()
    ws = load_word_space("glove-6b-50d")
    assert load_word_space("glove-6b-50d") is ws and ws.name == "glove-6b-50d"
    assert ws.vectors.shape == (400000, 50) and ws.vectors.dtype == torch.float32
    assert torch.allclose(ws.vectors.norm(dim=1), torch.ones(400000), atol=1e-5)
    assert ws.words[:3] == ["the", ",", "."]
    _, idx = ws.nearest(ws.vector("dog"), 10)
    near = {ws.words[i] for i in idx[0].tolist()}
    assert near & {"dogs", "cat", "puppy"}
    analogy = ws.vector("king") - ws.vector("man") + ws.vector("woman")
    _, idx = ws.nearest(analogy, 3)
    assert "queen" in [ws.words[i] for i in idx[0].tolist()]
    # multi-word names: a frequent joined form is used, otherwise the tokens' mean
    assert torch.equal(ws.concept_vector("cell phone"), ws.vector("cellphone"))
    hot_dog = ws.vector("hot") + ws.vector("dog")
    assert torch.allclose(ws.concept_vector("hot dog"), hot_dog / hot_dog.norm(), atol=1e-6)


# --------------------------------------------------------------------------- word2vec binary


def _write_w2v_bin(path, words, vecs, newline=False):
    import numpy as np

    with open(path, "wb") as f:
        f.write(f"{len(words)} {vecs.shape[1]}\n".encode())
        for w, v in zip(words, vecs):
            f.write(w.encode() + b" " + np.asarray(v, dtype="<f4").tobytes() + (b"\n" if newline else b""))


@pytest.mark.parametrize("newline", [False, True])
def test_word2vec_binary_phrases(tmp_path, newline):
    words = ["traffic", "light", "traffic_light", "dog", "café"]
    vecs = torch.randn(len(words), 6, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "vectors.w2v"  # recognised by content, not by name
    _write_w2v_bin(path, words, vecs.numpy(), newline=newline)
    assert wordspace.is_word2vec_binary(path)
    ws = load_text_word_space(path, use_cache=False)
    assert ws.words == words and ws.dim == 6
    assert torch.allclose(ws.vectors, torch.nn.functional.normalize(vecs, dim=1), atol=1e-6)
    # a multi-word concept name uses the "_"-joined phrase when the space has it...
    assert torch.equal(ws.concept_vector("traffic light"), ws.vector("traffic_light"))
    # ... and the mean of its tokens otherwise
    mean = torch.nn.functional.normalize(ws.vector("traffic") + ws.vector("dog"), dim=0)
    assert torch.allclose(ws.concept_vector("traffic dog"), mean, atol=1e-6)
    assert load_word_space(str(path)).words == words  # through the cache and the memo


def test_word2vec_binary_truncated_and_text_not_binary(tmp_path):
    path = tmp_path / "cut.bin"
    _write_w2v_bin(path, ["a", "b"], torch.ones(2, 4).numpy())
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="cut.bin: file ends at word 2 of 2"):
        load_text_word_space(path, use_cache=False)
    text = tmp_path / "text.txt"
    text.write_text("2 3\na 0.1 0.2 0.3\nb -1 2e-3 4\n")
    assert not wordspace.is_word2vec_binary(text)


def test_real_googlenews_word2vec_binary(shared_data):
    path = shared_data / "word-vectors" / "GoogleNews-vectors-negative300-bolukbasi.bin"
    with open(path, "rb") as f:
        assert f.readline() == b"26423 300\n"
    ws = load_text_word_space(path, use_cache=False)
    assert len(ws) == 26423 and ws.dim == 300
    assert "cell_phone" in ws and torch.equal(ws.concept_vector("cell phone"), ws.vector("cell_phone"))
    assert torch.equal(ws.concept_vector("fire hydrant"), ws.vector("fire_hydrant"))
    _, idx = ws.nearest(ws.vector("dog"), 5)
    assert "dogs" in [ws.words[i] for i in idx[0].tolist()]
