"""compare-models on small explanation files with known overlap."""

from __future__ import annotations

import json

import pytest

from lavise.compare_models import compare_models, concept_inventory
from lavise.explain import Explanations, FilterExplanation, TopImage
from lavise.words import RankedWord

SETTINGS = {"p": 5, "s": 3, "x": 10, "quantile": 0.005, "vocabulary_size": 1000, "word_space": "glove-6b-50d",
            "images": 100, "pooling": "mean", "weight_by_activation": False}


def _run(model: str, layer: str, filters: list[list[tuple[str, int]]], **settings) -> Explanations:
    fs = tuple(FilterExplanation(layer, u, tuple(RankedWord(w, c, 0.5 * c) for w, c in words),
                                 (TopImage("1", 1.0),), 0.5) for u, words in enumerate(filters))
    return Explanations(model, layer, "activation", "trained", {**SETTINGS, **settings}, fs)


# model a: top-1 words dog (3 agree), cat (2), sky (1: too few agree); within top 3 also grass (2)
A = _run("a", "layer4", [[("dog", 3), ("grass", 2)], [("cat", 2), ("dog", 1)], [("sky", 1), ("tree", 1)]])
# model b has 5 filters (another architecture): dog, car, car, tree; "cat" only in a top-3 with count 2
B = _run("b", "features", [[("dog", 4)], [("car", 3), ("cat", 2)], [("car", 2)], [("tree", 2)], [("x", 1)]])


def test_inventory_counts_only_agreeing_words():
    inv = concept_inventory("a", [A], top_k=3, min_count=2)
    assert inv.concepts_top1 == ("cat", "dog")
    assert inv.concepts_topk == ("cat", "dog", "grass")
    assert inv.filters == 3 and inv.interpretable == 2
    assert inv.per_layer == {"layer4": {"filters": 3, "interpretable": 2, "dead": 0, "top1": 2, "topk": 3}}
    assert concept_inventory("a", [A], min_count=1).concepts_top1 == ("cat", "dog", "sky")


def test_shared_and_unique_concepts_across_architectures(tmp_path):
    for name, run in (("a", A), ("b", B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "explanations.json").write_text(run.to_json())
    result = compare_models([tmp_path / "a", tmp_path / "b" / "explanations.json"], top_k=3, min_count=2)
    assert [m.name for m in result.models] == ["a", "b"]
    assert result.shared("top1") == ["dog"]
    assert result.unique("top1") == {"a": ["cat"], "b": ["car", "tree"]}
    assert result.shared("topk") == ["cat", "dog"]
    assert result.unique("topk") == {"a": ["grass"], "b": ["car", "tree"]}
    assert result.overlap("top1")["a"]["b"] == 1
    assert result.models[1].word_filters == {"car": 2, "dog": 1, "tree": 1}
    assert not result.warnings
    md = result.to_markdown()
    assert "shared by all 2 models: 1" in md and "Only b (top-1): 2" in md
    rows = result.to_csv().splitlines()
    assert rows[2].startswith("a,a,all,3,0,2,2,3,1,1")
    paths = result.save(tmp_path / "out")
    assert json.loads(paths[0].read_text())["shared"]["top1"] == ["dog"]
    from PIL import Image

    with Image.open(paths[-1]) as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_dead_filters_express_nothing():
    dead = Explanations("r", "l", "activation", "trained", dict(SETTINGS), tuple(
        FilterExplanation("l", u, (RankedWord("person", 5, 3.0),), (TopImage("1", 0.0),), 0.0) for u in range(4)))
    result = compare_models([A, dead])
    inv = result.models[1]
    assert inv.dead == 4 and inv.interpretable == 0 and inv.concepts_top1 == ()
    assert any("4 of 4 filters never fire" in w for w in result.warnings)


def test_layers_merge_per_model_and_names_disambiguate():
    a3 = _run("a", "layer3", [[("wood", 2)], [("dog", 2)]])
    result = compare_models([A, a3, B], names=["a", "a", "b"])
    inv = result.models[0]
    assert inv.layers == ("layer4", "layer3") and inv.filters == 5
    assert inv.concepts_top1 == ("cat", "dog", "wood")
    assert inv.per_layer["layer3"]["top1"] == 2


def test_different_settings_warn_or_fail():
    other = _run("b", "features", [[("dog", 4)]], quantile=0.01, vocabulary_size=500)
    result = compare_models([A, other])
    assert any("thresholds" in w for w in result.warnings)
    assert any("vocabularies" in w for w in result.warnings)
    with pytest.raises(ValueError, match="different thresholds"):
        compare_models([A, other], strict=True)
    with pytest.raises(ValueError, match="at least two models"):
        compare_models([A, A], names=["a", "a"])
    with pytest.raises(ValueError, match="2 names for 3"):
        compare_models([A, B, B], names=["a", "b"])


def test_cli_compare_models_and_one_line_errors(tmp_path, capsys):
    from lavise.cli import main

    for name, run in (("a", A), ("b", B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "explanations.json").write_text(run.to_json())
    assert main(["compare-models", "--explanations", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "a: 2/3 filters with an agreed top-1 word" in out and "shared by all: 1 at top-1" in out
    assert (tmp_path / "out" / "models.png").is_file()
    assert main(["compare-models", "--explanations", str(tmp_path / "a"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lavise: error: comparing models needs at least two models") and err.count("\n") == 1
    assert main(["compare-models", "--explanations", str(tmp_path / "nope"), str(tmp_path / "a"),
                 "--out", str(tmp_path / "o3")]) == 2
    assert "explanations not found" in capsys.readouterr().err
