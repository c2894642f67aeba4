"""A filter's top images with the region where it reaches T_u lit (as NetDissect shows them).

Everything here reads results and image files; nothing runs the model. The stored
low-resolution activation map of each top image (see :class:`lavise.explain.TopImage`)
is upsampled bilinearly to the image as the model saw it (resized and centre-cropped
with the model's preprocessing); where it reaches ``T_u`` the image stays bright and
is outlined, elsewhere it is dimmed.

Rendered images are content-addressed: the file name is a hash of the image file's
bytes, the map, ``T_u`` and the drawing settings, so each is written once and a report
built again (or another report sharing images) reuses them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

__all__ = ["crop_like_model", "upsample_map", "lit_region", "highlight", "RenderedImage", "EvidenceRenderer"]

_STYLE_VERSION = "1"
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


def lit_region(amap: np.ndarray, threshold: float, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask where the upsampled map reaches ``threshold`` (and is > 0)."""
    up = upsample_map(amap, size)
    return (up >= threshold) & (up > 0)


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


@dataclass(frozen=True)
class RenderedImage:
    """Where one highlighted top image was written (paths relative to the report root)."""

    image: str
    thumb: str | None
    missing: bool


class EvidenceRenderer:
    """Writes highlighted top images as small JPEG files under a report folder.

    Args:
        root: The report folder; files go to ``root/img`` and ``root/thumb``.
        preprocessing: The model's geometry (``resize``, ``crop``) from the explanations' settings.
        size: Side of the page images (pixels).
        thumb: Side of the index thumbnails (pixels).
        quality: JPEG quality.
    """

    def __init__(self, root: str | Path, preprocessing: dict | None, *, size: int = 224, thumb: int = 96,
                 quality: int = 82) -> None:
        self.root = Path(root)
        self.preprocessing = preprocessing
        self.size = size
        self.thumb = thumb
        self.quality = quality
        self._digests: dict[str, str] = {}
        self.written = 0
        self.reused = 0
        self.missing: set[str] = set()

    def _digest(self, path: str) -> str | None:
        if path not in self._digests:
            try:
                self._digests[path] = hashlib.sha1(Path(path).read_bytes()).hexdigest() if path else ""
            except OSError:
                self._digests[path] = ""
        return self._digests[path] or None

    def _key(self, digest: str | None, top: Any, threshold: float) -> str:
        h = hashlib.sha1()
        h.update(f"{_STYLE_VERSION}|{digest or 'missing'}|{threshold!r}|{self.size}|{self.thumb}|"
                 f"{self.quality}|{self.preprocessing}|{top.map_shape}|".encode())
        h.update(top.map_data)
        return h.hexdigest()[:20]

    def render(self, jobs: Iterable[tuple[Any, Any, float, bool]]) -> dict[tuple[int, int], RenderedImage]:
        """Renders ``(key, top_image, threshold, with_thumb)`` jobs; returns key -> files.

        Jobs are grouped by image file so each image is decoded once.
        """
        by_path: dict[str, list[tuple[Any, Any, float, bool]]] = {}
        for job in jobs:
            by_path.setdefault(job[1].path, []).append(job)
        (self.root / "img").mkdir(parents=True, exist_ok=True)
        (self.root / "thumb").mkdir(parents=True, exist_ok=True)
        out: dict[Any, RenderedImage] = {}
        for path, group in by_path.items():
            digest = self._digest(path)
            base: Image.Image | None = None
            decoded = False
            for key, top, threshold, with_thumb in group:
                name = self._key(digest, top, threshold)
                img_rel, thumb_rel = f"img/{name}.jpg", f"thumb/{name}.jpg" if with_thumb else None
                need = not (self.root / img_rel).is_file() or (thumb_rel and not (self.root / thumb_rel).is_file())
                if need:
                    if not decoded:
                        decoded = True
                        base = self._open(path) if digest else None
                    amap = top.activation_map
                    mask = (lit_region(amap, threshold, self.size) if amap is not None
                            else np.zeros((self.size, self.size), bool))
                    pic = highlight(base, mask)
                    pic.save(self.root / img_rel, "JPEG", quality=self.quality)
                    if thumb_rel:
                        pic.resize((self.thumb, self.thumb), Image.BILINEAR).save(
                            self.root / thumb_rel, "JPEG", quality=self.quality)
                    self.written += 1
                else:
                    self.reused += 1
                if digest is None:
                    self.missing.add(path)
                out[key] = RenderedImage(img_rel, thumb_rel, digest is None)
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
    explanations: Any, root: str | Path, *, filters: Sequence[int] | None = None, thumbs: int = 5,
    size: int = 224, thumb: int = 96,
) -> dict[tuple[int, int], RenderedImage]:
    """Renders the evidence of every (or the given) filter of ``explanations`` into ``root``.

    Returns:
        ``(filter, slot) -> RenderedImage`` for each evidence image; the first ``thumbs``
        of each filter also get an index thumbnail.
    """
    renderer = EvidenceRenderer(root, explanations.settings.get("preprocessing"), size=size, thumb=thumb)
    wanted = None if filters is None else set(filters)
    jobs = [((f.filter, slot), top, f.threshold, slot < thumbs)
            for f in explanations.filters if wanted is None or f.filter in wanted
            for slot, top in enumerate(f.evidence)]
    rendered = renderer.render(jobs)
    logger.info("evidence images: %d written, %d reused", renderer.written, renderer.reused)
    return rendered
