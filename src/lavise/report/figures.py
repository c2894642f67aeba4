"""Paper-style figures with matplotlib.

:func:`filter_rows_figure` draws the layout of the paper's Figure 4: one row per
filter, its top images with the region where it reaches T_u lit, then its words
(and, optionally, another source's label beside them, e.g. NetDissect's).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lavise.report.evidence import crop_like_model, highlight, lit_region

logger = logging.getLogger(__name__)

__all__ = ["filter_rows_figure", "save_figure"]


def _evidence_image(top: Any, threshold: float, preprocessing: dict | None, size: int) -> np.ndarray:
    from PIL import Image

    base = None
    if top.path and Path(top.path).is_file():
        try:
            with Image.open(top.path) as im:
                base = crop_like_model(im, preprocessing, size)
        except OSError as exc:
            logger.warning("cannot read %s: %s", top.path, exc)
    amap = top.activation_map
    mask = lit_region(amap, threshold, size) if amap is not None else np.zeros((size, size), bool)
    return np.asarray(highlight(base, mask))


def filter_rows_figure(
    explanations: Any,
    filters: Sequence[int],
    *,
    images: int = 5,
    words: int = 5,
    other: dict[int, list[str]] | None = None,
    other_name: str = "NetDissect",
    size: int = 224,
) -> Any:
    """A matplotlib :class:`~matplotlib.figure.Figure` (no pyplot state): a row per filter with ``images`` highlighted top images and its words.

    Args:
        explanations: :class:`lavise.explain.Explanations` with evidence.
        filters: Filters to draw, one row each, in this order.
        images: Top images per row.
        words: Words per filter.
        other: Optional second explanation per filter (e.g. the NetDissect label).
        other_name: Its name in the figure.
        size: Pixels per image side before drawing.
    """
    from matplotlib.figure import Figure

    if not filters:
        raise ValueError("no filters to draw")
    rows = []
    for u in filters:
        try:
            rows.append(explanations[u])
        except KeyError:
            raise ValueError(f"filter {u} is not in the explanations "
                             f"(they cover {len(explanations)} filters of {explanations.layer})") from None
    pre = explanations.settings.get("preprocessing")
    text_w = 2.6
    fig_w = images * 1.25 + text_w
    fig = Figure(figsize=(fig_w, 1.35 * len(rows) + 0.2))
    grid = fig.add_gridspec(len(rows), images + 1, width_ratios=[1] * images + [text_w / 1.25],
                            wspace=0.04, hspace=0.12, left=0.01, right=0.99, top=0.98, bottom=0.02)
    for r, f in enumerate(rows):
        for c in range(images):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(f.evidence):
                ax.imshow(_evidence_image(f.evidence[c], f.threshold, pre, size))
        ax = fig.add_subplot(grid[r, images])
        ax.axis("off")
        lines = ["LaViSE: " + ", ".join(f.labels[:words])]
        if other is not None:
            lines.append(f"{other_name}: " + ", ".join(other.get(f.filter, ["-"])[:words]))
        text = f"filter {f.filter}\n" + "\n".join(textwrap.fill(line, 30) for line in lines)
        ax.text(0.03, 0.5, text, va="center", ha="left", fontsize=9, transform=ax.transAxes)
    return fig


def save_figure(fig: Any, out: str | Path, dpi: int = 150) -> list[Path]:
    """Writes ``fig`` as PNG and SVG (``out`` with both suffixes; SVG text as text); returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    import matplotlib

    fig.savefig(paths[0], dpi=dpi)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text (editable, searchable)
        fig.savefig(paths[1])
    return paths
