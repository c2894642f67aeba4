"""Pascal VOC segmentation (``VOCdevkit/VOC2012``).

::

    VOC2012/
      ImageSets/Segmentation/{train,val,trainval}.txt   one image id per line
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png    palette PNG: index 0 background, 1-20 the classes, 255 void

Background (0) and void (255, object boundaries) are no concept. The 20 class names
are VOC's, with the three run-together ones spelled as words (``dining table``,
``potted plant``, ``tv monitor``) so that they match word vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lavise.datasets.base import INVALID, LabelMapDataset, map_labels, read_label_png, register_dataset_format
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)
VOID = 255


def _voc_root(path: Path) -> Path:
    """The folder holding ``ImageSets/Segmentation`` under ``path``."""
    candidates = [path, path / "VOC2012", *sorted(path.glob("VOCdevkit/VOC20*"), reverse=True),
                  *sorted(path.glob("VOC20*"), reverse=True)]
    for c in candidates:
        if (c / "ImageSets" / "Segmentation").is_dir():
            return c
    raise FileNotFoundError(f"voc: no ImageSets/Segmentation under {path} (expected VOCdevkit/VOC2012)")


@register_dataset_format("voc")
class VocDataset(LabelMapDataset):
    """Pascal VOC semantic segmentation: 20 classes, palette PNGs, 255 = void (ignored).

    Args:
        path: ``VOCdevkit/VOC2012``, ``VOCdevkit`` or the folder holding it.
        split: Image list in ``ImageSets/Segmentation`` (``train``, ``val``,
            ``trainval``); may be left out when there is only one.
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
        root = _voc_root(path)
        lists = root / "ImageSets" / "Segmentation"
        splits = sorted(p.stem for p in lists.glob("*.txt"))
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"{self.name}: {lists} has several splits ({', '.join(splits)}); pass split=...")
            split = splits[0]
        if split not in splits:
            raise FileNotFoundError(f"{self.name}: {lists / (split + '.txt')} not found "
                                    f"(available splits: {', '.join(splits) or 'none'})")
        super().__init__(root, split, preprocessing, load_images)
        self.concepts = list(VOC_CLASSES)
        table = np.full(VOID + 1, INVALID, dtype=np.int64)
        table[0] = table[VOID] = -1
        table[1:len(VOC_CLASSES) + 1] = np.arange(len(VOC_CLASSES))
        self._table = table
        ids = [line.strip() for line in (lists / f"{split}.txt").read_text().splitlines() if line.strip()]
        missing = []
        for iid in ids:
            img, label = root / "JPEGImages" / f"{iid}.jpg", root / "SegmentationClass" / f"{iid}.png"
            if not (img.is_file() and label.is_file()):
                missing.append(iid)
                continue
            self.image_ids.append(iid)
            self.image_paths.append(img)
            self.label_paths.append(label)
        if missing:
            logger.warning("%s: %d of %d images listed in %s.txt lack a JPEG or a SegmentationClass PNG "
                           "and are skipped (e.g. %s)", self.name, len(missing), len(ids), split, missing[0])
        if not self.image_ids:
            raise ValueError(f"{self.name}: no image listed in {lists / (split + '.txt')} has both files")
        logger.info("%s: %d images, %d concepts", self.name, len(self), len(self.concepts))

    def _labels(self, i: int) -> np.ndarray:
        path = self.label_paths[i]
        return map_labels(read_label_png(path), self._table, path)
