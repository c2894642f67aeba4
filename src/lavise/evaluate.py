"""Evaluate explanations against segmentation masks (paper sections 4.3-4.5).

Ground truth per filter follows NetDissect: the filter's activation map upsampled
to the annotation, thresholded at T_u, and IoU with every concept's masks summed
over the dataset; concepts with IoU > 0.04 are the filter's ground truth. Each
masking method's words are scored by recall@k and precision@1 against it, beside
baselines that a reader needs to judge the numbers: NetDissect's label, random
words, a constant list of the most common ground-truth concepts, and a
specificity control (each filter's words against another filter's ground truth).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from lavise._io import write_json_atomic, write_text_atomic
from lavise.config import Config
from lavise.explain import explain_filters
from lavise.features import features_with_masks
from lavise.explainer import Explainer
from lavise.iou import iou_cache_key, load_cached_iou, save_cached_iou
from lavise.masking import list_masking_methods
from lavise.metrics import (
    IoUAccumulator,
    MethodScores,
    WordNetSynonyms,
    constant_baseline,
    novel_concepts,
    random_words_baseline,
    score_method,
    scores_table,
    specificity_test,
)
from lavise.statistics import FilterStats

logger = logging.getLogger(__name__)

__all__ = ["GroundTruth", "FilterEvaluation", "EvaluationReport", "compute_ground_truth", "evaluate"]


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth concepts of each filter of a layer on an annotated dataset.

    Attributes:
        concepts: The dataset's concept names (columns of ``iou``).
        iou: (d, C) dataset-level IoU of each filter with each concept.
        threshold: IoU above which a concept is a filter's ground truth (0.04).
        per_filter: Ground-truth concept names of each filter, best IoU first.
    """

    concepts: tuple[str, ...]
    iou: torch.Tensor
    threshold: float
    per_filter: tuple[tuple[str, ...], ...]

    @property
    def filters_with_ground_truth(self) -> list[int]:
        return [u for u, gt in enumerate(self.per_filter) if gt]

    def netdissect_labels(self) -> list[str]:
        """Each filter's highest-IoU concept (NetDissect's label)."""
        best = self.iou.argmax(1).tolist()
        return [self.concepts[c] for c in best]


def compute_ground_truth(
    store: Any,
    dataset: Any,
    stats: FilterStats,
    *,
    resolution: int | None = 112,
    iou_threshold: float = 0.04,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache: bool = True,
) -> GroundTruth:
    """Streams over the dataset's masks and cached features, accumulating IoU.

    Memory stays bounded by one batch of upsampled maps, whatever the dataset size.
    With ``cache`` the IoU counters are stored beside the feature cache and reused by
    the next call with the same features, masks, thresholds and resolution
    (see :mod:`lavise.iou`).
    """
    d = store.shape[0]
    cacheable = cache and getattr(store, "path", None) is not None and hasattr(store, "meta")
    key = iou_cache_key(store, dataset, stats.thresholds, stats.quantile, resolution) if cacheable else None
    acc = load_cached_iou(store, key, d, len(dataset.concepts), resolution) if key else None
    if acc is None:
        acc = IoUAccumulator(d, len(dataset.concepts), resolution=resolution, device=device)
        thresholds = stats.thresholds.to(device)
        stream = features_with_masks(store, dataset, batch_size=batch_size, num_workers=num_workers,
                                     progress=progress, desc="ground truth (IoU)")
        for _, feats, masks, cids in stream:
            acc.update(feats.to(device), thresholds, [m.to(device) for m in masks], [c.to(device) for c in cids])
        if key:
            save_cached_iou(store, key, acc)
    iou = acc.iou().cpu()
    gt_ids = acc.ground_truth(iou_threshold)
    per_filter = tuple(tuple(dataset.concepts[c] for c in ids) for ids in gt_ids)
    return GroundTruth(tuple(dataset.concepts), iou, iou_threshold, per_filter)


@dataclass(frozen=True)
class FilterEvaluation:
    """Why one filter scores what it scores: its ground truth and every method's words.

    Attributes:
        filter: Filter index.
        ground_truth: ``(concept, IoU)`` of the concepts above the IoU threshold, best first.
        best: The highest-IoU concept and its IoU (NetDissect's label), even below the threshold.
        words: Each method's and baseline's words (only filters with ground truth are explained).
    """

    filter: int
    ground_truth: tuple[tuple[str, float], ...] = ()
    best: tuple[str, float] | None = None
    words: dict = field(default_factory=dict)

    @property
    def concepts(self) -> list[str]:
        """The ground-truth concept names, best IoU first."""
        return [c for c, _ in self.ground_truth]

    def to_dict(self) -> dict:
        return {"filter": self.filter, "ground_truth": [[c, round(i, 5)] for c, i in self.ground_truth],
                "best": [self.best[0], round(self.best[1], 5)] if self.best else None, "words": self.words}

    @classmethod
    def from_dict(cls, d: dict) -> "FilterEvaluation":
        best = d.get("best")
        return cls(int(d["filter"]), tuple((str(c), float(i)) for c, i in d.get("ground_truth", ())),
                   (str(best[0]), float(best[1])) if best else None,
                   {str(k): [str(w) for w in v] for k, v in d.get("words", {}).items()})


def filter_records(gt: GroundTruth, filters: Sequence[int], predictions: dict[str, list[list[str]]]
                   ) -> tuple[FilterEvaluation, ...]:
    """One :class:`FilterEvaluation` per filter of the layer.

    Args:
        gt: Ground truth of every filter.
        filters: The filters ``predictions`` are for (their list order).
        predictions: Method or baseline name -> words of each of ``filters``.
    """
    col = {c: i for i, c in enumerate(gt.concepts)}
    pos = {u: i for i, u in enumerate(filters)}
    best_iou, best_idx = gt.iou.max(1)
    out = []
    for u, concepts in enumerate(gt.per_filter):
        words = {name: list(ws[pos[u]]) for name, ws in predictions.items()} if u in pos else {}
        out.append(FilterEvaluation(
            u, tuple((c, float(gt.iou[u, col[c]])) for c in concepts),
            (gt.concepts[int(best_idx[u])], float(best_iou[u])) if gt.iou.shape[1] else None, words))
    return tuple(out)


@dataclass(frozen=True)
class EvaluationReport:
    """Scores of every method and baseline on one layer, shaped like the paper's Table 2."""

    model: str
    layer: str
    explainer: str
    dataset: str
    rows: tuple[MethodScores, ...]
    specificity: dict = field(default_factory=dict)
    ground_truth: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    filters: tuple[FilterEvaluation, ...] = ()

    def row(self, method: str) -> MethodScores:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(method)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "layer": self.layer, "explainer": self.explainer,
            "dataset": self.dataset, "rows": [r.to_dict() for r in self.rows],
            "specificity": self.specificity, "ground_truth": self.ground_truth,
            "settings": self.settings,
            "filters": [f.to_dict() for f in self.filters],
        }

    def to_markdown(self) -> str:
        head = (f"**{self.model} `{self.layer}`**, explainer `{self.explainer}`, target/reference "
                f"{self.dataset}: {self.ground_truth.get('filters_with_ground_truth')} of "
                f"{self.ground_truth.get('num_filters')} filters have ground truth")
        novel = self.ground_truth.get("novel_concepts")
        if novel:
            head += (f"; {self.ground_truth.get('filters_with_novel_ground_truth')} of them have a *novel* "
                     f"ground-truth concept (one of {len(novel)} that no training reference annotates")
            named = self.ground_truth.get("novel_concepts_named_by_caption_targets")
            head += f"; {len(named)} of those were caption targets in training)" if named else ")"
        head += ".\n\n"
        table = scores_table(list(self.rows), fmt="markdown")
        spec = ""
        if self.specificity:
            spec = "\n\nSpecificity control (recall@10 of each filter's words against a random other filter's ground truth):\n\n"
            spec += "| method | own | others (mean ± sd) | p-value |\n|---|---|---|---|\n"
            for m, s in self.specificity.items():
                spec += f"| {m} | {s['observed_recall']:.3f} | {s['null_mean']:.3f} ± {s['null_std']:.3f} | {s['p_value']:.4f} |\n"
        return head + table + spec

    def to_csv(self) -> str:
        return scores_table(list(self.rows), fmt="csv")

    def save(self, directory: str | Path, stem: str = "evaluation") -> list[Path]:
        directory = Path(directory)
        return [
            write_text_atomic(directory / f"{stem}.md", self.to_markdown() + "\n"),
            write_text_atomic(directory / f"{stem}.csv", self.to_csv()),
            write_json_atomic(directory / f"{stem}.json", self.to_dict()),
        ]

    def filters_csv(self) -> str:
        """One row per filter: ground-truth concepts with IoU, best concept, each method's words.

        (The same records are in :meth:`to_dict` under ``filters``; ``lavise evaluate``
        also writes this table as ``<stem>-filters.csv``.)
        """
        import csv
        import io

        methods = list(dict.fromkeys(m for f in self.filters for m in f.words))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["filter", "ground_truth", "best_concept", "best_iou", *methods])
        for f in self.filters:
            w.writerow([f.filter, " ".join(f"{c}:{i:.4f}" for c, i in f.ground_truth),
                        f.best[0] if f.best else "", f"{f.best[1]:.4f}" if f.best else "",
                        *[" ".join(f.words.get(m, [])) for m in methods]])
        return buf.getvalue()


def evaluate(
    explainer: Explainer | str | Path,
    reference: str | Any,
    split: str | None = None,
    *,
    methods: Sequence[str] | str = ("attention", "projection", "activation", "original"),
    config: Config | None = None,
    ks: Sequence[int] = (5, 10, 20),
    synonyms: bool = False,
    baselines: bool = True,
    train_reference: str | Sequence[str] | None = None,
    train_split: str | None = None,
    permutations: int = 1000,
    resolution: int | None = 112,
    kind: str | None = None,
    **overrides: Any,
) -> EvaluationReport:
    """Scores each masking method's words against the reference data's masks.

    Args:
        explainer: An :class:`Explainer` or a checkpoint folder.
        reference: Annotated target/reference dataset spec (``FORMAT:PATH``) or dataset.
        split: Its split (e.g. ``val2017``); must not overlap the training images.
        methods: Masking methods, or ``"all"``.
        config: Settings (vocabulary, p, s, quantile, device...).
        ks: Recall cut-offs; explanations keep ``max(ks)`` words.
        synonyms: Also report scores with WordNet synonym matching.
        baselines: Add NetDissect, random-word and constant-list baselines and the
            specificity control.
        train_reference: Annotated data disjoint from the evaluation images, for the
            non-oracle NetDissect and constant baselines (default: the checkpoint's).
        train_split: Its split.
        permutations: Permutations of the specificity control.
        resolution: Side of the grid IoU is computed on (None: the mask resolution).
        kind: Explainer kind to use instead of the checkpoint's (``trained``, ``conse``,
            ``trained+conse``).
    """
    from lavise.api import features_of, filter_stats, open_dataset, resolve_explainer, with_overrides
    from lavise.vocabulary import load_vocabulary

    config = with_overrides(config, overrides)
    syn = WordNetSynonyms() if synonyms else None  # before any work: missing WordNet is a one-line error
    explainer = resolve_explainer(explainer, config, kind=kind)
    if explainer.split is None:
        raise ValueError("the checkpoint has no concept split (seen/unseen); retrain it with lavise train")
    if isinstance(methods, str):
        methods = list_masking_methods() if methods == "all" else [m.strip() for m in methods.split(",")]
    for m in methods:
        if m not in list_masking_methods():
            raise ValueError(f"unknown masking method {m!r} (valid: {', '.join(list_masking_methods())})")
    dataset = open_dataset(reference, split, explainer.model)
    _check_disjoint(explainer, dataset)
    usable = set(dataset.concept_frequencies())
    if not usable:
        raise ValueError("the evaluation dataset has no concept masks")
    if not usable & set(explainer.split.concepts):
        raise ValueError("the evaluation dataset has no masks for any of the checkpoint's concepts")
    store = features_of(explainer.model, explainer.layer, dataset, config)
    stats = filter_stats(store, config)
    gt = compute_ground_truth(store, dataset, stats, resolution=resolution, num_workers=config.workers(),
                              device=config.resolved_device(), progress=config.progress)
    filters = gt.filters_with_ground_truth
    if not filters:
        raise ValueError("no filter has ground truth on this dataset (IoU > 0.04 with no concept)")
    gt_lists = [list(gt.per_filter[u]) for u in filters]
    unseen = set(explainer.split.unseen)
    novel = novel_concepts(usable, known_concepts(explainer))
    vocabulary = load_vocabulary(config.vocabulary, explainer.word_space, config.vocabulary_size,
                                 concepts=explainer.split.concepts, allow_offensive=config.allow_offensive)
    x = max(ks)
    top = min(config.top_images, len(store.valid_indices()))
    rows: list[MethodScores] = []
    predictions: dict[str, list[list[str]]] = {}
    image_loader = None
    for method in methods:
        if method == "image":
            from lavise.api import _image_loader

            image_loader = _image_loader(dataset, explainer.model)
        result = explain_filters(
            explainer, store, stats, vocabulary, filters=filters, method=method, top=top,
            s=config.s, x=x, ranking=config.ranking, images=image_loader, progress=config.progress, display=0,
        )
        predictions[method] = result.words()
    if baselines:
        predictions.update(_baselines(gt, filters, vocabulary, x, explainer, config, train_reference,
                                      train_split, dataset, resolution))
        novel_gt = [[c for c in g if c in novel] for g in gt_lists]
        if any(novel_gt):
            predictions["constant (oracle: eval-split top novel concepts)"] = constant_baseline(novel_gt, x)
    for name, words in predictions.items():
        rows.append(score_method(name, words, gt_lists, unseen, ks=tuple(ks), novel=novel))
        if syn is not None and not name.startswith("netdissect"):
            rows.append(score_method(f"{name} (+synonyms)", words, gt_lists, unseen, ks=tuple(ks), synonyms=syn,
                                     novel=novel))
    specificity = {}
    if baselines:
        for method in methods:
            res = specificity_test(predictions[method], gt_lists, k=10, permutations=permutations, seed=config.seed)
            specificity[method] = res.to_dict()
    counts = Counter(c for g in gt_lists for c in g)
    return EvaluationReport(
        model=explainer.model.name,
        layer=explainer.layer,
        explainer=explainer.kind,
        dataset=f"{getattr(dataset, 'name', 'dataset')}:{getattr(dataset, 'root', '')} {split or ''}".strip(),
        rows=tuple(rows),
        specificity=specificity,
        ground_truth={
            "num_filters": store.shape[0],
            "filters_with_ground_truth": len(filters),
            "images": len(store.valid_indices()),
            "concepts_with_masks": len(usable),
            "iou_threshold": gt.threshold,
            "most_common": counts.most_common(20),
            "unseen_concepts": sorted(unseen & usable),
            "novel_concepts": sorted(novel),
            "novel_concepts_named_by_caption_targets": sorted(
                novel - novel_concepts(novel, known_concepts(explainer, captions=True))),
            "filters_with_novel_ground_truth": sum(1 for g in gt_lists if set(g) & novel),
        },
        settings={"p": top, "s": config.s, "x": x, "quantile": config.quantile,
                  "vocabulary": config.vocabulary, "vocabulary_size": len(vocabulary),
                  "allow_offensive": config.allow_offensive,
                  "resolution": resolution, "methods": list(methods)},
        filters=filter_records(gt, filters, predictions),
    )


def _check_disjoint(explainer: Explainer, dataset: Any) -> None:
    """Refuses evaluation images the explainer was trained on, compared by content.

    Checkpoints record the content hashes of their training images; for older ones
    the training references are opened again and hashed.
    """
    from lavise.api import open_dataset
    from lavise.identity import MISSING_PREFIX

    training = explainer.meta.get("training", {})
    train_hashes = training.get("image_hashes")
    if train_hashes is None and training.get("references"):
        try:
            train_hashes = open_dataset(training["references"], training.get("split"), explainer.model).image_hashes
        except (ValueError, FileNotFoundError) as exc:
            logger.warning("cannot check that the evaluation images were not used for training "
                           "(the checkpoint predates content hashes and its references do not open: %s)", exc)
            return
    eval_hashes = dataset.image_hashes
    overlap = {h for h in set(train_hashes or ()) & set(eval_hashes) if not h.startswith(MISSING_PREFIX)}
    if overlap:
        first = next(i for i, h in zip(dataset.image_ids, eval_hashes) if h in overlap)
        raise ValueError(
            f"{len(overlap)} evaluation images were used to train the explainer (e.g. {first}, "
            "compared by file content); evaluate on a disjoint split or train with --exclude"
        )


def known_concepts(explainer: Explainer, *, captions: bool = False) -> set[str]:
    """The concepts an explainer's training references annotate (the complement of *novel*).

    All concepts of its training references (seen, unseen, and those dropped for lack
    of a word vector), as recorded in the checkpoint; with ``captions``, also the
    caption nouns it was trained on as image-level targets (the strict reading:
    concepts never named by any supervision).
    """
    split = explainer.split
    known = set(split.concepts) | set(split.missing) if split is not None else set()
    training = explainer.meta.get("training", {})
    known |= set(training.get("reference_concepts", ()))
    if captions:
        known |= set(training.get("caption_words", ()))
    return known


def _baselines(
    gt: GroundTruth, filters: list[int], vocabulary: Any, x: int, explainer: Explainer, config: Config,
    train_reference: Any, train_split: str | None, dataset: Any, resolution: int | None,
) -> dict[str, list[list[str]]]:
    """NetDissect, random-word and constant-list predictions for ``filters``."""
    from lavise.api import features_of, filter_stats, open_dataset

    out: dict[str, list[list[str]]] = {}
    gt_lists = [list(gt.per_filter[u]) for u in filters]
    train_gt = None
    training = explainer.meta.get("training", {})
    refs = train_reference or training.get("references")
    split = train_split if train_reference else training.get("split")
    if refs:
        try:
            train_ds = open_dataset(refs, split, explainer.model, exclude_hashes=list(dataset.image_hashes))
            train_store = features_of(explainer.model, explainer.layer, train_ds, config)
            train_stats = filter_stats(train_store, config)
            train_gt = compute_ground_truth(train_store, train_ds, train_stats, resolution=resolution,
                                            num_workers=config.workers(),
                                            device=config.resolved_device(), progress=config.progress)
        except (ValueError, FileNotFoundError) as exc:
            logger.warning("no training-split ground truth for the baselines: %s", exc)
    if train_gt is not None:
        labels = train_gt.netdissect_labels()
        has = set(train_gt.filters_with_ground_truth)
        out["netdissect (train-split labels)"] = [[labels[u]] if u in has else [] for u in filters]
        train_lists = [list(g) for g in train_gt.per_filter if g]
        out["constant (train-split top concepts)"] = constant_baseline(gt_lists, x, ground_truth_source=train_lists)
    labels = gt.netdissect_labels()
    out["netdissect (oracle: eval-split labels)"] = [[labels[u]] for u in filters]
    out["constant (oracle: eval-split top concepts)"] = constant_baseline(gt_lists, x)
    out["random words"] = random_words_baseline(vocabulary.words, len(filters), x, seed=config.seed)
    return out


def layers_table(reports: Sequence[EvaluationReport], methods: Sequence[str]) -> str:
    """One row per (layer, method) across several reports (paper Table 3), Markdown."""
    lines = ["| layer | method | recall@5 | recall@10 | recall@20 |", "|---|---|---:|---:|---:|"]
    for r in reports:
        for row in r.rows:
            if row.method in methods:
                lines.append(f"| {r.layer} | {row.method} | "
                             + " | ".join(f"{row.recall[k]:.3f}" for k in (5, 10, 20)) + " |")
    return "\n".join(lines) + "\n"
