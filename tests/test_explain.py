"""Explaining filters: orchestration, outputs, reuse of caches, bad input (tiny models)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from lavise import Config, explain
from lavise.explain import Explanations, parse_filters
from lavise.explainer import Explainer, ExplainerHead, split_concepts
from lavise.statistics import compute_filter_stats
from lavise.wordspace import WordSpace
from tiny import image_folder, tiny_model

WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    space = WordSpace("toy", WORDS, torch.randn(len(WORDS), 8))
    head = ExplainerHead(6, 8).eval()
    exp = Explainer(model, "features", space, "trained", head, split_concepts(WORDS[:10], 0.5))
    folder = image_folder(tmp_path / "imgs", n=9)
    config = Config(cache_dir=str(tmp_path / "cache"), progress=False, device="cpu", top_images=4, s=3, x=5,
                    vocabulary="glove", vocabulary_size=None)
    return exp, folder, config


def test_every_filter_gets_x_words_and_its_evidence(setup):
    exp, folder, config = setup
    result = explain(exp, str(folder), config=config)
    assert isinstance(result, Explanations) and len(result) == 6
    for f in result:
        assert len(f.words) == 5 and len(set(f.labels)) == 5
        assert len(f.top_images) == 4
        acts = [t.activation for t in f.top_images]
        assert acts == sorted(acts, reverse=True)
        assert f.threshold >= 0
    back = Explanations.from_dict(json.loads(result.to_json()))
    assert back == result


def test_outputs_json_csv_and_table(setup, tmp_path):
    exp, folder, config = setup
    result = explain(exp, str(folder), filters="1-3", config=config)
    js, cs = result.save(tmp_path / "out")
    data = json.loads(js.read_text())
    assert [f["filter"] for f in data["filters"]] == [1, 2, 3]
    assert data["method"] == "activation" and data["settings"]["p"] == 4
    rows = list(csv.DictReader(io.StringIO(cs.read_text())))
    assert len(rows) == 3 and len(rows[0]["words"].split()) == 5
    assert "filter" in result.table() and "w" in result.table()


def test_rerun_with_other_method_reuses_features_and_statistics(setup, monkeypatch):
    exp, folder, config = setup
    explain(exp, str(folder), config=config)
    import lavise.api as api
    import lavise.models as models

    monkeypatch.setattr(models.LayerExtractor, "__call__", lambda *a: pytest.fail("backbone rerun"))
    monkeypatch.setattr(api, "compute_filter_stats", lambda *a, **k: pytest.fail("stats recomputed"))
    for method in ("projection", "activation", "original"):
        r = explain(exp, str(folder), config=config.replace(method=method, s=2, x=4))
        assert r.method == method and all(len(f.words) == 4 for f in r)


def test_image_masking_runs_the_model_on_masked_images(setup):
    exp, folder, config = setup
    r = explain(exp, str(folder), filters=[0, 5], config=config.replace(method="image"))
    assert [f.filter for f in r] == [0, 5]


def test_allow_and_block_lists(setup):
    exp, folder, config = setup
    r = explain(exp, str(folder), config=config, allow={"w1", "w2", "w3", "w4", "w5", "w6"}, block={"w6"})
    assert all(set(f.labels) <= {"w1", "w2", "w3", "w4", "w5"} for f in r)


@pytest.mark.parametrize("bad", [{"top_images": 0}, {"s": 0}, {"x": 0}, {"quantile": 1.5}, {"method": "magic"}])
def test_out_of_range_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        Config(**bad)


def test_filter_specs():
    assert parse_filters("0-2,5", 8) == [0, 1, 2, 5]
    assert parse_filters(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        parse_filters("0-8", 8)
    with pytest.raises(ValueError, match="bad filter"):
        parse_filters("a-b", 8)


def test_folder_without_readable_images(setup, tmp_path):
    exp, _, config = setup
    d = tmp_path / "junk"
    d.mkdir()
    (d / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no image"):
        explain(exp, str(d), config=config)


def test_unreadable_image_is_skipped_and_counted(setup):
    exp, folder, config = setup
    (folder / "zz_broken.jpg").write_bytes(b"junk")
    r = explain(exp, str(folder), config=config)
    assert len(r) == 6 and r.settings["images"] == 10
    assert all("zz_broken.jpg" not in [t.image_id for t in f.top_images] for f in r)


def test_explainer_of_another_layer_is_refused(setup, tmp_path):
    exp, folder, config = setup
    from lavise.api import features_of, open_dataset
    from lavise.explain import explain_filters

    store = features_of(exp.model, "features.0", open_dataset(str(folder), None, exp.model), config)
    stats = compute_filter_stats(store, top_k=4, progress=False)
    with pytest.raises(ValueError, match="layer"):
        explain_filters(exp, store, stats, exp.word_space)


@pytest.mark.parametrize("method", ["attention", "projection", "activation", "original"])
def test_pooled_pairs_equal_a_per_filter_per_image_loop(method):
    from lavise.explain import pooled_top_image_features
    from lavise.masking import get_masking_method
    from lavise.statistics import TensorFeatureSource

    torch.manual_seed(0)
    feats = torch.rand(30, 8, 3, 3)
    src = TensorFeatureSource(feats)
    stats = compute_filter_stats(src, quantile=0.05, top_k=5, progress=False)
    out = pooled_top_image_features(src, stats, [1, 3, 7], method, top=5, progress=False, max_elements=50)
    m = get_masking_method(method)
    for pos, u in enumerate([1, 3, 7]):
        for slot, img in enumerate(stats.top_images[u, :5].tolist()):
            ref = m.pool(feats[img:img + 1], torch.tensor([u]), stats.thresholds)[0, 0]
            assert torch.allclose(out[pos, slot], ref, atol=1e-6)


def test_thresholded_methods_ignore_top_images_where_the_filter_does_not_fire(setup):
    exp, folder, config = setup
    r = explain(exp, str(folder), config=config.replace(method="activation", quantile=0.01))
    for f in r:
        assert sum(w.count for w in f.words) > 0


def test_consistency_order_puts_agreeing_filters_first(setup):
    exp, folder, config = setup
    result = explain(exp, str(folder), config=config)
    ordered = result.most_consistent()
    counts = [f.words[0].count for f in ordered]
    assert counts == sorted(counts, reverse=True)
    assert result.table(limit=2, order="consistency").splitlines()[2].split()[0] == str(ordered[0].filter)
    with pytest.raises(ValueError):
        result.table(order="random")


def test_worker_default_depends_on_the_device(monkeypatch):
    import os

    assert Config(device="cpu").workers() == 0
    assert Config(device="cpu", num_workers=3).workers() == 3
    monkeypatch.setattr(Config, "resolved_device", lambda self: "cuda")
    assert Config().workers() == min(8, os.cpu_count() or 1)
    with pytest.raises(ValueError):
        Config(num_workers=-1)


def test_word_ranking_reaches_the_explanations_and_is_recorded(setup):
    exp, folder, config = setup
    plain = explain(exp, str(folder), config=config)
    assert plain.settings["ranking"] == "votes"
    deduped = explain(exp, str(folder), config=config.replace(ranking="dedupe"))
    assert deduped.settings["ranking"] == "dedupe"
    assert all(len(f.words) == 5 for f in deduped)
    with pytest.raises(ValueError, match="unknown word ranking"):
        explain(exp, str(folder), config=config, ranking="nope")
