"""Pure building blocks of the objective evaluation (paper section 4.4).

Ground truth
    :class:`IoUAccumulator` computes NetDissect's dataset-level IoU of every filter
    with every concept, streaming over images. A concept is a ground-truth concept of
    filter ``u`` when its IoU exceeds 0.04 (:meth:`IoUAccumulator.ground_truth`);
    the highest-IoU concept is NetDissect's label
    (:meth:`IoUAccumulator.netdissect_labels`).

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
import torch.nn.functional as F

from lavise.wordspace import normalise_concept_name
from lavise.statistics import fires

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
# Elements of one upsampled (filters x pixels) activation block: 2**24 floats = 64 MiB.
_BLOCK_ELEMENTS = 1 << 24


# ---------------------------------------------------------------------------- IoU


class IoUAccumulator:
    """Streaming NetDissect IoU of every filter with every concept over a dataset.

    For each image, each filter's activation map is upsampled bilinearly
    (``align_corners=False``) to the evaluation grid and thresholded
    (``lavise.statistics.fires``: activation >= T_u and > 0) into a boolean activation mask ``A_u``; the concept masks
    ``M_c`` are brought to the same grid. Over all images the accumulator sums::

        intersection[u, c] += |A_u & M_c|
        act_area[u]        += |A_u|        (every image, whatever its concepts)
        mask_area[c]       += |M_c|

    and the dataset-level IoU is NetDissect's
    ``sum_i |A_u & M_c| / sum_i |A_u | M_c|`` with both sums over **all** images::

        union[u, c] = act_area[u] + mask_area[c] - intersection[u, c]

    so an image that does not contain concept ``c`` still adds its ``|A_u|`` to the
    union of ``(u, c)``: a filter firing everywhere gets a low IoU with every
    concept. Every image passed to :meth:`update` counts, including one with no
    masks; pass only the images that belong to the evaluation set.

    Grid: with ``resolution=r`` the masks (which arrive at the transformed image
    resolution, e.g. 224 x 224) are resized to ``r x r`` by area interpolation and
    binarised at > 0.5, and the activation maps are upsampled to ``r x r``; with
    ``resolution=None`` both are compared at each image's mask resolution.
    Several masks with the same concept id on one image are merged (union).

    Memory is bounded: images are processed one at a time and filters in blocks of
    at most ``2**24`` upsampled values. Counters are ``int64`` on ``device``
    (default: the device of the first features passed to :meth:`update`).

    Args:
        num_filters: Number of filters ``d`` of the layer.
        num_concepts: Number of concepts ``C`` (concept ids index ``range(C)``).
        resolution: Side of the evaluation grid, or None for the mask resolution.
        device: Device of the counters (None: follow the first update's features).
    """

    def __init__(
        self,
        num_filters: int,
        num_concepts: int,
        resolution: int | None = 112,
        device: str | torch.device | None = None,
    ) -> None:
        if num_filters < 1:
            raise ValueError(f"num_filters must be >= 1, got {num_filters}")
        if num_concepts < 1:
            raise ValueError(f"num_concepts must be >= 1, got {num_concepts}")
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be >= 1 or None, got {resolution}")
        self.num_filters = int(num_filters)
        self.num_concepts = int(num_concepts)
        self.resolution = None if resolution is None else int(resolution)
        self.device: torch.device | None = None if device is None else torch.device(device)
        self.images = 0
        self._intersection: torch.Tensor | None = None
        self._act_area: torch.Tensor | None = None
        self._mask_area: torch.Tensor | None = None
        if self.device is not None:
            self._allocate(self.device)

    def __repr__(self) -> str:
        return (f"IoUAccumulator(num_filters={self.num_filters}, num_concepts={self.num_concepts}, "
                f"resolution={self.resolution}, images={self.images})")

    def _allocate(self, device: torch.device) -> None:
        self.device = device
        self._intersection = torch.zeros(self.num_filters, self.num_concepts, dtype=torch.long, device=device)
        self._act_area = torch.zeros(self.num_filters, dtype=torch.long, device=device)
        self._mask_area = torch.zeros(self.num_concepts, dtype=torch.long, device=device)

    def _counters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._intersection is None:
            self._allocate(torch.device("cpu"))
        assert self._intersection is not None and self._act_area is not None and self._mask_area is not None
        return self._intersection, self._act_area, self._mask_area

    @property
    def intersection(self) -> torch.Tensor:
        """(d, C) summed ``|A_u & M_c|`` (int64)."""
        return self._counters()[0]

    @property
    def act_area(self) -> torch.Tensor:
        """(d,) summed ``|A_u|`` over all images (int64)."""
        return self._counters()[1]

    @property
    def mask_area(self) -> torch.Tensor:
        """(C,) summed ``|M_c|`` over all images (int64)."""
        return self._counters()[2]

    def update(
        self,
        features: torch.Tensor,
        thresholds: torch.Tensor,
        masks: Sequence[torch.Tensor],
        concept_ids: Sequence[torch.Tensor],
    ) -> None:
        """Adds a batch of images.

        Args:
            features: (B, d, h, w) activations of the layer.
            thresholds: (d,) per-filter thresholds ``T_u``.
            masks: B tensors (K_i, H, W) of 0/1 (uint8 or bool) concept masks.
            concept_ids: B LongTensors (K_i,) with the concept id of each mask.

        Raises:
            ValueError: On inconsistent shapes or out-of-range concept ids.
        """
        if features.dim() != 4:
            raise ValueError(f"features must be (B, d, h, w), got shape {tuple(features.shape)}")
        b, d = features.shape[:2]
        if d != self.num_filters:
            raise ValueError(f"features have {d} filters, the accumulator {self.num_filters}")
        if thresholds.shape != (d,):
            raise ValueError(f"thresholds must have shape ({d},), got {tuple(thresholds.shape)}")
        if len(masks) != b or len(concept_ids) != b:
            raise ValueError(f"got {b} feature maps but {len(masks)} mask sets and {len(concept_ids)} id sets")
        if self.device is None:
            self._allocate(features.device)
        inter_acc, act_acc, mask_acc = self._counters()
        dev = self.device
        feats = features.to(dev, torch.float32)
        thr = thresholds.to(dev, torch.float32).view(d, 1)
        for i in range(b):
            m = torch.as_tensor(masks[i]).as_subclass(torch.Tensor).to(dev)
            ids = torch.as_tensor(concept_ids[i]).as_subclass(torch.Tensor).to(dev, torch.long).reshape(-1)
            if m.dim() != 3 or m.shape[0] != ids.numel():
                raise ValueError(
                    f"image {i}: masks must be (K, H, W) with K = {ids.numel()} concept ids, got {tuple(m.shape)}")
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_concepts):
                raise ValueError(f"image {i}: concept ids must lie in [0, {self.num_concepts})")
            size = (m.shape[1], m.shape[2]) if self.resolution is None else (self.resolution, self.resolution)
            mflat, uids = self._prepare_masks(m, ids, size)  # (K', P) float 0/1, (K',)
            npix = size[0] * size[1]
            block = max(1, _BLOCK_ELEMENTS // max(npix, 1))
            # Bilinear upsampling never exceeds the map's maximum, so a filter that does
            # not fire anywhere on the feature map fires nowhere on the grid: skip it.
            active = torch.nonzero(fires(feats[i].amax(dim=(1, 2)), thr[:, 0])).flatten()
            for a0 in range(0, active.numel(), block):
                units = active[a0:a0 + block]
                up = F.interpolate(feats[i:i + 1, units], size=size, mode="bilinear", align_corners=False)
                act = fires(up[0].reshape(units.numel(), npix), thr[units]).to(torch.float32)  # (U, P)
                act_acc.index_add_(0, units, act.sum(1).round().to(torch.long))
                if uids.numel():
                    inter = act @ mflat.T  # (U, K') exact integers in float32 (P < 2**24)
                    inter_acc[units[:, None], uids[None, :]] += inter.round().to(torch.long)
            if uids.numel():
                mask_acc.index_add_(0, uids, mflat.sum(1).round().to(torch.long))
        self.images += b

    @staticmethod
    def _prepare_masks(m: torch.Tensor, ids: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks on the grid, flattened, one row per distinct concept id."""
        if ids.numel() == 0:
            return m.new_zeros((0, size[0] * size[1]), dtype=torch.float32), ids
        mf = (m != 0).to(torch.float32) if m.dtype == torch.bool or not m.is_floating_point() else (m > 0.5).float()
        if tuple(mf.shape[1:]) != size:
            mf = (F.interpolate(mf[None], size=size, mode="area")[0] > 0.5).to(torch.float32)
        mf = mf.reshape(mf.shape[0], -1)
        uids, inverse = torch.unique(ids, return_inverse=True)
        if uids.numel() != ids.numel():
            merged = mf.new_zeros((uids.numel(), mf.shape[1]))
            merged.index_add_(0, inverse, mf)
            mf = merged.clamp_(max=1.0)
        else:
            order = torch.argsort(inverse)
            mf = mf[order]
        return mf, uids

    def iou(self) -> torch.Tensor:
        """(d, C) dataset-level IoU ``sum |A & M| / sum |A | M|`` (0 where the union is empty)."""
        inter, act, mask = self._counters()
        dtype = torch.float32 if inter.device.type == "mps" else torch.float64
        i = inter.to(dtype)
        union = act.to(dtype)[:, None] + mask.to(dtype)[None, :] - i
        out = torch.where(union > 0, i / union.clamp(min=1), torch.zeros_like(i))
        return out.to(torch.float32)

    def ground_truth(self, threshold: float = 0.04) -> list[list[int]]:
        """Concept ids with IoU > ``threshold`` for each filter, highest IoU first."""
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"IoU threshold must lie in [0, 1), got {threshold}")
        iou = self.iou()
        values, order = torch.sort(iou, dim=1, descending=True, stable=True)
        counts = (values > threshold).sum(1).tolist()
        order_rows = order.cpu().tolist()
        return [row[:n] for row, n in zip(order_rows, counts)]

    def netdissect_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """NetDissect's label of each filter: the highest-IoU concept and that IoU.

        Returns:
            ``(labels (d,) int64, iou (d,) float32)``; a filter with IoU 0 with every
            concept gets concept 0 with IoU 0 (check the IoU before using the label).
        """
        values, labels = self.iou().max(dim=1)
        return labels, values

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
        """Adds another accumulator's counters (e.g. a shard from another process); returns self."""
        if not isinstance(other, IoUAccumulator):
            raise ValueError(f"can only merge an IoUAccumulator, got {type(other).__name__}")
        if (other.num_filters, other.num_concepts, other.resolution) != (
                self.num_filters, self.num_concepts, self.resolution):
            raise ValueError(
                "cannot merge accumulators with different (filters, concepts, resolution): "
                f"{(self.num_filters, self.num_concepts, self.resolution)} vs "
                f"{(other.num_filters, other.num_concepts, other.resolution)}")
        inter, act, mask = self._counters()
        o_inter, o_act, o_mask = other._counters()
        inter += o_inter.to(inter.device)
        act += o_act.to(act.device)
        mask += o_mask.to(mask.device)
        self.images += other.images
        return self

    def state_dict(self) -> dict[str, Any]:
        """The counters (on CPU) and settings, for ``torch.save`` or :meth:`load_state_dict`."""
        inter, act, mask = self._counters()
        return {
            "num_filters": self.num_filters,
            "num_concepts": self.num_concepts,
            "resolution": self.resolution,
            "images": self.images,
            "intersection": inter.cpu().clone(),
            "act_area": act.cpu().clone(),
            "mask_area": mask.cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replaces the counters by those of :meth:`state_dict` (same filters/concepts/resolution)."""
        try:
            key = (int(state["num_filters"]), int(state["num_concepts"]), state["resolution"])
            inter, act, mask = state["intersection"], state["act_area"], state["mask_area"]
        except KeyError as exc:
            raise ValueError(f"not an IoUAccumulator state: missing {exc.args[0]!r}") from None
        if key != (self.num_filters, self.num_concepts, self.resolution):
            raise ValueError(
                f"state is for (filters, concepts, resolution) = {key}, this accumulator is "
                f"{(self.num_filters, self.num_concepts, self.resolution)}")
        d, c = self.num_filters, self.num_concepts
        if tuple(inter.shape) != (d, c) or tuple(act.shape) != (d,) or tuple(mask.shape) != (c,):
            raise ValueError("state counters have the wrong shapes")
        dev = self.device or torch.device("cpu")
        self._allocate(dev)
        self._intersection.copy_(inter.to(torch.long))  # type: ignore[union-attr]
        self._act_area.copy_(act.to(torch.long))  # type: ignore[union-attr]
        self._mask_area.copy_(mask.to(torch.long))  # type: ignore[union-attr]
        self.images = int(state.get("images", 0))


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
    recall_unseen: dict[int, float] | None = None
    n_unseen: int | None = None
    if unseen is not None:
        restricted = restrict_ground_truth(gts, unseen)
        n_unseen = sum(1 for g in restricted if g)
        if n_unseen:
            recall_unseen = {k: recall_at_k(predicted_words, restricted, k, synonyms) for k in ks}
        else:
            logger.info("%s: no filter has an unseen ground-truth concept; no unseen recall", method)
    recall_novel: dict[int, float] | None = None
    n_novel: int | None = None
    if novel is not None:
        restricted = restrict_ground_truth(gts, novel)
        n_novel = sum(1 for g in restricted if g)
        if n_novel:
            recall_novel = {k: recall_at_k(predicted_words, restricted, k, synonyms) for k in ks}
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
