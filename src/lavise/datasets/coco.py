"""COCO instances and COCO panoptic, in the files cocodataset.org distributes.

``coco-instances`` decodes polygons and RLE with pycocotools; ``coco-panoptic`` reads
one PNG of segment ids per image (``R + 256 G + 256^2 B``). A ``file_name`` may hold
sub-folders (``leftImg8bit/val/city/x.png``, as Cityscapes-to-COCO converters write).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lavise.datasets.base import (
    IMAGE_EXTENSIONS,
    ReferenceDataset,
    read_json,
    read_label_png,
    register_dataset_format,
)
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)


def panoptic_rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: ``R + 256 * G + 256**2 * B``.

    Args:
        rgb: ``(H, W, 3)`` uint8 array.

    Returns:
        ``(H, W)`` uint32 array of segment ids (0 = unlabelled).
    """
    rgb = np.asarray(rgb, dtype=np.uint32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _resolve_coco_annotations(
    path: Path, split: str | None, prefix: str, kind: str
) -> tuple[Path, str]:
    """Finds ``annotations/{prefix}_{split}.json`` under a root, or accepts a JSON path."""
    if not path.exists():
        raise FileNotFoundError(f"{kind} path does not exist: {path}")
    if path.is_file():
        stem = path.stem
        found_split = stem.split("_", 1)[1] if "_" in stem else stem
        if split is not None and split != found_split:
            logger.warning("split %r given but annotation file is %s", split, path.name)
        return path, split or found_split
    ann_dir = path / "annotations"
    candidates = sorted(ann_dir.glob(f"{prefix}_*.json")) if ann_dir.is_dir() else []
    splits = [p.stem[len(prefix) + 1 :] for p in candidates]
    if split is not None:
        ann = ann_dir / f"{prefix}_{split}.json"
        if not ann.is_file():
            have = (
                f"available splits: {', '.join(splits)}" if splits else f"no {prefix}_*.json there"
            )
            raise FileNotFoundError(f"{kind}: {ann} not found ({have})")
        return ann, split
    if not candidates:
        raise FileNotFoundError(f"{kind}: no annotations/{prefix}_*.json under {path}")
    if len(candidates) > 1:
        raise ValueError(
            f"{kind}: {path} has several splits ({', '.join(splits)}); pass split=..."
        )
    return candidates[0], splits[0]


def _resolve_images_dir(
    root: Path, split: str, images: str | Path | None, kind: str, file_names: list[str], ann_file: Path,
) -> Path:
    """The folder the annotation's ``file_name``s are relative to.

    Tried in order (first holding one of the named files wins): ``images`` if given,
    else ``root/split``, ``root/images/split``, ``root``, ``root/images``.
    """
    if images is not None:
        folder = Path(images).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{kind}: image folder does not exist: {folder}")
        tried = [folder]
    else:
        tried = [root / split, root / "images" / split, root, root / "images"]
    folders = [p for p in tried if p.is_dir()]
    if not folders:
        raise FileNotFoundError(
            f"{kind}: no image folder for split {split!r} (looked in "
            f"{', '.join(map(str, tried[:2]))}; pass images=PATH)"
        )
    sample = file_names[:50]
    for folder in folders:
        if any((folder / f).is_file() for f in sample):
            break
    else:
        folder = folders[0]
        if sample:
            raise ValueError(
                f"{kind}: no images found in {folder}: none of the files {ann_file.name} names is there "
                f"(e.g. {folder / sample[0]}; looked in {', '.join(map(str, folders))}; pass images=PATH)"
            )
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*")):
            raise ValueError(f"{kind}: no images found in {folder}")
    missing = [f for f in file_names if not (folder / f).is_file()]
    if missing:
        logger.warning("%s: %d of %d images named in %s are missing under %s (e.g. %s); they are "
                       "skipped as unreadable", kind, len(missing), len(file_names), ann_file, folder, missing[0])
    return folder


def _check_coco_kind(data: Any, ann_file: Path, want: str) -> None:
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ValueError(
            f"{ann_file} is not a COCO annotation file (needs 'images' and 'annotations')"
        )
    if "categories" not in data:
        raise ValueError(f"{ann_file} has no 'categories' (captions or keypoints-only file?)")
    anns = data["annotations"]
    if not anns:
        return
    first = anns[0]
    if want == "panoptic" and "segments_info" not in first:
        hint = " (it looks like an instances file: use coco-instances)"
        hint = hint if "segmentation" in first else ""
        raise ValueError(f"{ann_file} is not a COCO panoptic file: no 'segments_info'{hint}")
    if want == "instances" and "segmentation" not in first:
        hint = " (it looks like a panoptic file: use coco-panoptic)"
        hint = hint if "segments_info" in first else ""
        raise ValueError(f"{ann_file} is not a COCO instances file: no 'segmentation'{hint}")


class _CocoDataset(ReferenceDataset):
    """Shared set-up of the COCO formats."""

    def _open_coco(
        self, path: str | Path, split: str | None, preprocessing: Preprocessing | None,
        load_images: bool, kind: str,
    ) -> tuple[Any, Path, str]:
        """Annotation file, its kind and categories; the image folder is set later."""
        path = Path(path).expanduser()
        ann_file, split = _resolve_coco_annotations(path, split, kind, self.name)
        ReferenceDataset.__init__(self, path, split, preprocessing, load_images)
        data = read_json(ann_file)
        _check_coco_kind(data, ann_file, kind)
        self.annotation_file = ann_file
        self.concepts = [c["name"] for c in data["categories"]]
        self._cat_index = {c["id"]: k for k, c in enumerate(data["categories"])}
        return data, ann_file, split

    def _set_images(self, file_names: list[str], images: str | Path | None) -> None:
        ann_file = self.annotation_file
        self.images_dir = _resolve_images_dir(ann_file.parent.parent, str(self.split), images, self.name,
                                              file_names, ann_file)
        self.image_paths = [self.images_dir / f for f in file_names]


@register_dataset_format("coco-instances")
class CocoInstancesDataset(_CocoDataset):
    """COCO object instances (``instances_{split}.json``), masks via pycocotools.

    Polygons, RLE and uncompressed RLE (``iscrowd``) are decoded by ``COCO.annToMask``;
    instances of one category in an image are merged.

    Args:
        path: COCO root (``annotations/instances_{split}.json``, images in ``{split}/`` or
            ``images/{split}/``, or in the root when ``file_name`` holds sub-folders) or
            the instances JSON itself.
        split: Split name; needed when the root has several instances files.
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: masks only).
        images: Image folder, overriding the search.
        include_unannotated: Also list images without any annotation.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
        images: str | Path | None = None,
        include_unannotated: bool = False,
    ) -> None:
        from pycocotools.coco import COCO

        data, ann_file, split = self._open_coco(path, split, preprocessing, load_images, "instances")
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        self._coco = coco
        cats = data["categories"]
        ids = sorted(coco.imgs)
        if not include_unannotated:
            ids = [i for i in ids if coco.imgToAnns.get(i)]
        if not ids:
            raise ValueError(f"{self.name}: no annotated images in {ann_file}")
        self._ids = ids
        self.image_ids = [str(i) for i in ids]
        self._set_images([coco.imgs[i]["file_name"] for i in ids], images)
        logger.info("%s: %d images, %d concepts from %s", self.name, len(ids), len(cats), ann_file)

    def _annotated_concepts(self, i: int) -> list[int]:
        anns = self._coco.imgToAnns.get(self._ids[i], [])
        return sorted({self._cat_index[a["category_id"]] for a in anns if a.get("segmentation")})

    def _annotated_size(self, i: int) -> tuple[int, int]:
        info = self._coco.imgs[self._ids[i]]
        return int(info["height"]), int(info["width"])

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        merged: dict[int, np.ndarray] = {}
        for ann in self._coco.imgToAnns.get(self._ids[i], []):
            if not ann.get("segmentation"):
                continue
            with warnings.catch_warnings():  # pycocotools vs numpy 2 copy= deprecation noise
                warnings.simplefilter("ignore", DeprecationWarning)
                m = self._coco.annToMask(ann)
            c = self._cat_index[ann["category_id"]]
            if c in merged:
                np.maximum(merged[c], m, out=merged[c])
            else:
                merged[c] = m.astype(np.uint8, copy=True)
        cids = sorted(merged)
        if not cids:
            return np.zeros((0, height, width), np.uint8), []
        return np.stack([merged[c] for c in cids]), cids


@register_dataset_format("coco-panoptic")
class CocoPanopticDataset(_CocoDataset):
    """COCO panoptic segmentation (things + stuff): JSON + one PNG of segment ids per image.

    Args:
        path: COCO root (``annotations/panoptic_{split}.json`` and PNGs in
            ``annotations/panoptic_{split}/``; images in ``images/{split}/`` or ``{split}/``)
            or the panoptic JSON itself.
        split: Split name; needed when the root has several panoptic files.
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: masks only).
        images: Image folder, overriding the search.
        png_dir: Folder of panoptic PNGs, overriding ``<json without .json>/``.
        include_unannotated: Also list images whose ``segments_info`` is empty.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
        images: str | Path | None = None,
        png_dir: str | Path | None = None,
        include_unannotated: bool = False,
    ) -> None:
        data, ann_file, split = self._open_coco(path, split, preprocessing, load_images, "panoptic")
        self.png_dir = (
            Path(png_dir).expanduser() if png_dir is not None else ann_file.with_suffix("")
        )
        if not self.png_dir.is_dir():
            raise FileNotFoundError(f"{self.name}: panoptic PNG folder not found: {self.png_dir}")
        cats = data["categories"]
        img_info = {im["id"]: im for im in data["images"]}
        anns = sorted(data["annotations"], key=lambda a: a["image_id"])
        if not include_unannotated:
            anns = [a for a in anns if a["segments_info"]]
        missing = [a["image_id"] for a in anns if a["image_id"] not in img_info]
        if missing:
            raise ValueError(
                f"{ann_file}: annotations for image ids not in 'images', e.g. {missing[0]}"
            )
        if not anns:
            raise ValueError(f"{self.name}: no annotated images in {ann_file}")
        self._anns = anns
        self._info = [img_info[a["image_id"]] for a in anns]
        self.image_ids = [str(a["image_id"]) for a in anns]
        self._set_images([info["file_name"] for info in self._info], images)
        logger.info("%s: %d images, %d concepts from %s", self.name, len(anns), len(cats), ann_file)

    def _annotated_concepts(self, i: int) -> list[int]:
        return sorted({self._cat_index[s["category_id"]] for s in self._anns[i]["segments_info"]})

    def _annotated_size(self, i: int) -> tuple[int, int]:
        return int(self._info[i]["height"]), int(self._info[i]["width"])

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        ann = self._anns[i]
        png = self.png_dir / ann["file_name"]
        ids = panoptic_rgb_to_id(read_label_png(png, rgb=True))
        if ids.shape != (height, width):
            raise ValueError(
                f"panoptic PNG {png.name} is {ids.shape[1]}x{ids.shape[0]}, "
                f"image is {width}x{height}"
            )
        merged: dict[int, np.ndarray] = {}
        for seg in ann["segments_info"]:
            c = self._cat_index[seg["category_id"]]
            m = ids == seg["id"]
            merged[c] = merged[c] | m if c in merged else m
        cids = sorted(merged)
        if not cids:
            return np.zeros((0, height, width), np.uint8), []
        return np.stack([merged[c] for c in cids]).astype(np.uint8), cids
