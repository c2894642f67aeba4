"""Visual Genome objects: each object's box filled with 1 in its name's mask."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from lavise.datasets.base import ReferenceDataset, read_json, register_dataset_format
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)


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
        path = self._existing_folder(path)
        if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
            raise ValueError(f"min_images must be a positive integer, got {min_images!r}")
        super().__init__(path, split, preprocessing, load_images)
        if split is not None:
            logger.warning("visual-genome has no official splits; split=%r is ignored", split)
        for name in ("objects.json", "image_data.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{self.name}: {path / name} not found")
        objects = read_json(path / "objects.json")
        image_data = read_json(path / "image_data.json")
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
