"""Any folder of images with label PNGs of the same stems and a class list.

How Cityscapes, CamVid, LabelMe exports and most in-house segmentation data arrive::

    ROOT/
      images/[SPLIT/]...<stem>.jpg        (searched recursively)
      labels/[SPLIT/]...<stem>.png        same relative path and stem, PNG (or stems with other
                                          suffixes: image_suffix=, label_suffix=)
      classes.txt                         index PNGs: one class name per line (line k = index k),
                                          or "K name" lines giving the index explicitly
      class_dict.csv                      or RGB label PNGs: a colour table, CSV "name,r,g,b"
                                          (CamVid) or "R G B name" lines

Classes named ``background``, ``unlabelled``/``unlabeled``, ``void`` or ``ignore``,
and the ``ignore_index`` value of index PNGs, are no concept.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from lavise.datasets.base import (
    INVALID,
    LabelMapDataset,
    find_images,
    map_labels,
    read_label_png,
    register_dataset_format,
)
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

NO_CONCEPT_NAMES = frozenset({"background", "unlabelled", "unlabeled", "void", "ignore", "ignored"})
_CLASS_FILES = ("classes.txt", "class_names.txt")
_COLOR_FILES = ("class_dict.csv", "colors.txt", "label_colors.txt")
_INDEXED_LINE = re.compile(r"^\s*(\d+)\s*[:,\s]\s*(\S.*?)\s*$")


def read_class_list(path: Path) -> dict[int, str]:
    """``{index: name}`` from one name per line, or ``K name`` / ``K: name`` / ``K,name`` lines."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"class list {path} is empty")
    matches = [_INDEXED_LINE.match(ln) for ln in lines]
    if all(matches):
        out = {int(m.group(1)): m.group(2) for m in matches}  # type: ignore[union-attr]
        if len(out) != len(lines):
            raise ValueError(f"class list {path} gives an index twice")
        return out
    return dict(enumerate(lines))


def read_color_table(path: Path) -> dict[tuple[int, int, int], str]:
    """``{(r, g, b): name}`` from a CSV with ``name,r,g,b`` columns or ``R G B name`` lines."""
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0].lower() if text.strip() else ""
    table: dict[tuple[int, int, int], str] = {}
    try:
        if "," in first and {"name", "r", "g", "b"} <= {c.strip() for c in first.split(",")}:
            for row in csv.DictReader(text.splitlines()):
                row = {k.strip().lower(): v for k, v in row.items() if k}
                table[(int(row["r"]), int(row["g"]), int(row["b"]))] = row["name"].strip()
        else:
            for k, line in enumerate(text.splitlines(), 1):
                parts = line.replace(",", " ").split()
                if not parts or parts[0].startswith("#"):
                    continue
                if all(p.isdigit() for p in parts[:3]):
                    rgb, name = parts[:3], " ".join(parts[3:])
                elif all(p.isdigit() for p in parts[-3:]):
                    rgb, name = parts[-3:], " ".join(parts[:-3])
                else:
                    raise ValueError(f"line {k}: expected 'R G B name', got {line!r}")
                table[(int(rgb[0]), int(rgb[1]), int(rgb[2]))] = name.strip()
    except (KeyError, ValueError) as exc:
        raise ValueError(f"colour table {path} is malformed: {exc}") from None
    if not table:
        raise ValueError(f"colour table {path} is empty")
    return table


@register_dataset_format("semantic-folder")
class SemanticFolderDataset(LabelMapDataset):
    """A folder of images, a folder of label PNGs with the same stems, and a class list.

    Args:
        path: Root folder.
        split: Optional sub-folder of both ``images`` and ``labels``.
        preprocessing: Geometric preprocessing (default ``Preprocessing()``).
        load_images: Decode images (False: masks only).
        images: Image folder, relative to ``path`` or absolute (default ``images``).
        labels: Label folder, relative to ``path`` or absolute (default ``labels``).
        classes: Class list for index PNGs (default ``classes.txt`` or
            ``class_names.txt`` in ``path``).
        colors: Colour table for RGB label PNGs (default ``class_dict.csv``,
            ``colors.txt`` or ``label_colors.txt`` in ``path``, used when there is
            no class list).
        ignore_index: Value of index PNGs that marks no class (default 255).
        image_suffix: End of the image stems to replace by ``label_suffix`` to name the
            label file (Cityscapes: ``_leftImg8bit`` and ``_gtFine_labelIds``); default:
            the same stem.
        label_suffix: See ``image_suffix``.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        load_images: bool = True,
        images: str | Path = "images",
        labels: str | Path = "labels",
        classes: str | Path | None = None,
        colors: str | Path | None = None,
        ignore_index: int | None = 255,
        image_suffix: str = "",
        label_suffix: str = "",
    ) -> None:
        path = self._existing_folder(path)
        super().__init__(path, split, preprocessing, load_images)
        image_dir, label_dir = (path / Path(images).expanduser(), path / Path(labels).expanduser())
        if split:
            image_dir, label_dir = image_dir / split, label_dir / split
        for kind, folder in (("image", image_dir), ("label", label_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{self.name}: {kind} folder {folder} not found")
        if classes is None and colors is None:
            classes = next((path / n for n in _CLASS_FILES if (path / n).is_file()), None)
            colors = None if classes else next((path / n for n in _COLOR_FILES if (path / n).is_file()), None)
            if classes is None and colors is None:
                raise FileNotFoundError(
                    f"{self.name}: no class list in {path} ({', '.join(_CLASS_FILES)} for index PNGs, "
                    f"{', '.join(_COLOR_FILES)} for colour PNGs); pass classes=FILE or colors=FILE")
        elif classes is not None and colors is not None:
            raise ValueError(f"{self.name}: pass classes= (index PNGs) or colors= (colour PNGs), not both")
        self.rgb = colors is not None
        position: dict[str, int] = {}

        def concept(name: str) -> int:
            if name.strip().lower() in NO_CONCEPT_NAMES:
                return -1
            if name not in position:
                position[name] = len(self.concepts)
                self.concepts.append(name)
            return position[name]

        if self.rgb:
            self.class_file = _existing(Path(colors), path)  # type: ignore[arg-type]
            table = read_color_table(self.class_file)
            self._codes = np.array([(r << 16) | (g << 8) | b for r, g, b in table], dtype=np.int64)
            self._code_concepts = np.array([concept(n) for n in table.values()], dtype=np.int64)
            order = np.argsort(self._codes)
            self._codes, self._code_concepts = self._codes[order], self._code_concepts[order]
        else:
            self.class_file = _existing(Path(classes), path)  # type: ignore[arg-type]
            names = read_class_list(self.class_file)
            self._table = np.full(max(max(names), ignore_index or 0) + 1, INVALID, dtype=np.int64)
            for k, name in sorted(names.items()):
                self._table[k] = concept(name)
            if ignore_index is not None:
                self._table[ignore_index] = -1
        if not self.concepts:
            raise ValueError(f"{self.name}: {self.class_file} names no class")
        no_label = []
        for img in find_images(image_dir):
            rel = img.relative_to(image_dir)
            stem = rel.stem[: len(rel.stem) - len(image_suffix)] if image_suffix and rel.stem.endswith(image_suffix) else rel.stem
            label = label_dir / rel.parent / f"{stem}{label_suffix}.png"
            if not label.is_file():
                no_label.append(rel)
                continue
            self.image_ids.append(rel.as_posix())
            self.image_paths.append(img)
            self.label_paths.append(label)
        if no_label:
            logger.warning("%s: %d images without a label PNG of the same stem in %s are skipped (e.g. %s)",
                           self.name, len(no_label), label_dir, no_label[0])
        if not self.image_ids:
            raise ValueError(f"{self.name}: no image in {image_dir} has a label PNG in {label_dir}")
        logger.info("%s: %d images, %d concepts", self.name, len(self), len(self.concepts))

    def _labels(self, i: int) -> np.ndarray:
        path = self.label_paths[i]
        if not self.rgb:
            return map_labels(read_label_png(path), self._table, path)
        rgb = read_label_png(path, rgb=True).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pos = np.searchsorted(self._codes, codes).clip(max=len(self._codes) - 1)
        known = self._codes[pos] == codes
        if not known.all():
            c = int(codes[~known].flat[0])
            raise ValueError(f"label PNG {path} has colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}), "
                             f"which the colour table {self.class_file.name} does not list")
        return self._code_concepts[pos]


def _existing(file: Path, root: Path) -> Path:
    file = file.expanduser()
    file = file if file.is_absolute() or file.is_file() else root / file
    if not file.is_file():
        raise FileNotFoundError(f"semantic-folder: class list {file} not found")
    return file
