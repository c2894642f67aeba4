"""Explain every filter of a layer in words (paper section 3.2).

For each filter u: take its top-p images (highest spatial max activation), pool each
image's feature map with a masking method (filter attention by default), map the
pooled vector into the word space with the explainer, take the s nearest vocabulary
words per image and rank words by frequency over the p images.

Only (filter, top image) pairs are computed, so the cost is O(d * p) pooled vectors,
never O(d * N); all filters that share a top image are pooled in one vectorised call.

Each explanation also carries its evidence: up to 15 top images (the p that voted and
the next ones, for display) with their file paths and the filter's low-resolution
activation map on each, so a report (:mod:`lavise.report`) can draw them later without
the feature cache or the model.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lavise._io import write_text_atomic
from lavise.explainer import Explainer, rescale_pooled
from lavise.masking import get_masking_method
from lavise.statistics import FilterStats
from lavise.words import RankedWord, WordRanking, get_word_ranking, list_word_rankings, select_words
from lavise.wordspace import WordSpace

logger = logging.getLogger(__name__)

__all__ = ["TopImage", "FilterExplanation", "Explanations", "explain_filters", "parse_filters",
           "DISPLAY_IMAGES", "MAP_SIDE"]

DISPLAY_IMAGES = 15
"""Top images kept per filter as evidence (the paper's human study shows 15)."""
MAP_SIDE = 14
"""Largest side of a stored activation map; larger maps are max-pooled down to it."""


@dataclass(frozen=True)
class TopImage:
    """One of a filter's top-activated images, optionally with its evidence.

    Attributes:
        image_id: The image's id in its dataset.
        activation: The filter's spatial max on the image.
        path: The image file (absolute), so a report can find it again; empty when unknown.
        voted: Whether the image voted for the filter's words (one of the top p
            images, and, for thresholded masking methods, the filter reaches T_u on it).
        map_shape: ``(h, w)`` of :attr:`map_data`; empty when no map was recorded.
        map_data: The filter's activation map on the image (after the model's resize and
            centre crop), float16 little-endian bytes, at most ``MAP_SIDE`` per side.
            JSON stores it base64-encoded (``"map"``).
    """

    image_id: str
    activation: float
    path: str = ""
    voted: bool = True
    map_shape: tuple[int, ...] = ()
    map_data: bytes = b""

    @property
    def activation_map(self) -> np.ndarray | None:
        """The low-resolution activation map as float32 ``(h, w)``, or None."""
        if not self.map_data:
            return None
        return np.frombuffer(self.map_data, dtype="<f2").reshape(self.map_shape).astype(np.float32)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"image_id": self.image_id, "activation": self.activation}
        if self.path:
            d["path"] = self.path
        if self.map_data or self.path:
            d["voted"] = self.voted
        if self.map_data:
            d["map_shape"] = list(self.map_shape)
            d["map"] = base64.b64encode(self.map_data).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TopImage":
        data = base64.b64decode(d["map"]) if d.get("map") else b""
        return cls(str(d["image_id"]), float(d["activation"]), str(d.get("path", "")),
                   bool(d.get("voted", True)), tuple(int(v) for v in d.get("map_shape", ())), data)


@dataclass(frozen=True)
class FilterExplanation:
    """The words that explain one filter, and the evidence behind them.

    Attributes:
        layer: Dotted layer path.
        filter: Filter (channel) index.
        words: Ranked words, most frequent first.
        top_images: The p images the words were computed from, most activated first.
        threshold: T_u, the activation exceeded by a fraction p of all activations.
        evidence: Up to ``DISPLAY_IMAGES`` top images (at least the p above) with their
            paths, low-resolution activation maps and whether they voted for the words,
            so a report can be drawn without the feature cache or the model.
    """

    layer: str
    filter: int
    words: tuple[RankedWord, ...]
    top_images: tuple[TopImage, ...]
    threshold: float
    evidence: tuple[TopImage, ...] = ()

    @property
    def labels(self) -> list[str]:
        """The words alone, best first."""
        return [w.word for w in self.words]

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "filter": self.filter,
            "threshold": self.threshold,
            "words": [w.to_dict() for w in self.words],
            "top_images": [{"image_id": t.image_id, "activation": t.activation} for t in self.top_images],
            **({"evidence": [t.to_dict() for t in self.evidence]} if self.evidence else {}),
        }


@dataclass(frozen=True)
class Explanations:
    """All filter explanations of one run, with the settings that produced them."""

    model: str
    layer: str
    method: str
    explainer: str
    settings: dict
    filters: tuple[FilterExplanation, ...]

    def __len__(self) -> int:
        return len(self.filters)

    def __iter__(self):
        return iter(self.filters)

    def __getitem__(self, u: int) -> FilterExplanation:
        for f in self.filters:
            if f.filter == u:
                return f
        raise KeyError(f"filter {u} was not explained")

    def words(self) -> list[list[str]]:
        """Each filter's word list, in filter order."""
        return [f.labels for f in self.filters]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "layer": self.layer,
            "method": self.method,
            "explainer": self.explainer,
            "settings": self.settings,
            "filters": [f.to_dict() for f in self.filters],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Explanations":
        filters = tuple(
            FilterExplanation(
                layer=f["layer"],
                filter=int(f["filter"]),
                words=tuple(RankedWord(**w) for w in f["words"]),
                top_images=tuple(TopImage.from_dict(t) for t in f["top_images"]),
                threshold=float(f["threshold"]),
                evidence=tuple(TopImage.from_dict(t) for t in f.get("evidence", ())),
            )
            for f in d["filters"]
        )
        return cls(d["model"], d["layer"], d["method"], d["explainer"], dict(d["settings"]), filters)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_csv(self) -> str:
        """One row per filter: layer, filter, T_u, words with scores, top images with activations."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["layer", "filter", "threshold", "words", "word_counts", "word_scores",
                    "top_images", "top_activations"])
        for f in self.filters:
            w.writerow([
                f.layer, f.filter, f"{f.threshold:.6g}",
                " ".join(f.labels),
                " ".join(str(x.count) for x in f.words),
                " ".join(f"{x.score:.4f}" for x in f.words),
                " ".join(t.image_id for t in f.top_images),
                " ".join(f"{t.activation:.4g}" for t in f.top_images),
            ])
        return buf.getvalue()

    def most_consistent(self) -> list[FilterExplanation]:
        """Filters ordered by how many of their top images agree on their first word."""
        def key(f: FilterExplanation) -> tuple[float, float]:
            return (f.words[0].count, f.words[0].score) if f.words else (0, 0.0)

        return sorted(self.filters, key=key, reverse=True)

    def table(self, limit: int | None = 10, words: int = 6, order: str = "filter") -> str:
        """A short plain-text table of filters and their words.

        Args:
            limit: Filters shown (None: all).
            words: Words shown per filter.
            order: ``filter`` (index order) or ``consistency`` (:meth:`most_consistent`).
        """
        if order not in ("filter", "consistency"):
            raise ValueError(f"unknown order {order!r} (valid: filter, consistency)")
        ordered = self.most_consistent() if order == "consistency" else list(self.filters)
        rows = ordered[:limit] if limit else ordered
        lines = [f"{self.model} {self.layer} ({self.method}, {self.explainer})",
                 f"{'filter':>6}  {'T_u':>8}  words"]
        for f in rows:
            lines.append(f"{f.filter:>6}  {f.threshold:>8.3f}  {', '.join(f.labels[:words])}")
        if limit and len(self.filters) > limit:
            lines.append(f"... {len(self.filters) - limit} more filters in the JSON/CSV output")
        return "\n".join(lines)

    @classmethod
    def load(cls, path: str | Path) -> "Explanations":
        """Reads ``explanations.json``, or the folder :meth:`save` wrote it to.

        Raises:
            FileNotFoundError: There is no such file.
            ValueError: The file is not a lavise explanations file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "explanations.json"
        if not path.is_file():
            raise FileNotFoundError(f"explanations not found: {path} (run lavise explain --out DIR)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a lavise explanations file ({type(exc).__name__}: {exc})") from None

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Writes ``explanations.json`` and ``explanations.csv`` (atomically) to ``directory``."""
        directory = Path(directory)
        js = write_text_atomic(directory / "explanations.json", self.to_json())
        cs = write_text_atomic(directory / "explanations.csv", self.to_csv())
        return js, cs


def parse_filters(spec: str | Sequence[int] | None, num_filters: int) -> list[int]:
    """Parses ``"0-99,120,130-131"`` (or a list) into filter indices, checking the range."""
    if spec is None or spec == "all":
        return list(range(num_filters))
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    a, b = part.split("-", 1)
                    out.extend(range(int(a), int(b) + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise ValueError(f"bad filter list {spec!r} (use e.g. 0-99,120)") from None
    else:
        out = [int(u) for u in spec]
    bad = [u for u in out if not 0 <= u < num_filters]
    if bad:
        raise ValueError(f"filter index {bad[0]} out of range: the layer has {num_filters} filters (0-{num_filters - 1})")
    if not out:
        raise ValueError("no filters selected")
    return sorted(dict.fromkeys(out))


def pooled_top_image_features(
    store: Any,
    stats: FilterStats,
    filters: Sequence[int],
    method: str,
    *,
    top: int,
    images: Callable[[Sequence[int]], torch.Tensor] | None = None,
    extract: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    max_elements: int = 64_000_000,
    progress: bool = True,
    pooling: str = "mean",
) -> torch.Tensor:
    """Pooled masked features (U, top, d) of each filter's top images.

    Args:
        store: Feature store of the target images.
        stats: Filter statistics of ``store``.
        filters: Filters to explain.
        method: Masking method name.
        top: Top images per filter (<= the stats' top_k).
        images: Loads normalised images by store row (needed by the ``image`` method).
        extract: Normalised images -> layer features (needed by the ``image`` method).
        device: Where pooling runs.
        max_elements: Bound on the pooled block held at once (B * U * d).
        pooling: ``mean`` or ``rescaled`` (see :func:`lavise.explainer.rescale_pooled`).
    """
    masking = get_masking_method(method)
    d = store.shape[0]
    u_count = len(filters)
    filt = torch.as_tensor(list(filters), dtype=torch.long)
    top_idx = stats.top_images[filt, :top]  # (U, top)
    # Every (filter, slot) pair and the image row it needs.
    pair_pos = torch.arange(u_count).repeat_interleave(top)
    pair_slot = torch.arange(top).repeat(u_count)
    pair_img = top_idx.reshape(-1)
    rows = torch.unique(pair_img).tolist()
    out = torch.zeros(u_count, top, d)
    thresholds = stats.thresholds.to(device)
    batch_pos = torch.full((len(store),), -1, dtype=torch.long)
    col_of = torch.full((d,), -1, dtype=torch.long)
    # The image method runs the model for each pooled pair: its batches of images pool
    # only the pairs actually needed, many images' pairs per forward pass.
    per_image = 16 if masking.needs_model else max(1, min(64, max_elements // max(1, u_count * d)))
    bar = tqdm(total=len(rows), desc=f"pool {method}", unit="img", disable=not progress)
    for idx, feats in store.batches(batch_size=per_image, indices=rows):
        feats = feats.to(device)
        batch_pos[idx] = torch.arange(len(idx))
        sel = torch.nonzero(batch_pos[pair_img] >= 0).flatten()
        need = torch.unique(filt[pair_pos[sel]])
        col_of[need] = torch.arange(len(need))
        need_t = need.to(device)
        if masking.needs_model:
            if images is None or extract is None:
                raise ValueError("the image masking method needs the images and the model")
            imgs = images(idx.tolist()).to(device)
            pairs = (batch_pos[pair_img[sel]], col_of[filt[pair_pos[sel]]])
            vec = masking.pool_pairs(imgs, feats, need_t, thresholds, extract, pairs)
            if pooling == "rescaled":
                vec = rescale_pooled(vec, feats.mean((2, 3)).norm(dim=1)[pairs[0].to(device)])
            out[pair_pos[sel], pair_slot[sel]] = vec.cpu()
        else:
            pooled = masking.pool(feats, need_t, thresholds)
            if pooling == "rescaled":
                pooled = rescale_pooled(pooled, feats.mean((2, 3)).norm(dim=1)[:, None])
            pooled = pooled.cpu()
            out[pair_pos[sel], pair_slot[sel]] = pooled[batch_pos[pair_img[sel]], col_of[filt[pair_pos[sel]]]]
        batch_pos[idx] = -1
        col_of[need] = -1
        bar.update(len(idx))
    bar.close()
    return out


def _preprocessing_of(explainer: Explainer) -> dict | None:
    pre = getattr(explainer.model, "preprocessing", None)
    return pre.to_dict() if pre is not None else None


def top_image_maps(
    store: Any,
    stats: FilterStats,
    filters: Sequence[int],
    count: int,
    *,
    max_side: int = MAP_SIDE,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each filter's activation map on each of its top ``count`` images.

    Reads each needed store row once (rows shared by several filters are not re-read).

    Returns:
        ``(rows (U, count) long, values (U, count), maps (U, count, h, w) float16)``;
        slots past the number of images with features have value ``-inf`` and zero maps.
    """
    d, h, w = store.shape
    filt = torch.as_tensor(list(filters), dtype=torch.long)
    count = min(count, stats.top_images.shape[1])
    rows = stats.top_images[filt, :count].clone()
    values = stats.top_values[filt, :count].clone()
    oh, ow = min(h, max_side), min(w, max_side)
    maps = torch.zeros(len(filt), count, oh, ow, dtype=torch.float16)
    valid = torch.isfinite(values)
    pair_pos, pair_slot = torch.nonzero(valid, as_tuple=True)
    pair_row = rows[pair_pos, pair_slot]
    needed = torch.unique(pair_row)
    batch_pos = torch.full((len(store),), -1, dtype=torch.long)
    for idx, feats in store.batches(batch_size=batch_size, indices=needed.numpy()):
        idx = torch.as_tensor(idx, dtype=torch.long).cpu()
        batch_pos[idx] = torch.arange(len(idx))
        sel = torch.nonzero(batch_pos[pair_row] >= 0).flatten()
        m = feats.cpu()[batch_pos[pair_row[sel]], filt[pair_pos[sel]]]  # (S, h, w)
        if (oh, ow) != (h, w):
            m = torch.nn.functional.adaptive_max_pool2d(m[:, None], (oh, ow))[:, 0]
        maps[pair_pos[sel], pair_slot[sel]] = m.to(torch.float16)
        batch_pos[idx] = -1
    return rows, values, maps


def _ranking_setting(rule: WordRanking) -> str | dict:
    """A ranking as recorded in the settings: its registered name, or all its fields when unregistered."""
    registered = rule.name in list_word_rankings() and get_word_ranking(rule.name) == rule
    return rule.name if registered else rule.to_dict()


def explain_filters(
    explainer: Explainer,
    store: Any,
    stats: FilterStats,
    vocabulary: WordSpace,
    *,
    filters: Sequence[int] | str | None = None,
    method: str = "attention",
    top: int = 25,
    s: int = 5,
    x: int = 10,
    weight_by_activation: bool = False,
    ranking: str | WordRanking = "votes",
    allow: set[str] | None = None,
    block: set[str] | None = None,
    images: Callable[[Sequence[int]], torch.Tensor] | None = None,
    progress: bool = True,
    image_paths: Sequence[str | Path] | None = None,
    display: int = DISPLAY_IMAGES,
) -> Explanations:
    """Explains filters of ``explainer.layer`` over the images in ``store``.

    Args:
        explainer: Maps pooled features into the word space.
        store: Cached features of the target images (same model and layer).
        stats: Filter statistics of ``store`` (thresholds, top images).
        vocabulary: The words explanations may use.
        filters: Indices or a spec like ``"0-99"`` (default: all).
        method: Masking method.
        top: p, top-activated images per filter.
        s: Nearest words per image.
        x: Words kept per filter.
        weight_by_activation: Weight each image's words by its max activation.
        ranking: How words are ranked across the top images (a registered
            :class:`~lavise.words.WordRanking` name or one; ``votes``: the paper's rule).
        allow: Only these words may be chosen.
        block: These words may not be chosen.
        images: Normalised images by store row, for the ``image`` method.
        progress: Show progress bars.
        image_paths: Image file of each store row (e.g. ``dataset.image_paths``),
            recorded in the evidence so a report can find the images again.
        display: Top images kept per filter as evidence (at least p; 0: none).
    """
    d = store.shape[0]
    if store.layer != explainer.layer:
        raise ValueError(f"features are of layer {store.layer!r}, the explainer's is {explainer.layer!r}")
    if d != explainer.model.layer(explainer.layer).channels:
        raise ValueError("the feature cache does not match the explainer's layer")
    filters = parse_filters(filters, d)
    if not 1 <= top <= stats.top_images.shape[1]:
        raise ValueError(f"p (top images) must be in [1, {stats.top_images.shape[1]}], got {top}")
    if s < 1 or x < 1:
        raise ValueError(f"s and x must be >= 1 (got s={s}, x={x})")
    if s > len(vocabulary):
        raise ValueError(f"s={s} exceeds the vocabulary size {len(vocabulary)}")
    rule = get_word_ranking(ranking)  # before any work: an unknown name is a one-line error
    extract = None
    if get_masking_method(method).needs_model:
        from lavise.models import LayerExtractor

        extract = LayerExtractor(explainer.model, explainer.layer).features
    device = explainer.device
    pooled = pooled_top_image_features(
        store, stats, filters, method, top=top, images=images, extract=extract,
        device=device, progress=progress, pooling=explainer.pooling,
    )
    u, p, dd = pooled.shape
    vectors = torch.cat([explainer.embed(chunk.to(device)).cpu() for chunk in pooled.reshape(u * p, dd).split(4096)])
    vectors = vectors.reshape(u, p, -1)
    top_idx = stats.top_images[filters, :top]
    top_val = stats.top_values[filters, :top]
    weights = top_val.clamp(min=0) if weight_by_activation else None
    voted = torch.ones_like(top_val, dtype=torch.bool)
    if get_masking_method(method).thresholded:
        # A thresholded mask is empty in a top image where the filter never reaches
        # T_u (small datasets: fewer than p images hold the top p% of activations);
        # such images say nothing about the filter and get no vote.
        fires = (top_val >= stats.thresholds[filters, None]) & (top_val > 0)
        weights = fires.float() if weights is None else weights * fires
        voted = fires
    ranked = select_words(vectors, vocabulary, s=s, x=x, weights=weights, allow=allow, block=block, ranking=rule)
    evidence: list[tuple[TopImage, ...]] = [()] * len(filters)
    if display > 0:
        if image_paths is not None and len(image_paths) != len(store):
            raise ValueError(f"{len(image_paths)} image paths for {len(store)} cached images")
        ev_rows, ev_vals, ev_maps = top_image_maps(store, stats, filters, max(display, top))
        shape = tuple(ev_maps.shape[2:])
        for pos in range(len(filters)):
            items = []
            for slot in range(ev_rows.shape[1]):
                val = float(ev_vals[pos, slot])
                if val == float("-inf"):
                    break
                row = int(ev_rows[pos, slot])
                items.append(TopImage(
                    store.ids[row], val,
                    path=str(Path(image_paths[row]).resolve()) if image_paths is not None else "",
                    voted=slot < top and bool(voted[pos, slot]),
                    map_shape=shape,
                    map_data=ev_maps[pos, slot].numpy().astype("<f2").tobytes(),
                ))
            evidence[pos] = tuple(items)
    results = []
    for pos, uu in enumerate(filters):
        results.append(FilterExplanation(
            layer=explainer.layer,
            filter=uu,
            words=tuple(ranked[pos]),
            top_images=tuple(TopImage(store.ids[int(i)], float(v)) for i, v in zip(top_idx[pos], top_val[pos])),
            threshold=float(stats.thresholds[uu]),
            evidence=evidence[pos],
        ))
    settings = {"p": top, "s": s, "x": x, "quantile": stats.quantile, "pooling": explainer.pooling,
                "vocabulary_size": len(vocabulary), "weight_by_activation": weight_by_activation,
                "ranking": _ranking_setting(rule),
                "images": len(store), "word_space": explainer.word_space.name,
                "display_images": max(display, top) if display > 0 else 0,
                "preprocessing": _preprocessing_of(explainer)}
    return Explanations(explainer.model.name, explainer.layer, method, explainer.kind, settings, tuple(results))
