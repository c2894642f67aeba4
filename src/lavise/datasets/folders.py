"""Plain folders: classification sub-folders (``imagefolder``) and unlabelled images (``folder``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lavise.datasets.base import IMAGE_EXTENSIONS, ReferenceDataset, find_images, register_dataset_format
from lavise.preprocessing import Preprocessing


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
            for f in find_images(root / cls):
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
        files = find_images(root)
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
