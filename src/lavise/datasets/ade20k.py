"""ADE20K scene parsing in the ADEChallengeData2016 (SceneParsing) layout.

::

    ADEChallengeData2016/
      objectInfo150.txt                 Idx, Ratio, Train, Val, Name (tab-separated)
      images/{training,validation}/ADE_*.jpg
      annotations/{training,validation}/ADE_*.png   one class index per pixel, 0 = unlabelled

The 150 things-and-stuff classes are named by the first word or phrase of their
synonym list (``"building, edifice"`` -> ``"building"``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from lavise.datasets.base import (
    LabelMapDataset,
    first_phrase,
    map_labels,
    read_label_png,
    register_dataset_format,
)
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

_SPLIT_ALIASES = {"train": "training", "val": "validation", "valid": "validation"}


def read_object_info(path: Path) -> list[str]:
    """Class names from ``objectInfo150.txt`` (tabs) or ``objectInfo150.csv`` (commas, ``;`` synonyms).

    Returns:
        The names in index order (index 1 first), each its first word or phrase.
    """
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            rows = list(csv.reader(f))
        else:
            rows = [line.rstrip("\r\n").split("\t") for line in f if line.strip()]
    if not rows or rows[0][0].strip().lower() != "idx" or rows[0][-1].strip().lower() != "name":
        raise ValueError(f"{path} is not an ADE20K object list (expected a header 'Idx ... Name')")
    names: list[str] = []
    for k, row in enumerate(rows[1:], 1):
        try:
            idx = int(row[0])
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{k + 1}: expected 'Idx ... Name', got {row!r}") from None
        if idx != k:
            raise ValueError(f"{path}:{k + 1}: class indices must run 1, 2, ...; found {idx}")
        names.append(first_phrase(row[-1]))
    return names


@register_dataset_format("ade20k")
class Ade20kDataset(LabelMapDataset):
    """ADE20K SceneParsing (150 classes): images with index PNGs, 0 = unlabelled.

    Args:
        path: The ``ADEChallengeData2016`` folder (or its parent).
        split: ``training`` or ``validation`` (``train``/``val`` also accepted); may be
            left out when only one is present.
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: masks only).
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
    ) -> None:
        path = self._existing_folder(path)
        if not (path / "images").is_dir() and (path / "ADEChallengeData2016").is_dir():
            path = path / "ADEChallengeData2016"
        images, labels = path / "images", path / "annotations"
        for folder in (images, labels):
            if not folder.is_dir():
                raise FileNotFoundError(f"{self.name}: {folder} not found (expected the ADEChallengeData2016 layout)")
        splits = sorted(p.name for p in images.iterdir() if p.is_dir())
        if split is not None:
            split = _SPLIT_ALIASES.get(split, split)
            if split not in splits:
                raise FileNotFoundError(f"{self.name}: no split {split!r} in {images} (available splits: "
                                        f"{', '.join(splits) or 'none'})")
        elif len(splits) == 1:
            split = splits[0]
        else:
            raise ValueError(f"{self.name}: {path} has several splits ({', '.join(splits)}); pass split=...")
        super().__init__(path, split, preprocessing, load_images)
        info = next((path / n for n in ("objectInfo150.txt", "objectInfo150.csv") if (path / n).is_file()), None)
        if info is None:
            raise FileNotFoundError(f"{self.name}: {path / 'objectInfo150.txt'} not found")
        self.concepts = read_object_info(info)
        self._table = np.arange(-1, len(self.concepts), dtype=np.int64)  # raw 0 -> -1, k -> k - 1
        no_label = []
        for img in sorted(p for p in (images / split).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            label = labels / split / f"{img.stem}.png"
            if not label.is_file():
                no_label.append(img)
                continue
            self.image_ids.append(img.stem)
            self.image_paths.append(img)
            self.label_paths.append(label)
        if no_label:
            logger.warning("%s: %d images without an annotation PNG in %s are skipped (e.g. %s)",
                           self.name, len(no_label), labels / split, no_label[0].name)
        if not self.image_ids:
            raise ValueError(f"{self.name}: no annotated images in {images / split}")
        logger.info("%s: %d images, %d concepts", self.name, len(self), len(self.concepts))

    def _labels(self, i: int) -> np.ndarray:
        path = self.label_paths[i]
        return map_labels(read_label_png(path), self._table, path)


