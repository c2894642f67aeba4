"""Segmentation formats: ADE20K, Pascal VOC, semantic folders (index and colour PNGs), Broden."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from lavise.datasets import list_dataset_formats, load_dataset
from lavise.datasets.voc import VOC_CLASSES
from lavise.preprocessing import Preprocessing

HALF = Preprocessing(resize=100, crop=100)


def _names(ds, item) -> list[str]:
    return [ds.concepts[c] for c in item["concept_ids"].tolist()]


def _expected_masks(label: np.ndarray, ids: list[int], prep: Preprocessing) -> torch.Tensor:
    """Masks of a label map through the model's geometric transform, for comparison."""
    m = tv_tensors.Mask(torch.from_numpy(np.stack([label == k for k in ids]).astype(np.uint8)))
    return prep.geometric()(m).as_subclass(torch.Tensor)


def test_new_formats_registered():
    for fmt in ("ade20k", "voc", "semantic-folder", "broden"):
        assert fmt in list_dataset_formats()


# -- ADE20K --------------------------------------------------------------------------------------
def test_ade20k_real_sample(shared_data: Path):
    root = shared_data / "ade20k-sample"
    ds = load_dataset(f"ade20k:{root}", preprocessing=HALF)
    assert ds.split == "validation" and len(ds) == 100 and len(ds.concepts) == 150
    assert ds.concepts[:4] == ["wall", "building", "sky", "floor"]  # "building, edifice" -> "building"
    assert "bed" in ds.concepts and all("," not in c for c in ds.concepts)
    assert load_dataset(f"ade20k:{root}", split="val", load_images=False).split == "validation"
    item = ds[0]
    label = np.asarray(Image.open(ds.label_paths[0]))
    present = [int(v) for v in np.unique(label) if v > 0]
    assert item["image"].shape == (3, 100, 100)
    want = _expected_masks(label, present, HALF)
    keep = want.flatten(1).amax(1) > 0
    assert _names(ds, item) == [ds.concepts[v - 1] for v, k in zip(present, keep) if k]
    assert torch.equal(item["masks"].as_subclass(torch.Tensor), want[keep])
    text = ds.describe()
    assert "100 images" in text and "150 categories" in text and "868 masks" in text
    from lavise.wordspace import WordSpace

    space = WordSpace("tiny", ["wall", "building", "traffic_light"], torch.eye(3))
    assert "3 of 150 category names have a word vector in tiny" in ds.describe(space)


def test_ade20k_bad_label_png_is_a_counted_skip(shared_data: Path, tmp_path: Path, caplog):
    src = shared_data / "ade20k-sample"
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation"):
        (root / sub).mkdir(parents=True)
    shutil.copy(src / "objectInfo150.txt", root / "objectInfo150.txt")
    names = sorted(p.stem for p in (src / "images" / "validation").iterdir())[:3]
    for n in names:
        shutil.copy(src / "images" / "validation" / f"{n}.jpg", root / "images" / "validation")
        shutil.copy(src / "annotations" / "validation" / f"{n}.png", root / "annotations" / "validation")
    (root / "images" / "validation" / "ADE_val_99999999.jpg").write_bytes(
        (root / "images" / "validation" / f"{names[0]}.jpg").read_bytes())
    bad = np.asarray(Image.open(root / "annotations" / "validation" / f"{names[1]}.png")).copy()
    bad[0, 0] = 200
    Image.fromarray(bad).save(root / "annotations" / "validation" / f"{names[1]}.png")
    small = Image.open(root / "annotations" / "validation" / f"{names[2]}.png").resize((10, 10))
    small.save(root / "annotations" / "validation" / f"{names[2]}.png")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"ade20k:{tmp_path}")  # the parent of ADEChallengeData2016 works too
    assert len(ds) == 3 and "1 images without an annotation PNG" in caplog.text
    assert ds[0]["error"] is None
    err = ds[1]["error"]
    assert f"{names[1]}.png" in err and "class index 200" in err and "\n" not in err
    err = ds[2]["error"]
    assert f"{names[2]}.png" in err and "10x10" in err


# -- Pascal VOC ------------------------------------------------------------------------------------
def test_voc_real_sample(shared_data: Path):
    root = shared_data / "voc2012-sample"
    ds = load_dataset(f"voc:{root}", preprocessing=HALF)
    assert ds.root.name == "VOC2012" and ds.split == "trainval" and len(ds) == 100
    assert ds.concepts == list(VOC_CLASSES) and "background" not in ds.concepts
    ids = (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/trainval.txt").read_text().split()
    assert ds.image_ids == ids
    label = np.asarray(Image.open(ds.label_paths[0]))
    assert 255 in label and 0 in label  # void and background: no concept
    item = ds[0]
    present = [int(v) for v in np.unique(label) if 0 < v < 255]
    assert _names(ds, item) == [VOC_CLASSES[v - 1] for v in present]
    assert torch.equal(item["masks"].as_subclass(torch.Tensor), _expected_masks(label, present, HALF))
    masks_only = load_dataset(f"voc:{root / 'VOCdevkit'}", split="trainval", preprocessing=HALF,
                              load_images=False)[0]
    assert masks_only["image"] is None and torch.equal(masks_only["masks"], item["masks"])
    assert ds.concept_frequencies()["person"] > 10
    with pytest.raises(FileNotFoundError, match="available splits: trainval"):
        load_dataset(f"voc:{root}", split="val")


# -- semantic folders ------------------------------------------------------------------------------
def _voc_palette() -> list[tuple[int, int, int]]:
    def bit(v, i):
        return (v >> i) & 1
    out = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= bit(c, 0) << (7 - j)
            g |= bit(c, 1) << (7 - j)
            b |= bit(c, 2) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def _voc_as_folder(shared_data: Path, tmp_path: Path, n: int = 6, rgb: bool = False) -> tuple[Path, list[str]]:
    voc = shared_data / "voc2012-sample" / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()[:n]
    root = tmp_path / "seg"
    for sub in ("images/val", "labels/val"):
        (root / sub).mkdir(parents=True)
    for iid in ids:
        shutil.copy(voc / "JPEGImages" / f"{iid}.jpg", root / "images" / "val")
        label = Image.open(voc / "SegmentationClass" / f"{iid}.png")
        (label.convert("RGB") if rgb else label).save(root / "labels" / "val" / f"{iid}.png")
    return root, ids


def test_semantic_folder_index_pngs_match_voc(shared_data: Path, tmp_path: Path):
    root, ids = _voc_as_folder(shared_data, tmp_path)
    (root / "classes.txt").write_text("\n".join(["background", *VOC_CLASSES]) + "\n")
    ds = load_dataset(f"semantic-folder:{root}", split="val", preprocessing=HALF)
    voc = load_dataset(f"voc:{shared_data / 'voc2012-sample'}", preprocessing=HALF)
    assert ds.concepts == list(VOC_CLASSES) and ds.image_ids == [f"{i}.jpg" for i in ids]
    for i in range(len(ids)):
        a, b = ds[i], voc[i]
        assert _names(ds, a) == _names(voc, b)
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["image"], b["image"])
    # explicit "K name" lines, ignore_index 255 by default; an index beyond the list is an error
    (root / "classes.txt").write_text("0 background\n15 person\n")
    small = load_dataset(f"semantic-folder:{root}", split="val")
    assert small.concepts == ["person"]
    errors = [small[i]["error"] for i in range(len(small))]
    assert any(e and "class index" in e and ".png" in e for e in errors)


def test_semantic_folder_colour_pngs(shared_data: Path, tmp_path: Path, caplog):
    root, ids = _voc_as_folder(shared_data, tmp_path, rgb=True)
    palette = _voc_palette()
    rows = ["name,r,g,b", "background,0,0,0", *[f"{n},{r},{g},{b}" for n, (r, g, b) in
                                                zip(VOC_CLASSES, palette[1:21])], "void,224,224,192"]
    (root / "class_dict.csv").write_text("\n".join(rows) + "\n")
    (root / "images" / "val" / "unlabelled.jpg").write_bytes((root / "images" / "val" / f"{ids[0]}.jpg").read_bytes())
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"semantic-folder:{root}", split="val", preprocessing=HALF, load_images=False)
    assert "1 images without a label PNG" in caplog.text
    voc = load_dataset(f"voc:{shared_data / 'voc2012-sample'}", preprocessing=HALF, load_images=False)
    assert ds.rgb and ds.concepts == list(VOC_CLASSES) and len(ds) == len(ids)
    for i in range(len(ids)):
        assert _names(ds, ds[i]) == _names(voc, voc[i]) and torch.equal(ds[i]["masks"], voc[i]["masks"])
    # "R G B name" lines work too; a colour missing from the table names the file and the colour
    (root / "colors.txt").write_text("0 0 0 background\n192 128 128 person\n")
    ds = load_dataset(f"semantic-folder:{root}", split="val", colors="colors.txt", load_images=False)
    errors = [ds[i]["error"] for i in range(len(ds))]
    assert any(e and "colour (" in e and "colors.txt" in e and ".png" in e for e in errors)


def test_semantic_folder_cityscapes_suffixes(tmp_path: Path):
    img_dir, lab_dir = tmp_path / "leftImg8bit" / "val" / "aachen", tmp_path / "gtFine" / "val" / "aachen"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img_dir / "aachen_000000_000019_leftImg8bit.png")
    lab = np.zeros((20, 30), np.uint8)
    lab[:, 15:] = 2
    Image.fromarray(lab).save(lab_dir / "aachen_000000_000019_gtFine_labelIds.png")
    (tmp_path / "classes.txt").write_text("0 unlabeled\n1 road\n2 car\n")
    ds = load_dataset(f"semantic-folder:{tmp_path}", split="val", images="leftImg8bit", labels="gtFine",
                      image_suffix="_leftImg8bit", label_suffix="_gtFine_labelIds",
                      preprocessing=Preprocessing(resize=20, crop=20))
    assert ds.image_ids == ["aachen/aachen_000000_000019_leftImg8bit.png"] and ds.concepts == ["road", "car"]
    assert _names(ds, ds[0]) == ["car"]


def test_semantic_folder_bad_input(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.ones((10, 30), np.uint8)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(FileNotFoundError, match="no class list"):
        load_dataset(f"semantic-folder:{tmp_path}")
    (tmp_path / "classes.txt").write_text("unlabelled\nroad\n")
    ds = load_dataset(f"semantic-folder:{tmp_path}")
    assert ds.concepts == ["road"]
    err = ds[0]["error"]
    assert "labels/a.png" in err and "30x10" in err and "image is 30x20" in err


# -- Broden ----------------------------------------------------------------------------------------
def _write_broden(root: Path) -> dict:
    """A two-image Broden in NetDissect's exact layout; label 300 needs the green channel."""
    (root / "images" / "ade20k").mkdir(parents=True)
    labels = [(1, "red-c", "color(2)"), (2, "wall", "object(2)"), (3, "street-s", "scene(1)"),
              (4, "wood", "material(1)"), (300, "person", "object(1)")]
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for n, name, cat in labels:
            w.writerow([n, name, cat, 1, 0.5, ""])
    for cat, members in (("color", [1]), ("object", [2, 300]), ("material", [4]), ("scene", [3])):
        with open(root / f"c_{cat}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, n in enumerate(members, 1):
                w.writerow([code, n, dict((a, b) for a, b, _ in labels)[n], 1, 0.5])

    def seg(path: Path, lab: np.ndarray) -> str:
        rgb = np.zeros((*lab.shape, 3), np.uint8)
        rgb[..., 0], rgb[..., 1] = lab % 256, lab // 256
        Image.fromarray(rgb).save(root / "images" / path)
        return str(path)

    obj = np.zeros((40, 60), np.int64)
    obj[:20] = 2
    obj[20:, 30:] = 300
    color = np.ones((40, 60), np.int64)
    rows = []
    for k in range(2):
        name = Path("ade20k") / f"img{k}.jpg"
        Image.fromarray(np.full((80, 120, 3), 50 * k, np.uint8)).save(root / "images" / name)
        rows.append({"image": str(name), "split": ["train", "val"][k], "ih": 80, "iw": 120, "sh": 40, "sw": 60,
                     "color": seg(Path("ade20k") / f"img{k}_color.png", color),
                     "object": seg(Path("ade20k") / f"img{k}_object.png", obj),
                     "part": "", "material": "", "scene": "3" if k == 0 else "", "texture": ""})
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"object": obj}


def test_broden_layout(tmp_path: Path):
    root = tmp_path / "broden1_224"
    truth = _write_broden(root)
    ident = Preprocessing(resize=80, crop=80)
    ds = load_dataset(f"broden:{root}", preprocessing=ident)
    assert ds.concepts == ["red", "wall", "street", "wood", "person"]  # suffixes dropped
    assert ds.categories == ["color", "object", "material", "scene"]  # the ones with a c_*.csv
    assert len(ds) == 2 and ds.image_ids == ["ade20k/img0.jpg", "ade20k/img1.jpg"]
    item = ds[0]
    assert _names(ds, item) == ["red", "wall", "street", "person"]
    masks = dict(zip(_names(ds, item), item["masks"].as_subclass(torch.Tensor)))
    assert bool(masks["red"].all()) and bool(masks["street"].all())  # colour plane, per-image scene
    # 80 x 120 image, centre-cropped to 80 x 80: columns 20..100; object map upsampled x2 (nearest)
    up = np.kron(truth["object"], np.ones((2, 2), np.int64))[:, 20:100]
    assert torch.equal(masks["wall"], torch.from_numpy((up == 2).astype(np.uint8)))
    assert torch.equal(masks["person"], torch.from_numpy((up == 300).astype(np.uint8)))
    assert ds.concept_frequencies() == {"red": 2, "wall": 2, "person": 2, "street": 1}
    val = load_dataset(f"broden:{root}", split="val", categories="object", load_images=False)
    assert len(val) == 1 and _names(val, val[0]) == ["wall", "person"]
    with pytest.raises(ValueError, match="no category texturez"):
        load_dataset(f"broden:{root}", categories="texturez")


def test_broden_bad_input(tmp_path: Path, caplog):
    root = tmp_path / "broden"
    _write_broden(root)
    (root / "images" / "ade20k" / "img1_object.png").unlink()
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"broden:{root}", load_images=False)
    assert len(ds) == 1 and "1 files named in" in caplog.text and "img1_object.png" in caplog.text
    (root / "images" / "ade20k" / "img0.jpg").unlink()
    with pytest.raises(ValueError, match="no usable row.*img0.jpg"):
        load_dataset(f"broden:{root}")
    root = tmp_path / "broden2"
    _write_broden(root)
    lab = np.full((40, 60, 3), 0, np.uint8)
    lab[..., 0] = 77  # label 77 is not in label.csv
    Image.fromarray(lab).save(root / "images" / "ade20k" / "img0_color.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "images" / "ade20k" / "img1_color.png")
    ds = load_dataset(f"broden:{root}", load_images=False)
    assert "img0_color.png" in ds[0]["error"] and "label number 77" in ds[0]["error"]
    assert "img1_color.png" in ds[1]["error"] and "10x10" in ds[1]["error"]
