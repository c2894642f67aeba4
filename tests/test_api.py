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


def test_train_with_augmented_views_and_caption_nouns(reference, tmp_path):
    import json
    from pathlib import Path

    if not Path("/usr/share/wordnet/index.noun").is_file():
        pytest.skip("WordNet (wordnet-base) not installed")

    caps = {"images": [{"id": i, "file_name": f"img{i:03d}.jpg"} for i in range(4)],
            "annotations": [{"image_id": i, "id": 10 * i + j, "caption": c}
                            for i in range(4) for j, c in enumerate(
                                ["A dog on the grass near a road.", "Grass and a road in front.",
                                 "The picture of a kitchen."])]}
    (tmp_path / "captions.json").write_text(json.dumps(caps))
    config = lavise.Config(cache_dir=str(tmp_path / "c"), progress=False, epochs=2, batch_size=4,
                           seen_fraction=1.0, augment=("hflip", "zoom"),
                           captions=(str(tmp_path / "captions.json"),))
    explainer = lavise.train(tiny_model(), reference, config=config, out=tmp_path / "ckpt")
    t = explainer.meta["training"]
    assert t["augmented_pairs"] == 2 * t["pairs"]  # image-folder masks cover the whole image
    assert {"grass", "road"} <= set(t["caption_words"])
    assert "kitchen" not in t["caption_words"] and "picture" not in t["caption_words"]  # 1 caption; filler
    assert t["caption_pairs"] == 16 * len(t["caption_words"])  # 16 images share the 4 file names
    assert list(t["settings"]["augment"]) == ["hflip", "zoom"]
    # Each view's features are cached once: a second training extracts nothing new.
    before = sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_dir())
    lavise.train(tiny_model(), reference, config=config)
    assert sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_dir()) == before


def test_image_masking_loader_reads_pixels_only_those_of_the_feature_cache(sample_dir, tmp_path, monkeypatch):
    """The ``image`` method's loader decodes pixels only (never the dataset's items,
    which build concept masks), with the decoder that filled the feature cache: the
    unmasked images it returns give back the cached features."""
    import torch

    from lavise.api import _image_loader, features_of, open_dataset
    from lavise.models import LayerExtractor

    model = tiny_model()
    ds = open_dataset(f"coco-panoptic:{sample_dir / 'coco-panoptic'}", "val2017", model)
    config = lavise.Config(cache_dir=str(tmp_path / "c"), progress=False, device="cpu")
    store = features_of(model, "features", ds, config)

    def no_items(self, i):
        raise AssertionError("the image loader built a dataset item (with its masks)")

    monkeypatch.setattr(type(ds), "__getitem__", no_items)
    rows = [0, 7, 3]
    images = _image_loader(ds, model)(rows)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    feats = LayerExtractor(model, "features").features(images)  # already normalised
    cached = torch.from_numpy(store.array[rows].astype("float32"))
    assert torch.allclose(feats, cached, atol=2e-3, rtol=2e-3)
