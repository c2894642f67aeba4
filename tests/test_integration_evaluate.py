"""Issue 4 end to end: the paper's Table 2 protocol on real COCO masks, and its bad input."""

from __future__ import annotations

import json

import pytest

from conftest import wordnet_missing_reason
from lavise import Config
from lavise.evaluate import evaluate
from lavise.explainer import Explainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(coco_explainer, shared_data, lavise_cache):
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu")
    return evaluate(coco_explainer, f"coco-panoptic:{shared_data / 'coco-panoptic'}", "val2017",
                    methods=("attention", "projection", "activation", "original"), config=config,
                    synonyms=wordnet_missing_reason() is None, permutations=200)


def test_table_has_every_method_and_baseline_in_range(report, tmp_path):
    names = [r.method for r in report.rows]
    for m in ("attention", "projection", "activation", "original", "random words",
              "netdissect (train-split labels)", "constant (train-split top concepts)",
              "netdissect (oracle: eval-split labels)", "constant (oracle: eval-split top concepts)"):
        assert m in names
    for r in report.rows:
        values = list(r.recall.values()) + list((r.recall_unseen or {}).values()) + [r.precision_at_1]
        assert all(0.0 <= v <= 1.0 for v in values), r
    assert 0 < report.ground_truth["filters_with_ground_truth"] <= 1280
    assert "novel_concepts" in report.ground_truth  # trained on panoptic train2017 too: few or none
    md, cs, js = report.save(tmp_path)
    assert "| attention |" in md.read_text() and "recall@10" in cs.read_text()
    assert json.loads(js.read_text())["layer"] == "_head_act"


def test_synonym_rows_need_wordnet(wordnet, report):
    names = [r.method for r in report.rows]
    assert "attention (+synonyms)" in names and "random words (+synonyms)" in names
    assert report.row("attention (+synonyms)").recall[10] >= report.row("attention").recall[10]


def test_synonyms_without_wordnet_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys):
    from lavise.cli import main

    monkeypatch.setenv("LAVISE_WORDNET_DIR", str(tmp_path))  # an empty folder: no WordNet here
    code = main(["evaluate", "--checkpoint", str(tmp_path / "no-checkpoint"), "--reference", "folder:x",
                 "--synonyms", "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("lavise: error: WordNet database not found in") and "wordnet-base" in err


def test_learned_words_beat_random_words_and_are_specific(report):
    random = report.row("random words").recall[10]
    for m in ("attention", "projection"):
        assert report.row(m).recall[10] > 3 * random
        assert report.specificity[m]["p_value"] < 0.05
        assert report.specificity[m]["observed_recall"] > report.specificity[m]["null_mean"]


def test_oracle_netdissect_label_is_always_ground_truth(report):
    assert report.row("netdissect (oracle: eval-split labels)").precision_at_1 == 1.0


def test_evaluating_on_training_images_is_refused(coco_explainer, shared_data, lavise_cache):
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu")
    with pytest.raises(ValueError, match="used to train"):
        evaluate(coco_explainer, f"coco-panoptic:{shared_data / 'coco-panoptic'}", "train2017", config=config)


def test_dataset_without_masks_is_refused(coco_explainer, shared_data, lavise_cache):
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu")
    with pytest.raises(ValueError, match="no concept masks"):
        evaluate(coco_explainer, str(shared_data / "coco-mini" / "val2017"), None, config=config)


def test_checkpoint_without_split_is_refused(coco_explainer, shared_data, lavise_cache):
    no_split = Explainer(coco_explainer.model, coco_explainer.layer, coco_explainer.word_space, "conse")
    with pytest.raises(ValueError, match="split"):
        evaluate(no_split, f"coco-panoptic:{shared_data / 'coco-panoptic'}", "val2017",
                 config=Config(cache_dir=str(lavise_cache), progress=False))


def test_cli_writes_markdown_csv_json_and_a_layer_table(coco_explainer, shared_data, lavise_cache, tmp_path, capsys):
    from lavise.cli import main

    coco_explainer.save(tmp_path / "a")
    coco_explainer.save(tmp_path / "b")
    code = main(["evaluate", "--checkpoint", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--reference", f"coco-panoptic:{shared_data / 'coco-panoptic'}", "--split", "val2017",
                 "--methods", "activation,original", "--no-baselines", "--cache-dir", str(lavise_cache),
                 "-q", "--out", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert code == 0
    assert "| activation |" in out and "| _head_act | original |" in out
    for ext in ("md", "csv", "json"):
        assert (tmp_path / "eval" / f"evaluation-_head_act.{ext}").is_file()
    assert (tmp_path / "eval" / "layers.md").is_file()
