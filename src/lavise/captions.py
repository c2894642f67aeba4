"""Group labels from captions: gender of COCO photographs the way Zhao et al. derived it.

Zhao et al., "Men Also Like Shopping: Reducing Gender Bias Amplification using
Corpus-level Constraints" (EMNLP 2017), label a COCO image from its captions: if the
captions use only male words the image is ``male``, if only female words ``female``;
images whose captions use both or neither are left out. The LaViSE paper (section 4.6)
takes its gender groups from them. The word lists ship as package data
(``lavise/data/gender-words.tsv``, with their sources).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

logger = logging.getLogger(__name__)

__all__ = ["CaptionGroups", "gender_words", "gender_of_captions", "groups_from_captions",
           "read_captions", "find_captions_file", "CAPTION_RULES"]

#: Caption-derived group schemes, as named after ``captions:`` on the command line.
CAPTION_RULES = ("gender",)

_TOKEN = re.compile(r"[a-z]+")


@lru_cache(maxsize=1)
def gender_words() -> dict[str, frozenset[str]]:
    """``{"male": words, "female": words}`` from the shipped word list."""
    text = resources.files("lavise").joinpath("data/gender-words.tsv").read_text(encoding="utf-8")
    groups: dict[str, set[str]] = {"male": set(), "female": set()}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        group, word = line.split("\t")
        groups[group].add(word.strip().lower())
    return {g: frozenset(w) for g, w in groups.items()}


def gender_of_captions(captions: Iterable[str]) -> str:
    """``male``, ``female``, ``both`` or ``neither`` for one image's captions.

    Words are matched as whole lower-case tokens (``"man's"`` counts as ``man``;
    ``"woman"`` never counts as ``man``).
    """
    words = gender_words()
    tokens: set[str] = set()
    for c in captions:
        tokens.update(_TOKEN.findall(c.lower()))
    male, female = bool(tokens & words["male"]), bool(tokens & words["female"])
    if male and female:
        return "both"
    if male:
        return "male"
    if female:
        return "female"
    return "neither"


@dataclass(frozen=True)
class CaptionGroups:
    """Groups derived from captions, and what was left out.

    Attributes:
        groups: Image file name -> group (``male``/``female``).
        left_out: File names left out, by reason (``both``, ``neither``).
        rule: The rule's name (``gender``).
        captions_file: The captions file read.
    """

    groups: Mapping[str, str]
    left_out: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rule: str = "gender"
    captions_file: str = ""

    def counts(self) -> dict[str, int]:
        """Images per group and per reason for leaving out."""
        c = Counter(self.groups.values())
        return {**dict(sorted(c.items())), **{f"left out ({k})": len(v) for k, v in self.left_out.items()}}

    def to_dict(self) -> dict:
        return {"rule": self.rule, "captions_file": self.captions_file, "counts": self.counts(),
                "groups": dict(self.groups), "left_out": {k: list(v) for k, v in self.left_out.items()}}


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """COCO captions JSON -> ``{file_name: [captions]}`` (images without captions omitted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    try:
        data = json.loads(path.read_text())
        names = {im["id"]: im["file_name"] for im in data["images"]}
        out: dict[str, list[str]] = {}
        for ann in data["annotations"]:
            if "caption" not in ann:
                raise KeyError("caption")
            name = names.get(ann["image_id"])
            if name is not None:
                out.setdefault(name, []).append(ann["caption"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a COCO captions file ({type(exc).__name__}: {exc})") from None
    return out


def groups_from_captions(captions: Mapping[str, Iterable[str]], rule: str = "gender",
                         captions_file: str = "") -> CaptionGroups:
    """Labels images by ``rule`` from ``{file_name: captions}``."""
    if rule not in CAPTION_RULES:
        raise ValueError(f"unknown caption rule {rule!r} (valid: {', '.join(CAPTION_RULES)})")
    groups: dict[str, str] = {}
    left: dict[str, list[str]] = {"both": [], "neither": []}
    for name, caps in captions.items():
        g = gender_of_captions(caps)
        if g in ("male", "female"):
            groups[name] = g
        else:
            left[g].append(name)
    result = CaptionGroups(groups, {k: tuple(sorted(v)) for k, v in left.items()}, rule, captions_file)
    logger.info("caption groups: %s", result.counts())
    return result


def find_captions_file(images: str | Path, split: str | None = None) -> Path:
    """The COCO captions file that goes with an image folder or COCO root.

    Looks for ``annotations/captions_<split>.json`` (or the only ``captions_*.json``)
    under ``images``, its parent, and its grandparent.
    """
    images = Path(images)
    split = split or (images.name if not (images / "annotations").is_dir() else None)
    for root in (images, images.parent, images.parent.parent):
        ann = root / "annotations"
        if not ann.is_dir():
            continue
        if split and (ann / f"captions_{split}.json").is_file():
            return ann / f"captions_{split}.json"
        found = sorted(ann.glob("captions_*.json"))
        if len(found) == 1:
            return found[0]
    raise FileNotFoundError(
        f"no COCO captions file (annotations/captions_*.json) found for {images}; pass --captions FILE"
    )
