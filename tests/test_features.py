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


# -- fast extraction: reduced-size decoding, device decoding, mixed precision, prefetching --


def test_decode_image_reduces_jpegs_only_while_they_stay_above_the_resize(tmp_path):
    from PIL import Image

    from lavise.decode import decode_image

    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(path)
    small, full = decode_image(path, min_side=64)
    assert full == (160, 200) and 64 <= min(small.size) < 160  # DCT-scaled (1/2)
    assert decode_image(path, min_side=100)[0].size == (200, 160)  # 1/2 would go below 100
    assert decode_image(path)[0].size == (200, 160)
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert decode_image(png, min_side=20)[0].size == (200, 160)  # not a JPEG: full size


def test_reduced_decoding_keeps_features_within_tolerance_on_real_images(sample_dir, lite0):
    """Images too small to reduce are bit-identical to today's decoding; reduced ones
    (shorter side >= 2 x resize) differ by less than choosing PIL's resize over
    torchvision's does (measured: pooled features within 9%, see docs/performance.md)."""
    from lavise.decode import DecodedImages

    ds = load_dataset(f"coco-panoptic:{sample_dir / 'coco-panoptic'}", "val2017",
                      preprocessing=lite0.preprocessing)
    from PIL import Image

    sides = [min(Image.open(p).size) for p in ds.image_paths]
    reduced = [i for i, s in enumerate(sides) if s >= 2 * lite0.preprocessing.resize][:2]
    plain = [i for i, s in enumerate(sides) if s < 2 * lite0.preprocessing.resize][:2]
    assert reduced and plain
    fast = DecodedImages(ds)
    for i in plain:
        assert torch.equal(fast[i]["image"].as_subclass(torch.Tensor), ds[i]["image"].as_subclass(torch.Tensor))
    old = torch.stack([ds[i]["image"].as_subclass(torch.Tensor) for i in reduced])
    new = torch.stack([fast[i]["image"].as_subclass(torch.Tensor) for i in reduced])
    assert (old.float() - new.float()).abs().mean() < 4  # of 255
    ext = LayerExtractor(lite0, "_head_act")
    fo, fn = ext(old).mean((2, 3)), ext(new).mean((2, 3))
    assert ((fo - fn).norm(dim=1) / fo.norm(dim=1)).max() < 0.15


def test_device_decoding_path_matches_cpu_decoding(folder, tmp_path):
    """The GPU path (file bytes -> torchvision.io.decode_jpeg on the model's device),
    run here on the CPU, including a PNG (decoded by the worker) and a broken file."""
    from PIL import Image

    Image.open(folder / "img000.jpg").save(folder / "zz.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    model, ds = tiny_model(), _dataset(folder)
    cpu = extract_features(model, "features", ds, tmp_path / "cpu", batch_size=3, decode="cpu", progress=False)
    dev = extract_features(model, "features", ds, tmp_path / "dev", batch_size=3, decode="device", progress=False)
    assert dev.meta["decode"] == "device" and cpu.meta["decode"] == "cpu"
    assert list(dev.failed) == list(cpu.failed) == ["broken.jpg"]
    a, b = np.asarray(cpu.array, dtype=np.float32), np.asarray(dev.array, dtype=np.float32)
    assert np.allclose(a, b, atol=0.05, rtol=0.05)


def test_mixed_precision_features_match_float32(folder, tmp_path):
    model, ds = tiny_model(), _dataset(folder)
    f32 = extract_features(model, "features", ds, tmp_path / "a", precision="float32", progress=False)
    bf16 = extract_features(model, "features", ds, tmp_path / "b", precision="bfloat16", progress=False)
    assert bf16.meta["precision"] == "bfloat16"
    a, b = np.asarray(f32.array, dtype=np.float32), np.asarray(bf16.array, dtype=np.float32)
    assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()
    with pytest.raises(ValueError, match="precision"):
        extract_features(model, "features", ds, tmp_path / "c", precision="int8", progress=False)
    with pytest.raises(ValueError, match="decode"):
        extract_features(model, "features", ds, tmp_path / "c", decode="gpu", progress=False)


def test_prefetch_keeps_order_and_raises_in_the_consumer():
    from lavise.prefetch import prefetch

    assert list(prefetch(range(10), depth=2)) == list(range(10))

    def boom():
        yield 1
        raise OSError("disk")

    it = prefetch(boom())
    assert next(it) == 1
    with pytest.raises(OSError, match="disk"):
        next(it)


def test_forward_passes_side_by_side_store_the_one_thread_features(tmp_path):
    """Batches run in two threads (one intra-op thread each) give the one-thread cache."""
    model = tiny_model()
    dataset = load_dataset(f"folder:{image_folder(tmp_path / 'imgs', n=7)}", preprocessing=TINY_PRE)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = extract_features(model, "features", dataset, tmp_path / "one", batch_size=2, progress=False,
                               forward_passes=1)
    finally:
        torch.set_num_threads(before)
    torch.set_num_threads(2)
    try:
        two = extract_features(model, "features", dataset, tmp_path / "two", batch_size=2, progress=False,
                               forward_passes=2)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one.array, two.array)
    assert two.meta["complete"]
