"""Weak supervision from captions: the nouns of an image's captions as image-level targets.

COCO's captions name far more things than its 80 annotated categories (``street``,
``table``, ``grass``, ``kitchen``...). A noun that at least ``min_count`` of an image's
captions use becomes a weak (whole-image pooled feature, word) pair beside the image's
concept masks (:func:`image_level_pairs`); :func:`lavise.explainer.fit_head` trains on
both, and never treats two words of the same image as each other's negatives.

Nouns are found without a tagger: a caption token (or its WordNet base form,
``dogs`` -> ``dog``) counts when WordNet lists it as a noun and it belongs to the
allowed words (the default visual vocabulary), minus a few caption fillers (``front``,
``picture``...). Captions are matched to images by file name, so one captions file
serves every copy of a COCO image (``000000139.jpg`` in any folder).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Container, Iterable, Mapping, Sequence

import numpy as np
import torch

from lavise.explainer import ConceptFeatures

logger = logging.getLogger(__name__)

__all__ = ["read_captions", "caption_nouns", "image_level_pairs", "CAPTION_FILLERS"]

#: Nouns that captions use for framing, counting or position rather than for things.
CAPTION_FILLERS = frozenset(
    "front top side picture photo image view background foreground group couple lot bunch "
    "pair area way day time something thing things kind middle edge corner close shot "
    "bottom left right back other one two three four several many piece pieces set "
    "scene angle couple's".split()
)
_TOKEN = re.compile(r"[a-z]+")
_WORDNET = "/usr/share/wordnet"


def read_captions(files: Iterable[str | Path]) -> dict[str, list[str]]:
    """Captions of every image in COCO captions JSON files, keyed by image file name.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: A file is not a COCO captions file.
    """
    out: dict[str, list[str]] = {}
    for f in files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"captions file not found: {path}")
        try:
            data = json.loads(path.read_text())
            names = {im["id"]: im["file_name"] for im in data["images"]}
            anns = [(a["image_id"], a["caption"]) for a in data["annotations"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a COCO captions file ({exc})") from None
        for image_id, caption in anns:
            name = names.get(image_id)
            if name is not None:
                out.setdefault(Path(name).name, []).append(str(caption))
    return out


@functools.lru_cache(maxsize=2)
def _wordnet_nouns(root: str = _WORDNET) -> tuple[frozenset[str], Mapping[str, str]]:
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
    captions: Sequence[str], allowed: Container[str], *, min_count: int = 2, wordnet: str = _WORDNET,
) -> list[str]:
    """Nouns used by at least ``min_count`` of one image's captions, most used first.

    Args:
        captions: The image's captions.
        allowed: Words that may be targets (e.g. the vocabulary; a word without a
            vector can never be one).
        min_count: Captions that must mention a noun (COCO has 5 per image).
        wordnet: WordNet database folder.
    """
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
