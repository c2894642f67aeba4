"""Pure building blocks of the objective evaluation (paper section 4.4).

Ground truth
    :class:`IoUAccumulator` (in :mod:`lavise.iou`, re-exported here) computes
    NetDissect's dataset-level IoU of every filter with every concept, streaming over
    images. A concept is a ground-truth concept of filter ``u`` when its IoU exceeds
    0.04 (:meth:`IoUAccumulator.ground_truth`); the highest-IoU concept is
    NetDissect's label (:meth:`IoUAccumulator.netdissect_labels`).

Scores
    :func:`recall_at_k` (|GT hit by the top-k words| / |GT|, averaged over filters
    with non-empty ground truth) and :func:`precision_at_1` (share of those filters
    whose first word hits a GT concept). :func:`score_method` bundles them, also
    restricted to unseen concepts, into a :class:`MethodScores` row of the paper's
    Table 2; :func:`scores_table` formats the rows.

Word matching
    Predicted items are words (``"light"``); concepts are dataset category names
    (``"traffic light"``, ``"wall-other-merged"``). A word *hits* a concept when its
    normalised form is one of :func:`concept_match_words` of the concept name: the
    name's tokens (lowercase, split on whitespace ``-`` ``_`` ``/`` ``,``, without
    the COCO panoptic suffixes ``merged``/``other``/``stuff``) plus the joined forms
    (``"traffic light"``, ``"trafficlight"``). So ``"light"``, ``"traffic"`` and
    ``"traffic light"`` all hit ``"traffic light"``; ``"wall"`` hits
    ``"wall-other-merged"``. This follows the published training code, where every
    token of a multi-word category is a positive target. A predicted item is
    normalised the same way (``"wall-other-merged"`` -> ``"wall"``), so NetDissect's
    concept-name labels are scored with the same protocol as words.

    With :class:`WordNetSynonyms` (reported separately), a word also hits a concept
    when one of the word's WordNet noun synonyms is a match word of the concept, or
    is a synonym of the concept's full (joined) name: ``"automobile"`` hits
    ``"car"``, ``"stoplight"`` hits ``"traffic light"``. Synonyms are looked up for
    the word and its WordNet base form (``"cars"`` -> ``"car"``).

Baselines and controls
    :func:`random_words_baseline`, :func:`constant_baseline`,
    :func:`netdissect_baseline` and the permutation :func:`specificity_test`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from lavise.iou import IoUAccumulator
from lavise.wordspace import normalise_concept_name

logger = logging.getLogger(__name__)

__all__ = [
    "IoUAccumulator",
    "concept_match_words",
    "normalise_word",
    "WordNetSynonyms",
    "recall_at_k",
    "precision_at_1",
    "restrict_ground_truth",
    "novel_concepts",
    "MethodScores",
    "score_method",
    "random_words_baseline",
    "constant_baseline",
    "netdissect_baseline",
    "SpecificityResult",
    "specificity_test",
    "scores_table",
    "DEFAULT_WORDNET_DIR",
]

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"

# ---------------------------------------------------------------------------- word matching


def concept_match_words(name: str) -> set[str]:
    """The words that hit a concept: its normalised tokens plus the joined forms.

    ``"traffic light"`` -> ``{"traffic", "light", "traffic light", "trafficlight"}``;
    ``"wall-other-merged"`` -> ``{"wall"}``. Tokens are lowercase, split on
    whitespace ``-`` ``_`` ``/`` ``,``, without ``merged``/``other``/``stuff``
    (see :func:`lavise.wordspace.normalise_concept_name`).
    """
    tokens = normalise_concept_name(name)
    out = set(tokens)
    if len(tokens) > 1:
        out.add(" ".join(tokens))
        out.add("".join(tokens))
    return out


def normalise_word(word: str) -> str:
    """A predicted word (or concept-name label) in matching form: its tokens joined by spaces."""
    tokens = normalise_concept_name(word)
    return " ".join(tokens) if tokens else word.strip().lower()


def wordnet_dir() -> Path:
    """Where the WordNet database is looked for: ``$LAVISE_WORDNET_DIR`` or ``/usr/share/wordnet``."""
    return Path(os.environ.get("LAVISE_WORDNET_DIR") or DEFAULT_WORDNET_DIR)


class WordNetSynonyms:
    """WordNet 3.0 noun synonyms, parsed directly from the database files.

    Reads ``index.noun`` (lemma -> synset offsets), ``data.noun`` (synset offset ->
    lemmas) and ``noun.exc`` (irregular plurals). Lemmas are lowercased and ``_``
    becomes a space. The parsed tables are cached per directory, so constructing the
    class again is free.

    Args:
        root: Directory of the WordNet database (default :func:`wordnet_dir`:
            ``$LAVISE_WORDNET_DIR``, else Debian ``wordnet-base``'s ``/usr/share/wordnet``).

    Raises:
        FileNotFoundError: When the database files are missing.
    """

    _cache: dict[str, tuple[dict[str, tuple[int, ...]], dict[int, tuple[str, ...]], dict[str, tuple[str, ...]]]] = {}

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else wordnet_dir())
        key = str(self.root.resolve())
        if key not in self._cache:
            missing = [f for f in ("index.noun", "data.noun") if not (self.root / f).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"WordNet database not found in {self.root} (missing {', '.join(missing)}); "
                    "install wordnet-base (apt-get install wordnet-base) or run without synonyms")
            self._cache[key] = self._load(self.root)
        self._index, self._synsets, self._exceptions = self._cache[key]
        self._memo: dict[str, frozenset[str]] = {}

    def __repr__(self) -> str:
        return f"WordNetSynonyms({str(self.root)!r}, lemmas={len(self._index)})"

    @staticmethod
    def _load(root: Path) -> tuple[dict[str, tuple[int, ...]], dict[int, tuple[str, ...]], dict[str, tuple[str, ...]]]:
        index: dict[str, tuple[int, ...]] = {}
        with open(root / "index.noun", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line or line[0] == " ":
                    continue
                parts = line.split()
                if len(parts) < 4:
                    continue
                n = int(parts[2])
                index[parts[0].lower().replace("_", " ")] = tuple(int(o) for o in parts[-n:])
        synsets: dict[int, tuple[str, ...]] = {}
        with open(root / "data.noun", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line or line[0] == " ":
                    continue
                parts = line.split(" ", 4 + 2 * 0x100)
                w_cnt = int(parts[3], 16)
                lemmas = []
                for j in range(w_cnt):
                    lemma = parts[4 + 2 * j]
                    paren = lemma.find("(")  # adjective markers, e.g. "galore(ip)"
                    if paren > 0:
                        lemma = lemma[:paren]
                    lemmas.append(lemma.lower().replace("_", " "))
                synsets[int(parts[0])] = tuple(dict.fromkeys(lemmas))
        exceptions: dict[str, tuple[str, ...]] = {}
        exc = root / "noun.exc"
        if exc.is_file():
            with open(exc, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) >= 2:
                        exceptions[parts[0].replace("_", " ")] = tuple(p.replace("_", " ") for p in parts[1:])
        logger.debug("WordNet: %d noun lemmas, %d synsets from %s", len(index), len(synsets), root)
        return index, synsets, exceptions

    def base_forms(self, word: str) -> set[str]:
        """The word's noun base forms in WordNet (itself if a lemma; ``"cars"`` -> ``{"car"}``)."""
        w = word.strip().lower().replace("_", " ")
        forms = {w} if w in self._index else set()
        forms.update(b for b in self._exceptions.get(w, ()) if b in self._index)
        for suffix, repl in (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                             ("shes", "sh"), ("men", "man"), ("ies", "y"), ("s", "")):
            if w.endswith(suffix) and len(w) > len(suffix):
                base = w[: len(w) - len(suffix)] + repl
                if base in self._index:
                    forms.add(base)
        return forms

    def synonyms(self, word: str) -> set[str]:
        """All lemmas of all noun synsets of the word (and its base forms); empty if not a noun."""
        w = word.strip().lower().replace("_", " ")
        hit = self._memo.get(w)
        if hit is None:
            out: set[str] = set()
            for form in self.base_forms(w):
                for off in self._index.get(form, ()):
                    out.update(self._synsets.get(off, ()))
            hit = frozenset(out)
            self._memo[w] = hit
        return set(hit)


class _Matcher:
    """Which concepts (by name) a predicted word hits; see the module docstring."""

    def __init__(self, synonyms: WordNetSynonyms | None = None) -> None:
        self.synonyms = synonyms
        self._concept_keys: dict[str, frozenset[str]] = {}
        self._word_keys: dict[str, frozenset[str]] = {}

    def concept_keys(self, name: str) -> frozenset[str]:
        keys = self._concept_keys.get(name)
        if keys is None:
            k = concept_match_words(name)
            if self.synonyms is not None:
                k |= self.synonyms.synonyms(normalise_word(name))
            keys = frozenset(k)
            self._concept_keys[name] = keys
        return keys

    def word_keys(self, word: str) -> frozenset[str]:
        keys = self._word_keys.get(word)
        if keys is None:
            norm = normalise_word(word)
            k = {norm}
            if self.synonyms is not None:
                k |= self.synonyms.synonyms(norm)
                k |= self.synonyms.synonyms(word)
            keys = frozenset(k)
            self._word_keys[word] = keys
        return keys

    def hits(self, words: Iterable[str], concepts: Iterable[str]) -> set[str]:
        """The concepts hit by at least one of ``words``."""
        keys: set[str] = set()
        for w in words:
            keys |= self.word_keys(w)
        return {c for c in concepts if not keys.isdisjoint(self.concept_keys(c))}


def _check_lengths(predicted: Sequence[Any], ground_truth: Sequence[Any]) -> None:
    if len(predicted) != len(ground_truth):
        raise ValueError(f"{len(predicted)} predicted word lists but {len(ground_truth)} ground-truth sets")


def _as_str_list(words: Any, where: str) -> list[str]:
    if isinstance(words, str):
        raise ValueError(f"{where}: expected a list of words, got the string {words!r}")
    return list(words)


def recall_at_k(
    predicted: Sequence[Sequence[str]],
    ground_truth: Sequence[Iterable[str]],
    k: int,
    synonyms: WordNetSynonyms | None = None,
) -> float:
    """Mean over filters with non-empty ground truth of ``|GT hit by top-k words| / |GT|``.

    Args:
        predicted: Ranked words of each filter.
        ground_truth: Ground-truth concept names of each filter (same order).
        k: Number of top words considered.
        synonyms: Optional WordNet synonyms for lenient matching.

    Raises:
        ValueError: When lengths differ, ``k < 1``, or no filter has ground truth.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_lengths(predicted, ground_truth)
    matcher = _Matcher(synonyms)
    total, n = 0.0, 0
    for u, (words, gt) in enumerate(zip(predicted, ground_truth)):
        gt_set = set(gt)
        if not gt_set:
            continue
        top = _as_str_list(words, f"filter {u}")[:k]
        total += len(matcher.hits(top, gt_set)) / len(gt_set)
        n += 1
    if n == 0:
        raise ValueError("no filter has ground truth; recall is undefined")
    return total / n


def precision_at_1(
    predicted: Sequence[Sequence[str]],
    ground_truth: Sequence[Iterable[str]],
    synonyms: WordNetSynonyms | None = None,
) -> float:
    """Share of filters with non-empty ground truth whose first word hits a GT concept.

    A filter with no predicted word counts as a miss.

    Raises:
        ValueError: When lengths differ or no filter has ground truth.
    """
    _check_lengths(predicted, ground_truth)
    matcher = _Matcher(synonyms)
    hits, n = 0, 0
    for u, (words, gt) in enumerate(zip(predicted, ground_truth)):
        gt_set = set(gt)
        if not gt_set:
            continue
        n += 1
        top = _as_str_list(words, f"filter {u}")[:1]
        if top and matcher.hits(top, gt_set):
            hits += 1
    if n == 0:
        raise ValueError("no filter has ground truth; precision is undefined")
    return hits / n


def restrict_ground_truth(ground_truth: Sequence[Iterable[str]], concepts: Iterable[str]) -> list[set[str]]:
    """Each filter's ground truth restricted to ``concepts`` (e.g. the unseen ones).

    Filters left with an empty set then drop out of :func:`recall_at_k` and
    :func:`precision_at_1`, so only filters whose ground truth contains at least
    one of ``concepts`` count, with just those concepts as their ground truth.
    """
    keep = set(concepts)
    return [set(gt) & keep for gt in ground_truth]


def novel_concepts(concepts: Iterable[str], known: Iterable[str]) -> set[str]:
    """The ``concepts`` that no ``known`` concept names, by the word-matching rule.

    A concept is *novel* when none of its match words (:func:`concept_match_words`:
    tokens and joined forms) is a match word of any known concept. The rule is
    strict on purpose: ``"light"`` is not novel when ``"traffic light"`` is known,
    since the explainer was trained toward the word ``light``.

    Args:
        concepts: Concept names of the evaluation set.
        known: The concepts of the explainer's training references (seen, unseen
            and without a word vector); add image-level target words (caption nouns)
            for the strict reading.
    """
    known_words: set[str] = set()
    for k in known:
        known_words |= concept_match_words(k)
    return {c for c in concepts if concept_match_words(c).isdisjoint(known_words)}


@dataclass(frozen=True)
class MethodScores:
    """One row of the paper's Table 2: a method's objective scores.

    Attributes:
        method: Method (or baseline) name.
        recall: k -> mean recall@k over filters with ground truth.
        recall_unseen: k -> recall@k restricted to unseen concepts (filters whose
            ground truth holds an unseen concept, ground truth = those concepts);
            None when no unseen set was given or no filter has an unseen concept.
        precision_at_1: Share of filters whose first word hits their ground truth.
        filters_with_ground_truth: Filters that count (non-empty ground truth).
        num_filters: Filters scored (with or without ground truth).
        filters_with_unseen_ground_truth: Filters counted in ``recall_unseen``
            (None without an unseen set).
        synonyms: Whether WordNet synonym matching was used.
        recall_novel: k -> recall@k restricted to novel concepts (no training
            reference annotates them; see :func:`novel_concepts`), over the filters
            whose ground truth holds one; None without a novel set or such filters.
        filters_with_novel_ground_truth: Filters counted in ``recall_novel``.
    """

    method: str
    recall: dict[int, float]
    recall_unseen: dict[int, float] | None
    precision_at_1: float
    filters_with_ground_truth: int
    num_filters: int
    filters_with_unseen_ground_truth: int | None = None
    synonyms: bool = False
    recall_novel: dict[int, float] | None = None
    filters_with_novel_ground_truth: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the k keys of the recall dicts become strings)."""
        return {
            "method": self.method,
            "recall": {str(k): float(v) for k, v in self.recall.items()},
            "recall_unseen": (None if self.recall_unseen is None
                              else {str(k): float(v) for k, v in self.recall_unseen.items()}),
            "precision_at_1": float(self.precision_at_1),
            "filters_with_ground_truth": int(self.filters_with_ground_truth),
            "num_filters": int(self.num_filters),
            "filters_with_unseen_ground_truth": self.filters_with_unseen_ground_truth,
            "synonyms": self.synonyms,
            "recall_novel": (None if self.recall_novel is None
                             else {str(k): float(v) for k, v in self.recall_novel.items()}),
            "filters_with_novel_ground_truth": self.filters_with_novel_ground_truth,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodScores:
        """Inverse of :meth:`to_dict`."""
        ru = data.get("recall_unseen")
        rn = data.get("recall_novel")
        return cls(
            method=str(data["method"]),
            recall={int(k): float(v) for k, v in data["recall"].items()},
            recall_unseen=None if ru is None else {int(k): float(v) for k, v in ru.items()},
            precision_at_1=float(data["precision_at_1"]),
            filters_with_ground_truth=int(data["filters_with_ground_truth"]),
            num_filters=int(data["num_filters"]),
            filters_with_unseen_ground_truth=data.get("filters_with_unseen_ground_truth"),
            synonyms=bool(data.get("synonyms", False)),
            recall_novel=None if rn is None else {int(k): float(v) for k, v in rn.items()},
            filters_with_novel_ground_truth=data.get("filters_with_novel_ground_truth"),
        )


def score_method(
    method: str,
    predicted_words: Sequence[Sequence[str]],
    ground_truth: Sequence[Sequence[str]],
    unseen: Iterable[str] | None = None,
    ks: Sequence[int] = (5, 10, 20),
    synonyms: WordNetSynonyms | None = None,
    novel: Iterable[str] | None = None,
) -> MethodScores:
    """Scores one method's ranked words against per-filter ground-truth concept names.

    Args:
        method: Name of the row.
        predicted_words: Ranked words of each filter.
        ground_truth: Ground-truth concept names of each filter (same order).
        unseen: Concept names held out of training; adds ``recall_unseen``.
        ks: Recall cut-offs.
        synonyms: WordNet synonyms for lenient matching (report as a separate row).
        novel: Concept names no training reference annotates; adds ``recall_novel``.

    Raises:
        ValueError: On mismatched lengths, bad ``ks`` or no filter with ground truth.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    _check_lengths(predicted_words, ground_truth)
    gts = [set(g) for g in ground_truth]
    n_gt = sum(1 for g in gts if g)
    if n_gt == 0:
        raise ValueError(f"{method}: no filter has ground truth; nothing to score")
    recall = {k: recall_at_k(predicted_words, gts, k, synonyms) for k in ks}
    p1 = precision_at_1(predicted_words, gts, synonyms)

    def restricted_recall(concepts: Iterable[str] | None, kind: str) -> tuple[dict[int, float] | None, int | None]:
        """Recall@k against only the ground truth among ``concepts`` (unseen, novel)."""
        if concepts is None:
            return None, None
        restricted = restrict_ground_truth(gts, concepts)
        n = sum(1 for g in restricted if g)
        if not n:
            logger.info("%s: no filter has a %s ground-truth concept; no %s recall", method, kind, kind)
            return None, n
        return {k: recall_at_k(predicted_words, restricted, k, synonyms) for k in ks}, n

    recall_unseen, n_unseen = restricted_recall(unseen, "unseen")
    recall_novel, n_novel = restricted_recall(novel, "novel")
    return MethodScores(method, recall, recall_unseen, p1, n_gt, len(gts), n_unseen, synonyms is not None,
                        recall_novel, n_novel)


# ---------------------------------------------------------------------------- baselines


def random_words_baseline(vocabulary_words: Sequence[str], num_filters: int, x: int, seed: int = 0) -> list[list[str]]:
    """``x`` distinct words drawn uniformly from the vocabulary for each filter.

    Raises:
        ValueError: When the vocabulary has fewer than ``x`` distinct words.
    """
    words = list(dict.fromkeys(vocabulary_words))
    if x < 1:
        raise ValueError(f"x must be >= 1, got {x}")
    if num_filters < 0:
        raise ValueError(f"num_filters must be >= 0, got {num_filters}")
    if len(words) < x:
        raise ValueError(f"the vocabulary has {len(words)} distinct words, fewer than x = {x}")
    rng = random.Random(seed)
    return [rng.sample(words, x) for _ in range(num_filters)]


def constant_baseline(
    ground_truth: Sequence[Sequence[str]],
    x: int,
    exclude_filters: Iterable[int] | None = None,
    *,
    ground_truth_source: Sequence[Sequence[str]] | None = None,
) -> list[list[str]]:
    """The ``x`` most frequent ground-truth concepts, as the same list for every filter.

    Concepts are ranked by the number of filters whose ground truth holds them (ties
    by name). Counted on ``ground_truth`` itself (the evaluation ground truth) this is
    an **oracle** upper bound of the baseline: it knows the answer's distribution.
    Pass the ground truth of a separate split (e.g. the training images) as
    ``ground_truth_source`` for the fair version.

    Args:
        ground_truth: Ground truth of the filters to predict for (one list is returned
            per entry).
        x: Length of the list.
        exclude_filters: Indices into the counted lists (``ground_truth_source`` if
            given, else ``ground_truth``) left out of the count.
        ground_truth_source: Ground truth to count on instead (separate split).

    Returns:
        ``len(ground_truth)`` copies of the list (fewer than ``x`` concepts if the
        counted ground truth has fewer).
    """
    if x < 1:
        raise ValueError(f"x must be >= 1, got {x}")
    source = ground_truth if ground_truth_source is None else ground_truth_source
    skip = set(exclude_filters or ())
    counts: dict[str, int] = {}
    for u, gt in enumerate(source):
        if u in skip:
            continue
        for c in set(gt):
            counts[c] = counts.get(c, 0) + 1
    top = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:x]]
    if not top:
        logger.warning("constant baseline: the counted ground truth is empty")
    return [list(top) for _ in ground_truth]


def netdissect_baseline(
    labels: Sequence[str | None] | torch.Tensor,
    concepts: Sequence[str] | None = None,
) -> list[list[str]]:
    """One word per filter: NetDissect's top-IoU concept name (empty list for None).

    Args:
        labels: Concept names, or concept ids (with ``concepts``) such as the first
            output of :meth:`IoUAccumulator.netdissect_labels`.
        concepts: Names of the concept ids.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    out: list[list[str]] = []
    for lab in labels:
        if lab is None:
            out.append([])
        elif isinstance(lab, str):
            out.append([lab])
        else:
            if concepts is None:
                raise ValueError("concept ids given as labels need the concept names (concepts=...)")
            out.append([concepts[int(lab)]])
    return out


@dataclass(frozen=True)
class SpecificityResult:
    """Permutation control: are a filter's words specific to its own ground truth?

    Attributes:
        observed_recall: recall@k of each filter's words against its own ground truth.
        null_mean: Mean recall@k against permuted (other filters') ground truth.
        null_std: Standard deviation of the null recalls.
        p_value: ``(1 + #{null >= observed}) / (1 + permutations)``.
        k: Recall cut-off.
        permutations: Number of permutations.
        filters: Filters with ground truth that took part.
    """

    observed_recall: float
    null_mean: float
    null_std: float
    p_value: float
    k: int
    permutations: int
    filters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed_recall": float(self.observed_recall), "null_mean": float(self.null_mean),
            "null_std": float(self.null_std), "p_value": float(self.p_value), "k": int(self.k),
            "permutations": int(self.permutations), "filters": int(self.filters),
        }


def _hit_matrix(
    predicted: Sequence[Sequence[str]], gts: Sequence[set[str]], k: int, synonyms: WordNetSynonyms | None,
) -> torch.Tensor:
    """H[u, v] = |concepts of GT(v) hit by top-k(u)| / |GT(v)|, via a (m, C) x (C, m) product."""
    concepts = sorted(set().union(*gts))
    col = {c: j for j, c in enumerate(concepts)}
    matcher = _Matcher(synonyms)
    key_to_cols: dict[str, list[int]] = {}
    for c in concepts:
        for key in matcher.concept_keys(c):
            key_to_cols.setdefault(key, []).append(col[c])
    m, n_c = len(gts), len(concepts)
    hit = torch.zeros(m, n_c, dtype=torch.float64)
    for u, words in enumerate(predicted):
        cols: set[int] = set()
        for w in _as_str_list(words, f"filter {u}")[:k]:
            for key in matcher.word_keys(w):
                cols.update(key_to_cols.get(key, ()))
        if cols:
            hit[u, list(cols)] = 1.0
    member = torch.zeros(m, n_c, dtype=torch.float64)
    for v, g in enumerate(gts):
        member[v, [col[c] for c in g]] = 1.0
    return (hit @ member.T) / member.sum(1)[None, :]


def specificity_test(
    predicted: Sequence[Sequence[str]],
    ground_truth: Sequence[Iterable[str]],
    k: int = 10,
    permutations: int = 1000,
    seed: int = 0,
    synonyms: WordNetSynonyms | None = None,
) -> SpecificityResult:
    """Permutation test of recall@k against other filters' ground truth.

    Among the filters with non-empty ground truth, the ground-truth lists are
    shuffled by a uniformly random permutation and recall@k is recomputed, ``permutations``
    times. A permutation may leave some filters on their own ground truth (it is not
    forced to be a derangement), which keeps the null exact for the hypothesis "words
    are exchangeable across filters" and makes the test slightly conservative.
    The hit matrix ``H[u, v]`` is built once; each permutation is a gather and a mean.

    Args:
        predicted: Ranked words of each filter.
        ground_truth: Ground-truth concept names of each filter.
        k: Recall cut-off.
        permutations: Number of random permutations.
        seed: Seed of the permutations.
        synonyms: Optional WordNet synonyms for matching.

    Raises:
        ValueError: On mismatched lengths, bad ``k``/``permutations``, or fewer than
            two filters with ground truth.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    _check_lengths(predicted, ground_truth)
    pairs = [(list(w), set(g)) for w, g in zip(predicted, ground_truth)]
    pairs = [(w, g) for w, g in pairs if g]
    m = len(pairs)
    if m < 2:
        raise ValueError(f"the specificity test needs at least 2 filters with ground truth, got {m}")
    h = _hit_matrix([w for w, _ in pairs], [g for _, g in pairs], k, synonyms)
    observed = float(h.diagonal().mean())
    gen = torch.Generator().manual_seed(int(seed))
    rows = torch.arange(m)
    chunk = max(1, (1 << 22) // m)
    nulls = []
    for p0 in range(0, permutations, chunk):
        n = min(chunk, permutations - p0)
        perm = torch.argsort(torch.rand(n, m, generator=gen), dim=1)  # (n, m): GT of filter u is perm[:, u]
        nulls.append(h[rows.expand(n, m), perm].mean(1))
    null = torch.cat(nulls)
    exceed = int((null >= observed - 1e-12).sum())
    return SpecificityResult(
        observed_recall=observed,
        null_mean=float(null.mean()),
        null_std=float(null.std(unbiased=False)),
        p_value=(1 + exceed) / (1 + permutations),
        k=k, permutations=permutations, filters=m,
    )


# ---------------------------------------------------------------------------- table


def scores_table(scores: Sequence[MethodScores], fmt: str = "markdown") -> str:
    """Formats rows like the paper's Table 2.

    Columns: method, recall@k for every k (all concepts), recall@k (unseen concepts),
    recall@k (novel concepts, only when some row has them), precision@1, filters with ground truth. Missing values are ``-`` (markdown) or
    empty (csv).

    Args:
        scores: The rows.
        fmt: ``"markdown"`` or ``"csv"``.
    """
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
    ks = sorted({k for s in scores for k in s.recall} | {k for s in scores for k in (s.recall_unseen or {})})
    has_novel = any(s.recall_novel for s in scores)
    header = (["method"] + [f"recall@{k}" for k in ks] + [f"recall@{k} (unseen)" for k in ks]
              + ([f"recall@{k} (novel)" for k in ks] if has_novel else [])
              + ["precision@1", "filters with GT"])
    rows: list[list[str | None]] = []
    for s in scores:
        ru = s.recall_unseen or {}
        rn = s.recall_novel or {}
        rows.append([s.method]
                    + [_fmt(s.recall.get(k)) for k in ks]
                    + [_fmt(ru.get(k)) for k in ks]
                    + ([_fmt(rn.get(k)) for k in ks] if has_novel else [])
                    + [_fmt(s.precision_at_1), f"{s.filters_with_ground_truth}/{s.num_filters}"])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            writer.writerow(["" if v is None else v for v in r])
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        cells = ["-" if v is None else str(v).replace("|", "\\|") for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return f"{value:.3f}"
