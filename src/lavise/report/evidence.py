"""A filter's top images with the region where it reaches T_u lit (as NetDissect shows them).

Everything here reads results and image files; nothing runs the model. The stored
low-resolution activation map of each top image (see :class:`lavise.explain.TopImage`)
is upsampled bilinearly to the image as the model saw it (resized and centre-cropped
with the model's preprocessing); where it reaches ``T_u`` the image stays bright and
is outlined, elsewhere it is dimmed.

For the site, an image is written once as small JPEG files (page size and thumbnail)
however many filters share it, and each filter adds one small transparent PNG strip
(one tile per top image: the dimmed background and the outline) that the browser lays
over the images. Files are content-addressed (a hash of the image file's bytes, or of
the map and ``T_u``, with the drawing settings), so a report built again reuses them.
Figures (:mod:`lavise.report.figures`) draw the same highlight into one image with
:func:`highlight`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["crop_like_model", "upsample_map", "lit_region", "highlight", "overlay", "RenderedImage",
           "EvidenceRenderer", "render_explanations"]

_STYLE_VERSION = "2"
OUTLINE = (255, 214, 0)


def crop_like_model(image: Image.Image, preprocessing: dict | None, size: int) -> Image.Image:
    """The image as the model saw it (shorter side resized, centre crop), at ``size`` x ``size``.

    Args:
        image: Any PIL image (converted to RGB).
        preprocessing: ``{"resize": R, "crop": C, ...}`` of the model (None: plain centre crop).
        size: Side of the returned square image.
    """
    image = image.convert("RGB")
    resize = int(preprocessing["resize"]) if preprocessing else size
    crop = int(preprocessing["crop"]) if preprocessing else size
    w, h = image.size
    scale = resize / min(w, h)
    # Crop box in original pixels: the centre crop of side `crop` after scaling.
    side = crop / scale
    left, top = (w - side) / 2, (h - side) / 2
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))


def upsample_map(amap: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an ``(h, w)`` (or ``(n, h, w)``) map to ``size`` x ``size``."""
    t = torch.as_tensor(np.asarray(amap, dtype=np.float32))
    squeeze = t.ndim == 2
    t = t[None, None] if squeeze else t[:, None]
    up = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return (up[0] if squeeze else up).numpy()


def lit_region(amap: np.ndarray, threshold: float | np.ndarray, size: int) -> np.ndarray:
    """Boolean mask where the filter reaches ``threshold`` on the upsampled map.

    The map (``(h, w)`` or ``(n, h, w)`` with one threshold each) is upsampled
    bilinearly to ``size`` and thresholded (NetDissect's drawing). Cells that reach the
    threshold themselves (:func:`lavise.statistics.fires`: ``>= T_u`` and ``> 0``) are
    lit too, as the upsampled indicator of those cells at 0.5: an isolated peak at
    ``T_u`` (saturating activations such as ReLU6 make these common) would otherwise
    fall between pixel centres and vanish.
    """
    amap = np.asarray(amap, dtype=np.float32)
    thr = np.asarray(threshold, dtype=np.float32)
    if amap.ndim == 3:
        thr = thr.reshape(-1, 1, 1)
    up = upsample_map(amap, size)
    cells = ((amap >= thr) & (amap > 0)).astype(np.float32)
    return ((up >= thr) & (up > 0)) | (upsample_map(cells, size) >= 0.5)


def _outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def highlight(image: Image.Image | None, mask: np.ndarray, dim: float = 0.3) -> Image.Image:
    """``image`` with the region ``mask`` bright and outlined, the rest dimmed.

    Args:
        image: Square RGB image of the mask's size; None draws on grey (image missing).
        mask: Boolean ``(H, W)``.
        dim: Brightness kept outside the region.
    """
    size = mask.shape[0]
    arr = (np.asarray(image.convert("RGB"), dtype=np.float32) if image is not None
           else np.full((size, size, 3), 128, np.float32))
    out = np.where(mask[..., None], arr, arr * dim)
    edge = _outline(mask, width=max(1, size // 112))
    out[edge] = OUTLINE
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def overlay(mask: np.ndarray, dim: int = 170) -> Image.Image:
    """A transparent layer for ``mask``: dark outside the region, outlined, clear inside.

    Laid over the plain image in the browser, it shows what :func:`highlight` draws,
    while the image itself is written only once for all filters that share it. A
    three-colour palette image (clear, dark, outline), so it encodes small and fast.
    """
    return _palette_image(_overlay_index(mask), dim)


def _overlay_index(mask: np.ndarray) -> np.ndarray:
    idx = np.where(mask, 0, 1).astype(np.uint8)
    idx[_outline(mask, width=max(1, mask.shape[0] // 112))] = 2
    return idx


def _palette_image(idx: np.ndarray, dim: int = 170) -> Image.Image:
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 0, 0, 0, *OUTLINE])
    img.info["transparency"] = bytes([0, dim, 255])
    return img


@dataclass(frozen=True)
class RenderedImage:
    """Files of one highlighted top image, relative to the report root.

    Attributes:
        image: The image as the model saw it (page size), shared by every filter.
        thumb: The same image at thumbnail size, shared by every filter.
        lit: The filter's overlay strip: one transparent tile per top image, side by side
            (region >= T_u outlined, the rest dimmed).
        slot: This image's tile in the strip.
        slots: Tiles in the strip.
        missing: The image file was not found (the base is grey).
    """

    image: str
    thumb: str
    lit: str
    slot: int
    slots: int
    missing: bool

    @property
    def lit_position(self) -> str:
        """CSS ``background-size`` and ``background-position`` showing this image's tile."""
        pos = 100.0 * self.slot / (self.slots - 1) if self.slots > 1 else 0.0
        return f"background-size:{self.slots * 100}% 100%;background-position:{pos:.4g}% 0"


class EvidenceRenderer:
    """Writes top images once (JPEG) and each filter's lit region as a small overlay (PNG).

    Args:
        root: The report folder; files go to ``root/img``, ``root/thumb`` and ``root/lit``.
        preprocessing: The model's geometry (``resize``, ``crop``) from the explanations' settings.
        size: Side of the page images (pixels).
        thumb: Side of the index thumbnails (pixels).
        lit: Side of the overlays (pixels; the browser scales them smoothly).
        quality: JPEG quality.
    """

    def __init__(self, root: str | Path, preprocessing: dict | None, *, size: int = 224, thumb: int = 96,
                 lit: int = 112, quality: int = 82) -> None:
        self.root = Path(root)
        self.preprocessing = preprocessing
        self.size = size
        self.thumb = thumb
        self.lit = lit
        self.quality = quality
        self.written = 0
        self.reused = 0
        self.missing: set[str] = set()

    def _base(self, path: str) -> tuple[str, str, bool]:
        """Writes (once) the page-size image and thumbnail of ``path``; returns their names."""
        try:
            data = Path(path).read_bytes() if path else None
        except OSError:
            data = None
        if data is None:
            self.missing.add(path)
            name = "missing"
        else:
            geo = f"{self.preprocessing}|{self.size}|{self.thumb}|{self.quality}|{_STYLE_VERSION}"
            name = hashlib.sha1(hashlib.sha1(data).digest() + geo.encode()).hexdigest()[:16]
        img_rel, thumb_rel = f"img/{name}.jpg", f"thumb/{name}.jpg"
        if (self.root / img_rel).is_file() and (self.root / thumb_rel).is_file():
            self.reused += 1
            return img_rel, thumb_rel, data is None
        pic = self._open(path) if data is not None else None
        if pic is None:
            pic = Image.new("RGB", (self.size, self.size), (128, 128, 128))
        pic.save(self.root / img_rel, "JPEG", quality=self.quality)
        pic.resize((self.thumb, self.thumb), Image.BILINEAR).save(self.root / thumb_rel, "JPEG", quality=self.quality)
        self.written += 1
        return img_rel, thumb_rel, data is None

    def _strips(self, groups: list[tuple[Any, Sequence[Any], float]], chunk: int = 64) -> list[str]:
        """Writes (once) each group's overlay strip; masks are upsampled in batches."""
        names = []
        for _, tops, threshold in groups:
            h = hashlib.sha1(f"{_STYLE_VERSION}|{threshold!r}|{self.lit}|".encode())
            for t in tops:
                h.update(f"{t.map_shape}|".encode())
                h.update(t.map_data)
            names.append(f"lit/{h.hexdigest()[:16]}.png")
        existing = {f"lit/{p.name}" for p in (self.root / "lit").iterdir()}
        todo = list({names[i]: i for i in range(len(groups)) if names[i] not in existing}.values())
        self.reused += len(names) - len(todo)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            flat = [(g, t, groups[g][2]) for g in part for t in groups[g][1]]
            masks: list[np.ndarray] = [np.zeros((self.lit, self.lit), bool)] * len(flat)
            by_shape: dict[tuple, list[int]] = {}
            for j, (_, t, _) in enumerate(flat):
                if t.map_shape:
                    by_shape.setdefault(tuple(t.map_shape), []).append(j)
            for rows in by_shape.values():
                maps = np.stack([flat[j][1].activation_map for j in rows])
                got = lit_region(maps, np.array([flat[j][2] for j in rows], np.float32), self.lit)
                for j, m in zip(rows, got):
                    masks[j] = m
            pos = 0
            for g in part:
                n = len(groups[g][1])
                tiles = [_overlay_index(m) for m in masks[pos:pos + n]]
                pos += n
                _palette_image(np.hstack(tiles)).save(self.root / names[g], "PNG")
                self.written += 1
        return names

    def render(self, groups: Iterable[tuple[Any, Sequence[Any], float]]) -> dict[tuple[Any, int], RenderedImage]:
        """Renders ``(key, top images, threshold)`` groups (one per filter).

        Returns:
            ``(key, slot) -> RenderedImage``. Each image file is read and decoded at most
            once, whatever the number of filters; each group adds one overlay strip.
        """
        for sub in ("img", "thumb", "lit"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        groups = [(k, list(tops), thr) for k, tops, thr in groups if len(tops)]
        bases: dict[str, tuple[str, str, bool]] = {}
        out: dict[tuple[Any, int], RenderedImage] = {}
        for (key, tops, _), lit in zip(groups, self._strips(groups)):
            for slot, top in enumerate(tops):
                if top.path not in bases:
                    bases[top.path] = self._base(top.path)
                img_rel, thumb_rel, missing = bases[top.path]
                out[(key, slot)] = RenderedImage(img_rel, thumb_rel, lit, slot, len(tops), missing)
        if self.missing:
            logger.warning("%d top image files were not found; their evidence is drawn on grey", len(self.missing))
        return out

    def _open(self, path: str) -> Image.Image | None:
        try:
            with Image.open(path) as im:
                im.draft("RGB", (self.size * 2, self.size * 2))
                return crop_like_model(im, self.preprocessing, self.size)
        except (OSError, ValueError) as exc:
            logger.warning("cannot read %s: %s", path, exc)
            return None


def render_explanations(
    explanations: Any, root: str | Path, *, filters: Sequence[int] | None = None,
    size: int = 224, thumb: int = 96,
) -> dict[tuple[int, int], RenderedImage]:
    """Renders the evidence of every (or the given) filter of ``explanations`` into ``root``.

    Returns:
        ``(filter, slot) -> RenderedImage`` for each evidence image.
    """
    renderer = EvidenceRenderer(root, explanations.settings.get("preprocessing"), size=size, thumb=thumb)
    wanted = None if filters is None else set(filters)
    groups = [(f.filter, f.evidence, f.threshold)
              for f in explanations.filters if wanted is None or f.filter in wanted]
    rendered = renderer.render(groups)
    logger.info("evidence files: %d written, %d reused", renderer.written, renderer.reused)
    return rendered
