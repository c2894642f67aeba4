"""Input preprocessing of a target model: geometry (resize + centre crop) and normalisation.

The geometric part is a ``torchvision.transforms.v2`` pipeline, so one call transforms an
image (``tv_tensors.Image``) and its concept masks (``tv_tensors.Mask``) together and the
masks stay aligned with the pixels they label (masks are resized with nearest
neighbour). Normalisation is kept separate so that images can be stored and batched as
uint8 and normalised on the device that runs the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
from torchvision.transforms import v2

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a model expects its input images.

    Args:
        resize: Length in pixels of the shorter image side after resizing.
        crop: Side of the square centre crop taken after resizing (``crop <= resize``).
        mean: Per-channel mean on the 0-1 scale, subtracted after dividing by 255.
        std: Per-channel standard deviation on the 0-1 scale. EfficientNet-Lite's
            ``(pixel - 127) / 128`` is ``mean=(127/255,)*3, std=(128/255,)*3``.

    Raises:
        ValueError: If a size is not a positive integer, ``crop > resize``, or
            ``mean``/``std`` do not hold three finite numbers (``std`` > 0).
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Preprocessing.{name} must be a positive integer, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(
                f"Preprocessing.crop ({self.crop}) must not exceed resize ({self.resize})"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                values = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"Preprocessing.{name} must be 3 numbers, got {value!r}"
                ) from None
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"Preprocessing.{name} must be 3 finite numbers, got {value!r}")
            if name == "std" and min(values) <= 0:
                raise ValueError(f"Preprocessing.std must be > 0, got {value!r}")
            object.__setattr__(self, name, values)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict; ``Preprocessing.from_dict`` inverts it."""
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Builds a ``Preprocessing`` from ``to_dict()`` output (missing keys take defaults).

        Raises:
            ValueError: On unknown keys or invalid values.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"Preprocessing.from_dict expects a mapping, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown preprocessing keys {unknown} (valid: {', '.join(valid)})"
            )
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})

    def geometric(self) -> v2.Compose:
        """The deterministic geometric transform: resize the shorter side, centre crop.

        Call it once on an image and its masks together, e.g.
        ``image, masks = p.geometric()(tv_tensors.Image(x), tv_tensors.Mask(m))``;
        masks are resized with nearest neighbour so they stay 0/1.
        """
        return v2.Compose([v2.Resize(self.resize, antialias=True), v2.CenterCrop(self.crop)])

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Normalises images for the model, on whatever device they are.

        Args:
            images: ``(B, 3, H, W)`` or ``(3, H, W)``; uint8 on the 0-255 scale, or
                floating point on the 0-1 scale (the torchvision convention).

        Returns:
            float32 tensor ``(x / 255 - mean) / std`` of the same shape and device.

        Raises:
            ValueError: If the channel dimension is not 3.
        """
        if images.dim() not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(
                f"expected images of shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}"
            )
        x = images.as_subclass(torch.Tensor)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        elif x.is_floating_point():
            x = x.to(torch.float32)
        else:
            raise ValueError(f"expected uint8 or floating-point images, got {x.dtype}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    @property
    def fingerprint(self) -> str:
        """A stable short hash of ``to_dict()``, for cache keys."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]
