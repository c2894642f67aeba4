"""An image is the hash of its bytes: dedup, --exclude, the overlap check, cache keys."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lavise import identity
from lavise.datasets import combine, load_dataset
from lavise.evaluate import _check_disjoint
from lavise.features import feature_cache_key
from lavise.identity import MISSING_PREFIX, content_hash, content_hashes
from tiny import TINY_PRE, tiny_model


def _png(path: Path, value: int, size=(20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def _coco(root: Path, split: str, files: dict[int, Path]) -> Path:
    """A COCO instances dataset: image id -> source image file (copied), one box each."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for iid, src in files.items():
        dst = root / split / f"{iid:012d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        with Image.open(dst) as im:
            w, h = im.size
        images.append({"id": iid, "file_name": dst.name, "height": h, "width": w})
        anns.append({"id": iid, "image_id": iid, "category_id": 1, "iscrowd": 0, "area": 1,
                     "bbox": [10, 5, 10, 10], "segmentation": [[10, 5, 20, 5, 20, 15, 10, 15]]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_content_hashes_by_bytes_not_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISE_CACHE_DIR", str(tmp_path / "cache"))
    a = _png(tmp_path / "a.png", 10)
    b = tmp_path / "copy" / "b.png"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    c = _png(tmp_path / "c.png", 200)
    ha, hb, hc, hm = content_hashes([a, b, c, tmp_path / "missing.png"])
    assert ha == hb == content_hash(a) and ha != hc
    assert hm == MISSING_PREFIX + str(tmp_path / "missing.png")
    assert (tmp_path / "cache" / "identity" / "content-hashes.sqlite3").is_file()
    # a second process (empty memo) reads the disk cache instead of the files
    identity._memo.clear()
    monkeypatch.setattr(identity, "content_hash", lambda p: pytest.fail("file hashed again"))
    assert content_hashes([a, c]) == [ha, hc]
    # a changed file (new size and mtime) is hashed again
    monkeypatch.undo()
    monkeypatch.setenv("LAVISE_CACHE_DIR", str(tmp_path / "cache"))
    _png(c, 50, size=(21, 30))
    os.utime(c, ns=(1, 1))
    assert content_hashes([c]) == [content_hash(c)] != [hc]


def test_same_file_under_two_ids_is_one_image_with_merged_masks(tmp_path):
    a, b = _png(tmp_path / "src" / "a.png", 10), _png(tmp_path / "src" / "b.png", 99)
    one = load_dataset(f"coco-instances:{_coco(tmp_path / 'one', 'val', {1: a, 2: b})}", split="val")
    # the same file a under id 7, in a second dataset with another category name
    two_root = _coco(tmp_path / "two", "val", {7: a})
    data = json.loads((two_root / "annotations" / "instances_val.json").read_text())
    data["categories"][0]["name"] = "other thing"
    (two_root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    two = load_dataset(f"coco-instances:{two_root}", split="val")
    both = combine([one, two])
    assert len(both) == 2 and both.image_ids == ["1", "2"] and both.merged == 1
    item = both[0]
    assert sorted(both.concepts[c] for c in item["concept_ids"]) == ["other thing", "thing"]
    assert item["masks"].shape[0] == 2
    assert both.concept_frequencies() == {"thing": 2, "other thing": 1}


def test_different_files_with_the_same_id_are_two_images(tmp_path):
    a, b = _png(tmp_path / "src" / "a.png", 10), _png(tmp_path / "src" / "b.png", 99)
    one = load_dataset(f"coco-instances:{_coco(tmp_path / 'one', 'val', {1: a})}", split="val")
    two = load_dataset(f"coco-instances:{_coco(tmp_path / 'two', 'val', {1: b})}", split="val")
    both = combine([one, two])
    assert len(both) == 2
    assert both.image_ids == ["1", "coco-instances[1]:1"]  # display ids stay unique
    assert [both[i]["image_id"] for i in range(2)] == both.image_ids
    assert len(set(both.image_hashes)) == 2


def test_dataset_whose_ids_collide_with_cocos(shared_data, tmp_path):
    """A user's COCO-format files numbered like COCO's: not COCO's images."""
    pan = load_dataset(f"coco-panoptic:{shared_data / 'coco-panoptic'}", split="val2017", preprocessing=TINY_PRE)
    ids = [int(i) for i in pan.image_ids[:3]]
    user_files = {iid: _png(tmp_path / "src" / f"{k}.png", 30 * k + 5) for k, iid in enumerate(ids)}
    user = load_dataset(f"coco-instances:{_coco(tmp_path / 'mine', 'test', user_files)}", split="test",
                        preprocessing=TINY_PRE)
    assert set(user.image_ids) <= set(pan.image_ids)
    both = combine([pan, user])
    assert len(both) == len(pan) + len(user)  # nothing lost to colliding ids
    # the train/evaluation overlap check compares content: trained on COCO, evaluating mine is fine
    model = tiny_model()
    explainer = SimpleNamespace(model=model, meta={"training": {"image_ids": pan.image_ids,
                                                                "image_hashes": pan.image_hashes}})
    _check_disjoint(explainer, user)
    # ... but COCO's own files under my ids are refused
    copied = {9000 + k: pan.image_paths[k] for k in range(2)}
    renamed = load_dataset(f"coco-instances:{_coco(tmp_path / 'copied', 'test', copied)}", split="test",
                           preprocessing=TINY_PRE)
    with pytest.raises(ValueError, match="2 evaluation images were used to train"):
        _check_disjoint(explainer, renamed)
    # a checkpoint without hashes: its references are opened and hashed
    old = SimpleNamespace(model=model, meta={"training": {
        "references": [f"coco-panoptic:{shared_data / 'coco-panoptic'}"], "split": "val2017"}})
    _check_disjoint(old, user)
    with pytest.raises(ValueError, match="were used to train"):
        _check_disjoint(old, renamed)


def test_exclude_matches_content_not_ids(shared_data, tmp_path):
    """--exclude of a folder holding the evaluation files under other names (ids)."""
    from lavise.api import open_dataset

    model = tiny_model()
    spec = f"coco-panoptic:{shared_data / 'coco-panoptic'}"
    val = open_dataset(f"{spec}@val2017", None, model)
    folder = tmp_path / "renamed"
    folder.mkdir()
    for k, p in enumerate(val.image_paths[:5]):
        shutil.copyfile(p, folder / f"photo-{k}.jpg")
    excluded = open_dataset(str(folder), None, model)
    assert not set(excluded.image_ids) & set(val.image_ids)
    kept = open_dataset([f"{spec}@val2017"], None, model, exclude_hashes=excluded.image_hashes)
    assert len(kept) == len(val) - 5
    assert not set(kept.image_paths) & set(val.image_paths[:5])


def test_feature_cache_key_follows_content(tmp_path):
    model = tiny_model()
    for k in range(3):
        _png(tmp_path / "a" / f"{k}.png", 40 * k)
    key = feature_cache_key(model, "features", load_dataset(f"folder:{tmp_path / 'a'}", preprocessing=TINY_PRE))
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    moved = load_dataset(f"folder:{tmp_path / 'moved'}", preprocessing=TINY_PRE)
    assert feature_cache_key(model, "features", moved) == key  # moving a dataset keeps its cache
    _png(tmp_path / "moved" / "1.png", 255)
    os.utime(tmp_path / "moved" / "1.png", ns=(5, 5))
    changed = load_dataset(f"folder:{tmp_path / 'moved'}", preprocessing=TINY_PRE)
    assert feature_cache_key(model, "features", changed) != key  # same ids and paths, new bytes


def test_coco_file_name_with_sub_folders(tmp_path):
    """Cityscapes-style file names under an image root holding only sub-folders."""
    root = tmp_path / "cityscapes"
    rel = "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    _png(root / rel, 77)
    (root / "annotations").mkdir(parents=True)
    data = {"images": [{"id": 1, "file_name": rel, "height": 20, "width": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [0, 0, 4, 4],
                             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}],
            "categories": [{"id": 1, "name": "car"}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    for spec in (f"coco-instances:{root}", f"coco-instances:{root / 'annotations' / 'instances_val.json'}"):
        ds = load_dataset(spec, split="val")
        assert ds.image_paths == [root / rel]
        assert ds[0]["error"] is None and ds[0]["masks"].shape[0] == 1
    ds = load_dataset(f"coco-instances:{root}", split="val", images=root / "leftImg8bit" / "..")
    assert ds[0]["error"] is None
    with pytest.raises(ValueError, match="no images found.*frankfurt_000000_000294"):
        load_dataset(f"coco-instances:{root}", split="val", images=root / "annotations")


def test_one_dataset_holding_a_file_twice_is_deduplicated(tmp_path):
    from lavise.api import open_dataset

    a = _png(tmp_path / "photos" / "a.png", 10)
    shutil.copyfile(a, tmp_path / "photos" / "copy-of-a.png")
    _png(tmp_path / "photos" / "b.png", 99)
    ds = open_dataset(str(tmp_path / "photos"), None, tiny_model())
    assert ds.image_ids == ["a.png", "b.png"]
