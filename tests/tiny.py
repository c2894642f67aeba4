"""Tiny random models and synthetic image folders shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from lavise.models import TargetModel, wrap_model
from lavise.preprocessing import Preprocessing

TINY_PRE = Preprocessing(resize=32, crop=32)


class TinyCNN(nn.Module):
    """conv(3->8) -> relu -> conv(8->6, stride 2) -> relu -> pool -> fc(6->4)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 6, 3, stride=4, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_model(seed: int = 0) -> TargetModel:
    torch.manual_seed(seed)
    return wrap_model(TinyCNN(), TINY_PRE, name="tiny", class_names=["dog", "cat", "car", "tree"],
                      default_layer="features", classifier_modules=("fc",))


def image_folder(root: Path, n: int = 6, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """Writes ``n`` random RGB JPEGs into ``root`` and returns it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 255, size=(size[0], size[1], 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"img{i:03d}.jpg")
    return root
