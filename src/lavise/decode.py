"""Image decoding for feature extraction: reduced-size JPEG decoding on the CPU, or raw
file bytes for decoding on the GPU.

Extraction needs only the preprocessed pixels of each image (no concept masks), so it
reads images through these small datasets rather than the reference dataset's items:

* :class:`DecodedImages` decodes on the CPU (in DataLoader workers or a background
  thread). A JPEG whose shorter side is at least twice the preprocessing's ``resize``
  is decoded straight to a reduced size by libjpeg's DCT scaling (PIL's
  :meth:`PIL.Image.Image.draft`), never below ``resize``, then resized and cropped as
  usual. Other images decode at full size.
* :class:`EncodedImages` only reads file bytes (and the size from the header);
  :func:`decode_on_device` decodes a batch of them with
  ``torchvision.io.decode_jpeg(device=...)`` and resizes and crops on that device.
  Files that are not JPEGs are decoded on the CPU by the worker instead.

Every item follows the reference datasets' contract: an unreadable file never raises,
it yields an item with ``error`` set, which :func:`collate_images` moves to ``failed``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

__all__ = [
    "decode_image",
    "split_batch",
    "DecodedImages",
    "EncodedImages",
    "collate_images",
    "decode_on_device",
]


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def decode_image(path: str | Path, min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decodes an image to RGB, at reduced size where that loses nothing the resize keeps.

    Args:
        path: Image file.
        min_side: Shorter side the image will be resized to. A JPEG is decoded at the
            smallest DCT scale (1/2, 1/4, 1/8) whose shorter side is still
            ``>= min_side``; None decodes at full size.

    Returns:
        ``(RGB image, (height, width) of the file at full size)``.
    """
    with Image.open(path) as pil:
        full = (pil.height, pil.width)
        if min_side is not None and pil.format == "JPEG" and min(full) >= 2 * min_side:
            scale = min(full) / min_side
            pil.draft("RGB", (math.ceil(full[1] / scale), math.ceil(full[0] / scale)))
        return pil.convert("RGB"), full


def _annotated_size(dataset: Any, i: int) -> tuple[int, int] | None:
    get = getattr(dataset, "_annotated_size", None)
    return get(i) if callable(get) else None


class _Images(Dataset):
    """Shared part: the dataset's image list and its size check."""

    def __init__(self, dataset: Any, preprocessing: Preprocessing | None = None) -> None:
        self.dataset = dataset
        self.paths = list(dataset.image_paths)
        self.ids = [str(i) for i in dataset.image_ids]
        self.preprocessing = preprocessing or dataset.preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def _item(self, i: int) -> dict[str, Any]:
        return {"index": int(i), "image_id": self.ids[i], "image": None, "data": None, "error": None}

    def _check_size(self, i: int, actual: tuple[int, int]) -> None:
        size = _annotated_size(self.dataset, i)
        if size is not None and tuple(size) != tuple(actual):
            raise ValueError(f"image is {actual[1]}x{actual[0]} but annotations say {size[1]}x{size[0]}")


class DecodedImages(_Images):
    """Preprocessed uint8 images ``(3, crop, crop)`` of a reference dataset, decoded on the CPU.

    Args:
        dataset: A reference dataset (``image_paths``, ``image_ids``, ``preprocessing``).
        preprocessing: Overrides the dataset's preprocessing.
        reduced: Decode JPEGs at reduced size where possible (see :func:`decode_image`).
    """

    def __init__(self, dataset: Any, preprocessing: Preprocessing | None = None, reduced: bool = True) -> None:
        super().__init__(dataset, preprocessing)
        self.reduced = reduced
        self._transform = self.preprocessing.geometric()

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._item(i)
        path = self.paths[i]
        try:
            pil, full = decode_image(path, self.preprocessing.resize if self.reduced else None)
            self._check_size(i, full)
            item["image"] = self._transform(TF.pil_to_tensor(pil))
        except Exception as exc:  # noqa: BLE001 -- contract: a bad file never raises
            item["error"] = f"{path}: {_one_line(exc)}"
        return item


class EncodedImages(_Images):
    """File bytes of a reference dataset's JPEGs, for :func:`decode_on_device`.

    Items carry ``data``: the file's bytes as a uint8 tensor, or (files that are not
    JPEGs) ``image``: the preprocessed image decoded here on the CPU.
    """

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._item(i)
        path = self.paths[i]
        try:
            with Image.open(path) as pil:
                full, fmt = (pil.height, pil.width), pil.format
            self._check_size(i, full)
            if fmt == "JPEG":
                item["data"] = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
            else:
                pil, _ = decode_image(path)
                item["image"] = self.preprocessing.geometric()(TF.pil_to_tensor(pil))
        except Exception as exc:  # noqa: BLE001 -- contract: a bad file never raises
            item["error"] = f"{path}: {_one_line(exc)}"
        return item


def split_batch(batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], torch.Tensor | None]:
    """The items of a batch that decoded, the failures (``{"index", "image_id", "error"}``)
    and the decoded images stacked (None unless every kept item has one); shared by the
    collate functions of extraction and of reference items."""
    ok = [b for b in batch if b.get("error") is None]
    failed = [{"index": b["index"], "image_id": b["image_id"], "error": b["error"]}
              for b in batch if b.get("error") is not None]
    images = None
    if ok and all(b["image"] is not None for b in ok):
        images = torch.stack([b["image"].as_subclass(torch.Tensor) for b in ok])
    return ok, failed, images


def collate_images(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collates :class:`DecodedImages`/:class:`EncodedImages` items, dropping failures.

    Returns:
        ``index`` LongTensor (B,), ``image_id`` list, ``images``: uint8 (B, 3, H, W)
        when every item is decoded, else None, ``items``: per item the decoded image
        or None, ``data``: per item the file bytes or None, and ``failed``: list of
        ``{"index", "image_id", "error"}``.
    """
    ok, failed, images = split_batch(batch)
    decoded = [b["image"] for b in ok]
    return {
        "index": torch.tensor([b["index"] for b in ok], dtype=torch.long),
        "image_id": [b["image_id"] for b in ok],
        "images": images,
        "items": decoded,
        "data": [b["data"] for b in ok],
        "failed": failed,
    }


def decode_on_device(
    batch: dict[str, Any], preprocessing: Preprocessing, device: str | torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Decodes a collated :class:`EncodedImages` batch on ``device`` and preprocesses it.

    JPEG bytes are decoded together by ``torchvision.io.decode_jpeg(device=device)``
    (nvJPEG on a GPU), then resized and centre-cropped on the device. An image that
    fails to decode there is decoded again on the CPU; if that fails too it is
    reported in the returned list instead.

    Returns:
        ``(uint8 images (B', 3, crop, crop) on device, their dataset indices (B',),
        failures)``: the batch's images minus the failures, in batch order.
    """
    from torchvision.io import ImageReadMode, decode_image as tv_decode, decode_jpeg

    device = torch.device(device)
    geometric = v2.Compose([v2.Resize(preprocessing.resize, antialias=True), v2.CenterCrop(preprocessing.crop)])
    pos = [j for j, d in enumerate(batch["data"]) if d is not None]
    decoded: dict[int, torch.Tensor] = {}
    if pos:
        try:
            outs = decode_jpeg([batch["data"][j] for j in pos], mode=ImageReadMode.RGB, device=device)
            decoded = dict(zip(pos, outs))
        except RuntimeError as exc:
            logger.debug("batched device decode failed (%s); decoding one by one", exc)
            for j in pos:
                try:
                    decoded[j] = tv_decode(batch["data"][j], mode=ImageReadMode.RGB).to(device)
                except RuntimeError:
                    pass
    images: list[torch.Tensor] = []
    failures: list[dict[str, Any]] = []
    for j, iid in enumerate(batch["image_id"]):
        if batch["items"][j] is not None:
            images.append(batch["items"][j].as_subclass(torch.Tensor).to(device, non_blocking=True))
        elif j in decoded:
            images.append(geometric(decoded[j]))
        else:
            failures.append({"index": int(batch["index"][j]), "image_id": iid, "error": "could not decode the JPEG"})
    crop = preprocessing.crop
    out = torch.stack(images) if images else torch.zeros((0, 3, crop, crop), dtype=torch.uint8, device=device)
    keep = [j for j in range(len(batch["image_id"])) if batch["items"][j] is not None or j in decoded]
    return out, batch["index"][keep], failures
