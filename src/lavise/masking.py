"""Masking methods: the pooled feature vector that represents filter u on one image.

Each method maps a batch of feature maps ``F (B, d, h, w)`` and target filters
``u (U,)`` to ``(B, U, d)``: for every image and every target filter, the global
average pool of the feature map masked or reweighted with respect to ``u``. The
explainer then maps these vectors into the word space.

Registered methods (paper section 3.2 and 4.3, and the published code):

``attention`` (default, the paper's filter attention)
    ``F_k^att = a(F_u, F_k) * F_k`` with ``a`` the cosine similarity of the flattened
    spatial maps of filters u and k (0 when either map is all zero); pooled
    ``= a(F_u, F_k) * mean_xy(F_k)``.
``projection`` (the published code's "filter attention")
    ``mean_xy(F_k * F_u / ||F_u||_2)``, ``||.||_2`` over space (0 for an all-zero map).
``activation``
    ``mean_xy(F_k * [F_u > T_u])``.
``original``
    ``mean_xy(F_k)`` for every u (no masking).
``image`` (needs the model)
    The input image masked where the bilinearly upsampled ``F_u`` exceeds ``T_u``, run
    through the model again and globally average pooled. The mask is applied *after*
    normalisation, so masked-out pixels are 0, i.e. the dataset mean colour (a neutral
    grey), rather than black.

Memory: the output has ``B * U * d`` floats (d=1280, U=1280, B=32: 52M floats, 210 MB),
plus a same-sized intermediate for ``attention``. Pass filters in chunks to bound it,
e.g. with :func:`pool_in_chunks`.
"""

from __future__ import annotations

import logging
from typing import Callable, ClassVar, Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F

from lavise._parallel import InOrder, resolve_passes, side_by_side
from lavise._registry import Registry
from lavise.statistics import fires

logger = logging.getLogger(__name__)

__all__ = [
    "MaskingMethod",
    "AttentionMasking",
    "ProjectionMasking",
    "ActivationMasking",
    "OriginalMasking",
    "ImageMasking",
    "register_masking_method",
    "get_masking_method",
    "list_masking_methods",
    "pool_in_chunks",
    "DEFAULT_MASKING_METHOD",
]

DEFAULT_MASKING_METHOD = "attention"

_METHODS: Registry[type] = Registry("masking method")

M = TypeVar("M", bound=type)


def _eps(dtype: torch.dtype) -> float:
    """A norm floor that is positive in ``dtype`` (1e-12 underflows in float16)."""
    return max(1e-12, float(torch.finfo(dtype).tiny)) if dtype.is_floating_point else 1e-12


def _check(features: torch.Tensor, filters: torch.Tensor | Sequence[int],
           thresholds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validates shapes and moves ``filters``/``thresholds`` to the features' device."""
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a (B, d, h, w) tensor, got {shape}")
    if not features.is_floating_point():
        features = features.float()
    d = features.shape[1]
    filt = torch.as_tensor(filters, dtype=torch.long, device=features.device).reshape(-1)
    if filt.numel() and (int(filt.min()) < 0 or int(filt.max()) >= d):
        raise ValueError(f"filter indices must be in [0, {d}), got range "
                         f"[{int(filt.min())}, {int(filt.max())}]")
    if thresholds is not None:
        thresholds = torch.as_tensor(thresholds, device=features.device).reshape(-1)
        if thresholds.numel() != d:
            raise ValueError(f"thresholds must have one value per filter ({d}), got {thresholds.numel()}")
        thresholds = thresholds.to(features.dtype)
    return features, filt, thresholds


class MaskingMethod:
    """A masking method: ``pool(features, filters, thresholds) -> (B, U, d)``.

    Subclasses set ``name`` and implement :meth:`pool`; register them with
    :func:`register_masking_method`.
    """

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    #: The representation is empty where the filter does not reach T_u in an image.
    thresholded: ClassVar[bool] = False

    def pool(self, features: torch.Tensor, filters: torch.Tensor | Sequence[int],
             thresholds: torch.Tensor) -> torch.Tensor:
        """Pooled masked feature vectors.

        Args:
            features: ``(B, d, h, w)`` feature maps (any device; computed on it).
            filters: ``(U,)`` target filter indices into ``d``.
            thresholds: ``(d,)`` thresholds T_u (used by threshold-based methods).

        Returns:
            ``(B, U, d)``: row ``[b, j]`` represents filter ``filters[j]`` on image b.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def register_masking_method(cls: M) -> M:
    """Class decorator registering a :class:`MaskingMethod` subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, MaskingMethod)) or not cls.name:
        raise ValueError("register_masking_method expects a MaskingMethod subclass with a name")
    return _METHODS.register(cls.name)(cls)


def get_masking_method(name: str) -> MaskingMethod:
    """A new instance of the masking method ``name``; unknown names raise ValueError."""
    if name not in _METHODS:
        raise ValueError(f"unknown masking method {name!r} (valid: {', '.join(_METHODS.names())})")
    return _METHODS.get(name)()


def list_masking_methods() -> list[str]:
    """Names of the registered masking methods, in registration order."""
    return _METHODS.names()


def pool_in_chunks(
    method: MaskingMethod | str,
    features: torch.Tensor,
    filters: torch.Tensor | Sequence[int],
    thresholds: torch.Tensor,
    *,
    max_elements: int = 16_000_000,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Pools ``filters`` in chunks so that each ``(B, U_chunk, d)`` block stays small.

    Args:
        method: A method or its name (not ``image``, which needs the model).
        features: ``(B, d, h, w)``.
        filters: ``(U,)`` target filters.
        thresholds: ``(d,)``.
        max_elements: Bound on ``B * U_chunk * d``.

    Yields:
        ``(filter chunk (U_chunk,), pooled (B, U_chunk, d))`` in the order of ``filters``.
    """
    if isinstance(method, str):
        method = get_masking_method(method)
    features, filt, thresholds = _check(features, filters, thresholds)
    b, d = features.shape[:2]
    step = max(1, max_elements // max(1, b * d))
    for chunk in filt.split(step):
        yield chunk, method.pool(features, chunk, thresholds)


@register_masking_method
class AttentionMasking(MaskingMethod):
    """The paper's filter attention: ``a(F_u, F_k) * mean_xy(F_k)``, a = spatial cosine."""

    name = "attention"

    def pool(self, features: torch.Tensor, filters: torch.Tensor | Sequence[int],
             thresholds: torch.Tensor | None = None) -> torch.Tensor:
        features, filt, _ = _check(features, filters, None)
        flat = features.flatten(2)  # (B, d, hw)
        unit = F.normalize(flat, dim=2, eps=_eps(flat.dtype))
        cos = torch.bmm(unit[:, filt], unit.transpose(1, 2))  # (B, U, d)
        return cos * flat.mean(dim=2).unsqueeze(1)


@register_masking_method
class ProjectionMasking(MaskingMethod):
    """The published code's variant: ``mean_xy(F_k * F_u / ||F_u||_2)``."""

    name = "projection"

    def pool(self, features: torch.Tensor, filters: torch.Tensor | Sequence[int],
             thresholds: torch.Tensor | None = None) -> torch.Tensor:
        features, filt, _ = _check(features, filters, None)
        flat = features.flatten(2)
        att = F.normalize(flat[:, filt], dim=2, eps=_eps(flat.dtype))  # (B, U, hw)
        return torch.bmm(att, flat.transpose(1, 2)) / flat.shape[2]


@register_masking_method
class ActivationMasking(MaskingMethod):
    """Activation masking: ``mean_xy(F_k * [F_u >= T_u])``."""

    name = "activation"
    thresholded = True

    def pool(self, features: torch.Tensor, filters: torch.Tensor | Sequence[int],
             thresholds: torch.Tensor) -> torch.Tensor:
        if thresholds is None:
            raise ValueError("activation masking needs the thresholds T_u")
        features, filt, thresholds = _check(features, filters, thresholds)
        flat = features.flatten(2)
        mask = fires(flat[:, filt], thresholds[filt].view(1, -1, 1)).to(flat.dtype)  # (B, U, hw)
        return torch.bmm(mask, flat.transpose(1, 2)) / flat.shape[2]


@register_masking_method
class OriginalMasking(MaskingMethod):
    """No masking: ``mean_xy(F_k)`` for every target filter."""

    name = "original"

    def pool(self, features: torch.Tensor, filters: torch.Tensor | Sequence[int],
             thresholds: torch.Tensor | None = None) -> torch.Tensor:
        features, filt, _ = _check(features, filters, None)
        mean = features.flatten(2).mean(dim=2)  # (B, d)
        return mean.unsqueeze(1).expand(-1, filt.numel(), -1).contiguous()


@register_masking_method
class ImageMasking(MaskingMethod):
    """Image masking: mask the input where the upsampled ``F_u >= T_u``, re-run the model.

    Masking is applied to the *normalised* image, so masked-out pixels become 0, the
    dataset mean colour. Costs one forward pass per (image, filter) pair whose mask is
    not empty and not a repeat; :meth:`pool_pairs` batches pairs of many images.
    """

    name = "image"
    thresholded = True
    needs_model = True

    def pool(self, features: torch.Tensor, filters: torch.Tensor | Sequence[int],
             thresholds: torch.Tensor) -> torch.Tensor:
        raise ValueError("the image masking method needs the images and the model: "
                         "call pool_images(images, features, filters, thresholds, extract)")

    def masks(self, features: torch.Tensor, filters: torch.Tensor | Sequence[int],
              thresholds: torch.Tensor, size: tuple[int, int],
              pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Binary input-resolution masks of the (image, filter) pairs.

        Args:
            features: ``(B, d, h, w)``.
            filters: ``(U,)``.
            thresholds: ``(d,)``.
            size: ``(H, W)`` of the input images.
            pairs: ``(image positions (P,), filter positions (P,))`` into the batch and
                ``filters`` (default: every pair, image-major, ``B * U``).

        Returns:
            ``(P, 1, H, W)`` float 0/1 masks in the features' dtype.
        """
        features, filt, thresholds = _check(features, filters, thresholds)
        if pairs is None:
            b, u = features.shape[0], filt.numel()
            grid_b = torch.arange(b, device=features.device).repeat_interleave(u)
            grid_u = torch.arange(u, device=features.device).repeat(b)
        else:
            grid_b, grid_u = (p.to(features.device) for p in pairs)
        units = filt[grid_u]
        maps = features[grid_b, units].unsqueeze(1)  # (P, 1, h, w)
        up = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
        return fires(up, thresholds[units].view(-1, 1, 1, 1)).to(features.dtype)

    def pool_images(
        self,
        images: torch.Tensor,
        features: torch.Tensor,
        filters: torch.Tensor | Sequence[int],
        thresholds: torch.Tensor,
        extract: Callable[[torch.Tensor], torch.Tensor],
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Pooled features of the masked images, for every (image, filter) pair.

        Args:
            images: ``(B, 3, H, W)`` normalised images (the ones ``features`` came from).
            features: ``(B, d, h, w)`` their features at the target layer.
            filters: ``(U,)`` target filters.
            thresholds: ``(d,)`` thresholds T_u.
            extract: Maps a normalised image batch ``(n, 3, H, W)`` to the layer's
                features ``(n, d, h', w')``.
            chunk_size: Masked images per forward pass (bounds memory: only one chunk of
                masks and masked images exists at a time; default as :meth:`pool_pairs`).

        Returns:
            ``(B, U, d)`` on the features' device.
        """
        b, u = features.shape[0], torch.as_tensor(filters).numel()
        pairs = (torch.arange(b).repeat_interleave(u), torch.arange(u).repeat(b))
        pooled = self.pool_pairs(images, features, filters, thresholds, extract, pairs, chunk_size)
        return pooled.reshape(b, u, -1)

    def pool_pairs(
        self,
        images: torch.Tensor,
        features: torch.Tensor,
        filters: torch.Tensor | Sequence[int],
        thresholds: torch.Tensor,
        extract: Callable[[torch.Tensor], torch.Tensor],
        pairs: tuple[torch.Tensor, torch.Tensor],
        chunk_size: int | None = None,
        workers: int | None = None,
    ) -> torch.Tensor:
        """Pooled features of the masked images of chosen (image, filter) pairs.

        Pairs of many images and filters share each forward pass of ``chunk_size``
        masked images. Forward passes whose result is known are not run: every pair
        whose mask is empty (the filter stays below T_u everywhere in the image) sees
        the same all-mean-colour image, run once; pairs of one image with the same
        mask (e.g. two filters firing everywhere) are run once.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            features: ``(B, d, h, w)`` their features at the target layer.
            filters: ``(U,)`` target filters.
            thresholds: ``(d,)`` thresholds T_u.
            extract: Normalised images ``(n, 3, H, W)`` -> layer features ``(n, d, h', w')``.
            pairs: ``(image positions (P,), filter positions (P,))`` into the batch and
                ``filters``.
            chunk_size: Masked images per forward pass (default: 64 on a GPU, 1 on a
                CPU, where batch 1 measures fastest: see docs/performance.md).
            workers: Forward passes run at once, each in its own thread, sharing the
                intra-op threads between them (default: on a CPU, the intra-op
                threads, at most 4; on a GPU, 1). Batch-1 passes use several cores
                better side by side than each split across all threads (with one
                intra-op thread each, the results are exactly the one-thread ones);
                ``extract`` must then be thread-safe, as
                :meth:`lavise.models.LayerExtractor.features` is. 1 runs the passes in
                the calling thread.

        Returns:
            ``(P, d)`` on the features' device, in the order of ``pairs``.
        """
        features, filt, thresholds = _check(features, filters, thresholds)
        if images.ndim != 4 or images.shape[0] != features.shape[0]:
            raise ValueError(f"images must be (B, C, H, W) with B={features.shape[0]}, "
                             f"got {tuple(images.shape)}")
        if chunk_size is None:
            chunk_size = 1 if features.device.type == "cpu" else 64
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        workers = resolve_passes(workers, features.device)
        with side_by_side(workers, "lavise-image-masking") as pool:
            return self._pool_pairs(images, features, filt, thresholds, extract, pairs, chunk_size,
                                    pool, 2 * workers)

    def _pool_pairs(self, images, features, filt, thresholds, extract, pairs, chunk_size, pool,
                    in_flight) -> torch.Tensor:
        """:meth:`pool_pairs`; forward passes in ``pool`` (at most ``in_flight`` at once), or here."""
        device, dtype = features.device, features.dtype
        images = images.to(device, dtype)
        pair_b, pair_u = (torch.as_tensor(p, dtype=torch.long, device=device).reshape(-1) for p in pairs)
        if pair_b.numel() != pair_u.numel():
            raise ValueError("pairs must hold as many image positions as filter positions")
        d = features.shape[1]
        size = (int(images.shape[2]), int(images.shape[3]))
        out = torch.empty(pair_b.numel(), d, device=device, dtype=dtype)
        source = torch.full((pair_b.numel(),), -1, dtype=torch.long)  # pair -> earlier pair with its mask
        empty: list[int] = []
        pending: list[tuple[int, torch.Tensor]] = []  # (pair, its mask) waiting for a forward pass

        def write(rows: torch.Tensor, pooled: torch.Tensor) -> None:
            out[rows] = pooled.to(dtype)

        passes = InOrder(pool, write, limit=in_flight)

        def run() -> None:
            if not pending:
                return
            rows = torch.tensor([p for p, _ in pending], device=device)
            masked = images[pair_b[rows]] * torch.stack([m for _, m in pending])
            pending.clear()
            passes.submit(rows, self._pool, extract, masked, d)

        seen: dict[tuple[int, bytes], int] = {}
        for start in range(0, pair_b.numel(), chunk_size):
            sl = slice(start, start + chunk_size)
            masks = self.masks(features, filt, thresholds, size, (pair_b[sl], pair_u[sl]))
            flat = masks.flatten(1) > 0
            any_on = flat.any(dim=1).tolist()
            packed = torch.from_numpy(_packbits(flat.cpu()))
            for j, on in enumerate(any_on):
                p = start + j
                if not on:
                    empty.append(p)
                    continue
                key = (int(pair_b[p]), packed[j].numpy().tobytes())
                if key in seen:
                    source[p] = seen[key]
                    continue
                seen[key] = p
                pending.append((p, masks[j]))
                if len(pending) == chunk_size:
                    run()
        run()
        passes.drain()
        if empty:
            zero = torch.zeros((1,) + tuple(images.shape[1:]), device=device, dtype=dtype)
            out[torch.tensor(empty, device=device)] = self._pool(extract, zero, d).to(dtype)
        dup = torch.nonzero(source >= 0).flatten()
        if dup.numel():
            out[dup.to(device)] = out[source[dup].to(device)]
        return out

    @staticmethod
    def _pool(extract: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, d: int) -> torch.Tensor:
        feats = extract(x)
        if feats.ndim != 4 or feats.shape[1] != d:
            raise ValueError(f"extract returned {tuple(feats.shape)}; expected (n, {d}, h, w)")
        return feats.flatten(2).mean(dim=2)


def _packbits(flat: torch.Tensor):
    """``(n, k)`` bool -> numpy ``(n, ceil(k / 8))`` uint8, a compact key of each mask."""
    import numpy as np

    return np.packbits(flat.numpy(), axis=1)
