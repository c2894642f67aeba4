#!/usr/bin/env python
"""Builds ``src/lavise/data/hypernyms.tsv``: vocabulary word -> its WordNet ancestors.

The ``hypernyms`` word ranking (:mod:`lavise.words`) lets each voted word give a
discounted vote to its ancestors that are vocabulary words (dog + cat + bird -> animal).
So that *using* it needs no WordNet, the ancestors are computed here once, from the
WordNet 3.0 database files (Debian package ``wordnet-base``, ``/usr/share/wordnet``;
``--wordnet DIR`` or ``$LAVISE_WORDNET_DIR`` elsewhere), and shipped as package data.

For every word of the default vocabulary (``src/lavise/data/vocabulary.tsv``) that is a
WordNet noun, its **first (most frequent) noun sense** is followed up the hypernym and
instance-hypernym pointers to ``entity``. Of every ancestor synset, the first of its
lemmas that is a vocabulary word (``animal``, not also ``beast``, ``creature``, ``fauna``)
is kept, with

* ``hops``: the fewest hypernym links from the word's sense to that ancestor, and
* ``depth``: the fewest links from the ancestor synset down from ``entity`` (0), so
  that a reader can drop the uninformative top of the hierarchy (``object`` 2,
  ``whole`` 3, ``artifact`` / ``living thing`` 4, ``organism`` 5, ``animal`` 6).

Ancestors are restricted to vocabulary words because a word outside the vocabulary can
never be said. Only the first sense is followed: ``dog``'s other senses (frump, cad,
hotdog...) would vote for ``person`` and ``food``.

Output, one line per word with ancestors: ``word<TAB>ancestor:hops:depth,...`` sorted
by hops. The first line is a comment naming the source. WordNet 3.0 licence: see
``src/lavise/data/VOCABULARY-ATTRIBUTION.md``.

Usage:
    python scripts/build_hypernyms.py [--wordnet /usr/share/wordnet] [--out src/lavise/data/hypernyms.tsv]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import deque
from pathlib import Path

logger = logging.getLogger("build_hypernyms")

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = ROOT / "src" / "lavise" / "data" / "vocabulary.tsv"
OUT = ROOT / "src" / "lavise" / "data" / "hypernyms.tsv"


def read_vocabulary(path: Path) -> list[str]:
    """The words of a vocabulary TSV (first column; ``#`` comments and the header skipped)."""
    words = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            word = line.split("\t", 1)[0].strip()
            if word and word != "word":
                words.append(word)
    return words


def read_wordnet(root: Path) -> tuple[dict[str, list[int]], dict[int, list[str]], dict[int, list[int]]]:
    """``(lemma -> noun synsets by frequency, synset -> lemmas, synset -> hypernym synsets)``."""
    index: dict[str, list[int]] = {}
    with open(root / "index.noun", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line or line[0] == " ":
                continue
            parts = line.split()
            n = int(parts[2])
            index[parts[0].lower()] = [int(o) for o in parts[-n:]]
    lemmas: dict[int, list[str]] = {}
    parents: dict[int, list[int]] = {}
    with open(root / "data.noun", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line or line[0] == " ":
                continue
            parts = line.split("|", 1)[0].split()
            offset, w_cnt = int(parts[0]), int(parts[3], 16)
            names = [parts[4 + 2 * j].lower() for j in range(w_cnt)]
            lemmas[offset] = [n.split("(", 1)[0] for n in names]
            pos = 4 + 2 * w_cnt
            p_cnt = int(parts[pos])
            ups = []
            for j in range(p_cnt):
                symbol, target, kind = parts[pos + 1 + 4 * j: pos + 4 + 4 * j]
                if symbol in ("@", "@i") and kind == "n":
                    ups.append(int(target))
            parents[offset] = ups
    return index, lemmas, parents


def depths(parents: dict[int, list[int]]) -> dict[int, int]:
    """Fewest links from the root (a synset without hypernyms, i.e. ``entity``) to each synset."""
    memo: dict[int, int] = {}

    def depth(s: int, stack: frozenset = frozenset()) -> int:
        if s in memo:
            return memo[s]
        ups = [u for u in parents.get(s, ()) if u not in stack]
        d = 0 if not ups else 1 + min(depth(u, stack | {s}) for u in ups)
        memo[s] = d
        return d

    for s in parents:
        depth(s)
    return memo


def ancestors(word: str, index, lemmas, parents, depth, vocabulary: set[str]) -> list[tuple[str, int, int]]:
    """``(ancestor word, hops, depth)`` of the word's first noun sense, vocabulary words only."""
    senses = index.get(word)
    if not senses:
        return []
    best: dict[str, tuple[int, int]] = {}
    seen = {senses[0]: 0}
    queue = deque([senses[0]])
    while queue:
        s = queue.popleft()
        for up in parents.get(s, ()):
            if up in seen:
                continue
            seen[up] = seen[s] + 1
            queue.append(up)
            lemma = next((m for m in lemmas.get(up, ()) if m in vocabulary), None)
            if lemma is not None and lemma != word and lemma not in best:
                best[lemma] = (seen[up], depth[up])
    return sorted(((w, h, d) for w, (h, d) in best.items()), key=lambda t: (t[1], t[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet", type=Path, default=Path(os.environ.get("LAVISE_WORDNET_DIR") or "/usr/share/wordnet"))
    ap.add_argument("--vocabulary", type=Path, default=VOCABULARY)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    words = read_vocabulary(args.vocabulary)
    vocabulary = set(words)
    index, lemmas, parents = read_wordnet(args.wordnet)
    depth = depths(parents)
    lines, total = [], 0
    for word in words:
        anc = ancestors(word, index, lemmas, parents, depth, vocabulary)
        if anc:
            total += len(anc)
            lines.append(word + "\t" + ",".join(f"{a}:{h}:{d}" for a, h, d in anc))
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(f"# built by: python scripts/build_hypernyms.py from WordNet 3.0 ({args.wordnet}) and "
                 f"{args.vocabulary.name}; word<TAB>ancestor:hops:depth,... (first noun sense)\n")
        fh.write("\n".join(lines) + "\n")
    logger.info("%d of %d vocabulary words have ancestors in the vocabulary (%d links) -> %s",
                len(lines), len(words), total, args.out)


if __name__ == "__main__":
    main()
