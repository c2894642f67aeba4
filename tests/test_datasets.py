"""Tests for lavise.datasets: formats, mask alignment, errors, collate, combine."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from lavise.datasets import (
    CombinedDataset,
    ReferenceDataset,
    collate,
    combine,
    list_dataset_formats,
    load_dataset,
    panoptic_rgb_to_id,
)
from lavise.preprocessing import Preprocessing

HALF = Preprocessing(resize=100, crop=100)  # 200x300 images: exact scale 1/2, crop cols 25..125


# -- helpers ------------------------------------------------------------------------------
def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major runs, starting with zeros), as for iscrowd."""
    flat = mask.T.reshape(-1)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _two_rect_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 x 300 RGB image with a red and a blue rectangle, and their boolean masks."""
    img = np.zeros((200, 300, 3), np.uint8)
    red = np.zeros((200, 300), bool)
    red[40:120, 100:220] = True
    blue = np.zeros((200, 300), bool)
    blue[130:180, 40:140] = True
    img[red] = (255, 0, 0)
    img[blue] = (0, 0, 255)
    return img, red, blue


def _write_coco(root: Path, split: str, images: list[dict], anns: list[dict], files: dict) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    for name, arr in files.items():
        Image.fromarray(arr).save(root / split / name)
    data = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": 1, "name": "red thing", "supercategory": "x"},
            {"id": 2, "name": "blue thing", "supercategory": "x"},
            {"id": 3, "name": "never used", "supercategory": "x"},
        ],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def synthetic_coco(tmp_path: Path) -> Path:
    img, red, blue = _two_rect_image()
    images = [
        {"id": 1, "file_name": "a.png", "height": 200, "width": 300},
        {"id": 2, "file_name": "b.png", "height": 200, "width": 300},  # no annotations
        {"id": 3, "file_name": "missing.png", "height": 200, "width": 300},
    ]
    anns = [
        # the red rectangle as uncompressed RLE (iscrowd), the blue one as a polygon
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 1,
         "segmentation": _uncompressed_rle(red.astype(np.uint8)), "area": 1, "bbox": [0, 0, 1, 1]},
        {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0,
         "segmentation": [[40, 130, 140, 130, 140, 180, 40, 180]], "area": 1, "bbox": [0, 0, 1, 1]},
        {"id": 12, "image_id": 3, "category_id": 2, "iscrowd": 0,
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "area": 1, "bbox": [0, 0, 1, 1]},
    ]
    _write_coco(tmp_path / "coco", "val", images, anns, {"a.png": img, "b.png": img})
    return tmp_path / "coco"


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def _names(ds, item) -> list[str]:
    return [ds.concepts[c] for c in item["concept_ids"].tolist()]


# -- registry / spec ------------------------------------------------------------------------
def test_formats_registered():
    assert set(list_dataset_formats()) >= {
        "coco-instances", "coco-panoptic", "visual-genome", "imagefolder", "folder"
    }


@pytest.mark.parametrize(
    "spec, exc, match",
    [
        ("coco-panoptc:/tmp", ValueError, "closest: coco-panoptic"),
        ("no-colon-here", ValueError, "FORMAT:PATH"),
        ("folder:", ValueError, "empty PATH"),
        ("coco-panoptic:/definitely/not/here", FileNotFoundError, "does not exist"),
        ("folder:/definitely/not/here", FileNotFoundError, "does not exist"),
    ],
)
def test_bad_specs_raise_one_clear_line(spec, exc, match):
    with pytest.raises(exc, match=match) as info:
        load_dataset(spec)
    assert "\n" not in str(info.value)


# -- synthetic COCO instances: alignment, RLE/polygon, errors -----------------------------------
def test_coco_instances_masks_align_with_pixels(synthetic_coco: Path):
    ds = load_dataset(f"coco-instances:{synthetic_coco}", split="val", preprocessing=HALF)
    assert ds.name == "coco-instances"
    assert ds.concepts == ["red thing", "blue thing", "never used"]
    assert ds.image_ids == ["1", "3"]  # image 2 has no annotation
    item = ds[0]
    assert item["error"] is None
    image = item["image"]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert image.shape == (3, 100, 100)
    masks = item["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8
    assert masks.shape == (2, 100, 100) and set(masks.unique().tolist()) == {0, 1}
    assert _names(ds, item) == ["red thing", "blue thing"]
    expected_red = torch.zeros(100, 100, dtype=torch.bool)
    expected_red[20:60, 25:85] = True  # rows 40..120 / 2; cols 100..220 / 2 - 25
    assert torch.equal(masks[0].bool(), expected_red)
    red_px = (image[0] > 127) & (image[2] < 128)
    blue_px = (image[2] > 127) & (image[0] < 128)
    assert torch.equal(masks[0].bool(), red_px)
    assert _iou(masks[1], blue_px) > 0.95  # polygon rasterisation may differ on its border


def test_coco_instances_alignment_with_default_preprocessing(synthetic_coco: Path):
    ds = load_dataset(f"coco-instances:{synthetic_coco}", split="val")
    item = ds[0]
    assert item["image"].shape == (3, 224, 224)
    red_px = (item["image"][0] > 127) & (item["image"][2] < 128)
    assert _iou(item["masks"][0], red_px) > 0.97


def test_masks_without_images_match_masks_with_images(synthetic_coco: Path):
    spec = f"coco-instances:{synthetic_coco}"
    with_img = load_dataset(spec, split="val")[0]
    no_img = load_dataset(spec, split="val", load_images=False)[0]
    assert no_img["image"] is None and no_img["error"] is None
    assert torch.equal(no_img["masks"], with_img["masks"])
    assert torch.equal(no_img["concept_ids"], with_img["concept_ids"])


def test_include_unannotated_and_missing_file(synthetic_coco: Path):
    ds = load_dataset(f"coco-instances:{synthetic_coco}", split="val", include_unannotated=True)
    assert ds.image_ids == ["1", "2", "3"]
    assert ds[1]["masks"].shape == (0, 224, 224) and ds[1]["error"] is None
    missing = ds[2]
    assert missing["image"] is None and missing["masks"].shape[0] == 0
    assert "missing.png" in missing["error"] and "\n" not in missing["error"]
    batch = collate([ds[i] for i in range(3)])
    assert batch["index"].tolist() == [0, 1]
    assert batch["images"].shape == (2, 3, 224, 224) and batch["images"].dtype == torch.uint8
    assert [f["image_id"] for f in batch["failed"]] == ["3"]


def test_coco_instances_direct_json_and_frequencies(synthetic_coco: Path):
    ds = load_dataset(f"coco-instances:{synthetic_coco / 'annotations' / 'instances_val.json'}")
    assert ds.split == "val" and len(ds) == 2
    assert ds.concept_frequencies() == {"red thing": 1, "blue thing": 2}
    assert "coco-instances" in ds.describe()


def test_coco_instances_several_splits_need_split(synthetic_coco: Path):
    img, _, _ = _two_rect_image()
    _write_coco(synthetic_coco, "train", [], [], {"x.png": img})
    with pytest.raises(ValueError, match="several splits"):
        load_dataset(f"coco-instances:{synthetic_coco}")
    with pytest.raises(FileNotFoundError, match="available splits: train, val"):
        load_dataset(f"coco-instances:{synthetic_coco}", split="test")


def test_unknown_option_raises(synthetic_coco: Path):
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset(f"coco-instances:{synthetic_coco}", split="val", min_images=3)


# -- real COCO data ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under numpy 2
def test_coco_mini_instances_iscrowd_rle(shared_data: Path):
    root = shared_data / "coco-mini"
    ds = load_dataset(f"coco-instances:{root}", split="val2017", load_images=False)
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    assert isinstance(crowd["segmentation"]["counts"], list)  # uncompressed RLE
    info = next(im for im in data["images"] if im["id"] == crowd["image_id"])
    cat = next(c["name"] for c in data["categories"] if c["id"] == crowd["category_id"])
    # independent decode of all instances of that category in that image
    union = np.zeros((info["height"], info["width"]), np.uint8)
    for a in data["annotations"]:
        if a["image_id"] == crowd["image_id"] and a["category_id"] == crowd["category_id"]:
            seg = a["segmentation"]
            rles = (mask_utils.frPyObjects(seg, info["height"], info["width"])
                    if isinstance(seg, list) or isinstance(seg["counts"], list) else seg)
            m = mask_utils.decode(rles)
            union |= (m.max(axis=2) if m.ndim == 3 else m)
    expected = ds.preprocessing.geometric()(tv_tensors.Mask(torch.from_numpy(union)[None]))[0]
    item = ds[ds.image_ids.index(str(crowd["image_id"]))]
    assert item["error"] is None
    k = _names(ds, item).index(cat)
    assert item["masks"][k].sum() > 0
    assert torch.equal(item["masks"][k], expected)
    assert len(ds.concepts) == 80 and len(ds) == 79


def test_panoptic_rgb_to_id():
    rgb = np.array([[[1, 2, 3], [0, 0, 0]], [[255, 255, 255], [7, 0, 1]]], np.uint8)
    ids = panoptic_rgb_to_id(rgb)
    assert ids.tolist() == [[1 + 2 * 256 + 3 * 65536, 0], [256**3 - 1, 7 + 65536]]
    with pytest.raises(ValueError):
        panoptic_rgb_to_id(np.zeros((2, 2), np.uint8))


def test_coco_panoptic_real_image(shared_data: Path):
    root = shared_data / "coco-panoptic"
    ds = load_dataset(f"coco-panoptic:{root}", split="val2017")
    assert ds.name == "coco-panoptic" and len(ds.concepts) == 133 and len(ds) == 100
    data = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    ann = next(a for a in data["annotations"] if a["image_id"] == 139)
    # every segment id of the JSON occurs in the decoded PNG (checks the R + 256G + 256^2B math)
    png = np.asarray(Image.open(root / "annotations" / "panoptic_val2017" / ann["file_name"]))
    ids = panoptic_rgb_to_id(png)
    assert {s["id"] for s in ann["segments_info"]} <= set(np.unique(ids).tolist())
    item = ds[ds.image_ids.index("139")]
    assert item["error"] is None and item["image"].shape == (3, 224, 224)
    names = _names(ds, item)
    assert "person" in names and "wall-other-merged" in names
    cats = {c["id"]: c["name"] for c in data["categories"]}
    assert set(names) <= {cats[s["category_id"]] for s in ann["segments_info"]}
    assert len(set(names)) == len(names)  # same-category segments merged
    assert all(m.sum() > 0 for m in item["masks"])
    person_ids = [s["id"] for s in ann["segments_info"] if cats[s["category_id"]] == "person"]
    person = torch.from_numpy(np.isin(ids, person_ids).astype(np.uint8))[None]
    expected = ds.preprocessing.geometric()(tv_tensors.Mask(person))[0]
    assert torch.equal(item["masks"][names.index("person")], expected)


def test_grayscale_image_becomes_rgb(shared_data: Path):
    ds = load_dataset(f"coco-panoptic:{shared_data / 'coco-panoptic'}", split="train2017")
    i = ds.image_ids.index("86")
    assert Image.open(ds.image_paths[i]).mode == "L"
    item = ds[i]
    assert item["error"] is None and item["image"].shape == (3, 224, 224)


def test_wrong_coco_kind_is_named(shared_data: Path):
    inst = shared_data / "coco-mini" / "annotations" / "instances_val2017.json"
    with pytest.raises(ValueError, match="not a COCO panoptic file.*instances"):
        load_dataset(f"coco-panoptic:{inst}")
    pan = shared_data / "coco-panoptic" / "annotations" / "panoptic_val2017.json"
    with pytest.raises(ValueError, match="not a COCO instances file.*panoptic"):
        load_dataset(f"coco-instances:{pan}")
    with pytest.raises(FileNotFoundError, match="panoptic"):
        load_dataset(f"coco-panoptic:{shared_data / 'coco-mini'}")


def test_combined_deduplicates_and_remaps(shared_data: Path):
    pan = load_dataset(f"coco-panoptic:{shared_data / 'coco-panoptic'}", split="val2017")
    mini = load_dataset(f"coco-instances:{shared_data / 'coco-mini'}", split="val2017")
    overlap = set(pan.image_ids) & set(mini.image_ids)
    assert overlap  # 139 and 802 are annotated in both
    both = combine([pan, mini])
    assert isinstance(both, CombinedDataset) and isinstance(both, ReferenceDataset)
    assert len(both) == len(pan) + len(mini) - len(overlap)
    assert len(set(both.image_ids)) == len(both)
    assert both.concepts[: len(pan.concepts)] == pan.concepts
    assert set(both.concepts) == set(pan.concepts) | set(mini.concepts)
    # duplicate kept from the first dataset (panoptic: it has stuff concepts)
    dup = both[both.image_ids.index("139")]
    assert "wall-other-merged" in _names(both, dup)
    # an image only in coco-mini: same names through the remapped ids
    only = next(i for i in mini.image_ids if i not in overlap)
    j = both.image_ids.index(only)
    item = both[j]
    assert item["index"] == j
    assert _names(both, item) == _names(mini, mini[mini.image_ids.index(only)])
    freq = both.concept_frequencies()
    assert freq["person"] == pan.concept_frequencies()["person"] + sum(
        1 for i in mini.image_ids
        if i not in overlap
        and mini.concepts.index("person")
        in mini._annotated_concepts(mini.image_ids.index(i))
    )


def test_combined_masks_only_copy_leaves_members_alone(synthetic_coco: Path):
    a = load_dataset(f"coco-instances:{synthetic_coco}", split="val")
    both = combine([a, a])
    assert len(both) == len(a)  # same ids: deduplicated
    clone = copy.copy(both)
    clone.load_images = False
    assert clone[0]["image"] is None and clone[0]["masks"].shape[0] == 2
    assert a.load_images and both[0]["image"] is not None
    batch = collate([both[0]])
    assert batch["image"] is batch["images"]


def test_combine_rejects_mixed_preprocessing(synthetic_coco: Path):
    a = load_dataset(f"coco-instances:{synthetic_coco}", split="val")
    b = load_dataset(f"coco-instances:{synthetic_coco}", split="val", preprocessing=HALF)
    with pytest.raises(ValueError, match="preprocessing"):
        combine([a, b])


# -- Visual Genome ------------------------------------------------------------------------------
@pytest.fixture()
def synthetic_vg(tmp_path: Path) -> Path:
    root = tmp_path / "vg"
    (root / "VG_100K").mkdir(parents=True)
    (root / "VG_100K_2").mkdir()
    img = np.zeros((200, 300, 3), np.uint8)  # 200 rows (y) x 300 columns (x)
    img[20:80, 150:250] = (0, 255, 0)  # box x=150, y=20, w=100, h=60
    Image.fromarray(img).save(root / "VG_100K" / "1.png")
    Image.fromarray(np.full((120, 90, 3), 128, np.uint8)).save(root / "VG_100K_2" / "2.png")
    Image.fromarray(np.full((50, 50, 3), 128, np.uint8)).save(root / "VG_100K" / "3.png")
    url = "https://cs.stanford.edu/people/rak248/{}/{}.png"
    image_data = [
        {"image_id": 1, "width": 300, "height": 200, "url": url.format("VG_100K", 1)},
        {"image_id": 2, "width": 90, "height": 120, "url": url.format("VG_100K_2", 2)},
        {"image_id": 3, "width": 50, "height": 50, "url": url.format("VG_100K", 3)},
    ]
    objects = [
        {"image_id": 1, "objects": [
            {"object_id": 1, "x": 150, "y": 20, "w": 100, "h": 60, "names": [" Dog "]},
            {"object_id": 2, "x": 0, "y": 0, "w": 10, "h": 10, "name": "cat"},
        ]},
        {"image_id": 2, "objects": [
            {"object_id": 3, "x": 10, "y": 10, "w": 30, "h": 50, "names": ["dog"]},
        ]},
        {"image_id": 3, "objects": [
            {"object_id": 4, "x": 5, "y": 5, "w": 10, "h": 10, "names": ["tree"]},
        ]},
    ]
    (root / "image_data.json").write_text(json.dumps(image_data))
    (root / "objects.json").write_text(json.dumps(objects))
    return root


def test_visual_genome_boxes_are_oriented(synthetic_vg: Path):
    ds = load_dataset(f"visual-genome:{synthetic_vg}", preprocessing=HALF)
    assert ds.concepts == ["cat", "dog", "tree"]
    assert ds.image_ids == ["1", "2", "3"]
    assert ds.image_paths[1] == synthetic_vg / "VG_100K_2" / "2.png"
    item = ds[0]
    assert item["error"] is None
    k = _names(ds, item).index("dog")
    expected = torch.zeros(100, 100, dtype=torch.bool)
    expected[10:40, 50:100] = True  # rows 20..80 / 2; cols 150..250 / 2 - 25, clipped at 100
    assert torch.equal(item["masks"][k].bool(), expected)
    green = (item["image"][1] > 127) & (item["image"][0] < 128)
    assert torch.equal(item["masks"][k].bool(), green)
    no_img = load_dataset(f"visual-genome:{synthetic_vg}", preprocessing=HALF, load_images=False)
    assert torch.equal(no_img[0]["masks"], item["masks"])


def test_visual_genome_min_images(synthetic_vg: Path):
    ds = load_dataset(f"visual-genome:{synthetic_vg}", min_images=2)
    assert ds.concepts == ["dog"] and ds.image_ids == ["1", "2"]
    assert ds.concept_frequencies() == {"dog": 2}
    assert _names(ds, ds[1]) == ["dog"]
    with pytest.raises(ValueError, match="min_images"):
        load_dataset(f"visual-genome:{synthetic_vg}", min_images=0)


# -- folders ------------------------------------------------------------------------------------
def _img(path: Path, size=(40, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path)


def test_imagefolder(tmp_path: Path):
    _img(tmp_path / "cat" / "a.png")
    _img(tmp_path / "cat" / "b.jpg", size=(80, 30))
    _img(tmp_path / "dog" / "nested" / "c.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.concepts == ["cat", "dog"]
    assert ds.image_ids == ["cat/a.png", "cat/b.jpg", "dog/nested/c.png"]
    for i, label in enumerate([0, 0, 1]):
        item = ds[i]
        assert item["concept_ids"].tolist() == [label]
        assert item["masks"].shape == (1, 224, 224) and bool(item["masks"].all())
    assert ds.concept_frequencies() == {"cat": 2, "dog": 1}
    no_img = load_dataset(f"imagefolder:{tmp_path}", load_images=False)[1]
    assert no_img["image"] is None and no_img["masks"].shape == (1, 224, 224)


def test_folder_and_corrupt_image(tmp_path: Path):
    _img(tmp_path / "b.png")
    _img(tmp_path / "sub" / "a.jpg")
    (tmp_path / "c.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "readme.md").write_text("x")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.concepts == []
    assert ds.image_ids == ["b.png", "c.jpg", "sub/a.jpg"]
    good = ds[0]
    assert good["error"] is None and good["masks"].shape == (0, 224, 224)
    assert good["concept_ids"].shape == (0,)
    bad = ds[1]
    assert bad["image"] is None and bad["error"] and "c.jpg" in bad["error"]
    loader = DataLoader(ds, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["index"].tolist() == [0, 2]
    assert batch["image_id"] == ["b.png", "sub/a.jpg"]
    assert batch["images"].shape == (2, 3, 224, 224)
    assert batch["failed"][0]["image_id"] == "c.jpg"
    assert collate([bad])["images"] is None


def test_empty_folders_raise(tmp_path: Path):
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path}")


# -- shipped sample -------------------------------------------------------------------------------
def test_sample_coco_panoptic(sample_dir: Path):
    root = sample_dir / "coco-panoptic"
    train = load_dataset(f"coco-panoptic:{root}", split="train2017", load_images=False)
    val = load_dataset(f"coco-panoptic:{root}", split="val2017")
    assert len(train) == 100 and len(val) == 50
    assert len(train.concepts) == len(val.concepts) == 133
    for ds, split in ((train, "train2017"), (val, "val2017")):
        data = json.loads((root / "annotations" / f"panoptic_{split}.json").read_text())
        assert list(data) == ["info", "licenses", "images", "annotations", "categories"]
        assert len(data["images"]) == len(data["annotations"]) == len(ds)
        assert all(p.is_file() for p in ds.image_paths)
        assert all((root / "annotations" / f"panoptic_{split}" / a["file_name"]).is_file()
                   for a in data["annotations"])
        jpgs = sorted(p.name for p in (root / "images" / split).iterdir())
        assert jpgs == sorted(p.name for p in ds.image_paths)  # no unannotated images
    item = val[0]
    assert item["error"] is None and item["masks"].shape[0] > 0
    assert (sample_dir / "README.md").is_file()
