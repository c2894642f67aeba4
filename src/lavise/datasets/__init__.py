"""Reference and target datasets in their real on-disk formats.

Every dataset yields, per image, the image after the model's geometric preprocessing and
one binary mask per concept present in it, transformed by the *same* call so that masks
and pixels line up::

    ds = load_dataset("coco-panoptic:/data/coco", split="val2017")
    item = ds[0]   # {"index", "image_id", "image", "masks", "concept_ids", "error"}
    names = [ds.concepts[c] for c in item["concept_ids"]]

Formats (``list_dataset_formats()``), one module each: ``coco-instances`` and
``coco-panoptic`` (:mod:`.coco`), ``visual-genome``, ``imagefolder`` (one concept per
sub-folder, mask = whole image) and ``folder`` (unlabelled images) (:mod:`.folders`),
``ade20k``, ``voc``, ``semantic-folder`` (:mod:`.semantic`) and ``broden``. Masks are
built at the annotated image size; concepts whose mask is empty after the centre crop
are dropped from the item. An image's identity is the hash of its bytes
(``dataset.image_hashes``); ``image_ids`` are for display.
"""

from __future__ import annotations

import inspect
from typing import Any

from lavise.datasets.ade20k import Ade20kDataset
from lavise.datasets.base import (
    IMAGE_EXTENSIONS,
    _FORMATS,
    LabelMapDataset,
    ReferenceDataset,
    collate,
    decode_image,
    masks_only,
    register_dataset_format,
)
from lavise.datasets.broden import BrodenDataset
from lavise.datasets.coco import CocoInstancesDataset, CocoPanopticDataset, panoptic_rgb_to_id
from lavise.datasets.combined import CombinedDataset, combine
from lavise.datasets.folders import FolderDataset, ImageFolderDataset
from lavise.datasets.semantic import SemanticFolderDataset
from lavise.datasets.visual_genome import VisualGenomeDataset
from lavise.datasets.voc import VocDataset
from lavise.preprocessing import Preprocessing

__all__ = [
    "IMAGE_EXTENSIONS", "ReferenceDataset", "LabelMapDataset", "CombinedDataset",
    "CocoInstancesDataset", "CocoPanopticDataset", "VisualGenomeDataset", "ImageFolderDataset",
    "FolderDataset", "Ade20kDataset", "VocDataset", "SemanticFolderDataset", "BrodenDataset",
    "register_dataset_format", "list_dataset_formats", "load_dataset", "combine", "masks_only",
    "collate", "decode_image", "panoptic_rgb_to_id",
]


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
