"""Per-filter statistics of a layer over a dataset: thresholds T_u, image maxima, top images.

The threshold follows NetDissect and the LaViSE evaluation protocol: ``T_u`` is the
activation value of filter ``u`` exceeded by a fraction ``quantile`` (default 0.005,
i.e. the *upper* 0.5%, the 99.5th percentile) of **all** spatial activations of ``u``
over the dataset.

Everything streams over batches from a :class:`FeatureSource`; the features of the
whole dataset are never held at once. Two methods compute ``T_u``:

``exact``
    One pass keeping, per filter, a running top-``K`` of spatial values with
    ``K = ceil(quantile * n)`` (``n = N * h * w`` values per filter), merged with
    ``torch.topk``. ``T_u`` is the ``K``-th largest value (see
    :func:`compute_filter_stats`). Memory is about ``3 * K * d`` floats at peak.
``sketch``
    Two passes: per-filter min/max, then a per-filter histogram of ``bins`` equal
    bins; ``T_u`` is interpolated inside the bin that holds the ``K``-th largest
    value, so its error is at most one bin width ``(max_u - min_u) / bins``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureSource",
    "TensorFeatureSource",
    "FilterStats",
    "compute_filter_stats",
    "qualified_fraction",
    "STATS_METHODS",
]

STATS_METHODS = ("auto", "exact", "sketch")
_FORMAT_VERSION = 2  # 2: a checksum of the tensors in the metadata


@runtime_checkable
class FeatureSource(Protocol):
    """What :func:`compute_filter_stats` reads: cached features of N images.

    ``len(source)`` is the number of images N (rows); ``shape`` is ``(d, h, w)``;
    ``batches(batch_size)`` yields ``(row indices LongTensor (B,), float32 features
    (B, d, h, w))``. A source may skip rows (e.g. images that failed to decode).
    """

    @property
    def shape(self) -> tuple[int, int, int]:
        ...

    def __len__(self) -> int:
        ...

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ...


class TensorFeatureSource:
    """An in-memory :class:`FeatureSource` over a tensor ``(N, d, h, w)``.

    Args:
        features: The features of N images; kept as given (device and dtype);
            batches are yielded as float32 on the tensor's device.
    """

    def __init__(self, features: torch.Tensor) -> None:
        if not isinstance(features, torch.Tensor) or features.ndim != 4:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"expected a features tensor of shape (N, d, h, w), got {shape}")
        self.features = features

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(d, h, w)`` of one image's features."""
        _, d, h, w = self.features.shape
        return int(d), int(h), int(w)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.features[i]

    def batches(
        self, batch_size: int = 64, indices: Sequence[int] | torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields ``(row indices (B,), float32 features (B, d, h, w))``.

        Args:
            batch_size: Images per batch.
            indices: Rows to yield, in order (default: all).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dev = self.features.device
        if indices is None:
            idx = torch.arange(len(self), device=dev)
        else:
            idx = torch.as_tensor(indices, dtype=torch.long, device=dev).reshape(-1)
        for start in range(0, idx.numel(), batch_size):
            rows = idx[start:start + batch_size]
            yield rows, self.features[rows].float()


@dataclass(frozen=True)
class FilterStats:
    """Statistics of each filter of one layer over a dataset.

    Attributes:
        quantile: Upper fraction of spatial activations above the threshold (0.005).
        thresholds: ``(d,)`` T_u, exceeded by a fraction ``quantile`` of all spatial
            activations of filter u.
        image_max: ``(N, d)`` each image's spatial max per filter; rows of images the
            source skipped are ``-inf``.
        top_images: ``(d, k)`` long, the rows of the k images with the highest
            spatial max per filter, descending (ties in arbitrary order).
        top_values: ``(d, k)`` the spatial max of those images.
        exact: Whether the thresholds are exact order statistics (else histogram
            sketch, within one bin width).
        num_images: Number of images the statistics were computed over.
    """

    quantile: float
    thresholds: torch.Tensor
    image_max: torch.Tensor
    top_images: torch.Tensor
    top_values: torch.Tensor
    exact: bool
    num_images: int

    @property
    def num_filters(self) -> int:
        """Number of filters d."""
        return int(self.thresholds.shape[0])

    def to(self, device: str | torch.device) -> FilterStats:
        """A copy with every tensor on ``device``."""
        return FilterStats(self.quantile, self.thresholds.to(device), self.image_max.to(device),
                           self.top_images.to(device), self.top_values.to(device), self.exact,
                           self.num_images)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tensors as nested lists; skipped rows as ``-Infinity``)."""
        return {
            "quantile": self.quantile,
            "thresholds": self.thresholds.tolist(),
            "image_max": self.image_max.tolist(),
            "top_images": self.top_images.tolist(),
            "top_values": self.top_values.tolist(),
            "exact": self.exact,
            "num_images": self.num_images,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterStats:
        """Inverse of :meth:`to_dict`."""
        try:
            d = len(data["thresholds"])
            image_max = torch.tensor(data["image_max"], dtype=torch.float32).reshape(-1, d)
            top_images = torch.tensor(data["top_images"], dtype=torch.long).reshape(d, -1)
            top_values = torch.tensor(data["top_values"], dtype=torch.float32).reshape(d, -1)
            return cls(
                quantile=float(data["quantile"]),
                thresholds=torch.tensor(data["thresholds"], dtype=torch.float32),
                image_max=image_max,
                top_images=top_images,
                top_values=top_values,
                exact=bool(data["exact"]),
                num_images=int(data["num_images"]),
            )
        except KeyError as e:
            raise ValueError(f"filter statistics dict lacks the key {e.args[0]!r}") from None

    def save(self, path: str | Path) -> Path:
        """Writes the statistics to a safetensors file atomically (temp file + rename).

        Scalars go to the file's metadata as JSON under the key ``"lavise"``.
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "thresholds": self.thresholds.detach().float().cpu().contiguous(),
            "image_max": self.image_max.detach().float().cpu().contiguous(),
            "top_images": self.top_images.detach().long().cpu().contiguous(),
            "top_values": self.top_values.detach().float().cpu().contiguous(),
        }
        meta = {"format": _FORMAT_VERSION, "quantile": self.quantile, "exact": self.exact,
                "num_images": self.num_images, "sha256": _tensors_digest(tensors)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"lavise": json.dumps(meta)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.debug("saved filter statistics to %s", path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FilterStats:
        """Reads statistics written by :meth:`save`, checking shapes and the checksum.

        Raises:
            ValueError: No such file; or (:class:`lavise._cache.CacheDamaged`) the file is truncated, corrupt,
                not lavise statistics, of another format version, or fails its checksum.
        """
        from safetensors import safe_open

        from lavise._cache import CacheDamaged

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"filter statistics file not found: {path}")
        names = ("thresholds", "image_max", "top_images", "top_values")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("lavise")
                keys = set(f.keys())
                t = {k: f.get_tensor(k) for k in names if k in keys}
        except Exception as e:  # safetensors raises its own SafetensorError and OSError
            raise CacheDamaged(path, f"unreadable safetensors file ({str(e).strip() or type(e).__name__})") from None
        if raw is None:
            raise CacheDamaged(path, "not a lavise filter statistics file (no 'lavise' metadata)")
        try:
            meta = json.loads(raw)
        except ValueError:
            raise CacheDamaged(path, "its 'lavise' metadata is not JSON") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT_VERSION:
            got = meta.get("format") if isinstance(meta, dict) else None
            raise CacheDamaged(path, f"filter statistics format {got!r}, this lavise reads {_FORMAT_VERSION}")
        if len(t) != len(names):
            raise CacheDamaged(path, f"lacks the tensors {', '.join(sorted(set(names) - set(t)))}")
        if meta.get("sha256") != _tensors_digest(t):
            raise CacheDamaged(path, "fails its checksum")
        d = t["thresholds"].shape[0] if t["thresholds"].ndim == 1 else -1
        k = t["top_images"].shape[-1] if t["top_images"].ndim == 2 else -1
        if (d < 0 or k < 0 or t["image_max"].ndim != 2 or t["image_max"].shape[1] != d
                or t["top_images"].shape != (d, k) or t["top_values"].shape != (d, k)):
            raise CacheDamaged(path, "tensor shapes disagree: " + ", ".join(
                f"{n} {tuple(v.shape)}" for n, v in t.items()))
        try:
            return cls(quantile=float(meta["quantile"]), exact=bool(meta["exact"]),
                       num_images=int(meta["num_images"]), **t)
        except (KeyError, TypeError, ValueError):
            raise CacheDamaged(path, "its 'lavise' metadata lacks quantile, exact or num_images") from None


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the named tensors' dtypes, shapes and bytes, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fires(activations: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Where a filter fires: its activation reaches T_u (``>=``) and is positive.

    ``>=`` keeps saturating filters (ReLU6 at 6, where T_u equals the maximum) from
    having empty masks; requiring a positive value keeps dead filters (T_u = 0) from
    firing everywhere. ``thresholds`` must broadcast against ``activations``.
    """
    return (activations >= thresholds) & (activations > 0)


def _threshold_rank(quantile: float, num_values: int) -> int:
    """K = ceil(quantile * n), at least 1: T_u is the K-th largest of n values."""
    # Round away float noise (0.005 * 4000 = 20.000000000000004) before the ceiling.
    return max(1, min(num_values, math.ceil(round(quantile * num_values, 9))))


def _stream(source: Any, batch_size: int, device: torch.device | None, desc: str,
            progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    bar = tqdm(total=len(source), desc=desc, unit="img", disable=not progress)
    try:
        for idx, feats in source.batches(batch_size):
            if device is not None:
                feats = feats.to(device)
            idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1).to(feats.device)
            if feats.ndim != 4 or feats.shape[0] != idx.numel():
                raise ValueError(f"feature source yielded {tuple(feats.shape)} features for "
                                 f"{idx.numel()} indices; expected (B, d, h, w)")
            yield idx, feats.float()
            bar.update(idx.numel())
    finally:
        bar.close()


class _TopImages:
    """Running top-k images per filter by spatial max, and the (N, d) image maxima."""

    def __init__(self, num_images: int, k: int) -> None:
        self.n = num_images
        self.k = k
        self.values: torch.Tensor | None = None  # (d, <=k)
        self.keys: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        self.image_max: torch.Tensor | None = None
        self.seen = 0

    def update(self, idx: torch.Tensor, flat: torch.Tensor) -> None:
        """``flat``: (B, d, h*w) features of rows ``idx``."""
        bmax = flat.amax(dim=2)  # (B, d)
        if self.image_max is None:
            self.image_max = torch.full((self.n, flat.shape[1]), -math.inf, device=flat.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise ValueError(f"feature source yielded a row index outside [0, {self.n})")
        self.image_max[idx] = bmax
        self.seen += idx.numel()
        # Rank by spatial max; ties (e.g. ReLU6 saturating at 6) are broken by the
        # spatial mean, so saturated filters still get their most active images.
        keys = (bmax.double() + 1e-7 * flat.mean(dim=2).double()).t()
        vals = bmax.t()
        rows = idx.unsqueeze(0).expand_as(vals)
        if self.values is not None:
            keys = torch.cat([self.keys, keys], dim=1)
            vals = torch.cat([self.values, vals], dim=1)
            rows = torch.cat([self.rows, rows], dim=1)
        top = keys.topk(min(self.k, keys.shape[1]), dim=1)
        self.keys = top.values
        self.values = vals.gather(1, top.indices)
        self.rows = rows.gather(1, top.indices)


def compute_filter_stats(
    source: FeatureSource,
    quantile: float = 0.005,
    top_k: int = 25,
    batch_size: int = 64,
    method: str = "auto",
    max_exact_values: int = 50_000_000,
    bins: int = 2048,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> FilterStats:
    """Streams over ``source`` once (``exact``) or twice (``sketch``) for per-filter statistics.

    Threshold definition: with the ``n = M * h * w`` spatial activations of filter u
    over the M images sorted descending ``v_(1) >= ... >= v_(n)`` and
    ``K = max(1, ceil(quantile * n))``, the exact threshold is ``T_u = v_(K)``. Then at
    most ``K - 1 < quantile * n`` values are strictly above ``T_u`` and at least
    ``K >= quantile * n`` are ``>= T_u``. It lies between
    ``torch.quantile(values, 1 - quantile, interpolation="lower")`` and ``"higher"``
    (the two order statistics that the default linear interpolation blends).

    Args:
        source: Features to summarise (see :class:`FeatureSource`).
        quantile: Upper fraction of activations above T_u, in (0, 1).
        top_k: Top images kept per filter (clipped to the number of images).
        batch_size: Images per batch read from ``source``.
        method: ``"exact"``, ``"sketch"`` or ``"auto"`` (exact when
            ``K * d <= max_exact_values``).
        max_exact_values: Bound on the running top-K table (``K * d`` floats) for auto.
        bins: Histogram bins per filter for the sketch (error <= range / bins).
        progress: Show tqdm progress bars.
        device: Where to compute (default: wherever the source's batches are).

    Returns:
        The statistics, on the CPU.

    Raises:
        ValueError: On invalid arguments or an empty source.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if method not in STATS_METHODS:
        raise ValueError(f"unknown statistics method {method!r} (valid: {', '.join(STATS_METHODS)})")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    n_rows = len(source)
    if n_rows < 1:
        raise ValueError("the feature source holds no images")
    d, h, w = (int(v) for v in source.shape)
    hw = h * w
    if top_k > n_rows:
        logger.info("top_k=%d exceeds the %d images; keeping %d", top_k, n_rows, n_rows)
        top_k = n_rows
    k_cap = _threshold_rank(quantile, n_rows * hw)
    if method == "auto":
        method = "exact" if k_cap * d <= max_exact_values else "sketch"
        logger.info("filter statistics: %s thresholds (K=%d values x %d filters)", method, k_cap, d)
    dev = torch.device(device) if device is not None else None
    top = _TopImages(n_rows, top_k)

    if method == "exact":
        running: torch.Tensor | None = None
        buffer: list[torch.Tensor] = []
        buffered = 0

        def merge() -> None:
            nonlocal running, buffer, buffered
            parts = ([running] if running is not None else []) + buffer
            cat = torch.cat(parts, dim=1)
            running = cat.topk(min(k_cap, cat.shape[1]), dim=1, sorted=False).values
            buffer, buffered = [], 0

        for idx, feats in _stream(source, batch_size, dev, "filter stats (exact)", progress):
            flat = feats.reshape(feats.shape[0], d, hw)
            top.update(idx, flat)
            buffer.append(flat.transpose(0, 1).reshape(d, -1))
            buffered += buffer[-1].shape[1]
            # Merging once the buffer reaches K keeps each merge O(K d) and their number ~1/quantile.
            if buffered >= k_cap:
                merge()
        if top.seen == 0:
            raise ValueError("the feature source yielded no images")
        if buffer:
            merge()
        k = _threshold_rank(quantile, top.seen * hw)
        thresholds = running.topk(k, dim=1, sorted=True).values[:, -1]
    else:
        lo = hi = None
        for idx, feats in _stream(source, batch_size, dev, "filter stats (pass 1/2)", progress):
            flat = feats.reshape(feats.shape[0], d, hw)
            top.update(idx, flat)
            bmin = flat.amin(dim=(0, 2))
            bmax = flat.amax(dim=(0, 2))
            lo = bmin if lo is None else torch.minimum(lo, bmin)
            hi = bmax if hi is None else torch.maximum(hi, bmax)
        if top.seen == 0:
            raise ValueError("the feature source yielded no images")
        width = (hi - lo) / bins
        scale = torch.where(hi > lo, bins / (hi - lo), torch.zeros_like(hi))
        offsets = torch.arange(d, device=lo.device).unsqueeze(1) * bins
        counts = torch.zeros(d * bins, dtype=torch.long, device=lo.device)
        for _, feats in _stream(source, batch_size, dev, "filter stats (pass 2/2)", progress):
            vals = feats.reshape(feats.shape[0], d, hw).transpose(0, 1).reshape(d, -1)
            b = ((vals - lo.unsqueeze(1)) * scale.unsqueeze(1)).floor().clamp_(0, bins - 1).long()
            counts += torch.bincount((b + offsets).reshape(-1), minlength=d * bins)
        counts = counts.reshape(d, bins)
        k = _threshold_rank(quantile, top.seen * hw)
        from_top = counts.flip(1).cumsum(1)  # from_top[:, j]: values in bins >= bins-1-j
        j = (from_top < k).sum(1, keepdim=True).clamp_(max=bins - 1)
        b = bins - 1 - j
        in_bin = counts.gather(1, b).clamp(min=1)
        above = from_top.gather(1, j) - counts.gather(1, b)
        frac = (k - above).to(lo.dtype) / in_bin.to(lo.dtype)  # in (0, 1]
        thresholds = (lo.unsqueeze(1) + (b + 1 - frac) * width.unsqueeze(1)).squeeze(1)
        thresholds = torch.minimum(torch.maximum(thresholds, lo), hi)

    if top.seen < n_rows:
        logger.info("filter statistics over %d of %d images (the source skipped %d)",
                    top.seen, n_rows, n_rows - top.seen)
    return FilterStats(
        quantile=float(quantile),
        thresholds=thresholds.float().cpu(),
        image_max=top.image_max.cpu(),
        top_images=top.rows.cpu(),
        top_values=top.values.cpu(),
        exact=method == "exact",
        num_images=top.seen,
    )


def qualified_fraction(
    image_max: torch.Tensor, thresholds: torch.Tensor, group_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of the images in a group whose spatial max activation exceeds T_u.

    Rows that are not finite (images the source skipped) are left out per filter.

    Args:
        image_max: ``(N, d)`` per-image spatial max (:attr:`FilterStats.image_max`).
        thresholds: ``(d,)`` thresholds T_u.
        group_mask: ``(N,)`` bool selecting the group's images (default: all).

    Returns:
        ``(d,)`` float fractions in [0, 1] (0 for a filter with no valid image).
    """
    if image_max.ndim != 2 or thresholds.shape != (image_max.shape[1],):
        raise ValueError(f"expected image_max (N, d) and thresholds (d,), got "
                         f"{tuple(image_max.shape)} and {tuple(thresholds.shape)}")
    valid = torch.isfinite(image_max)
    if group_mask is not None:
        group_mask = torch.as_tensor(group_mask, device=image_max.device).reshape(-1)
        if group_mask.dtype != torch.bool or group_mask.numel() != image_max.shape[0]:
            raise ValueError(f"group_mask must be a bool tensor of {image_max.shape[0]} images, "
                             f"got {group_mask.dtype} of {group_mask.numel()}")
        if not bool(group_mask.any()):
            raise ValueError("group_mask selects no images")
        valid = valid & group_mask.unsqueeze(1)
    above = fires(image_max, thresholds.to(image_max.device).unsqueeze(0)) & valid
    return above.sum(0).float() / valid.sum(0).clamp(min=1).float()
