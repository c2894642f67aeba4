"""Augmented views of a reference dataset: more (pooled feature, concept) pairs for the head.

The explainer head trains on pooled vectors, never on images, so its data is the number
of (image, concept mask) pairs. A deterministic *view* (a horizontal flip, a corner crop,
a zoom) of every reference image, applied to the image and its masks alike after the
model's preprocessing, gives new feature maps and new pairs. Each view is a dataset of
its own (image ids suffixed ``#view``), so its features are extracted once and kept in
the feature cache like any other dataset: training never recomputes the backbone.

Example:
    >>> flipped = AugmentedView(dataset, "hflip")
    >>> store = features_of(model, layer, flipped, config)   # cached after the first call
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lavise.datasets import ReferenceDataset

logger = logging.getLogger(__name__)

__all__ = ["AUGMENT_VIEWS", "AugmentedView", "view_transform"]

#: Views and what they do to the preprocessed (crop x crop) image and masks.
AUGMENT_VIEWS = {
    "hflip": "mirror left-right",
    "crop-tl": "top-left 75% of the image, resized back",
    "crop-br": "bottom-right 75% of the image, resized back",
    "zoom": "central 75% of the image, resized back",
}
_CROP_SHARE = 0.75


def view_transform(view: str, size: int) -> Any:
    """The deterministic v2 transform of ``view`` on a ``size x size`` preprocessed image."""
    if view not in AUGMENT_VIEWS:
        raise ValueError(f"unknown augmented view {view!r} (valid: {', '.join(AUGMENT_VIEWS)})")
    if view == "hflip":
        return v2.RandomHorizontalFlip(p=1.0)
    side = max(1, round(size * _CROP_SHARE))
    top = {"crop-tl": 0, "crop-br": size - side, "zoom": (size - side) // 2}[view]

    def crop(inpt: Any) -> Any:
        return TF.resized_crop(inpt, top, top, side, side, [size, size], antialias=True)

    return v2.Lambda(crop)


class AugmentedView(ReferenceDataset):
    """One augmented view of a dataset (same images and concepts, transformed alike).

    Items are the base dataset's items with ``view`` applied to the image and masks in
    one call (identical geometry); masks left empty by a crop are dropped. Image ids
    get the suffix ``#view`` so that the feature cache keeps views apart; row ``i`` is
    the base dataset's image ``i``.

    Args:
        base: The reference dataset (any format, or a combined one).
        view: One of :data:`AUGMENT_VIEWS`.
    """

    def __init__(self, base: ReferenceDataset, view: str) -> None:
        if not isinstance(base, ReferenceDataset):
            raise ValueError(f"augmented views need a lavise dataset, got {type(base).__name__}")
        self.base = base
        self.view = view
        self.name = f"{base.name}#{view}"
        self.root = base.root
        self.split = base.split
        self.preprocessing = base.preprocessing
        self._transform = base._transform
        self._view = view_transform(view, base.preprocessing.crop)
        self.load_images = base.load_images
        self.concepts = list(base.concepts)
        self.image_ids = [f"{i}#{view}" for i in base.image_ids]
        self.image_paths = list(base.image_paths)

    def __len__(self) -> int:
        return len(self.base)

    def _get(self, i: int, load_images: bool) -> dict[str, Any]:
        item = self.base._get(i, load_images)
        item["image_id"] = self.image_ids[int(item["index"])]
        if item.get("error") is not None:
            return item
        mask = item["masks"]
        if item["image"] is not None and mask.shape[0]:
            image, mask = self._view(item["image"], mask)  # one call: identical geometry
            item["image"] = image
        elif item["image"] is not None:
            item["image"] = self._view(item["image"])
        elif mask.shape[0]:
            mask = self._view(mask)
        if mask.shape[0]:
            mask = tv_tensors.Mask((mask.as_subclass(torch.Tensor) > 0).to(torch.uint8))
            keep = mask.as_subclass(torch.Tensor).flatten(1).amax(dim=1) > 0
            if not bool(keep.all()):
                mask = tv_tensors.Mask(mask[keep])
                item["concept_ids"] = item["concept_ids"][keep]
        item["masks"] = mask
        return item

    def _annotated_concepts(self, i: int) -> list[int]:
        return self.base._annotated_concepts(i)

    def __repr__(self) -> str:
        return f"AugmentedView({self.base!r}, view={self.view!r})"
