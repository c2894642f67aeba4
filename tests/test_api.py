"""The five-line Python API on a tiny model and an image-folder reference set."""

from __future__ import annotations

import logging

import pytest

import lavise
from tiny import image_folder, tiny_model


@pytest.fixture
def reference(tmp_path):
    for k, name in enumerate(["dog", "cat", "car", "tree"]):
        image_folder(tmp_path / "ref" / name, n=4, seed=k)
    return f"imagefolder:{tmp_path / 'ref'}"


def test_train_explain_in_five_lines(reference, tmp_path):
    config = lavise.Config(cache_dir=str(tmp_path / "c"), progress=False, epochs=2, batch_size=4,
                           vocabulary="concepts", top_images=3, s=1, x=2, seen_fraction=0.5)
    explainer = lavise.train(tiny_model(), reference, config=config, out=tmp_path / "ckpt")
    result = lavise.explain(explainer, str(tmp_path / "ref" / "dog"), config=config)
    assert explainer.kind == "trained+conse" and len(result) == 6
    assert all(len(f.labels) == 2 for f in result)
    assert (tmp_path / "ckpt" / "lavise.json").is_file()
    h = explainer.meta["training"]["history"]
    assert len(h) == 2 and {"seen_top1", "unseen_top5"} <= set(h[0])


def test_inner_layer_falls_back_to_the_trained_explainer(reference, tmp_path, caplog):
    config = lavise.Config(cache_dir=str(tmp_path / "c"), progress=False, epochs=1, batch_size=4, layer="features.0")
    with caplog.at_level(logging.WARNING):
        explainer = lavise.train(tiny_model(), reference, config=config)
    assert explainer.kind == "trained" and explainer.layer == "features.0"
    assert "trained explainer only" in caplog.text


def test_split_suffix_and_exclusion_of_evaluation_images(sample_dir):
    from lavise.api import open_dataset

    model = tiny_model()
    spec = f"coco-panoptic:{sample_dir / 'coco-panoptic'}"
    both = open_dataset([f"{spec}@train2017", f"{spec}@val2017"], None, model)
    assert len(both) == 150
    val = open_dataset(spec, "val2017", model)
    train_only = open_dataset([f"{spec}@train2017", f"{spec}@val2017"], None, model, exclude_hashes=val.image_hashes)
    assert len(train_only) == 100 and not set(train_only.image_ids) & set(val.image_ids)
    assert not set(train_only.image_hashes) & set(val.image_hashes)
