"""Reference and target datasets in their real on-disk formats.

Every dataset yields, per image, the image after the model's geometric preprocessing and
one binary mask per concept present in it, transformed by the *same* call so that masks
and pixels line up::

    ds = load_dataset("coco-panoptic:/data/coco", split="val2017")
    item = ds[0]   # {"index", "image_id", "image", "masks", "concept_ids", "error"}
    names = [ds.concepts[c] for c in item["concept_ids"]]

Formats (``list_dataset_formats()``): ``coco-instances``, ``coco-panoptic``,
``visual-genome``, ``imagefolder`` (one concept per sub-folder, mask = whole image) and
``folder`` (unlabelled images). Masks are built at the annotated image size; concepts
whose mask is empty after the centre crop are dropped from the item.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from lavise._registry import Registry
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_FORMATS: Registry[type["ReferenceDataset"]] = Registry("dataset format")


def register_dataset_format(
    name: str,
) -> Callable[[type[ReferenceDataset]], type[ReferenceDataset]]:
    """Class decorator registering a ``ReferenceDataset`` subclass as format ``name``.

    The class is constructed as ``cls(path, split=..., preprocessing=..., **options)``.
    """

    def wrap(cls: type[ReferenceDataset]) -> type[ReferenceDataset]:
        cls.name = name
        return _FORMATS.register(name)(cls)

    return wrap


def list_dataset_formats() -> list[str]:
    """Names of the registered dataset formats, usable as ``FORMAT`` in ``load_dataset``."""
    return _FORMATS.names()


def load_dataset(
    spec: str,
    split: str | None = None,
    preprocessing: Preprocessing | None = None,
    **kw: Any,
) -> ReferenceDataset:
    """Opens a dataset from a ``"FORMAT:PATH"`` spec, e.g. ``"coco-panoptic:/data/coco"``.

    Args:
        spec: Format name and path separated by the first colon.
        split: Split name (``"val2017"``); required for COCO roots holding several splits.
        preprocessing: Geometric preprocessing of the target model (default ``Preprocessing()``).
        **kw: Format options, e.g. ``load_images=False``, ``images=PATH`` (COCO),
            ``min_images=100`` (Visual Genome), ``include_unannotated=True`` (COCO).

    Raises:
        ValueError: Malformed spec, unknown format or option, unreadable annotations.
        FileNotFoundError: The path or a required file does not exist.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"dataset spec must be FORMAT:PATH (formats: {', '.join(list_dataset_formats())}), "
            f"got {spec!r}"
        )
    fmt, path = spec.split(":", 1)
    fmt = fmt.strip().lower()
    cls = _FORMATS.get(fmt)
    if not path.strip():
        raise ValueError(f"dataset spec {spec!r} has an empty PATH")
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "path", "split", "preprocessing")]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for dataset format {fmt!r} "
            f"(valid: {', '.join(valid)})"
        )
    return cls(path, split=split, preprocessing=preprocessing, **kw)


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _find_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


class ReferenceDataset(Dataset):
    """Base class: images with per-concept binary masks.

    Subclasses fill the attributes below and implement ``_annotated_concepts`` and
    ``_build_masks`` (and ``_annotated_size`` where the annotation knows it).

    Attributes:
        name: Format name (``"coco-panoptic"``, ...).
        root: Dataset path as given.
        split: Split name or None.
        concepts: All category names defined by the annotations, in order; ``concept_ids``
            index this list.
        image_ids: One id per image (COCO/VG: the numeric id as a str; folders: the
            relative path).
        image_paths: One image file per image.
        preprocessing: Geometric preprocessing applied to images and masks.
        load_images: When False, items carry ``image=None`` and only masks are built
            (no image decoding).
    """

    name: str = "reference"

    def __init__(
        self,
        root: Path,
        split: str | None,
        preprocessing: Preprocessing | None,
        load_images: bool,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing()
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError(
                f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}"
            )
        self.load_images = bool(load_images)
        self.concepts: list[str] = []
        self.image_ids: list[str] = []
        self.image_paths: list[Path] = []
        self._transform = self.preprocessing.geometric()

    # -- hooks for subclasses -------------------------------------------------------------
    def _annotated_concepts(self, i: int) -> list[int]:
        """Concept indices annotated for image ``i`` (no decoding), unique."""
        raise NotImplementedError

    def _annotated_size(self, i: int) -> tuple[int, int] | None:
        """``(height, width)`` from the annotations, or None if they do not say."""
        return None

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        """``(K, height, width)`` uint8 0/1 masks and their K concept indices."""
        raise NotImplementedError

    def _open_coco(
        self, path: str | Path, split: str | None, preprocessing: Preprocessing | None,
        load_images: bool, images: str | Path | None, kind: str,
    ) -> tuple[Any, Path, str | None]:
        """Shared set-up of the COCO formats: annotation file, its kind, image folder."""
        path = Path(path).expanduser()
        ann_file, split = _resolve_coco_annotations(path, split, kind, self.name)
        ReferenceDataset.__init__(self, path, split, preprocessing, load_images)
        data = _read_json(ann_file)
        _check_coco_kind(data, ann_file, kind)
        self.images_dir = _resolve_images_dir(ann_file.parent.parent, split, images, self.name)
        self.annotation_file = ann_file
        self.concepts = [c["name"] for c in data["categories"]]
        self._cat_index = {c["id"]: k for k, c in enumerate(data["categories"])}
        return data, ann_file, split

    def _open_folder(
        self, path: str | Path, split: str | None, preprocessing: Preprocessing | None, load_images: bool,
    ) -> Path:
        """Shared set-up of the folder formats: returns ``path/split`` (or ``path``)."""
        path = Path(path).expanduser()
        root = path / split if split else path
        if not root.is_dir():
            raise FileNotFoundError(f"{self.name} folder does not exist: {root}")
        ReferenceDataset.__init__(self, path, split, preprocessing, load_images)
        return root

    # -- public API -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._get(i, self.load_images)

    def _get(self, i: int, load_images: bool) -> dict[str, Any]:
        """Item ``i``, decoding the image only if ``load_images``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for dataset of {len(self)} images")
        i = int(i) % len(self)
        crop = self.preprocessing.crop
        item: dict[str, Any] = {
            "index": i,
            "image_id": self.image_ids[i],
            "image": None,
            "masks": tv_tensors.Mask(torch.zeros((0, crop, crop), dtype=torch.uint8)),
            "concept_ids": torch.zeros(0, dtype=torch.long),
            "error": None,
        }
        path = self.image_paths[i]
        image: tv_tensors.Image | None = None
        size = self._annotated_size(i)
        try:
            if load_images:
                with Image.open(path) as pil:
                    rgb = pil.convert("RGB")
                image = tv_tensors.Image(TF.pil_to_tensor(rgb))
                actual = (int(image.shape[-2]), int(image.shape[-1]))
                if size is not None and actual != size:
                    raise ValueError(
                        f"image is {actual[1]}x{actual[0]} but annotations say {size[1]}x{size[0]}"
                    )
                size = actual
            elif size is None:
                with Image.open(path) as pil:
                    size = (pil.height, pil.width)
            masks, cids = self._build_masks(i, *size)
        except Exception as exc:  # noqa: BLE001 -- contract: a bad file never raises
            item["error"] = f"{path}: {_one_line(exc)}"
            logger.warning("skipping image %s: %s", self.image_ids[i], item["error"])
            return item

        mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)))
        if image is not None:
            image, mask = self._transform(image, mask)  # one call: identical geometry
            item["image"] = image
        else:
            mask = self._transform(mask)
        ids = torch.as_tensor(cids, dtype=torch.long).reshape(-1)
        if mask.shape[0]:
            keep = mask.as_subclass(torch.Tensor).flatten(1).amax(dim=1) > 0
            if not bool(keep.all()):
                mask = tv_tensors.Mask(mask[keep])
                ids = ids[keep]
        item["masks"] = mask
        item["concept_ids"] = ids
        return item

    def concept_frequencies(self) -> Counter[str]:
        """Number of images annotated with each concept (from annotations, no decoding)."""
        counts: Counter[str] = Counter()
        for i in range(len(self)):
            counts.update(self.concepts[c] for c in self._annotated_concepts(i))
        return counts

    def describe(self) -> str:
        """A one-paragraph human-readable summary of the dataset."""
        freq = self.concept_frequencies()
        top = ", ".join(f"{name} ({n})" for name, n in freq.most_common(5))
        split = f" split {self.split}" if self.split else ""
        p = self.preprocessing
        return (
            f"{self.name}:{self.root}{split}: {len(self)} images, {len(self.concepts)} concepts "
            f"({len(freq)} occurring); most frequent: {top or 'none'}; "
            f"resize {p.resize}, crop {p.crop}"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"images={len(self)}, concepts={len(self.concepts)})"
        )


# -- COCO helpers ------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


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


def _resolve_images_dir(root: Path, split: str, images: str | Path | None, kind: str) -> Path:
    if images is not None:
        folder = Path(images).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{kind}: image folder does not exist: {folder}")
    else:
        tried = [root / split, root / "images" / split]
        folder = next((p for p in tried if p.is_dir()), None)
        if folder is None:
            raise FileNotFoundError(
                f"{kind}: no image folder for split {split!r} (looked in "
                f"{', '.join(map(str, tried))}; pass images=PATH)"
            )
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
        raise ValueError(f"{kind}: no images found in {folder}")
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


@register_dataset_format("coco-instances")
class CocoInstancesDataset(ReferenceDataset):
    """COCO object instances (``instances_{split}.json``), masks via pycocotools.

    Polygons, RLE and uncompressed RLE (``iscrowd``) are decoded by ``COCO.annToMask``;
    instances of one category in an image are merged.

    Args:
        path: COCO root (``annotations/instances_{split}.json``, images in ``{split}/`` or
            ``images/{split}/``) or the instances JSON itself.
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

        data, ann_file, split = self._open_coco(path, split, preprocessing, load_images, images, "instances")
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        self._coco = coco
        cats = data["categories"]
        ids = sorted(coco.imgs)
        if not include_unannotated:
            ids = [i for i in ids if coco.imgToAnns.get(i)]
        self._ids = ids
        self.image_ids = [str(i) for i in ids]
        self.image_paths = [self.images_dir / coco.imgs[i]["file_name"] for i in ids]
        if not ids:
            raise ValueError(f"{self.name}: no annotated images in {ann_file}")
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
class CocoPanopticDataset(ReferenceDataset):
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
        data, ann_file, split = self._open_coco(path, split, preprocessing, load_images, images, "panoptic")
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
        self._anns = anns
        self._info = [img_info[a["image_id"]] for a in anns]
        self.image_ids = [str(a["image_id"]) for a in anns]
        self.image_paths = [self.images_dir / info["file_name"] for info in self._info]
        if not anns:
            raise ValueError(f"{self.name}: no annotated images in {ann_file}")
        logger.info("%s: %d images, %d concepts from %s", self.name, len(anns), len(cats), ann_file)

    def _annotated_concepts(self, i: int) -> list[int]:
        return sorted({self._cat_index[s["category_id"]] for s in self._anns[i]["segments_info"]})

    def _annotated_size(self, i: int) -> tuple[int, int]:
        return int(self._info[i]["height"]), int(self._info[i]["width"])

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        ann = self._anns[i]
        png = self.png_dir / ann["file_name"]
        with Image.open(png) as pil:
            ids = panoptic_rgb_to_id(np.asarray(pil.convert("RGB")))
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


@register_dataset_format("visual-genome")
class VisualGenomeDataset(ReferenceDataset):
    """Visual Genome objects: each object's box ``(x, y, w, h)`` filled with 1.

    Args:
        path: Folder with ``objects.json`` and ``image_data.json``; images in
            ``VG_100K/`` and ``VG_100K_2/`` (or ``images/``).
        split: Visual Genome has no official split; recorded only.
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: masks only).
        min_images: Keep object names occurring in at least this many images (the
            paper uses 100 on the full dataset).
        images: Image folder, overriding the search.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
        min_images: int = 1,
        images: str | Path | None = None,
    ) -> None:
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{self.name} folder does not exist: {path}")
        if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
            raise ValueError(f"min_images must be a positive integer, got {min_images!r}")
        super().__init__(path, split, preprocessing, load_images)
        if split is not None:
            logger.warning("visual-genome has no official splits; split=%r is ignored", split)
        for name in ("objects.json", "image_data.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{self.name}: {path / name} not found")
        objects = _read_json(path / "objects.json")
        image_data = _read_json(path / "image_data.json")
        if not isinstance(objects, list) or not isinstance(image_data, list):
            raise ValueError(f"{self.name}: objects.json and image_data.json must be JSON lists")
        info = {}
        for im in image_data:
            iid = im.get("image_id", im.get("id"))
            if iid is None:
                raise ValueError(f"{self.name}: image_data.json entry without 'image_id'")
            info[int(iid)] = im

        per_image: dict[int, list[tuple[str, tuple[float, float, float, float]]]] = {}
        for entry in objects:
            iid = int(entry.get("image_id", entry.get("id", -1)))
            if iid not in info:
                continue
            boxes = per_image.setdefault(iid, [])
            for obj in entry.get("objects", []):
                names = obj.get("names") or ([obj["name"]] if obj.get("name") else [])
                label = str(names[0]).strip().lower() if names else ""
                if not label:
                    continue
                boxes.append((label, (obj["x"], obj["y"], obj["w"], obj["h"])))
        counts: Counter[str] = Counter()
        for boxes in per_image.values():
            counts.update({label for label, _ in boxes})
        self.min_images = min_images
        self.concepts = sorted(n for n, k in counts.items() if k >= min_images)
        index = {n: k for k, n in enumerate(self.concepts)}

        dirs = [Path(images).expanduser()] if images is not None else [
            path / "VG_100K", path / "VG_100K_2", path / "images"
        ]
        dirs = [d for d in dirs if d.is_dir()]
        if not dirs:
            raise FileNotFoundError(
                f"{self.name}: no image folder under {path} "
                "(VG_100K/, VG_100K_2/ or images/; pass images=PATH)"
            )
        self._boxes: list[list[tuple[int, tuple[float, float, float, float]]]] = []
        self._sizes: list[tuple[int, int]] = []
        for iid in sorted(per_image):
            boxes = [(index[n], b) for n, b in per_image[iid] if n in index]
            if not boxes:
                continue
            im = info[iid]
            fname = Path(str(im.get("url") or f"{iid}.jpg")).name
            sub = Path(str(im.get("url", ""))).parent.name
            candidates = [d for d in dirs if d.name == sub] + dirs
            file = next((d / fname for d in candidates if (d / fname).is_file()), dirs[0] / fname)
            self.image_ids.append(str(iid))
            self.image_paths.append(file)
            self._boxes.append(boxes)
            self._sizes.append((int(im["height"]), int(im["width"])))
        if not self.image_ids:
            raise ValueError(
                f"{self.name}: no images with objects named in >= {min_images} images under {path}"
            )
        logger.info("%s: %d images, %d concepts", self.name, len(self), len(self.concepts))

    def _annotated_concepts(self, i: int) -> list[int]:
        return sorted({c for c, _ in self._boxes[i]})

    def _annotated_size(self, i: int) -> tuple[int, int]:
        return self._sizes[i]

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        cids = self._annotated_concepts(i)
        row = {c: k for k, c in enumerate(cids)}
        masks = np.zeros((len(cids), height, width), np.uint8)
        for c, (x, y, w, h) in self._boxes[i]:
            x0, y0 = max(int(round(x)), 0), max(int(round(y)), 0)
            x1, y1 = min(int(round(x + w)), width), min(int(round(y + h)), height)
            if x1 > x0 and y1 > y0:
                masks[row[c], y0:y1, x0:x1] = 1  # rows are y, columns are x
        return masks, cids


@register_dataset_format("imagefolder")
class ImageFolderDataset(ReferenceDataset):
    """Classification folders: one concept per sub-folder, mask = the whole image.

    Args:
        path: Folder whose sub-folders are class names, holding images (recursively).
        split: Optional sub-folder of ``path`` holding the class folders (``train``).
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: masks only; the image header is still read).
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
    ) -> None:
        root = self._open_folder(path, split, preprocessing, load_images)
        classes = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not classes:
            raise ValueError(f"{self.name}: no class sub-folders in {root}")
        self.concepts = classes
        self._labels: list[int] = []
        for k, cls in enumerate(classes):
            for f in _find_images(root / cls):
                self.image_ids.append(f.relative_to(root).as_posix())
                self.image_paths.append(f)
                self._labels.append(k)
        if not self.image_ids:
            raise ValueError(f"{self.name}: no images found under {root}")

    def _annotated_concepts(self, i: int) -> list[int]:
        return [self._labels[i]]

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        return np.ones((1, height, width), np.uint8), [self._labels[i]]


@register_dataset_format("folder")
class FolderDataset(ReferenceDataset):
    """Unlabelled images found recursively in a folder (a target dataset); no concepts.

    Args:
        path: Folder of images (jpg, jpeg, png, bmp, webp; searched recursively, sorted).
        split: Optional sub-folder of ``path``.
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: items carry no image).
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
    ) -> None:
        root = self._open_folder(path, split, preprocessing, load_images)
        files = _find_images(root)
        if not files:
            raise ValueError(
                f"{self.name}: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}"
            )
        self.image_paths = files
        self.image_ids = [f.relative_to(root).as_posix() for f in files]

    def _annotated_concepts(self, i: int) -> list[int]:
        return []

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        return np.zeros((0, height, width), np.uint8), []


class CombinedDataset(ReferenceDataset):
    """Several datasets as one: concepts unioned by name, images deduplicated by id.

    The first occurrence of an image id wins. Items carry ``concept_ids`` into the
    combined ``concepts`` list and ``index`` into the combined dataset. Works like a
    ``torch.utils.data.ConcatDataset`` (members in ``.datasets``) with duplicates removed.

    Args:
        datasets: Datasets sharing the same preprocessing.
        exclude_ids: Image ids to leave out (e.g. an evaluation split's images).

    Raises:
        ValueError: If ``datasets`` is empty or their preprocessing differs.
    """

    name = "combined"

    def __init__(self, datasets: Iterable[ReferenceDataset], exclude_ids: Iterable[str] = ()) -> None:
        datasets = list(datasets)
        if not datasets:
            raise ValueError("combine() needs at least one dataset")
        for ds in datasets:
            if not isinstance(ds, ReferenceDataset):
                raise ValueError(f"combine() takes lavise datasets, got {type(ds).__name__}")
        prep = datasets[0].preprocessing
        for ds in datasets[1:]:
            if ds.preprocessing != prep:
                raise ValueError(
                    "cannot combine datasets with different preprocessing "
                    f"({prep} vs {ds.preprocessing})"
                )
        # ReferenceDataset.__init__ is not called: attributes are derived from the members.
        self.datasets = datasets
        self.root = Path(".")
        self.split = None
        self.preprocessing = prep
        self._transform = prep.geometric()
        # Own flag (members are never mutated): False yields masks only from every member.
        self.load_images = all(ds.load_images for ds in datasets)
        self.concepts = []
        position: dict[str, int] = {}
        self._remap: list[torch.Tensor] = []
        for ds in datasets:
            table = []
            for name in ds.concepts:
                if name not in position:
                    position[name] = len(self.concepts)
                    self.concepts.append(name)
                table.append(position[name])
            self._remap.append(torch.tensor(table, dtype=torch.long))
        seen: set[str] = {str(i) for i in exclude_ids}
        self._items: list[tuple[int, int]] = []
        self.image_ids = []
        self.image_paths = []
        for d, ds in enumerate(datasets):
            for j, iid in enumerate(ds.image_ids):
                if iid in seen:
                    continue
                seen.add(iid)
                self._items.append((d, j))
                self.image_ids.append(iid)
                self.image_paths.append(ds.image_paths[j])
        dropped = sum(len(ds) for ds in datasets) - len(self._items)
        if dropped:
            logger.info("combined datasets: dropped %d duplicate or excluded image ids", dropped)

    def __len__(self) -> int:
        return len(self._items)

    def _get(self, i: int, load_images: bool) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for dataset of {len(self)} images")
        i = int(i) % len(self)
        d, j = self._items[i]
        item = self.datasets[d]._get(j, load_images)
        item["index"] = i
        item["concept_ids"] = self._remap[d][item["concept_ids"]]
        return item

    def _annotated_concepts(self, i: int) -> list[int]:
        d, j = self._items[i]
        table = self._remap[d]
        return sorted(int(table[c]) for c in self.datasets[d]._annotated_concepts(j))

    def describe(self) -> str:
        """Summary of the combination and of each member."""
        head = ReferenceDataset.describe(self).replace(f"{self.name}:{self.root}", "combined", 1)
        return head + "".join(f"\n  - {ds.describe()}" for ds in self.datasets)

    def __repr__(self) -> str:
        return (
            f"CombinedDataset({len(self.datasets)} datasets, images={len(self)}, "
            f"concepts={len(self.concepts)})"
        )


def combine(datasets: Sequence[ReferenceDataset]) -> CombinedDataset:
    """Combines datasets: union of concepts by name, images deduplicated by id (first wins)."""
    return CombinedDataset(datasets)


def masks_only(dataset: ReferenceDataset) -> ReferenceDataset:
    """A shallow copy of ``dataset`` whose items carry masks but no decoded image.

    The original is not changed (a combined dataset keeps its own flag and never
    mutates its members).
    """
    clone = copy.copy(dataset)
    clone.load_images = False
    return clone


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collates dataset items for a DataLoader, dropping the ones that failed.

    Returns:
        ``index`` LongTensor (B,), ``image_id`` list[str], ``images`` uint8 (B, 3, H, W)
        or None (no images loaded, or no item left; ``image`` is the same tensor),
        ``masks`` and ``concept_ids`` lists, and ``failed``: list of
        ``{"index", "image_id", "error"}`` for dropped items.
    """
    ok = [b for b in batch if b.get("error") is None]
    failed = [
        {"index": b["index"], "image_id": b["image_id"], "error": b["error"]}
        for b in batch
        if b.get("error") is not None
    ]
    images = None
    if ok and all(b["image"] is not None for b in ok):
        images = torch.stack([b["image"].as_subclass(torch.Tensor) for b in ok])
    return {
        "index": torch.tensor([b["index"] for b in ok], dtype=torch.long),
        "image_id": [b["image_id"] for b in ok],
        "images": images,
        "image": images,
        "masks": [b["masks"] for b in ok],
        "concept_ids": [b["concept_ids"] for b in ok],
        "failed": failed,
    }
