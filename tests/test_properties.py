"""Property-based tests (hypothesis): random annotations, features and bytes against direct computations."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lavise.datasets import load_dataset  # noqa: E402
from lavise.preprocessing import Preprocessing  # noqa: E402

FAST = settings(max_examples=20, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # one per category; background black


# --------------------------------------------------------------------------- COCO readers + transforms


@st.composite
def scenes(draw):
    """An image size and up to four non-overlapping boxes (one per quadrant), each with a category.

    Boxes keep ``pad`` pixels from the quadrants' shared edges, so boxes of neighbouring
    quadrants are at least one output pixel apart at any resize drawn below: a thinner
    background gap between two objects of one category vanishes from the (nearest-
    neighbour) mask but not from the (bilinear) image, which the test cannot tell from
    a mask landing off its object.
    """
    h, w = draw(st.integers(24, 72)), draw(st.integers(24, 72))
    pad = math.ceil(min(h, w) / 16) + 1
    boxes = []
    for qy in range(2):
        for qx in range(2):
            if not draw(st.booleans()):
                continue
            hh, ww = h // 2 - pad, w // 2 - pad  # the quadrant without its pad
            y0, x0 = qy * (h // 2 + pad), qx * (w // 2 + pad)
            bh, bw = draw(st.integers(4, hh)), draw(st.integers(4, ww))
            by, bx = y0 + draw(st.integers(0, hh - bh)), x0 + draw(st.integers(0, ww - bw))
            boxes.append((draw(st.integers(0, 2)), bx, by, bw, bh))
    if not boxes:
        boxes.append((draw(st.integers(0, 2)), 0, 0, w // 2, h // 2))
    # how each instance is encoded: polygon, compressed RLE, or uncompressed RLE (iscrowd)
    encodings = [draw(st.sampled_from(["polygon", "rle", "counts"])) for _ in boxes]
    boxes = [(*b, e) for b, e in zip(boxes, encodings)]
    resize = draw(st.integers(16, 48))
    crop = draw(st.integers(8, resize))
    return h, w, boxes, Preprocessing(resize=resize, crop=crop)


def _paint(h: int, w: int, boxes) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for c, x, y, bw, bh, _ in boxes:
        img[y:y + bh, x:x + bw] = COLOURS[c]
    return img


CATEGORIES = [{"id": 10 + k, "name": name, "isthing": 1, "supercategory": "x"}
              for k, name in enumerate(["red", "green", "blue"])]


def _write_instances(root: Path, h: int, w: int, boxes) -> None:
    (root / "images" / "s").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(_paint(h, w, boxes)).save(root / "images" / "s" / "a.png")
    anns = [{"id": i + 1, "image_id": 7, "category_id": 10 + c, "iscrowd": int(enc == "counts"),
             "area": bw * bh, "bbox": [x, y, bw, bh], "segmentation": _segmentation(h, w, x, y, bw, bh, enc)}
            for i, (c, x, y, bw, bh, enc) in enumerate(boxes)]
    data = {"images": [{"id": 7, "file_name": "a.png", "height": h, "width": w}],
            "annotations": anns, "categories": CATEGORIES}
    (root / "annotations" / "instances_s.json").write_text(json.dumps(data))


def _segmentation(h: int, w: int, x: int, y: int, bw: int, bh: int, enc: str):
    """A box as a COCO polygon, compressed RLE, or uncompressed RLE (column-major runs from 0)."""
    if enc == "polygon":
        return [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
    m = np.zeros((h, w), np.uint8)
    m[y:y + bh, x:x + bw] = 1
    if enc == "rle":
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(m))
        return {"counts": rle["counts"].decode("ascii"), "size": [h, w]}
    flat = m.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"counts": ([0] if flat[0] else []) + runs, "size": [h, w]}


def _write_panoptic(root: Path, h: int, w: int, boxes) -> None:
    (root / "images" / "s").mkdir(parents=True)
    (root / "annotations" / "panoptic_s").mkdir(parents=True)
    Image.fromarray(_paint(h, w, boxes)).save(root / "images" / "s" / "a.png")
    ids = np.zeros((h, w), np.int64)
    segs = []
    for i, (c, x, y, bw, bh, _) in enumerate(boxes):
        sid = 1000 + 7919 * (i + 1)  # uses all three bytes of the RGB encoding
        ids[y:y + bh, x:x + bw] = sid
        segs.append({"id": sid, "category_id": 10 + c, "iscrowd": 0, "area": bw * bh, "bbox": [x, y, bw, bh]})
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "annotations" / "panoptic_s" / "a.png")
    data = {"images": [{"id": 7, "file_name": "a.png", "height": h, "width": w}],
            "annotations": [{"image_id": 7, "file_name": "a.png", "segments_info": segs}],
            "categories": CATEGORIES}
    (root / "annotations" / "panoptic_s.json").write_text(json.dumps(data))


def _erode(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood is all set (outside the image counts as unset)."""
    unset = F.pad((x == 0).float()[None], (r, r, r, r), value=1.0)
    return F.max_pool2d(unset, 2 * r + 1, stride=1)[0] < 0.5


@pytest.mark.parametrize("fmt, write", [("coco-instances", _write_instances), ("coco-panoptic", _write_panoptic)])
@settings(max_examples=12, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
@given(scene=scenes())
def test_masks_land_on_their_objects(fmt, write, scene):
    h, w, boxes, pre = scene
    root = Path(tempfile.mkdtemp())
    try:
        write(root, h, w, boxes)
        item = load_dataset(f"{fmt}:{root}", split="s", preprocessing=pre)[0]
    finally:
        shutil.rmtree(root)
    assert item["error"] is None
    image = torch.as_tensor(item["image"]).float()  # (3, crop, crop)
    masks = torch.as_tensor(item["masks"]).as_subclass(torch.Tensor)
    assert image.shape[1:] == masks.shape[1:] == (pre.crop, pre.crop)
    margin = math.ceil(pre.resize / min(h, w)) + 1  # resampling blurs this many pixels at edges
    names = ["red", "green", "blue"]
    got = {int(c) for c in item["concept_ids"]}
    for m, c in zip(masks, item["concept_ids"].tolist()):
        colour = torch.tensor(COLOURS[names.index(CATEGORIES[c]["name"])], dtype=torch.float32)[:, None, None]
        painted = (image - colour).abs().amax(0) < 60
        inside = _erode(m, margin)
        assert bool(painted[inside].all()), "a mask pixel lies off its object"
        solid = _erode(painted, margin)
        assert bool(m.bool()[solid].all()), "an object pixel lies outside its mask"
    for k, colour in enumerate(COLOURS):  # no object that survives the crop loses its mask
        painted = (image - torch.tensor(colour, dtype=torch.float32)[:, None, None]).abs().amax(0) < 60
        if bool(_erode(painted, margin).any()):
            assert k in got


# --------------------------------------------------------------------------- streaming statistics


@st.composite
def feature_batches(draw):
    n, d = draw(st.integers(1, 7)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ties = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (n, d, h, w), generator=g).float() if ties else torch.randn(n, d, h, w, generator=g)
    return x, draw(st.floats(0.001, 0.999)), draw(st.integers(1, 9)), draw(st.integers(1, 4))


@FAST
@given(batch=feature_batches())
def test_streaming_threshold_and_top_images_equal_numpy(batch):
    from lavise.statistics import TensorFeatureSource, compute_filter_stats

    x, q, top_k, batch_size = batch
    n, d, h, w = x.shape
    stats = compute_filter_stats(TensorFeatureSource(x), quantile=q, top_k=top_k, batch_size=batch_size,
                                 method="exact", progress=False)
    values = x.permute(1, 0, 2, 3).reshape(d, -1).numpy()
    k = max(1, math.ceil(round(q * values.shape[1], 9)))
    exact = -np.sort(-values, axis=1)[:, k - 1]
    np.testing.assert_array_equal(stats.thresholds.numpy(), exact.astype(np.float32))
    for u in range(d):  # the definition: fewer than q*n above, at least q*n at or above
        assert (values[u] > exact[u]).sum() < max(1, q * values.shape[1]) + 1e-9
        assert (values[u] >= exact[u]).sum() >= min(k, values.shape[1])
    image_max = x.amax(dim=(2, 3)).numpy()
    np.testing.assert_array_equal(stats.image_max.numpy(), image_max)
    kk = min(top_k, n)
    want = -np.sort(-image_max, axis=0)[:kk].T  # (d, kk) descending
    np.testing.assert_array_equal(stats.top_values.numpy(), want)
    rows = stats.top_images.numpy()
    assert all(len(set(r)) == kk for r in rows)
    np.testing.assert_array_equal(np.take_along_axis(image_max.T, rows, axis=1), want)
    sketch = compute_filter_stats(TensorFeatureSource(x), quantile=q, top_k=top_k, batch_size=batch_size,
                                  method="sketch", bins=64, progress=False)
    width = (values.max(1) - values.min(1)) / 64
    assert np.all(np.abs(sketch.thresholds.numpy() - exact) <= width + 1e-5)


# --------------------------------------------------------------------------- IoU


@st.composite
def iou_cases(draw):
    b, d, c = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    size = draw(st.integers(2, 12))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    feats = torch.randn(b, d, h, w, generator=g)
    thr = torch.randn(d, generator=g).abs() * draw(st.sampled_from([0.0, 0.5, 1.0]))
    masks, ids = [], []
    for _ in range(b):
        k = draw(st.integers(0, 3))
        masks.append(torch.rand(k, size, size, generator=g) < draw(st.floats(0.1, 0.9)))
        ids.append(torch.randint(0, c, (k,), generator=g))  # repeated ids are merged
    return feats, thr, masks, ids, c, size


@FAST
@given(case=iou_cases())
def test_iou_equals_a_direct_computation(case):
    from lavise.metrics import IoUAccumulator

    feats, thr, masks, ids, c, size = case
    b, d = feats.shape[:2]
    acc = IoUAccumulator(d, c, resolution=None)
    acc.update(feats, thr, masks, ids)
    inter = np.zeros((d, c))
    union = np.zeros((d, c))
    for i in range(b):
        up = F.interpolate(feats[i:i + 1], size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
        act = (up >= thr.numpy()[:, None, None]) & (up > 0)  # (d, S, S)
        for cc in range(c):
            m = np.zeros((size, size), bool)
            for mk, ci in zip(masks[i], ids[i].tolist()):
                if ci == cc:
                    m |= mk.numpy()
            inter[:, cc] += (act & m).sum((1, 2))
            union[:, cc] += (act | m).sum((1, 2))
    want = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    np.testing.assert_array_equal(acc.intersection.numpy(), inter)  # exact counts
    np.testing.assert_allclose(acc.iou().numpy(), want, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- readers on random bytes


def _json_values():
    leaves = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=5)
    return st.recursive(leaves, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                        max_leaves=8)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    from lavise.explainer import Explainer, ExplainerHead, split_concepts
    from lavise.wordspace import WordSpace
    from tiny import tiny_model

    words = ["dog", "cat", "car", "tree"]
    space = WordSpace("toy", words, torch.randn(4, 5, generator=torch.Generator().manual_seed(0)))
    exp = Explainer(tiny_model(), "features", space, "trained", ExplainerHead(6, 5).eval(), split_concepts(words, 0.5))
    path = exp.save(tmp_path_factory.mktemp("ck") / "ckpt")
    return path, exp


def _copy(src: Path) -> Path:
    dst = Path(tempfile.mkdtemp()) / "ckpt"
    shutil.copytree(src, dst)
    return dst


@FAST
@given(data=st.binary(max_size=300), where=st.sampled_from(["lavise.json", "explainer.safetensors"]))
def test_checkpoint_readers_on_random_bytes_raise_only_checkpoint_errors(checkpoint_dir, data, where):
    from lavise.checkpoint import CheckpointError
    from lavise.explainer import Explainer

    src, exp = checkpoint_dir
    path = _copy(src)
    try:
        (path / where).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            Explainer.load(path, model=exp.model, word_space=exp.word_space)
        assert str(path / where) in str(info.value)
    finally:
        shutil.rmtree(path.parent)


@FAST
@given(key=st.sampled_from(["format", "version", "model", "layer", "word_space", "explainer", "split", "weights"]),
       sub=st.one_of(st.none(), st.text(max_size=10)), value=_json_values())
def test_checkpoint_metadata_with_random_values_loads_or_raises_checkpoint_error(checkpoint_dir, key, sub, value):
    from lavise.checkpoint import CheckpointError
    from lavise.explainer import Explainer

    src, exp = checkpoint_dir
    path = _copy(src)
    try:
        meta = json.loads((path / "lavise.json").read_text())
        if sub is not None and isinstance(meta.get(key), dict):
            meta[key][sub] = value
        else:
            meta[key] = value
        (path / "lavise.json").write_text(json.dumps(meta))
        try:
            Explainer.load(path, model=exp.model, word_space=exp.word_space)
        except CheckpointError as e:
            assert "lavise.json" in str(e) or "explainer.safetensors" in str(e)
    finally:
        shutil.rmtree(path.parent)


@FAST
@given(data=st.binary(max_size=400))
def test_cache_readers_on_random_bytes_raise_only_cache_damaged(data):
    from lavise._cache import CacheDamaged
    from lavise.features import FeatureStore
    from lavise.statistics import FilterStats

    root = Path(tempfile.mkdtemp())
    try:
        (root / "stats.safetensors").write_bytes(data)
        with pytest.raises(CacheDamaged):
            FilterStats.load(root / "stats.safetensors")
        (root / "meta.json").write_bytes(data)
        with pytest.raises(CacheDamaged):
            FeatureStore.open(root)
    finally:
        shutil.rmtree(root)


@FAST
@given(data=st.binary(max_size=400))
def test_word_vector_cache_reader_on_random_bytes_rebuilds(data):
    from lavise.wordspace import _read_cache

    root = Path(tempfile.mkdtemp())
    try:
        (root / "v.npz").write_bytes(data)
        assert _read_cache(root / "v.npz", 10, 0) is None  # reported and rebuilt, never raised
    finally:
        shutil.rmtree(root)
