"""WordNet ancestors of vocabulary words, read from shipped package data.

The ``hypernyms`` word ranking (:mod:`lavise.words`) gives each voted word's ancestors
a discounted vote, so that a filter whose top images say dog, cat and bird can be
explained by ``animal``. The table ``lavise/data/hypernyms.tsv`` is built once from
WordNet 3.0 by ``scripts/build_hypernyms.py`` (first noun sense of each word of the
default vocabulary; ancestors that are vocabulary words), so that using it needs no
WordNet installation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

__all__ = ["Ancestor", "load_hypernyms"]


@dataclass(frozen=True)
class Ancestor:
    """One WordNet ancestor of a word.

    Attributes:
        word: The ancestor (the first lemma of its synset that is a vocabulary word).
        hops: Fewest hypernym links from the word's first noun sense up to it.
        depth: Fewest links from WordNet's root ``entity`` (0) down to it: ``object`` 2,
            ``artifact`` 4, ``organism`` 5, ``animal`` 6, ``furniture`` 7.
    """

    word: str
    hops: int
    depth: int


@lru_cache(maxsize=4)
def _read(path: str) -> Mapping[str, tuple[Ancestor, ...]]:
    table: dict[str, tuple[Ancestor, ...]] = {}
    text = Path(path).read_text(encoding="utf-8") if path else (
        files("lavise").joinpath("data", "hypernyms.tsv").read_text(encoding="utf-8"))
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition("\t")
        items = []
        for item in rest.split(","):
            name, hops, depth = item.rsplit(":", 2)
            items.append(Ancestor(name, int(hops), int(depth)))
        table[word] = tuple(items)
    return table


def load_hypernyms(path: str | Path | None = None) -> Mapping[str, tuple[Ancestor, ...]]:
    """The word -> ancestors table (cached).

    Args:
        path: A table in the format of ``scripts/build_hypernyms.py`` (None: the
            shipped ``lavise/data/hypernyms.tsv``).

    Returns:
        Each word's ancestors, fewest hops first; words without any are absent.

    Raises:
        FileNotFoundError: When ``path`` (or the shipped table) does not exist.
    """
    try:
        return _read(str(path) if path is not None else "")
    except FileNotFoundError:
        where = path if path is not None else "lavise/data/hypernyms.tsv (package data)"
        raise FileNotFoundError(
            f"hypernym table not found: {where}; rebuild it with python scripts/build_hypernyms.py "
            "or use the word ranking 'votes'") from None
