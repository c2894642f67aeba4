"""The reference-dataset contract and helpers shared by every on-disk format.

Knows no format in particular: format modules (``coco``, ``ade20k``, ...) subclass
:class:`ReferenceDataset` (or :class:`LabelMapDataset` for one label PNG per image) and
register themselves with :func:`register_dataset_format`. Images are decoded in exactly
one place, :func:`decode_image`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from lavise._registry import Registry
from lavise.identity import content_hashes
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


# -- file helpers -----------------------------------------------------------------------
def decode_image(path: str | Path) -> tv_tensors.Image:
    """Decodes an image file to a uint8 RGB ``tv_tensors.Image`` ``(3, H, W)``.

    Reference items decode here, feature extraction through :mod:`lavise.decode`
    (reduced-size JPEGs); both use :func:`lavise.decode.decode_image`. Label PNGs are
    read by :func:`read_label_png`, never through here.
    """
    from lavise.decode import decode_image as decode_rgb

    rgb, _ = decode_rgb(path)  # full size: masks are built at the annotated size
    return tv_tensors.Image(TF.pil_to_tensor(rgb))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (no decoding)."""
    with Image.open(path) as pil:
        return pil.height, pil.width


def read_label_png(path: str | Path, rgb: bool = False) -> np.ndarray:
    """A label image as an array, without any colour conversion of index PNGs.

    Args:
        path: PNG of class indices (grey or palette: the palette index is the class),
            or of colour codes.
        rgb: Return ``(H, W, 3)`` uint8 colours instead of ``(H, W)`` indices.

    Raises:
        ValueError: The file is not a single-channel index image (and ``rgb`` is False).
    """
    with Image.open(path) as pil:
        if rgb:
            return np.asarray(pil.convert("RGB"))
        if pil.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(
                f"label PNG {path} has mode {pil.mode}, expected one class index per pixel "
                "(grey or palette)"
            )
        return np.asarray(pil)


def read_json(path: Path) -> Any:
    """A JSON file; a parse error becomes a one-line ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


INVALID = -2  # in a label table: a raw value the class list does not define


def map_labels(raw: np.ndarray, table: np.ndarray, path: str | Path, what: str = "class index") -> np.ndarray:
    """Raw label values to concept indices through ``table`` (``-1`` none, ``INVALID`` bad).

    Raises:
        ValueError: A value beyond the table or marked ``INVALID``, naming the file.
    """
    raw = np.asarray(raw).astype(np.int64, copy=False)
    beyond = (raw >= len(table)) | (raw < 0)
    if beyond.any():
        bad = int(raw[beyond].max())
    else:
        out = table[raw]
        invalid = out == INVALID
        if not invalid.any():
            return out
        bad = int(raw[invalid].max())
    raise ValueError(f"label PNG {path} has {what} {bad}, which the class list does not define")


def first_phrase(name: str) -> str:
    """The first word or phrase of a synonym list: ``"building, edifice"`` -> ``"building"``."""
    return name.split(",")[0].split(";")[0].strip()


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
        image_ids: One id per image, for display (COCO/VG: the numeric id as a str;
            folders: the relative path). Not an identity: see :attr:`image_hashes`.
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
        """Concept indices annotated for image ``i`` (no image decoding), unique."""
        raise NotImplementedError

    def _annotated_size(self, i: int) -> tuple[int, int] | None:
        """``(height, width)`` from the annotations, or None if they do not say."""
        return None

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        """``(K, height, width)`` uint8 0/1 masks and their K concept indices."""
        raise NotImplementedError

    def _open_folder(
        self, path: str | Path, split: str | None, preprocessing: Preprocessing | None, load_images: bool,
    ) -> Path:
        """Shared set-up of the folder formats: returns ``path/split`` (or ``path``)."""
        path = Path(path).expanduser()
        root = self._existing_folder(path / split if split else path)
        ReferenceDataset.__init__(self, path, split, preprocessing, load_images)
        return root

    def _existing_folder(self, path: str | Path) -> Path:
        """``path`` (user-expanded); FileNotFoundError naming the format if it is no folder."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{self.name} folder does not exist: {path}")
        return path

    # -- public API -----------------------------------------------------------------------
    @property
    def image_hashes(self) -> list[str]:
        """The identity of each image: the SHA-256 of its file's bytes (see :mod:`lavise.identity`).

        Computed on first use (cached on disk by path, size and mtime) and kept.
        """
        hashes = self.__dict__.get("_image_hashes")
        if hashes is None or len(hashes) != len(self.image_paths):
            hashes = content_hashes(self.image_paths)
            self.__dict__["_image_hashes"] = hashes
        return hashes

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
                image = decode_image(path)
                actual = (int(image.shape[-2]), int(image.shape[-1]))
                if size is not None and actual != size:
                    raise ValueError(
                        f"image is {actual[1]}x{actual[0]} but annotations say {size[1]}x{size[0]}"
                    )
                size = actual
            elif size is None:
                size = image_size(path)
            masks, cids = self._build_masks(i, *size)
        except Exception as exc:  # noqa: BLE001 -- contract: a bad file never raises
            item["error"] = f"{path}: {one_line(exc)}"
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
        """Number of images annotated with each concept (from annotations, no image decoding)."""
        counts: Counter[str] = Counter()
        for i in range(len(self)):
            counts.update(self.concepts[c] for c in self._annotated_concepts(i))
        return counts

    def describe(self, word_space: Any = None) -> str:
        """A one-paragraph summary: images, masks, categories, word-vector coverage.

        Args:
            word_space: A :class:`lavise.wordspace.WordSpace` (anything with
                ``concept_vector(name)``): also say how many category names have a vector.
        """
        freq = self.concept_frequencies()
        top = ", ".join(f"{name} ({n})" for name, n in freq.most_common(5))
        split = f" split {self.split}" if self.split else ""
        p = self.preprocessing
        vectors = ""
        if word_space is not None:
            have = sum(word_space.concept_vector(c) is not None for c in self.concepts)
            vectors = f"; {have} of {len(self.concepts)} category names have a word vector in {word_space.name}"
        return (
            f"{self.name}:{self.root}{split}: {len(self)} images, {sum(freq.values())} masks "
            f"(image-category pairs), {len(self.concepts)} categories ({len(freq)} occurring)"
            f"{vectors}; most frequent: {top or 'none'}; resize {p.resize}, crop {p.crop}"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"images={len(self)}, concepts={len(self.concepts)})"
        )


class LabelMapDataset(ReferenceDataset):
    """Shared part of the formats with one label image per photo (ADE20K, VOC, folders).

    Subclasses fill ``concepts``, ``image_ids``, ``image_paths`` and ``label_paths`` and
    implement :meth:`_labels`, mapping a label file to concept indices per pixel
    (``-1`` = no concept: unlabelled, background, void). What is present in each image
    is read from its label file on first use and kept.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.label_paths: list[Path] = []
        self._present: dict[int, list[int]] = {}

    def _labels(self, i: int) -> np.ndarray:
        """``(H, W)`` int64 concept index per pixel, -1 where there is none."""
        raise NotImplementedError

    def _checked_labels(self, i: int, height: int | None = None, width: int | None = None) -> np.ndarray:
        labels = self._labels(i)
        if height is not None and labels.shape != (height, width):
            raise ValueError(
                f"label PNG {self.label_paths[i]} is {labels.shape[1]}x{labels.shape[0]}, "
                f"image is {width}x{height}"
            )
        bad = labels >= len(self.concepts)
        if bad.any():
            raise ValueError(
                f"label PNG {self.label_paths[i]} has class index {int(labels[bad].max())} "
                f"beyond the {len(self.concepts)} classes of the class list"
            )
        return labels

    def _annotated_concepts(self, i: int) -> list[int]:
        if i not in self._present:
            try:
                labels = self._checked_labels(i)
            except Exception as exc:  # noqa: BLE001 -- counted like an unreadable image
                logger.warning("skipping labels of %s: %s", self.image_ids[i], one_line(exc))
                labels = np.full((1, 1), -1)
            self._present[i] = [int(c) for c in np.unique(labels) if c >= 0]
        return self._present[i]

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        labels = self._checked_labels(i, height, width)
        cids = [int(c) for c in np.unique(labels) if c >= 0]
        self._present[i] = cids
        if not cids:
            return np.zeros((0, height, width), np.uint8), []
        masks = labels[None] == np.asarray(cids, dtype=labels.dtype)[:, None, None]
        return masks.astype(np.uint8), cids


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
    from lavise.decode import split_batch

    ok, failed, images = split_batch(batch)
    return {
        "index": torch.tensor([b["index"] for b in ok], dtype=torch.long),
        "image_id": [b["image_id"] for b in ok],
        "images": images,
        "image": images,
        "masks": [b["masks"] for b in ok],
        "concept_ids": [b["concept_ids"] for b in ok],
        "failed": failed,
    }
