"""Image-level labels and groups: from a CSV, sub-folders, COCO annotations or captions.

One :class:`LabelSet` serves both ``lavise finetune`` (labels to train on) and
``lavise compare-groups`` (a group per image). Label specs, as on the command line:

``csv:FILE``
    Rows ``image,label`` (a header row ``image,label``/``image,group`` is skipped);
    ``image`` is matched against the images under ``--images`` by relative path, file
    name or file stem. An image may appear on several rows (multi-label).
``folders:DIR``
    One class per sub-folder of ``DIR``.
``coco-instances:PATH[@SPLIT]`` / ``coco-panoptic:PATH[@SPLIT]``
    The categories annotated in each image (multi-label).
``captions:gender``
    Zhao et al.'s gender rule on the COCO captions of the images (:mod:`lavise.captions`).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

__all__ = ["LabelSet", "load_labels", "match_names", "LABEL_SOURCES", "list_images"]

LABEL_SOURCES = ("csv", "folders", "coco-instances", "coco-panoptic", "captions")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class LabelSet:
    """Images with their labels (class indices into ``class_names``).

    Attributes:
        paths: Image files.
        names: Each image's name relative to the image root (or its file name).
        targets: Class indices per image (one for single-label sets).
        class_names: The classes (groups), sorted.
        multi_label: Whether an image may carry several labels.
        source: The spec the labels came from.
        left_out: Images left out, by reason (e.g. captions naming both genders).
    """

    paths: tuple[Path, ...]
    names: tuple[str, ...]
    targets: tuple[tuple[int, ...], ...]
    class_names: tuple[str, ...]
    multi_label: bool = False
    source: str = ""
    left_out: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Images per class."""
        c = Counter(k for t in self.targets for k in t)
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}

    def single(self) -> list[int]:
        """The one label of each image (raises for multi-label sets)."""
        if self.multi_label:
            raise ValueError(f"labels from {self.source} are multi-label; one label per image is needed here")
        return [t[0] for t in self.targets]

    def by_name(self) -> dict[str, str]:
        """Image name -> its (first) label name."""
        return {n: self.class_names[t[0]] for n, t in zip(self.names, self.targets) if t}

    def to_dict(self) -> dict:
        return {"source": self.source, "class_names": list(self.class_names), "multi_label": self.multi_label,
                "counts": self.counts(), "left_out": {k: len(v) for k, v in self.left_out.items()},
                "images": [{"name": n, "labels": [self.class_names[k] for k in t]}
                           for n, t in zip(self.names, self.targets)]}


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder does not exist: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def match_names(wanted: Sequence[str], available: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Matches names from a label file to available image names.

    A wanted name matches an available one by relative path, file name, or file stem
    (in that order; a file name or stem shared by several images is ambiguous and only
    matches by path).

    Returns:
        ``({wanted: index into available}, [wanted names that match nothing])``.
    """
    keys: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, a in enumerate(available):
        p = Path(a)
        for k in {p.as_posix(), p.name, p.stem}:
            if k in keys and keys[k] != i:
                ambiguous.add(k)
            keys.setdefault(k, i)
    path_keys = {Path(a).as_posix(): i for i, a in enumerate(available)}
    found: dict[str, int] = {}
    missing: list[str] = []
    for w in wanted:
        pw = Path(w.strip()).as_posix()  # also drops a leading "./"
        if pw in path_keys:
            found[w] = path_keys[pw]
        elif pw in keys and pw not in ambiguous:
            found[w] = keys[pw]
        elif Path(pw).name in keys and Path(pw).name not in ambiguous:
            found[w] = keys[Path(pw).name]
        else:
            missing.append(w)
    return found, missing


def missing_message(missing: Sequence[str], total: int, what: str = "label file") -> str:
    """One line naming how many entries match no image, and a few of them."""
    few = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return (f"{len(missing)} of {total} images named in the {what} are not in the image set "
            f"({few}); pass --ignore-missing to go on without them")


def load_labels(
    spec: str,
    images: str | Path | None = None,
    *,
    split: str | None = None,
    captions: str | Path | None = None,
    ignore_missing: bool = False,
) -> LabelSet:
    """Reads image-level labels (see the module docstring for ``spec``).

    Args:
        spec: ``csv:FILE``, ``folders:DIR``, ``coco-instances:PATH[@SPLIT]``,
            ``coco-panoptic:PATH[@SPLIT]`` or ``captions:gender``.
        images: Image folder (needed for ``csv:`` and ``captions:``).
        split: Split of a COCO spec.
        captions: COCO captions JSON for ``captions:`` (default: found next to ``images``).
        ignore_missing: Go on when a CSV names images that are not under ``images``
            (they are counted and named in a warning); else raise.

    Raises:
        ValueError: Unknown spec, bad file, missing images (without ``ignore_missing``),
            images without captions, or fewer than one label.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {spec!r} (valid: csv:FILE, folders:DIR, "
                         "coco-instances:PATH, coco-panoptic:PATH, captions:gender)")
    if kind == "csv":
        result = _from_csv(Path(rest), _need_images(images, spec), ignore_missing)
    elif kind == "folders":
        result = _from_folders(Path(rest))
    elif kind == "captions":
        result = _from_captions(rest, _need_images(images, spec), split, captions, ignore_missing)
    else:
        result = _from_coco(kind, rest, split)
    if not len(result):
        raise ValueError(f"no labelled images from {spec}")
    logger.info("labels from %s: %d images, %s", spec, len(result), result.counts())
    return result


def _need_images(images: str | Path | None, spec: str) -> Path:
    if images is None:
        raise ValueError(f"labels {spec} need an image folder (--images)")
    return Path(images)


def _assemble(paths: list[Path], names: list[str], labels: list[list[str]], source: str,
              left_out: dict[str, tuple[str, ...]] | None = None, multi: bool | None = None) -> LabelSet:
    classes = sorted({label for ls in labels for label in ls})
    index = {c: i for i, c in enumerate(classes)}
    targets = tuple(tuple(sorted({index[label] for label in ls})) for ls in labels)
    if multi is None:
        multi = any(len(t) != 1 for t in targets)
    return LabelSet(tuple(paths), tuple(names), targets, tuple(classes), multi, source, left_out or {})


def _from_csv(path: Path, images: Path, ignore_missing: bool) -> LabelSet:
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    rows: list[tuple[str, str]] = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}:{n + 1}: expected 'image,label', got {','.join(row)!r}")
            if n == 0 and row[0].strip().lower() in ("image", "file", "filename", "path"):
                continue
            rows.append((row[0].strip(), row[1].strip()))
    files = list_images(images)
    names = [p.relative_to(images).as_posix() for p in files]
    found, missing = match_names(sorted({r[0] for r in rows}), names)
    if missing:
        msg = missing_message(missing, len({r[0] for r in rows}))
        if not ignore_missing:
            raise ValueError(msg)
        logger.warning(msg.split("; pass")[0] + "; going on without them")
    per_image: dict[int, list[str]] = {}
    for name, label in rows:
        if name in found:
            per_image.setdefault(found[name], []).append(label)
    order = sorted(per_image)
    return _assemble([files[i] for i in order], [names[i] for i in order], [per_image[i] for i in order],
                     f"csv:{path}", {"not in the image set": tuple(missing)} if missing else {})


def _from_folders(root: Path) -> LabelSet:
    if not root.is_dir():
        raise FileNotFoundError(f"label folder does not exist: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"no sub-folders (one per class) in {root}")
    paths, names, labels = [], [], []
    for c in classes:
        for f in list_images(root / c):
            paths.append(f)
            names.append(f.relative_to(root).as_posix())
            labels.append([c])
    return _assemble(paths, names, labels, f"folders:{root}", multi=False)


def _from_captions(rule: str, images: Path, split: str | None, captions: str | Path | None,
                   ignore_missing: bool) -> LabelSet:
    from lavise.captions import find_captions_file, groups_from_captions, read_captions

    cap_file = Path(captions) if captions else find_captions_file(images, split)
    caps = read_captions(cap_file)
    files = list_images(images)
    if not files:
        raise ValueError(f"no images under {images}")
    names = [p.relative_to(images).as_posix() for p in files]
    found, _ = match_names(sorted(caps), names)
    by_index = {i: caps[w] for w, i in found.items()}
    without = [names[i] for i in range(len(files)) if i not in by_index]
    if without:
        msg = (f"{len(without)} of {len(files)} images have no captions in {cap_file} "
               f"({', '.join(without[:5])}{', ...' if len(without) > 5 else ''})")
        if not ignore_missing:
            raise ValueError(msg + "; pass --ignore-missing to leave them out")
        logger.warning("%s; leaving them out", msg)
    groups = groups_from_captions({names[i]: c for i, c in by_index.items()}, rule, str(cap_file))
    order = [i for i in range(len(files)) if names[i] in groups.groups]
    left = {f"captions name {k}": v for k, v in groups.left_out.items() if v}
    if without:
        left["no captions"] = tuple(without)
    for reason, items in left.items():
        if items:
            logger.warning("captions:%s: %d images left out (%s)", rule, len(items), reason)
    return _assemble([files[i] for i in order], [names[i] for i in order],
                     [[groups.groups[names[i]]] for i in order], f"captions:{rule}:{cap_file}", left, multi=False)


def _from_coco(kind: str, rest: str, split: str | None) -> LabelSet:
    from lavise.datasets import load_dataset

    if "@" in rest and "/" not in rest.rsplit("@", 1)[1]:
        rest, split = rest.rsplit("@", 1)
    ds = load_dataset(f"{kind}:{rest}", split=split, load_images=False)
    paths, names, labels, unannotated = [], [], [], []
    for i in range(len(ds)):
        cats = [ds.concepts[c] for c in ds._annotated_concepts(i)]
        if not cats:
            unannotated.append(str(ds.image_ids[i]))
            continue
        paths.append(Path(ds.image_paths[i]))
        names.append(Path(ds.image_paths[i]).name)
        labels.append(cats)
    if unannotated:
        logger.warning("%s: %d images without annotations left out", kind, len(unannotated))
    return _assemble(paths, names, labels, f"{kind}:{rest}" + (f"@{split}" if split else ""),
                     {"no annotations": tuple(unannotated)} if unannotated else {}, multi=True)
