"""Captions: COCO caption files, gender groups from captions, caption nouns as targets.

Two uses of the same COCO captions files:

* **Groups** (:func:`groups_from_captions`): Zhao et al., "Men Also Like Shopping:
  Reducing Gender Bias Amplification using Corpus-level Constraints" (EMNLP 2017),
  label a COCO image from its captions: only male words -> ``male``, only female words
  -> ``female``; images whose captions use both or neither are left out. The LaViSE
  paper (section 4.6) takes its gender groups from them. The word lists ship as package
  data (``lavise/data/gender-words.tsv``, with their sources).
* **Weak supervision** (:func:`image_level_pairs`): COCO's captions name far more things
  than its 80 annotated categories (``street``, ``table``, ``grass``, ``kitchen``...). A
  noun that at least ``min_count`` of an image's captions use becomes a weak
  (whole-image pooled feature, word) pair beside the image's concept masks;
  :func:`lavise.explainer.fit_head` trains on both, and never treats two words of the
  same image as each other's negatives. Nouns are found without a tagger: a caption
  token (or its WordNet base form, ``dogs`` -> ``dog``) counts when WordNet lists it as
  a noun and it belongs to the allowed words (the default visual vocabulary), minus a
  few caption fillers (``front``, ``picture``...).

Captions are keyed by the image's file name as the captions file gives it, so one
captions file serves every copy of a COCO image (``000000139.jpg`` in any folder).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Container, Iterable, Mapping, Sequence

import numpy as np
import torch

from lavise.explainer import ConceptFeatures

logger = logging.getLogger(__name__)

__all__ = ["CAPTION_FILLERS", "CAPTION_RULES", "CaptionGroups", "caption_nouns", "find_captions_file",
           "gender_of_captions", "gender_words", "groups_from_captions", "image_level_pairs", "read_captions"]

#: Nouns that captions use for framing, counting or position rather than for things.
CAPTION_FILLERS = frozenset(
    "front top side picture photo image view background foreground group couple lot bunch "
    "pair area way day time something thing things kind middle edge corner close shot "
    "bottom left right back other one two three four several many piece pieces set "
    "scene angle couple's".split()
)
_TOKEN = re.compile(r"[a-z]+")


def read_captions(files: str | Path | Iterable[str | Path]) -> dict[str, list[str]]:
    """Captions of every image in one or more COCO captions JSON files, keyed by the
    image's ``file_name`` (images without captions are omitted).

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: A file is not a COCO captions file.
    """
    out: dict[str, list[str]] = {}
    for f in [files] if isinstance(files, (str, Path)) else files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"captions file not found: {path}")
        try:
            data = json.loads(path.read_text())
            names = {im["id"]: im["file_name"] for im in data["images"]}
            for ann in data["annotations"]:
                name = names.get(ann["image_id"])
                if name is not None:
                    out.setdefault(name, []).append(str(ann["caption"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a COCO captions file ({type(exc).__name__}: {exc})") from None
    return out


#: Caption-derived group schemes, as named after ``captions:`` on the command line.
CAPTION_RULES = ("gender",)



@functools.lru_cache(maxsize=1)
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


@functools.lru_cache(maxsize=2)
def _wordnet_nouns(root: str) -> tuple[frozenset[str], Mapping[str, str]]:
    index = Path(root) / "index.noun"
    if not index.is_file():
        raise FileNotFoundError(f"WordNet noun index not found in {root} (apt-get install wordnet-base)")
    nouns = set()
    with open(index, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line and line[0] != " ":
                nouns.add(line.split(" ", 1)[0].lower())
    exceptions: dict[str, str] = {}
    exc = Path(root) / "noun.exc"
    if exc.is_file():
        for line in exc.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                exceptions[parts[0]] = parts[1]
    return frozenset(nouns), exceptions


def _noun_form(token: str, nouns: Container[str], exceptions: Mapping[str, str]) -> str | None:
    """The singular noun of ``token`` (``dogs`` -> ``dog``), or None if not a noun."""
    if token in exceptions:
        return exceptions[token]
    for suffix, repl in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("ses", "s"), ("s", "")):
        if token.endswith(suffix) and len(token) > len(suffix) + 2:
            base = token[: len(token) - len(suffix)] + repl
            if base in nouns:
                return base
    return token if token in nouns else None


def caption_nouns(
    captions: Sequence[str], allowed: Container[str], *, min_count: int = 2, wordnet: str | None = None,
) -> list[str]:
    """Nouns used by at least ``min_count`` of one image's captions, most used first.

    Args:
        captions: The image's captions.
        allowed: Words that may be targets (e.g. the vocabulary; a word without a
            vector can never be one).
        min_count: Captions that must mention a noun (COCO has 5 per image).
        wordnet: WordNet database folder (None: :func:`lavise.metrics.wordnet_dir`).
    """
    if wordnet is None:
        from lavise.metrics import wordnet_dir

        wordnet = str(wordnet_dir())
    nouns, exceptions = _wordnet_nouns(wordnet)
    counts: Counter[str] = Counter()
    for caption in captions:
        found = set()
        for tok in _TOKEN.findall(caption.lower()):
            noun = _noun_form(tok, nouns, exceptions)
            if noun and noun not in CAPTION_FILLERS and noun in allowed:
                found.add(noun)
        counts.update(found)
    return [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]


def image_level_pairs(
    store: Any,
    dataset: Any,
    captions: Mapping[str, Sequence[str]],
    allowed: Container[str],
    *,
    min_count: int = 2,
    exclude_words: Container[str] = (),
) -> ConceptFeatures:
    """Whole-image pooled features of the captioned images, one pair per caption noun.

    Args:
        store: Cached features of ``dataset`` (the pooled vector of a pair is the
            image's global average, i.e. ``F * M`` with a mask of ones).
        dataset: The images (matched to ``captions`` by file name).
        captions: :func:`read_captions` output.
        allowed: Words that may be targets.
        min_count: Captions that must mention a noun.
        exclude_words: Words never used as targets (e.g. the held-out unseen concepts).

    Returns:
        Pairs with ``coverage`` 1 and ``images`` the store rows; empty when no image
        has captions.
    """
    d = store.shape[0]
    row_of = {str(k): i for i, k in enumerate(store.ids)}
    failed = set(map(str, store.failed))
    rows, words = [], []
    for iid, path in zip(dataset.image_ids, dataset.image_paths):
        caps = captions.get(Path(path).name)
        if not caps or str(iid) in failed or str(iid) not in row_of:
            continue
        for w in caption_nouns(caps, allowed, min_count=min_count):
            if w not in exclude_words:
                rows.append(row_of[str(iid)])
                words.append(w)
    if not rows:
        return ConceptFeatures(torch.zeros(0, d), [], torch.zeros(0, dtype=torch.long), torch.zeros(0))
    uniq = sorted(set(rows))
    arr = store.array
    means = {r: torch.from_numpy(np.asarray(arr[r], dtype=np.float32)).reshape(d, -1).mean(1) for r in uniq}
    pooled = torch.stack([means[r] for r in rows])
    logger.info("captions: %d image-level pairs, %d words, from %d images", len(rows), len(set(words)), len(uniq))
    return ConceptFeatures(pooled, words, torch.tensor(rows, dtype=torch.long), torch.ones(len(rows)))
