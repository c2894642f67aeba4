"""One self-checking configuration for every stage; the CLI fills it from flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    """Settings of a lavise run. Every value is checked on creation.

    Defaults were chosen by measurement on the COCO training split (see
    ``docs/results.md``), never on the evaluation split.

    Attributes:
        model: Target model name (``efficientnet-lite0`` or a torchvision classifier).
        weights: Torchvision weights enum value or a local weights file.
        allow_pickle: Allow loading a whole pickled model (runs code from the file).
        layer: Dotted module path of the layer to explain (None: the model's default).
        word_space: Registered word space name or a GloVe/word2vec text file (default: the
            packaged word2vec subset filled with GloVe-mapped vectors, ``word2vec-300-filled``).
        vocabulary: ``default``, ``glove``, ``concepts`` or a word-list file.
        vocabulary_size: Keep the N most common vocabulary words (None: all).
        allow_offensive: Keep the slurs and obscenities of the shipped blocklist in the
            vocabulary (by default they are removed from every vocabulary).
        explainer: ``trained``, ``conse`` or ``trained+conse``.
        conse_top: T, the classes ConSE averages.
        conse_weight: Weight of ConSE against the trained head in ``trained+conse``.
        pooling: ``mean`` (paper: global average of the masked map) or ``rescaled``
            (that vector scaled to the norm of the image's unmasked average).
        seen_fraction: Share of reference categories that supervise training.
        epochs: Training epochs of the explainer head (on cached pooled features).
        lr: Adam learning rate.
        batch_size: (image, concept) pairs per training step.
        holdout_fraction: Share of reference images held out for per-epoch accuracy.
        margin: Hinge margin of the rank loss (eq. 1).
        loss_negatives: ``all`` (eq. 1), ``hardest`` (one negative per pair) or
            ``vocabulary`` (eq. 1 plus 256 vocabulary words per step that name no
            reference concept).
        augment: Augmented views of each reference image whose pooled pairs join
            training (``hflip``, ``crop-tl``, ``crop-br``, ``zoom``; features extracted
            once per view and cached; see :mod:`lavise.augment`).
        captions: COCO captions JSON files; the nouns of a training image's captions
            become image-level targets beside its masks (see :mod:`lavise.captions`).
        seed: Seed of the concept split, the hold-out images and training.
        method: Masking method used to explain filters.
        quantile: p of the threshold T_u (fraction of activations above it).
        top_images: Top-activated images per filter used to explain it.
        s: Nearest words per top image.
        x: Words kept per filter.
        ranking: How words are ranked across a filter's top images: a registered
            :class:`lavise.words.WordRanking` name (``votes``: the paper's rule, the
            default; ``hypernyms``, ``hypernyms-after``, ``centroid``, ``dedupe``, ``decay``: issue 11's
            levers, none of which won on the development protocol; see
            :func:`lavise.list_word_rankings`).
        device: ``cpu``, ``cuda``, ``cuda:1``... or ``auto``.
        image_batch_size: Images per backbone forward pass (None: 1 on a CPU, where
            batch-1 passes side by side in threads measure fastest, see
            docs/performance.md; 32 on a GPU).
        num_workers: DataLoader workers decoding images (None: 0 on the CPU, where
            workers would compete with the backbone, and up to 8 on a GPU, where decoding
            is the bottleneck).
        channels_last: Run the backbone in channels-last memory format.
        cache_dir: Root of the feature cache (None: ``$LAVISE_CACHE_DIR`` or ``~/.cache/lavise``).
        progress: Show progress bars.
    """

    model: str = "efficientnet-lite0"
    weights: str | None = None
    allow_pickle: bool = False
    layer: str | None = None
    word_space: str = "word2vec-300-filled"
    vocabulary: str = "default"
    vocabulary_size: int | None = None
    allow_offensive: bool = False
    explainer: str = "trained+conse"
    conse_top: int = 10
    conse_weight: float = 1.0
    pooling: str = "mean"
    seen_fraction: float = 0.7
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    holdout_fraction: float = 0.1
    margin: float = 1.0
    loss_negatives: str = "vocabulary"
    augment: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()
    seed: int = 0
    method: str = "activation"
    quantile: float = 0.005
    top_images: int = 5
    s: int = 3
    x: int = 10
    ranking: str = "votes"
    device: str = "auto"
    image_batch_size: int | None = None
    num_workers: int | None = None
    channels_last: bool = True
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from lavise.explainer import EXPLAINER_KINDS

        checks = [
            (0 < self.seen_fraction <= 1, f"seen fraction must be in (0, 1], got {self.seen_fraction}"),
            (0 <= self.holdout_fraction < 1, f"hold-out fraction must be in [0, 1), got {self.holdout_fraction}"),
            (0 < self.quantile < 1, f"p (quantile) must be in (0, 1), got {self.quantile}"),
            (self.top_images >= 1, f"top images must be >= 1, got {self.top_images}"),
            (self.s >= 1, f"s must be >= 1, got {self.s}"),
            (self.x >= 1, f"x must be >= 1, got {self.x}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.batch_size >= 2, f"batch size must be >= 2, got {self.batch_size}"),
            (self.conse_top >= 1, f"ConSE top T must be >= 1, got {self.conse_top}"),
            (self.conse_weight >= 0, f"ConSE weight must be >= 0, got {self.conse_weight}"),
            (self.margin > 0, f"margin must be > 0, got {self.margin}"),
            (self.loss_negatives in ("all", "hardest", "vocabulary"),
             f"unknown loss negatives {self.loss_negatives!r} (valid: all, hardest, vocabulary)"),
            (self.image_batch_size is None or self.image_batch_size >= 1,
             f"image batch size must be >= 1, got {self.image_batch_size}"),
            (self.num_workers is None or self.num_workers >= 0, f"workers must be >= 0, got {self.num_workers}"),
            (self.vocabulary_size is None or self.vocabulary_size >= 1,
             f"vocabulary size must be >= 1, got {self.vocabulary_size}"),
            (self.pooling in ("mean", "rescaled"), f"unknown pooling {self.pooling!r} (valid: mean, rescaled)"),
            (self.explainer in EXPLAINER_KINDS,
             f"unknown explainer {self.explainer!r} (valid: {', '.join(EXPLAINER_KINDS)})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        object.__setattr__(self, "augment", tuple(self.augment))
        object.__setattr__(self, "captions", tuple(str(c) for c in self.captions))
        from lavise.augment import AUGMENT_VIEWS

        bad = [v for v in self.augment if v not in AUGMENT_VIEWS]
        if bad:
            raise ValueError(f"unknown augmented view {bad[0]!r} (valid: {', '.join(AUGMENT_VIEWS)})")
        from lavise.words import list_word_rankings

        if self.ranking not in list_word_rankings():
            raise ValueError(f"unknown word ranking {self.ranking!r} (valid: {', '.join(list_word_rankings())})")
        from lavise.masking import list_masking_methods

        if self.method not in list_masking_methods():
            raise ValueError(
                f"unknown masking method {self.method!r} (valid: {', '.join(list_masking_methods())})"
            )

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved_device(self) -> str:
        """``auto`` -> ``cuda`` when available, else ``cpu``."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def image_batch(self) -> int:
        """Images per backbone forward pass: ``image_batch_size``, or the device-dependent default."""
        if self.image_batch_size is not None:
            return self.image_batch_size
        return 32 if self.resolved_device().startswith("cuda") else 1

    def workers(self) -> int:
        """DataLoader workers: ``num_workers``, or the device-dependent default."""
        import os

        if self.num_workers is not None:
            return self.num_workers
        return min(8, os.cpu_count() or 1) if self.resolved_device().startswith("cuda") else 0

    def cache_root(self) -> Path:
        from lavise.features import default_cache_dir

        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


