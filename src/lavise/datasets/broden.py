"""NetDissect's Broden layout (Bau et al. 2017), the reference data of Network Dissection.

::

    BRODEN/
      index.csv    image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
      label.csv    number,name,category,frequency,coverage,syns
      c_<category>.csv   code,number,name,frequency,coverage  (dense codes per category)
      images/...   the photos and the mask PNGs, paths in index.csv relative to images/

A pixel-category cell of ``index.csv`` holds ``;``-joined mask PNG names whose pixels
carry the global label number ``R + 256 G`` (0 = none) at the segmentation size
``sh x sw`` (upsampled to ``ih x iw``, nearest); a per-image cell (scene, texture)
holds ``;``-joined label numbers that apply to the whole image. Label names lose
Broden's category suffix (``red-c`` -> ``red``).
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from lavise.datasets.base import INVALID, ReferenceDataset, map_labels, read_label_png, register_dataset_format
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

_FIXED_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
_SUFFIX = re.compile(r"-[a-z]$")


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"broden: {path} not found")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"broden: {path} lacks the column(s) {', '.join(missing)}")
        return list(reader)


@register_dataset_format("broden")
class BrodenDataset(ReferenceDataset):
    """Broden (NetDissect): images with colour/object/part/material masks and scene/texture labels.

    Args:
        path: The Broden folder (``index.csv``, ``label.csv``, ``c_*.csv``, ``images/``).
        split: ``train`` or ``val`` (the ``split`` column); None: every row.
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: masks only).
        categories: Categories to use, e.g. ``"object,part"`` (default: every category
            with a ``c_<category>.csv``, or every label column when there is none).
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
        categories: str | list[str] | None = None,
    ) -> None:
        path = self._existing_folder(path)
        super().__init__(path, split, preprocessing, load_images)
        index_file = path / "index.csv"
        rows = _read_csv(index_file, _FIXED_COLUMNS)
        columns = [c for c in (list(rows[0]) if rows else []) if c not in _FIXED_COLUMNS]
        with_codes = sorted(p.stem[2:] for p in path.glob("c_*.csv"))
        if categories is None:
            cats = [c for c in columns if c in with_codes] or columns
        else:
            cats = [c.strip() for c in (categories.split(",") if isinstance(categories, str) else categories)]
            unknown = [c for c in cats if c not in columns]
            if unknown:
                raise ValueError(f"{self.name}: no category {', '.join(unknown)} in {index_file} "
                                 f"(columns: {', '.join(columns)})")
        self.categories = cats
        labels = _read_csv(path / "label.csv", ("number", "name"))
        numbers = [int(r["number"]) for r in labels]
        table = np.full(max(numbers, default=0) + 1, INVALID, dtype=np.int64)
        table[0] = -1
        position: dict[str, int] = {}
        for number, row in zip(numbers, labels):
            name = _SUFFIX.sub("", row["name"].strip())
            if not name or name == "-":
                table[number] = -1
                continue
            if name not in position:
                position[name] = len(self.concepts)
                self.concepts.append(name)
            table[number] = position[name]
        self._table = table
        if split is not None:
            splits = sorted({r["split"] for r in rows})
            rows = [r for r in rows if r["split"] == split]
            if not rows:
                raise ValueError(f"{self.name}: no rows of split {split!r} in {index_file} "
                                 f"(splits: {', '.join(splits)})")
        images = path / "images"
        self._sizes: list[tuple[int, int]] = []
        self._seg_sizes: list[tuple[int, int]] = []
        self._mask_files: list[list[Path]] = []
        self._image_labels: list[list[int]] = []
        missing: list[Path] = []
        for k, row in enumerate(rows, 2):
            files: list[Path] = []
            whole: list[int] = []
            try:
                for cat in cats:
                    for tok in (row.get(cat) or "").split(";"):
                        tok = tok.strip()
                        if not tok:
                            continue
                        if tok.isdigit():
                            whole.append(int(tok))
                        else:
                            files.append(images / tok)
                size = (int(row["ih"]), int(row["iw"]))
                seg = (int(row["sh"]), int(row["sw"]))
            except (TypeError, ValueError):
                raise ValueError(f"{self.name}: {index_file}:{k}: malformed row {row!r}") from None
            absent = [f for f in [images / row["image"], *files] if not f.is_file()]
            if absent:
                missing.extend(absent)
                continue
            for number in whole:
                if number >= len(table) or table[number] == INVALID:
                    raise ValueError(f"{self.name}: {index_file}:{k}: label {number} is not in label.csv")
            self.image_ids.append(row["image"])
            self.image_paths.append(images / row["image"])
            self._sizes.append(size)
            self._seg_sizes.append(seg)
            self._mask_files.append(files)
            self._image_labels.append(sorted({int(table[n]) for n in whole if table[n] >= 0}))
        if missing:
            logger.warning("%s: %d files named in %s are missing (e.g. %s); %d rows naming them are skipped",
                           self.name, len(missing), index_file, missing[0], len(rows) - len(self.image_ids))
        if not self.image_ids:
            raise ValueError(f"{self.name}: no usable row in {index_file}"
                             + (f" (missing files, e.g. {missing[0]})" if missing else ""))
        self._present: dict[int, list[int]] = {}
        logger.info("%s: %d images, %d concepts", self.name, len(self), len(self.concepts))

    def _annotated_size(self, i: int) -> tuple[int, int]:
        return self._sizes[i]

    def _pixel_labels(self, i: int) -> list[np.ndarray]:
        """Concept index per pixel (-1: none) of each mask PNG, at the segmentation size."""
        out = []
        for f in self._mask_files[i]:
            rgb = read_label_png(f, rgb=True).astype(np.int64)
            if rgb.shape[:2] != self._seg_sizes[i]:
                raise ValueError(f"mask PNG {f} is {rgb.shape[1]}x{rgb.shape[0]}, index.csv says "
                                 f"{self._seg_sizes[i][1]}x{self._seg_sizes[i][0]}")
            out.append(map_labels(rgb[..., 0] + 256 * rgb[..., 1], self._table, f, what="label number"))
        return out

    def _annotated_concepts(self, i: int) -> list[int]:
        if i not in self._present:
            found = set(self._image_labels[i])
            try:
                for lab in self._pixel_labels(i):
                    found.update(int(c) for c in np.unique(lab) if c >= 0)
            except Exception as exc:  # noqa: BLE001 -- counted like an unreadable image
                logger.warning("skipping masks of %s: %s", self.image_ids[i], exc)
            self._present[i] = sorted(found)
        return self._present[i]

    def _build_masks(self, i: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        sh, sw = self._seg_sizes[i]
        rows = np.arange(height) * sh // height
        cols = np.arange(width) * sw // width
        merged: dict[int, np.ndarray] = {c: np.ones((height, width), np.uint8) for c in self._image_labels[i]}
        for lab in self._pixel_labels(i):
            lab = lab[rows][:, cols]  # nearest upsampling to the image size
            for c in np.unique(lab):
                if c < 0:
                    continue
                m = (lab == c).astype(np.uint8)
                merged[int(c)] = np.maximum(merged[int(c)], m) if int(c) in merged else m
        cids = sorted(merged)
        if not cids:
            return np.zeros((0, height, width), np.uint8), []
        return np.stack([merged[c] for c in cids]), cids
