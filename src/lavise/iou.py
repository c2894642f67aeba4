"""NetDissect ground truth: streaming IoU of every filter with every concept, and its cache.

:class:`IoUAccumulator` sums, over a dataset, the intersection and the areas of each
filter's thresholded activation mask with each concept's mask; the dataset-level IoU
and the ground-truth concepts of each filter follow from those counters.

The counters of an evaluation split are cached next to its feature cache
(:func:`load_cached_iou` / :func:`save_cached_iou`), keyed by what they depend on
(:func:`iou_cache_key`): the features (their cache key), the masks (a digest of the
annotation files' content, the concepts, the image ids and the preprocessing that
resizes the masks, :func:`mask_digest`), the thresholds T_u (their values and the
quantile that defined them) and the evaluation grid's resolution. The IoU threshold
that turns IoU into ground-truth concepts (0.04) is applied to the cached counters,
so it is not part of the key: another ``evaluate`` of the same split with other
methods, p, s or IoU threshold skips the IoU pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from lavise.statistics import fires

logger = logging.getLogger(__name__)

__all__ = ["IoUAccumulator", "mask_digest", "iou_cache_key", "load_cached_iou", "save_cached_iou"]

_CACHE_VERSION = 1
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



# ---------------------------------------------------------------------------- cache


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _mask_sources(dataset: Any) -> list[Path]:
    """The files a dataset's masks are built from (annotation files, mask images)."""
    sources = getattr(dataset, "mask_sources", None)
    if sources is not None:
        return [Path(p) for p in sources]
    out: list[Path] = []
    ann = getattr(dataset, "annotation_file", None)
    if ann is not None:
        out.append(Path(ann))
    png_dir = getattr(dataset, "png_dir", None)
    if png_dir is not None and Path(png_dir).is_dir():
        out.extend(sorted(p for p in Path(png_dir).iterdir() if p.is_file()))
    root = getattr(dataset, "root", None)
    if ann is None and root is not None and Path(root).is_dir():
        out.extend(sorted(Path(root).glob("*.json")))  # e.g. Visual Genome's objects.json
    return out


def mask_digest(dataset: Any) -> str:
    """A digest of everything a dataset's concept masks depend on, by content.

    Covers the format, the concepts (in order), the image ids, the preprocessing that
    resizes and crops the masks, and the bytes of the files the masks are built from
    (COCO's annotation JSON, COCO panoptic's PNGs, Visual Genome's JSON files). A
    combined dataset digests its members.
    """
    h = hashlib.sha256()
    members = getattr(dataset, "datasets", None)
    head = {
        "format": type(dataset).__name__,
        "concepts": list(map(str, dataset.concepts)),
        "ids": [str(i) for i in dataset.image_ids],
        "preprocessing": dataset.preprocessing.to_dict(),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    if members is not None:
        for member in members:
            h.update(mask_digest(member).encode())
        return h.hexdigest()
    for path in _mask_sources(dataset):
        h.update(f"\n{path.name}\n".encode())
        _hash_file(h, path)
    return h.hexdigest()


def iou_cache_key(store: Any, dataset: Any, thresholds: torch.Tensor, quantile: float | None,
                  resolution: int | None) -> str:
    """The key of an IoU pass: features, masks, thresholds T_u (and their quantile), grid."""
    t = thresholds.detach().to("cpu", torch.float32).contiguous()
    blob = json.dumps({
        "v": _CACHE_VERSION,
        "features": store.meta.get("key", store.path.name),
        "masks": mask_digest(dataset),
        "thresholds": hashlib.sha256(t.numpy().tobytes()).hexdigest(),
        "quantile": quantile,
        "resolution": resolution,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cache_file(store: Any, key: str) -> Path:
    return Path(store.path) / "groundtruth" / f"iou-{key}.pt"


def load_cached_iou(store: Any, key: str, num_filters: int, num_concepts: int,
                    resolution: int | None) -> IoUAccumulator | None:
    """The cached accumulator of ``key`` beside ``store``, or None (missing or unreadable)."""
    path = _cache_file(store, key)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        acc = IoUAccumulator(num_filters, num_concepts, resolution=resolution)
        acc.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable ground-truth cache %s: %s", path, exc)
        return None
    logger.info("ground-truth cache hit: %s", path)
    return acc


def save_cached_iou(store: Any, key: str, acc: IoUAccumulator) -> Path:
    """Writes ``acc``'s counters beside ``store`` under ``key`` (atomically)."""
    path = _cache_file(store, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(acc.state_dict(), tmp)
    os.replace(tmp, path)
    return path
