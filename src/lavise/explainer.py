"""The feature explainer: maps a pooled (masked) feature vector into the word space.

Two kinds, and their combination:

* ``trained`` -- the paper's explainer (section 3.1): BatchNorm1d - Dropout(0.1) -
  Linear(d, d) - ReLU - BatchNorm1d - Dropout(0.1) - Linear(d, e), trained with the
  hinge rank loss of eq. 1 on reference images' concept masks. Because the head sees
  only the global average of ``F * M_j``, training runs on pooled vectors computed
  once from the feature cache: an epoch costs milliseconds, not a backbone pass.
* ``conse`` -- ConSE (Norouzi et al. 2013): the model's own classifier applied to the
  pooled vector, and the probability-weighted mean of its top-T class names' vectors.
  Needs no training, only a layer that feeds the classification head.
* ``trained+conse`` -- the sum of both normalised outputs, ConSE's weighted by
  ``conse_weight`` (1: equal weights).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lavise.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    read_metadata,
    read_weights,
    write_checkpoint,
)
from lavise.models import TargetModel
from lavise.wordspace import WordSpace

logger = logging.getLogger(__name__)

__all__ = [
    "EXPLAINER_KINDS",
    "ExplainerHead",
    "hinge_rank_loss",
    "LOSS_NEGATIVES",
    "ConceptSplit",
    "ConceptFeatures",
    "EpochMetrics",
    "Explainer",
    "pool_concept_features",
    "split_concepts",
    "fit_head",
]

EXPLAINER_KINDS = ("trained", "conse", "trained+conse")
POOLINGS = ("mean", "rescaled")


def rescale_pooled(pooled: torch.Tensor, image_gap_norm: torch.Tensor) -> torch.Tensor:
    """Rescales pooled masked vectors to the norm of their image's unmasked average.

    Masking keeps a direction in feature space but shrinks the vector (a mask that
    covers 2 of 49 cells leaves 4% of the mass), which pushes a classifier or a
    BatchNorm head toward its bias. ``pooling="rescaled"`` keeps the direction and
    restores the scale the model's head was trained on.

    Args:
        pooled: (..., d) pooled masked features.
        image_gap_norm: (...,) L2 norm of the image's global average pooled features,
            broadcastable against ``pooled.shape[:-1]``.
    """
    norm = pooled.norm(dim=-1).clamp_min(1e-12)
    return pooled * (image_gap_norm / norm).unsqueeze(-1)


class ExplainerHead(nn.Module):
    """The published explainer head on a pooled feature vector.

    Args:
        in_dim: Number of filters ``d`` of the target layer.
        out_dim: Word-vector dimension ``e``.
        dropout: Dropout probability (0.1 in the paper's code).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, in_dim),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, out_dim),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, d) pooled features -> (N, e) word-space vectors (not normalised)."""
        return self.net(pooled)


LOSS_NEGATIVES = ("all", "hardest", "vocabulary")
#: Vocabulary words drawn per training step as extra negatives (``negatives="vocabulary"``).
VOCABULARY_NEGATIVES = 256


def hinge_rank_loss(
    predicted: torch.Tensor, targets: torch.Tensor, concept_vectors: torch.Tensor, margin: float = 1.0,
    *, negatives: str = "all", also_positive: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 1: sum over negatives of max(0, margin - cos(v_t, v) + cos(v_c, v)), mean over positives.

    Args:
        predicted: (B, e) explainer outputs.
        targets: (B,) index of each row's true concept in ``concept_vectors``.
        concept_vectors: (C, e) L2-normalised concept vectors (the candidates).
        margin: Hinge margin (1 in the paper).
        negatives: ``all`` (eq. 1: every other candidate) or ``hardest`` (only the
            most violating candidate of each row, as in VSE++); ``vocabulary`` is
            ``all`` here, with vocabulary words appended to the candidates by
            :func:`fit_head`.
        also_positive: Optional (B, C) bool: candidates that are also true for the row
            (e.g. another caption noun of the same image); they are not negatives.
    """
    if negatives not in LOSS_NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r} (valid: {', '.join(LOSS_NEGATIVES)})")
    sims = F.normalize(predicted, dim=1) @ concept_vectors.T  # (B, C)
    pos = sims.gather(1, targets[:, None])
    losses = (margin - pos + sims).clamp(min=0)
    losses = losses.scatter(1, targets[:, None], 0.0)  # no term for c == t
    if also_positive is not None:
        losses = losses.masked_fill(also_positive, 0.0)
    if negatives == "hardest":
        return losses.amax(1).mean()
    return losses.sum(1).mean()


@dataclass(frozen=True)
class ConceptSplit:
    """The generalised zero-shot split of a reference dataset's concepts.

    Attributes:
        concepts: Every usable concept (has a word vector and occurs in the data).
        seen: Concepts that supervise training.
        unseen: Concepts held out, to be discovered.
        missing: Concepts dropped for lack of a word vector.
        seed: Seed of the split.
    """

    concepts: tuple[str, ...]
    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    missing: tuple[str, ...] = ()
    seed: int = 0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ConceptSplit":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def split_concepts(
    concepts: Sequence[str], seen_fraction: float, seed: int = 0, missing: Sequence[str] = ()
) -> ConceptSplit:
    """Samples ``seen_fraction`` of ``concepts`` without replacement (seeded)."""
    if not 0 < seen_fraction <= 1:
        raise ValueError(f"seen fraction must be in (0, 1], got {seen_fraction}")
    ordered = sorted(set(concepts))
    n_seen = max(1, round(seen_fraction * len(ordered)))
    seen = set(random.Random(seed).sample(ordered, n_seen))
    return ConceptSplit(
        concepts=tuple(ordered),
        seen=tuple(c for c in ordered if c in seen),
        unseen=tuple(c for c in ordered if c not in seen),
        missing=tuple(missing),
        seed=seed,
    )


@dataclass
class ConceptFeatures:
    """Pooled masked features of every (image, concept) pair of a reference dataset.

    Attributes:
        pooled: (P, d) ``mean_xy(F * M_j)`` with ``M_j`` resized by area; float32 from
            :func:`pool_concept_features` (:func:`fit_head` also takes float16, e.g. to
            halve the memory of COCO's 860K pairs).
        concepts: (P,) concept name per row.
        images: (P,) feature-store row of the image.
        coverage: (P,) fraction of the feature map the mask covers.
    """

    pooled: torch.Tensor
    concepts: list[str]
    images: torch.Tensor
    coverage: torch.Tensor

    def select(self, rows: torch.Tensor) -> "ConceptFeatures":
        idx = rows.tolist()
        return ConceptFeatures(self.pooled[rows], [self.concepts[i] for i in idx],
                               self.images[rows], self.coverage[rows])


def concat_features(parts: Sequence[ConceptFeatures]) -> ConceptFeatures:
    """Pairs of several :class:`ConceptFeatures` as one (rows in order); a single part's
    tensors are shared, not copied."""
    parts = [p for p in parts if p is not None and len(p.concepts)]
    if not parts:
        raise ValueError("no pairs to concatenate")
    if len(parts) == 1:  # no copy of the pooled vectors (4 GiB at COCO scale)
        p = parts[0]
        return ConceptFeatures(p.pooled, list(p.concepts), p.images, p.coverage)
    return ConceptFeatures(torch.cat([p.pooled for p in parts]), [c for p in parts for c in p.concepts],
                           torch.cat([p.images for p in parts]), torch.cat([p.coverage for p in parts]))


def masks_to_feature_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resizes (K, H, W) 0/1 masks to the feature map by area: fractional coverage in [0, 1]."""
    if masks.numel() == 0:
        return masks.new_zeros((masks.shape[0],) + size, dtype=torch.float32)
    return F.interpolate(masks[None].float(), size=size, mode="area")[0]


def _concat_chunks(chunks: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Concatenates a list of tensor tuples field by field, releasing each chunk once copied.

    Empties ``chunks``; the peak is the result plus one chunk, not twice the result.
    """
    sizes = [len(c[0]) for c in chunks]
    outs = tuple(torch.empty((sum(sizes),) + t.shape[1:], dtype=t.dtype) for t in chunks[0])
    start = 0
    for i, n in enumerate(sizes):
        for out, t in zip(outs, chunks[i]):
            out[start:start + n] = t
        chunks[i] = ()
        start += n
    chunks.clear()
    return outs


def pool_concept_features(
    store: Any, dataset: Any, *, num_workers: int = 0, progress: bool = True, min_coverage: float = 0.0,
    pooling: str = "mean",
) -> ConceptFeatures:
    """Pools each image's cached features under each of its concept masks.

    Args:
        store: The dataset's :class:`lavise.features.FeatureStore`.
        dataset: The reference dataset (masks are read without decoding images).
        num_workers: DataLoader workers reading annotations.
        progress: Show a progress bar.
        min_coverage: Drop pairs whose mask covers less of the feature map than this.
        pooling: ``mean`` (the paper's global average of ``F * M``) or ``rescaled``
            (the same vector scaled to the norm of the image's unmasked average).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r} (valid: {', '.join(POOLINGS)})")
    from lavise.features import features_with_masks

    d, h, w = store.shape
    names: list[str] = []
    # One (pooled, images, coverage) triple per batch, not per image: thousands of
    # small tensors kept across batches fragment the heap (resident memory grew with
    # the number of images, not with the pairs held).
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    stream = features_with_masks(store, dataset, num_workers=num_workers, progress=progress,
                                 desc="pool concept masks")
    for rows, batch_feats, batch_masks, batch_ids in stream:
        vecs, cover, counts = [], [], []
        for feats, masks, cids in zip(batch_feats, batch_masks, batch_ids):
            counts.append(len(cids))
            if len(cids) == 0:
                continue
            feats = feats.reshape(d, h * w)
            grid = masks_to_feature_grid(masks, (h, w)).reshape(len(cids), h * w)
            pooled = grid @ feats.T / (h * w)
            if pooling == "rescaled":
                pooled = rescale_pooled(pooled, feats.mean(1).norm())
            vecs.append(pooled)
            cover.append(grid.mean(1))
            names.extend(dataset.concepts[int(c)] for c in cids)
        if vecs:
            chunks.append((torch.cat(vecs), torch.repeat_interleave(rows, torch.tensor(counts)), torch.cat(cover)))
    if not chunks:
        raise ValueError("the reference dataset has no concept masks")
    pooled, images, cover = _concat_chunks(chunks)
    out = ConceptFeatures(pooled, names, images, cover)
    if min_coverage > 0:
        out = out.select(torch.nonzero(out.coverage >= min_coverage).flatten())
    return out


@dataclass(frozen=True)
class EpochMetrics:
    """Held-out concept accuracy after one epoch (generalised zero-shot: all concepts compete)."""

    epoch: int
    loss: float
    seen_top1: float
    seen_top5: float
    unseen_top1: float | None
    unseen_top5: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(vectors: torch.Tensor, targets: torch.Tensor, cands: torch.Tensor) -> tuple[float, float]:
    if len(targets) == 0:
        return float("nan"), float("nan")
    ranks = (F.normalize(vectors, dim=1) @ cands.T).argsort(1, descending=True)
    top1 = (ranks[:, :1] == targets[:, None]).any(1).float().mean().item()
    top5 = (ranks[:, :5] == targets[:, None]).any(1).float().mean().item()
    return top1, top5


class _PooledRows:
    """Rows of one or more (N_i, d) pooled tensors, indexed as if concatenated, without
    copying them: ``rows(idx, device)`` gathers only ``idx`` as float32 on ``device``."""

    def __init__(self, parts: Sequence[torch.Tensor]) -> None:
        self.parts = list(parts)
        self.dim = self.parts[0].shape[1]
        self.offsets = torch.tensor([0] + [len(p) for p in self.parts]).cumsum(0)

    def __call__(self, idx: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0][idx].to(device, torch.float32)
        out = torch.empty(len(idx), self.dim, dtype=torch.float32, device=self.parts[0].device)
        part = torch.bucketize(idx, self.offsets[1:], right=True)
        for k, p in enumerate(self.parts):
            sel = part == k
            if sel.any():
                out[sel] = p[idx[sel] - self.offsets[k]].float()
        return out.to(device)


def fit_head(
    train: ConceptFeatures,
    heldout: ConceptFeatures | None,
    split: ConceptSplit,
    word_space: WordSpace,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    margin: float = 1.0,
    negatives: str = "all",
    image_level: ConceptFeatures | None = None,
    negative_words: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[ExplainerHead, list[EpochMetrics]]:
    """Trains an :class:`ExplainerHead` on pooled concept features with eq. 1 (Adam).

    Only ``split.seen`` concepts (and the words of ``image_level``) appear as positives
    or negatives in training; held-out accuracy ranks each pair's concept among all of
    ``split.concepts``.

    The pooled vectors are not copied: each step gathers its minibatch's rows from
    ``train.pooled`` (and ``image_level.pooled``), in whatever float dtype they are
    stored, as float32 on ``device``; training needs memory for the pairs the caller
    holds plus the head and its optimiser state.

    Args:
        image_level: Optional weak pairs (whole-image pooled features, a target word
            each, e.g. caption nouns; see :mod:`lavise.captions`). Their words join
            the candidates; the other words of the same image are not negatives.
        margin: Hinge margin of eq. 1.
        negatives: ``all`` or ``hardest`` (see :func:`hinge_rank_loss`), or
            ``vocabulary``: ``all`` plus :data:`VOCABULARY_NEGATIVES` rows of
            ``negative_words`` drawn at random per step, so that the head learns to
            rank its concepts above the open vocabulary it will be read with.
        negative_words: (M, e) unit vectors of words that are never a target (e.g.
            vocabulary words that name no reference concept); for ``vocabulary``.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs and batch size must be >= 1 and the learning rate > 0")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    all_vecs, kept, _ = word_space.concept_matrix(list(split.concepts))
    index = {c: i for i, c in enumerate(kept)}
    seen_names = [c for c in split.seen if c in index]
    seen_list = [all_vecs[index[c]] for c in seen_names]
    if image_level is not None and image_level.concepts:
        extra = sorted(set(image_level.concepts) - set(seen_names))
        extra_vecs, extra_kept, _ = word_space.concept_matrix(extra)
        seen_names += list(extra_kept)
        seen_list += list(extra_vecs)
    # The pooled vectors stay in the caller's tensors (any float dtype, e.g. float16
    # at COCO scale): each step gathers and converts its minibatch's rows only.
    parts = [train] if image_level is None or not image_level.concepts else [train, image_level]
    pooled = _PooledRows([p.pooled for p in parts])
    train = ConceptFeatures(torch.empty(0), [c for p in parts for c in p.concepts],
                            torch.cat([p.images for p in parts]), torch.cat([p.coverage for p in parts]))
    seen_pos = {c: j for j, c in enumerate(seen_names)}
    seen_vecs = torch.stack(seen_list).to(device)
    rows = [i for i, c in enumerate(train.concepts) if c in seen_pos]
    if not rows:
        raise ValueError("no training pair has a seen concept")
    rows_t = torch.tensor(rows, dtype=torch.long)
    y = torch.tensor([seen_pos[train.concepts[i]] for i in rows], device=device)
    also = None
    if image_level is not None and image_level.concepts:
        # Whole-image pairs of one image share their positives: pairs with coverage 1
        # (the whole map) are grouped by image row.
        whole = train.coverage[rows] >= 1.0 - 1e-6
        img = train.images[rows]
        groups: dict[int, set[int]] = {}
        for r, w, t in zip(img.tolist(), whole.tolist(), y.tolist()):
            if w:
                groups.setdefault(r, set()).add(t)
        also = torch.zeros(len(rows), len(seen_names), dtype=torch.bool)
        for j, (r, w) in enumerate(zip(img.tolist(), whole.tolist())):
            if w and len(groups.get(r, ())) > 1:
                also[j, list(groups[r])] = True
        also = also.to(device)
    vocab_neg = None
    if negatives == "vocabulary":
        if negative_words is None or len(negative_words) == 0:
            raise ValueError("negatives='vocabulary' needs negative_words")
        vocab_neg = F.normalize(negative_words.float(), dim=1).to(device)
    elif negatives not in LOSS_NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r} (valid: {', '.join(LOSS_NEGATIVES)})")
    n = len(rows)
    head = ExplainerHead(pooled.dim, word_space.dim).to(device)
    # foreach: the same arithmetic as the per-tensor loop (bit-identical), in fewer,
    # larger kernels; on the CPU the loop's temporaries page-faulted fresh memory on
    # every step (a third of an epoch's CPU time went to the kernel).
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    history: list[EpochMetrics] = []
    bar = tqdm(range(1, epochs + 1), desc="train explainer", unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        perm_cpu = torch.randperm(n, generator=gen)
        perm = perm_cpu.to(device)
        total = 0.0
        for start in range(0, n, batch_size):
            b = perm[start:start + batch_size]
            if len(b) < 2:  # BatchNorm needs two rows
                continue
            xb = pooled(rows_t[perm_cpu[start:start + batch_size]], device)
            cands, also_b = seen_vecs, None if also is None else also[b]
            if vocab_neg is not None:
                pick = torch.randperm(len(vocab_neg), generator=gen)[:VOCABULARY_NEGATIVES].to(device)
                cands = torch.cat([seen_vecs, vocab_neg[pick]])
                if also_b is not None:
                    also_b = F.pad(also_b, (0, len(pick)))
            loss = hinge_rank_loss(head(xb), y[b], cands, margin,
                                   negatives="hardest" if negatives == "hardest" else "all",
                                   also_positive=also_b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        metrics = EpochMetrics(epoch, total / n, *_heldout_accuracy(head, heldout, split, kept, all_vecs, device))
        history.append(metrics)
        bar.set_postfix(loss=f"{metrics.loss:.3f}", seen_top1=f"{metrics.seen_top1:.2f}",
                        unseen_top1="n/a" if metrics.unseen_top1 is None else f"{metrics.unseen_top1:.2f}")
        logger.info("epoch %d: %s", epoch, metrics)
    head.eval()
    return head.cpu(), history


def _heldout_accuracy(head, heldout, split, kept, all_vecs, device) -> tuple:
    if heldout is None or not heldout.concepts:
        return float("nan"), float("nan"), None, None
    head.eval()
    index = {c: i for i, c in enumerate(kept)}
    with torch.no_grad():
        out = head(heldout.pooled.to(device, torch.float32)).cpu()
    res = []
    for group in (set(split.seen), set(split.unseen)):
        rows = [i for i, c in enumerate(heldout.concepts) if c in group and c in index]
        targets = torch.tensor([index[heldout.concepts[i]] for i in rows], dtype=torch.long)
        res.extend(_accuracy(out[rows], targets, all_vecs) if rows else (None, None))
    return tuple(res)


class Explainer:
    """A target model's layer, a word space and a way to map pooled features into it.

    Args:
        model: The target model.
        layer: Dotted path of the explained layer.
        word_space: Word vectors the outputs live in.
        kind: ``trained``, ``conse`` or ``trained+conse``.
        head: Trained head (required by kinds that contain ``trained``).
        split: The concept split the head was trained with.
        conse_top: T, the number of top classes ConSE averages.
        pooling: How masked features are pooled, in training and when explaining
            (``mean`` or ``rescaled``; see :func:`rescale_pooled`).
        meta: Training settings, metrics and provenance, stored in the checkpoint.
        conse_weight: Weight of ConSE's unit vector against the trained head's (kind
            ``trained+conse``).
    """

    def __init__(
        self,
        model: TargetModel,
        layer: str,
        word_space: WordSpace,
        kind: str = "trained",
        head: ExplainerHead | None = None,
        split: ConceptSplit | None = None,
        conse_top: int = 10,
        meta: dict | None = None,
        pooling: str = "mean",
        conse_weight: float = 1.0,
    ) -> None:
        if not conse_weight >= 0:
            raise ValueError(f"ConSE weight must be >= 0, got {conse_weight}")
        self.conse_weight = float(conse_weight)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} (valid: {', '.join(POOLINGS)})")
        self.pooling = pooling
        if kind not in EXPLAINER_KINDS:
            raise ValueError(f"unknown explainer kind {kind!r} (valid: {', '.join(EXPLAINER_KINDS)})")
        if "trained" in kind and head is None:
            raise ValueError(f"explainer kind {kind!r} needs a trained head")
        self.model = model
        self.layer = model.layer(layer).name
        self.word_space = word_space
        self.head = head.eval() if head is not None else None
        self.split = split
        self.conse_top = conse_top
        self.meta = dict(meta or {})
        self._classifier = model.classifier_for(self.layer)
        if "conse" in kind and self._classifier is None:
            raise ValueError(
                f"explainer kind {kind!r} needs a layer that feeds the model's classifier "
                f"(with known class names); {model.name} layer {self.layer!r} does not: "
                "use --explainer trained"
            )
        self.kind = kind
        self._class_vectors: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _conse_vectors(self) -> torch.Tensor:
        if self._class_vectors is None:
            names = self.model.class_names or []
            vecs = torch.zeros(len(names), self.word_space.dim)
            for i, n in enumerate(names):
                # Class names embed with learned vectors only: GloVe-mapped vectors of rare
                # class names (dog breeds, fish) are noisy and pull ConSE's mean toward them
                # (docs/results.md, "A filled 300-d word space").
                v = self.word_space.concept_vector(n, mapped=False)
                if v is not None:
                    vecs[i] = v
            self._class_vectors = vecs
        return self._class_vectors

    @torch.no_grad()
    def conse(self, pooled: torch.Tensor) -> torch.Tensor:
        """ConSE embedding (N, e) of pooled features through the model's classifier."""
        if self._classifier is None:
            raise ValueError(f"layer {self.layer!r} does not feed the classifier")
        vecs = self._conse_vectors().to(pooled.device)
        logits = self._classifier(pooled.to(self.device)).to(pooled.device).float()
        known = vecs.abs().sum(1) > 0
        logits = logits.masked_fill(~known, float("-inf"))
        top = logits.topk(min(self.conse_top, int(known.sum())), dim=1)
        probs = torch.softmax(top.values, dim=1)
        return F.normalize(torch.einsum("nt,nte->ne", probs, vecs[top.indices]), dim=1)

    @torch.no_grad()
    def trained(self, pooled: torch.Tensor) -> torch.Tensor:
        """The trained head's normalised embedding (N, e)."""
        if self.head is None:
            raise ValueError("this explainer has no trained head")
        head = self.head.to(pooled.device)
        return F.normalize(head(pooled.float()), dim=1)

    @torch.no_grad()
    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Maps pooled (N, d) features to L2-normalised word-space vectors (N, e)."""
        if pooled.dim() != 2:
            raise ValueError(f"expected pooled features (N, d), got shape {tuple(pooled.shape)}")
        parts = []
        if "trained" in self.kind:
            parts.append(self.trained(pooled))
        if "conse" in self.kind:
            conse = self.conse(pooled)
            parts.append(conse * self.conse_weight if parts else conse)
        return F.normalize(sum(parts), dim=1)

    def with_kind(self, kind: str) -> "Explainer":
        """The same explainer with another kind (e.g. for a sweep)."""
        return Explainer(self.model, self.layer, self.word_space, kind, self.head, self.split,
                         self.conse_top, self.meta, self.pooling, self.conse_weight)

    def with_combination(self, conse_weight: float | None = None, conse_top: int | None = None) -> "Explainer":
        """The same explainer with another ConSE weight and/or top T (e.g. for a sweep)."""
        return Explainer(self.model, self.layer, self.word_space, self.kind, self.head, self.split,
                         self.conse_top if conse_top is None else conse_top, self.meta, self.pooling,
                         self.conse_weight if conse_weight is None else conse_weight)

    # ----------------------------------------------------------------- checkpoint

    def metadata(self) -> dict:
        """Everything needed to check a checkpoint fits a model, layer and word space."""
        info = self.model.layer(self.layer)
        return {
            "format": "lavise-explainer",
            "version": CHECKPOINT_VERSION,
            "model": self.model.meta(),
            "layer": {"name": self.layer, "channels": info.channels, "height": info.height,
                      "width": info.width},
            "word_space": {"name": self.word_space.name, "dim": self.word_space.dim,
                           "fingerprint": self.word_space.fingerprint},
            "explainer": {"kind": self.kind, "conse_top": self.conse_top, "pooling": self.pooling,
                          "conse_weight": self.conse_weight, "has_head": self.head is not None},
            "split": self.split.to_dict() if self.split else None,
            **{k: v for k, v in self.meta.items() if k not in ("model", "layer", "word_space", "split")},
        }

    def save(self, directory: str | Path) -> Path:
        """Writes ``explainer.safetensors`` + ``lavise.json`` to ``directory`` atomically.

        See :mod:`lavise.checkpoint` for the format.
        """
        tensors = dict(self.head.state_dict()) if self.head is not None else None
        return write_checkpoint(directory, _jsonable(self.metadata()), tensors)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        model: TargetModel | None = None,
        word_space: WordSpace | None = None,
        kind: str | None = None,
    ) -> "Explainer":
        """Loads a checkpoint, checking it matches ``model`` and ``word_space``.

        Args:
            directory: Checkpoint folder.
            model: The target model (default: loaded from the checkpoint's model id).
            word_space: The word space (default: loaded from the checkpoint's name).
            kind: Override the stored explainer kind.

        Raises:
            FileNotFoundError: No checkpoint there.
            lavise.checkpoint.CheckpointError: (a ValueError) The checkpoint is damaged,
                of a newer format, or does not match the model, layer or word space.
        """
        from lavise.models import load_model
        from lavise.wordspace import load_word_space

        directory = Path(directory)
        meta_file = directory / "lavise.json"
        meta = read_metadata(directory)
        m = meta["model"]
        if model is None:
            try:
                model = load_model(m["name"], None if m["weights_id"].startswith(("efficientnet-lite0-pytorch", "random")) else m["weights_id"])
            except (ValueError, OSError) as e:
                raise CheckpointError(meta_file, f"its model {m['name']} ({m['weights_id']}) cannot be loaded: {e}",
                                      "pass the model's weights with --weights") from None
        if model.name != m["name"] or model.weights_hash != m["weights_hash"]:
            raise CheckpointError(
                meta_file,
                f"checkpoint was trained for {m['name']} (weights {m['weights_hash']}), "
                f"not {model.name} (weights {model.weights_hash})",
                "pass the weights it was trained with (--weights) or train a new checkpoint")
        layer = meta["layer"]
        try:
            info = model.layer(layer["name"])
        except ValueError as e:
            raise CheckpointError(meta_file, str(e), "train a new checkpoint for this model") from None
        if info.channels != layer["channels"]:
            raise CheckpointError(meta_file, f"layer {layer['name']} has {info.channels} channels, "
                                             f"checkpoint {layer['channels']}", "train a new checkpoint for this model")
        ws_meta = meta["word_space"]
        if word_space is None:
            try:
                word_space = load_word_space(ws_meta["name"])
            except (ValueError, OSError) as e:
                raise CheckpointError(meta_file, f"its word space cannot be loaded: {e}",
                                      "make the word-vector file available at that path") from None
        if word_space.dim != ws_meta["dim"] or word_space.fingerprint != ws_meta["fingerprint"]:
            raise CheckpointError(
                meta_file,
                f"checkpoint uses word space {ws_meta['name']} ({ws_meta['dim']}-d), "
                f"not {word_space.name} ({word_space.dim}-d)", "use the word space it was trained with")
        head = None
        if meta["explainer"]["has_head"]:
            head = ExplainerHead(layer["channels"], ws_meta["dim"])
            expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
            head.load_state_dict(read_weights(directory, meta, expected))
        try:
            split = ConceptSplit.from_dict(meta["split"]) if meta.get("split") else None
        except TypeError:
            raise CheckpointError(meta_file, "malformed checkpoint metadata: 'split' has unknown fields") from None
        extra = {k: v for k, v in meta.items()
                 if k not in ("format", "version", "model", "layer", "word_space", "explainer", "split", "weights")}
        exp = meta["explainer"]
        try:
            return cls(model, layer["name"], word_space, kind or exp["kind"], head, split,
                       exp.get("conse_top", 10), extra, exp.get("pooling", "mean"), exp.get("conse_weight", 1.0))
        except ValueError as e:
            if kind:
                raise
            raise CheckpointError(meta_file, f"malformed checkpoint metadata: {e}") from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
