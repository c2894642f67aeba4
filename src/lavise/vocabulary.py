"""The explanation vocabulary: the words a filter can be explained with.

The default list (``lavise/data/vocabulary.tsv``) holds concrete, visual words (objects,
parts, animals, food, plants, materials, scenes, visible people, colours, textures and
appearance adjectives) ranked by frequency and concreteness; it was built by
``scripts/build_vocabulary.py`` from WordNet 3.0 and wordfreq, so using it needs neither.

Every vocabulary (default, GloVe, concept names, a user's word file) passes through
:func:`load_vocabulary`, which removes the offensive words of the shipped blocklist
(``lavise/data/blocklist.tsv``: slurs and obscenities from WordNet's usage and gloss labels,
better-profanity's list and a reviewed supplement) unless ``allow_offensive`` is set.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Sequence

from lavise.wordspace import WordSpace, normalise_concept_name

logger = logging.getLogger(__name__)

VOCABULARIES = ("default", "glove", "concepts")
DEFAULT_VOCABULARY_FILE = Path(__file__).resolve().parent / "data" / "vocabulary.tsv"
BLOCKLIST_FILE = Path(__file__).resolve().parent / "data" / "blocklist.tsv"


def list_vocabularies() -> list[str]:
    """Names accepted by :func:`load_vocabulary` (besides a path to a word list)."""
    return list(VOCABULARIES)


@functools.lru_cache(maxsize=1)
def default_words() -> tuple[str, ...]:
    """Words of the shipped default vocabulary, best ranked first."""
    text = DEFAULT_VOCABULARY_FILE.read_text(encoding="utf-8")
    words = []
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("word\t"):
            continue
        words.append(line.split("\t", 1)[0])
    return tuple(words)


def blocklist_key(word: str) -> str:
    """The form words are compared with the blocklist in: lowercase, runs of spaces and
    hyphens as one underscore (``"Blow Job"``, ``"blow-job"`` and ``"blow_job"`` match)."""
    if word.isalpha() and word.islower():
        return word
    return re.sub(r"[\s\-]+", "_", word.strip().lower())


@functools.lru_cache(maxsize=1)
def offensive_words() -> frozenset[str]:
    """The shipped blocklist of slurs and obscenities, as :func:`blocklist_key` forms."""
    words = set()
    for line in BLOCKLIST_FILE.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or line.startswith("word\t"):
            continue
        words.add(blocklist_key(line.split("\t", 1)[0]))
    return frozenset(words)


def is_offensive(word: str) -> bool:
    """Whether ``word`` is on the shipped blocklist (case, spaces and hyphens ignored)."""
    return blocklist_key(word) in offensive_words()


def remove_offensive(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits ``words`` into (kept, removed) by the shipped blocklist, order preserved."""
    blocked = offensive_words()
    kept, removed = [], []
    for w in words:
        (removed if blocklist_key(w) in blocked else kept).append(w)
    return kept, removed


def safe_vocabulary(vocabulary: WordSpace, allow_offensive: bool = False) -> WordSpace:
    """``vocabulary`` without the blocklisted words (itself when none is on it, or when
    ``allow_offensive``); logs how many were removed.

    Raises:
        ValueError: Every word is on the blocklist.
    """
    if allow_offensive:
        return vocabulary
    kept, removed = remove_offensive(vocabulary.words)
    if not removed:
        return vocabulary
    if not kept:
        raise ValueError(f"every word of vocabulary {vocabulary.name!r} is on the offensive-word blocklist")
    logger.info("removed %d offensive words from vocabulary %s (blocklist; --allow-offensive keeps them)",
                len(removed), vocabulary.name)
    return vocabulary.subset(kept, name=vocabulary.name)


def read_word_list(path: str | Path) -> list[str]:
    """Reads one word per line; ``#`` starts a comment, blank lines are ignored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    words = []
    for line in p.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            words.append(word)
    return words


def load_vocabulary(
    spec: str | None = "default",
    word_space: WordSpace | None = None,
    size: int | None = None,
    concepts: Sequence[str] = (),
    allow_offensive: bool = False,
) -> WordSpace:
    """The explanation vocabulary as a subset of ``word_space``, without offensive words.

    Args:
        spec: ``"default"`` (the shipped list; also used for None), ``"glove"`` (every
            word of the space, in its order: GloVe rows are sorted by frequency),
            ``"concepts"`` (the tokens of ``concepts``, the reference dataset's category
            names), or a path to a word list (one word per line, ``#`` comments).
        word_space: The word vectors (default: :func:`lavise.wordspace.load_word_space`).
        size: Keep only the ``size`` best-ranked words (None: all).
        concepts: Category names, for ``spec="concepts"``.
        allow_offensive: Keep the words of the shipped blocklist (slurs, obscenities),
            which are otherwise removed, and their count logged, before ``size`` applies.

    Returns:
        A :class:`WordSpace` named ``"<space>:<spec>"``, words in rank order.

    Raises:
        ValueError: ``size`` < 1, no concepts for ``"concepts"``, or no word is left.
        FileNotFoundError: ``spec`` is a path that does not exist.
    """
    if size is not None and size < 1:
        raise ValueError(f"vocabulary size must be >= 1, got {size}")
    if word_space is None:
        from lavise.wordspace import load_word_space

        word_space = load_word_space()
    spec = spec or "default"
    if spec == "default":
        words: Sequence[str] = default_words()
        label = "default"
    elif spec == "glove":
        words = word_space.words
        label = "glove"
    elif spec == "concepts":
        if not concepts:
            raise ValueError("vocabulary 'concepts' needs the reference dataset's concept names")
        words = [t for name in concepts for t in normalise_concept_name(name, known=word_space)]
        label = "concepts"
    else:
        words = read_word_list(spec)
        label = str(Path(spec).expanduser())
    words = list(dict.fromkeys(words))
    unknown = [w for w in words if w not in word_space]
    if unknown:
        if spec in (None, "default"):  # the shipped list serves every word space: gaps are expected
            logger.info("%d of %d words of the default vocabulary are not in word space %r",
                        len(unknown), len(words), word_space.name)
        else:
            logger.warning("%d of %d vocabulary words (%s) are not in word space %r and are skipped: %s",
                           len(unknown), len(words), label, word_space.name,
                           ", ".join(unknown[:50]) + (", ..." if len(unknown) > 50 else ""))
    kept = [w for w in words if w in word_space]
    if not allow_offensive:
        kept, removed = remove_offensive(kept)
        if removed:
            logger.info("removed %d offensive words from vocabulary %s (blocklist; "
                        "--allow-offensive keeps them)", len(removed), label)
    if size is not None:
        kept = kept[:size]
    if not kept:
        raise ValueError(f"vocabulary {label!r} has no word in word space {word_space.name!r}")
    suffix = "" if size is None else f"[:{size}]"
    vocab = word_space.subset(kept, name=f"{word_space.name}:{label}{suffix}")
    logger.info("vocabulary %s: %d words", vocab.name, len(vocab))
    return vocab
