"""The pipeline in a few calls: train an explainer, explain filters, evaluate them.

Example:
    >>> import lavise
    >>> explainer = lavise.train("efficientnet-lite0", "coco-panoptic:sample/coco-panoptic", "train2017")
    >>> result = lavise.explain(explainer, images="coco-panoptic:sample/coco-panoptic", split="val2017")
    >>> print(result.table())
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from lavise._cache import load_or_build
from lavise.config import Config
from lavise.datasets import ReferenceDataset, list_dataset_formats, load_dataset
from lavise.explain import Explanations, explain_filters
from lavise.explainer import (
    ConceptFeatures,
    Explainer,
    concat_features,
    fit_head,
    pool_concept_features,
    split_concepts,
)
from lavise.features import FeatureStore, extract_features
from lavise.models import TargetModel, load_model
from lavise.statistics import FilterStats, compute_filter_stats
from lavise.vocabulary import load_vocabulary, safe_vocabulary
from lavise.wordspace import WordSpace, load_word_space

logger = logging.getLogger(__name__)

__all__ = ["train", "explain", "prepare_model", "open_dataset", "features_of", "filter_stats", "shard_from_env"]


def prepare_model(model: str | TargetModel | None, config: Config) -> TargetModel:
    """Loads ``model`` (name or ready :class:`TargetModel`) onto the configured device."""
    if isinstance(model, TargetModel):
        target = model
    else:
        target = load_model(model or config.model, config.weights, allow_pickle=config.allow_pickle)
    return target.to(config.resolved_device())


def open_dataset(
    spec: str | ReferenceDataset | Sequence[str],
    split: str | None,
    model: TargetModel,
    exclude_hashes: Sequence[str] = (),
) -> Any:
    """A dataset (or several combined, deduplicated by content) with the model's preprocessing.

    Args:
        spec: ``FORMAT:PATH`` (optionally ``FORMAT:PATH@SPLIT``), a plain folder of images,
            a dataset, or a list of these.
        split: Split of the dataset specs (``train2017``...).
        model: Its preprocessing is applied to images and masks.
        exclude_hashes: Content hashes (``dataset.image_hashes``, see :mod:`lavise.identity`)
            of images to leave out, e.g. those of an evaluation split.
    """
    from lavise.datasets import CombinedDataset

    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    parts = [_open_one(s, split, model) for s in specs]
    if len(parts) == 1 and not exclude_hashes:
        hashes = getattr(parts[0], "image_hashes", None)
        if hashes is None or len(set(hashes)) == len(hashes):
            return parts[0]  # no file twice: the dataset as it is
    return CombinedDataset(parts, exclude_hashes=exclude_hashes)


def _open_one(spec: str | ReferenceDataset, split: str | None, model: TargetModel) -> Any:
    if not isinstance(spec, str):
        return spec
    if "@" in spec and "/" not in spec.rsplit("@", 1)[1]:
        spec, split = spec.rsplit("@", 1)  # FORMAT:PATH@SPLIT names its own split
    fmt = spec.split(":", 1)[0]
    if ":" not in spec or fmt not in list_dataset_formats():
        if Path(spec).is_dir():
            spec = f"folder:{spec}"
    return load_dataset(spec, split=split, preprocessing=model.preprocessing)


def features_of(
    model: TargetModel, layer: str, dataset: Any, config: Config, *, rank: int = 0, world_size: int = 1,
) -> FeatureStore:
    """Cached features of ``layer`` for ``dataset`` (computed once).

    With ``world_size > 1`` this process fills only its shard (images ``i`` with
    ``i % world_size == rank``) of the shared cache; see :func:`shard_from_env`.
    """
    return extract_features(
        model, layer, dataset, config.cache_root(),
        batch_size=config.image_batch(), num_workers=config.workers(),
        channels_last=config.channels_last, progress=config.progress,
        rank=rank, world_size=world_size,
    )


def shard_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's ``RANK``/``WORLD_SIZE`` (default ``(0, 1)``)."""
    import os

    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ValueError("RANK and WORLD_SIZE must be integers") from None


def filter_stats(store: FeatureStore, config: Config) -> FilterStats:
    """Filter statistics of ``store``, cached beside its features.

    At least 50 top images per filter are kept, so that re-running with another p
    (up to 50) reuses the cached statistics.
    """
    top_k = max(50, config.top_images)
    path = Path(store.path) / f"stats-q{config.quantile:g}-k{top_k}.safetensors"
    # One writer at a time; a damaged file is reported and recomputed (lavise._cache).
    return load_or_build(
        path, FilterStats.load,
        lambda: compute_filter_stats(store, quantile=config.quantile, top_k=top_k, progress=config.progress),
        lambda stats, p: stats.save(p), "filter statistics")


def with_overrides(config: Config | None, overrides: dict[str, Any]) -> Config:
    """``config`` (default :class:`Config`) with ``overrides`` applied and checked."""
    config = config or Config()
    return config.replace(**overrides) if overrides else config


def _absolute_spec(ref: Any) -> str:
    """A dataset spec with an absolute path, so a checkpoint can find its data again."""
    if not isinstance(ref, str):
        return f"{getattr(ref, 'name', 'dataset')}:{Path(getattr(ref, 'root', '.')).resolve()}"
    fmt, sep, rest = ref.partition(":")
    if not sep or fmt not in list_dataset_formats():
        return str(Path(ref).resolve())
    path, at, split = rest.rpartition("@") if "@" in rest and "/" not in rest.rsplit("@", 1)[1] else (rest, "", "")
    return f"{fmt}:{Path(path).resolve()}{at}{split}"


def _holdout_rows(store: FeatureStore, fraction: float, seed: int) -> set[int]:
    rows = store.valid_indices().tolist()
    n = int(round(fraction * len(rows)))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(rows), generator=g)[:n].tolist()
    return {rows[i] for i in perm}


def train(
    model: str | TargetModel | None,
    reference: str | Sequence[str] | ReferenceDataset,
    split: str | None = None,
    *,
    config: Config | None = None,
    out: str | Path | None = None,
    exclude: str | Sequence[str] | None = None,
    **overrides: Any,
) -> Explainer:
    """Trains a LaViSE explainer for one layer on reference datasets (Algorithm 1).

    Args:
        model: Model name or a :class:`TargetModel` (default: ``config.model``).
        reference: ``FORMAT:PATH`` spec(s) of annotated reference data, or a dataset.
        split: Split of the reference data (``train2017``...).
        config: Settings (default :class:`Config`); ``overrides`` replace fields of it.
        out: Write the checkpoint to this folder.
        exclude: Dataset spec(s) whose images are left out of training (e.g. the
            evaluation split), matched by content (the hash of each file's bytes).

    ``config.augment`` adds the pairs of augmented views of every reference image
    (features cached per view), ``config.captions`` the image-level pairs of caption
    nouns, and ``config.loss_negatives`` / ``config.margin`` set the rank loss.

    Returns:
        The explainer; its ``meta`` holds the per-epoch held-out accuracies and the
        caption target words (needed to tell novel concepts apart in evaluation).
    """
    config = with_overrides(config, overrides)
    start = time.time()
    target = prepare_model(model, config)
    layer = target.layer(config.layer).name
    if "conse" in config.explainer and target.classifier_for(layer) is None:
        logger.warning(
            "layer %s does not feed %s's classifier (or its class names are unknown): "
            "using the trained explainer only", layer, target.name,
        )
        config = config.replace(explainer="trained")
    excluded: list[str] = []
    if exclude:
        excluded = list(open_dataset(exclude, split, target).image_hashes)
    dataset = open_dataset(reference, split, target, exclude_hashes=excluded)
    if len(dataset) == 0:
        raise ValueError("the reference dataset is empty")
    word_space = load_word_space(config.word_space)
    store = features_of(target, layer, dataset, config)
    pairs = pool_concept_features(store, dataset, num_workers=config.workers(), progress=config.progress,
                                  pooling=config.pooling)
    n_pairs = len(pairs.concepts)
    _, kept, missing = word_space.concept_matrix(sorted(set(pairs.concepts)))
    split_ = split_concepts(kept, config.seen_fraction, config.seed, missing)
    views = _augmented_pairs(target, layer, dataset, store, config)
    weak = _caption_pairs(store, dataset, word_space, split_, config)
    head, history = None, []
    if "trained" in config.explainer:
        heldout_rows = _holdout_rows(store, config.holdout_fraction, config.seed)

        def held(p: ConceptFeatures) -> torch.Tensor:
            return torch.tensor([int(r) in heldout_rows for r in p.images.tolist()], dtype=torch.bool)

        is_held = held(pairs)
        held_pairs = pairs.select(torch.nonzero(is_held).flatten()) if is_held.any() else None
        own = pairs.select(torch.nonzero(~is_held).flatten()) if held_pairs is not None else pairs
        del pairs  # training keeps its own rows only, not the full set beside them (GiBs at COCO scale)
        train_pairs = concat_features([own] + [v.select(torch.nonzero(~held(v)).flatten()) for v in views])
        del own
        weak_train = weak.select(torch.nonzero(~held(weak)).flatten()) if weak is not None else None
        negatives, negative_words = config.loss_negatives, None
        if negatives == "vocabulary":
            negative_words = _negative_words(word_space, split_, weak, config)
            if len(negative_words) == 0:
                logger.info("no vocabulary word outside the concept names: eq. 1 negatives only")
                negatives, negative_words = "all", None
        head, history = fit_head(
            train_pairs, held_pairs, split_, word_space,
            epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
            margin=config.margin, negatives=negatives, image_level=weak_train,
            negative_words=negative_words,
            device=config.resolved_device(), progress=config.progress,
        )
    references = [_absolute_spec(r) for r in (reference if isinstance(reference, (list, tuple)) else [reference])]
    meta = {
        "training": {
            "references": references,
            "split": split,
            "images": len(store),
            "image_ids": [str(i) for i in store.ids],
            "image_hashes": list(dataset.image_hashes),
            "unreadable_images": sorted(store.failed),
            "pairs": n_pairs,
            "augmented_pairs": sum(len(v.concepts) for v in views),
            "caption_pairs": 0 if weak is None else len(weak.concepts),
            "caption_words": sorted(set(weak.concepts)) if weak is not None else [],
            "settings": {k: config.to_dict()[k] for k in
                         ("seen_fraction", "epochs", "lr", "batch_size", "holdout_fraction", "seed",
                          "margin", "loss_negatives", "augment", "captions")},
            "history": [m.to_dict() for m in history],
            "seconds": round(time.time() - start, 2),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    explainer = Explainer(target, layer, word_space, config.explainer, head, split_, config.conse_top, meta,
                          pooling=config.pooling, conse_weight=config.conse_weight)
    if out is not None:
        explainer.save(out)
        logger.info("checkpoint written to %s", out)
    return explainer


def _augmented_pairs(target: TargetModel, layer: str, dataset: Any, store: FeatureStore,
                     config: Config) -> list[ConceptFeatures]:
    """Pooled pairs of each augmented view (features cached per view), rows mapped to ``store``'s."""
    from lavise.augment import AugmentedView

    row_of = {str(k): i for i, k in enumerate(store.ids)}
    out = []
    for view in config.augment:
        vds = AugmentedView(dataset, view)
        vstore = features_of(target, layer, vds, config)
        vp = pool_concept_features(vstore, vds, num_workers=config.workers(), progress=config.progress,
                                   pooling=config.pooling)
        base_row = torch.tensor([row_of[str(k).rsplit("#", 1)[0]] for k in vstore.ids], dtype=torch.long)
        vp.images = base_row[vp.images]
        out.append(vp)
        logger.info("augmented view %s: %d pairs", view, len(vp.concepts))
    return out


def _negative_words(word_space: WordSpace, split: Any, weak: ConceptFeatures | None,
                    config: Config) -> torch.Tensor:
    """Vectors of the vocabulary words that name no reference concept and no caption target."""
    from lavise.metrics import concept_match_words

    vocabulary = load_vocabulary(config.vocabulary, word_space, config.vocabulary_size,
                                 concepts=split.concepts)
    named: set[str] = set(weak.concepts) if weak is not None else set()
    for c in (*split.concepts, *split.missing):
        named |= concept_match_words(c)
    rows = [i for i, w in enumerate(vocabulary.words) if w not in named]
    return vocabulary.vectors[rows]


def _caption_pairs(store: FeatureStore, dataset: Any, word_space: WordSpace, split: Any,
                   config: Config) -> ConceptFeatures | None:
    """Image-level (whole image, caption noun) pairs, or None without caption files."""
    if not config.captions:
        return None
    from lavise.captions import image_level_pairs, read_captions
    from lavise.metrics import concept_match_words

    captions = read_captions(config.captions)
    vocabulary = load_vocabulary(config.vocabulary, word_space, config.vocabulary_size,
                                 concepts=split.concepts)
    allowed = set(vocabulary.words) & set(word_space.index)
    held_out: set[str] = set()
    for c in split.unseen:  # unseen concepts stay unseen: never a caption target
        held_out |= concept_match_words(c)
    weak = image_level_pairs(store, dataset, captions, allowed, exclude_words=held_out)
    if not weak.concepts:
        logger.warning("no training image has captions in %s", ", ".join(config.captions))
        return None
    return weak


def explain(
    explainer: Explainer | str | Path,
    images: str | Any,
    split: str | None = None,
    *,
    filters: str | Sequence[int] | None = None,
    config: Config | None = None,
    vocabulary: WordSpace | None = None,
    allow: set[str] | None = None,
    block: set[str] | None = None,
    weight_by_activation: bool = False,
    kind: str | None = None,
    **overrides: Any,
) -> Explanations:
    """Explains the filters of the explainer's layer over target images (section 3.2).

    Args:
        explainer: An :class:`Explainer` or a checkpoint folder.
        images: A folder of images or a ``FORMAT:PATH`` dataset spec (labels unused).
        split: Split of a dataset spec.
        filters: Indices or a spec like ``"0-99"`` (default: all).
        config: Settings (method, p = ``top_images``, s, x, quantile, vocabulary...).
        vocabulary: Words to explain with (default: from ``config.vocabulary``); offensive
            words are removed from it unless ``config.allow_offensive``.
        allow: Only these words may be chosen.
        block: These words may not be chosen.
        weight_by_activation: Weight each top image's words by its activation.
        kind: Explainer kind to use instead of the checkpoint's (``trained``, ``conse``,
            ``trained+conse``).
    """
    config = with_overrides(config, overrides)
    explainer = resolve_explainer(explainer, config, kind=kind)
    dataset = open_dataset(images, split, explainer.model)
    if len(dataset) == 0:
        raise ValueError("no images to explain")
    store = features_of(explainer.model, explainer.layer, dataset, config)
    stats = filter_stats(store, config)
    if vocabulary is None:
        concepts = explainer.split.concepts if explainer.split else ()
        vocabulary = load_vocabulary(config.vocabulary, explainer.word_space, config.vocabulary_size, concepts=concepts,
                                     allow_offensive=config.allow_offensive)
    else:
        vocabulary = safe_vocabulary(vocabulary, config.allow_offensive)
    image_loader = None
    if config.method == "image":
        image_loader = _image_loader(dataset, explainer.model)
    return explain_filters(
        explainer, store, stats, vocabulary, filters=filters, method=config.method,
        top=min(config.top_images, len(store.valid_indices())), s=config.s, x=config.x,
        weight_by_activation=weight_by_activation, ranking=config.ranking, allow=allow, block=block,
        images=image_loader, progress=config.progress, image_paths=list(dataset.image_paths),
    )


def resolve_explainer(explainer: Explainer | str | Path, config: Config, kind: str | None = None) -> Explainer:
    """An explainer, loaded from a checkpoint folder if need be, with ``kind`` if given."""
    if not isinstance(explainer, Explainer):
        explainer = Explainer.load(explainer, model=_model_for_checkpoint(explainer, config))
        explainer.model.to(config.resolved_device())
    return explainer.with_kind(kind) if kind else explainer


def _image_loader(dataset: Any, model: TargetModel):
    """Normalised images of dataset rows for the ``image`` masking method.

    Pixels only (:class:`lavise.decode.DecodedImages`, the decoder that filled the
    feature cache on the CPU): the dataset's items would also build every image's
    concept masks.
    """
    from lavise.decode import DecodedImages

    pixels = DecodedImages(dataset)

    def load(rows: Sequence[int]) -> torch.Tensor:
        items = [pixels[int(r)] for r in rows]
        bad = [it["error"] for it in items if it["error"] is not None]
        if bad:
            raise ValueError(f"cannot read an image for image masking: {bad[0]}")
        return model.preprocessing.normalise(torch.stack([it["image"].as_subclass(torch.Tensor) for it in items]))
    return load


def _model_for_checkpoint(path: str | Path, config: Config) -> TargetModel | None:
    """The model a checkpoint needs, when the config names local weights for it."""
    if config.weights:
        from lavise.checkpoint import read_metadata

        name = read_metadata(path)["model"]["name"]
        return load_model(name, config.weights, allow_pickle=config.allow_pickle)
    return None
