"""The IoU ground truth is cached beside the feature cache, keyed by what defines it."""

from __future__ import annotations

import shutil

import pytest
import torch

from lavise.datasets import load_dataset
from lavise.evaluate import compute_ground_truth
from lavise.features import extract_features
from lavise.iou import IoUAccumulator, iou_cache_key, mask_digest
from lavise.statistics import compute_filter_stats
from tiny import TINY_PRE, tiny_model


@pytest.fixture
def split(sample_dir, tmp_path):
    """A copy of the bundled panoptic val2017 sample (its annotations may be edited)."""
    root = tmp_path / "coco"
    shutil.copytree(sample_dir / "coco-panoptic", root)
    ds = load_dataset(f"coco-panoptic:{root}", "val2017", preprocessing=TINY_PRE)
    model = tiny_model()
    store = extract_features(model, "features", ds, tmp_path / "cache", progress=False)
    stats = compute_filter_stats(store, quantile=0.05, top_k=5, progress=False)
    return root, ds, store, stats


def _count_updates(monkeypatch):
    calls = []
    real = IoUAccumulator.update
    monkeypatch.setattr(IoUAccumulator, "update", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    return calls


def test_second_ground_truth_skips_the_iou_pass_and_is_identical(split, monkeypatch):
    _, ds, store, stats = split
    calls = _count_updates(monkeypatch)
    first = compute_ground_truth(store, ds, stats, resolution=16, progress=False)
    assert calls and list((store.path / "groundtruth").glob("iou-*.pt"))
    calls.clear()
    again = compute_ground_truth(store, ds, stats, resolution=16, progress=False)
    assert not calls
    assert torch.equal(first.iou, again.iou) and first.per_filter == again.per_filter
    # The IoU threshold applies to the cached counters: no new pass, same as uncached.
    loose = compute_ground_truth(store, ds, stats, resolution=16, iou_threshold=0.01, progress=False)
    assert not calls
    fresh = compute_ground_truth(store, ds, stats, resolution=16, iou_threshold=0.01, progress=False, cache=False)
    assert calls and loose.per_filter == fresh.per_filter and torch.equal(loose.iou, fresh.iou)


def test_key_follows_features_masks_thresholds_and_resolution(split, tmp_path):
    root, ds, store, stats = split
    key = iou_cache_key(store, ds, stats.thresholds, stats.quantile, 16)
    assert iou_cache_key(store, ds, stats.thresholds, stats.quantile, 16) == key
    assert iou_cache_key(store, ds, stats.thresholds, stats.quantile, 32) != key
    assert iou_cache_key(store, ds, stats.thresholds, 0.01, 16) != key
    assert iou_cache_key(store, ds, stats.thresholds * 1.01, stats.quantile, 16) != key
    other = extract_features(tiny_model(seed=1), "features", ds, tmp_path / "other", progress=False)
    assert iou_cache_key(other, ds, stats.thresholds, stats.quantile, 16) != key
    # Mask content: one panoptic PNG changes -> another digest, another key.
    digest = mask_digest(ds)
    png = sorted((root / "annotations" / "panoptic_val2017").glob("*.png"))[0]
    png.write_bytes(png.read_bytes() + b"\0")
    edited = load_dataset(f"coco-panoptic:{root}", "val2017", preprocessing=TINY_PRE)
    assert mask_digest(edited) != digest
    assert iou_cache_key(store, edited, stats.thresholds, stats.quantile, 16) != key
