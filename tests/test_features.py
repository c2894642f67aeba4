"""The feature cache: computed once, keyed by content, resumable, tolerant of bad images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavise.datasets import load_dataset
from lavise.features import FeatureStore, extract_features, feature_cache_key
from lavise.models import LayerExtractor
from tiny import TINY_PRE, image_folder, tiny_model


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "imgs", n=7)


def _dataset(path):
    return load_dataset(f"folder:{path}", preprocessing=TINY_PRE)


def test_features_match_a_direct_forward_pass(folder, tmp_path):
    model, ds = tiny_model(), _dataset(folder)
    store = extract_features(model, "features", ds, tmp_path / "cache", batch_size=3, progress=False)
    assert len(store) == 7 and store.shape == (6, 8, 8)
    direct = LayerExtractor(model, "features")(torch.stack([torch.as_tensor(ds[i]["image"]) for i in range(7)]))
    got = torch.cat([f for _, f in store.batches(4)])
    assert torch.allclose(got, direct, atol=1e-2, rtol=1e-2)  # float16 storage
    assert store.array.dtype == np.float16


def test_second_run_is_a_cache_hit(folder, tmp_path, monkeypatch):
    model, ds = tiny_model(), _dataset(folder)
    extract_features(model, "features", ds, tmp_path, progress=False)
    calls = []
    monkeypatch.setattr(LayerExtractor, "__call__", lambda self, x: calls.append(1))
    store = extract_features(model, "features", ds, tmp_path, progress=False)
    assert not calls and len(store) == 7


def test_key_changes_with_layer_weights_preprocessing_and_images(folder, tmp_path):
    model, ds = tiny_model(), _dataset(folder)
    key = feature_cache_key(model, "features", ds)
    assert feature_cache_key(model, "features.0", ds) != key
    assert feature_cache_key(tiny_model(seed=1), "features", ds) != key
    (folder / "img000.jpg").write_bytes((folder / "img001.jpg").read_bytes())
    assert feature_cache_key(model, "features", _dataset(folder)) != key


def test_interrupted_extraction_resumes(folder, tmp_path, monkeypatch):
    model, ds = tiny_model(), _dataset(folder)
    real = LayerExtractor.__call__
    seen = []

    def flaky(self, x):
        seen.append(len(x))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(LayerExtractor, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, "features", ds, tmp_path, batch_size=2, flush_every=1, progress=False)
    monkeypatch.setattr(LayerExtractor, "__call__", lambda self, x: (seen.append(len(x)), real(self, x))[1])
    seen.clear()
    store = extract_features(model, "features", ds, tmp_path, batch_size=2, progress=False)
    assert sum(seen) == 3  # 4 of 7 images were done before the interruption
    fresh = extract_features(model, "features", ds, tmp_path / "fresh", batch_size=7, progress=False)
    assert np.array_equal(np.asarray(store.array), np.asarray(fresh.array))


def test_unreadable_images_are_skipped_and_listed(folder, tmp_path, caplog):
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    model, ds = tiny_model(), _dataset(folder)
    store = extract_features(model, "features", ds, tmp_path, progress=False)
    assert list(store.failed) == ["broken.jpg"]
    assert len(store.valid_indices()) == 7
    assert sum(len(i) for i, _ in store.batches(3)) == 7
    meta = json.loads((store.path / "meta.json").read_text())
    assert meta["complete"] and "broken.jpg" in meta["failed"]


def test_all_images_unreadable_is_an_error(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="no image"):
        extract_features(tiny_model(), "features", _dataset(d), tmp_path / "c", progress=False)


def test_sharded_extraction_fills_one_store(folder, tmp_path):
    model, ds = tiny_model(), _dataset(folder)
    first = extract_features(model, "features", ds, tmp_path, rank=0, world_size=2, progress=False)
    assert not first.meta["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        FeatureStore.open(first.path)
    store = extract_features(model, "features", ds, tmp_path, rank=1, world_size=2, progress=False)
    whole = extract_features(model, "features", ds, tmp_path / "one", progress=False)
    assert np.array_equal(np.asarray(store.array), np.asarray(whole.array))
