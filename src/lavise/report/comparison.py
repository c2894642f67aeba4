"""Figures of group and model comparisons (matplotlib, written as PNG).

:func:`plot_group_comparison` draws a Figure-8-style panel: the filters most tied to
each group as bars of the difference in qualified shares, labelled with each filter's
top words and q-value, flanked by example qualified images of each group.
:func:`plot_model_comparison` draws concept counts per model (top-1 and within top k)
and the concepts shared by all models and unique to each.

These functions only read results and image files; they never run a model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lavise.compare_groups import GroupComparison
    from lavise.compare_models import ModelComparison

logger = logging.getLogger(__name__)

__all__ = ["plot_group_comparison", "plot_model_comparison"]


def _thumbnail(path: str | None, size: int = 96) -> Any:
    import numpy as np
    from PIL import Image, ImageOps

    if not path:
        return None
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.fit(im.convert("RGB"), (size, size)))
    except Exception as exc:  # noqa: BLE001 - a missing image leaves a blank cell
        logger.warning("cannot read example image %s: %s", path, exc)
        return None


def plot_group_comparison(result: "GroupComparison", path: str | Path, top: int = 6, examples: int = 2) -> Path:
    """Writes the Figure-8-style PNG of a group comparison and returns its path.

    One panel per comparison: the ``top`` filters most tied to each side (bars of the
    difference in the share of qualified images, ``*`` where q <= alpha), with up to
    ``examples`` qualified images of the first group on the left and of the other on
    the right.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = []
    for c in result.contrasts:
        rows = c.ranked(1, top) + list(reversed(c.ranked(-1, top)))
        if rows:
            panels.append((c, rows))
    if not panels:
        panels = [(result.contrasts[0], [])]
    n_rows = sum(max(len(r), 1) for _, r in panels) + len(panels) - 1
    height = 0.75 * n_rows + 0.9
    fig = plt.figure(figsize=(3.2 + 1.6 * examples * 2, height))
    gs = GridSpec(n_rows, 2 * examples + 1, figure=fig, width_ratios=[1] * examples + [3.2] + [1] * examples,
                  wspace=0.05, hspace=0.15, top=1 - 0.7 / height, bottom=0.5 / height)
    r0 = 0
    for k, (c, rows) in enumerate(panels):
        r0 += 1 if k else 0  # a spacer row between panels
        n = max(len(rows), 1)
        bar_ax = fig.add_subplot(gs[r0:r0 + n, examples])
        diffs = [f.difference * 100 for f in rows]
        ys = list(range(n))[::-1][: len(rows)]
        colors = ["#c0504d" if d > 0 else "#4f81bd" for d in diffs]
        bar_ax.barh(ys, diffs, color=colors, height=0.6)
        bar_ax.axvline(0, color="black", lw=0.8)
        bar_ax.set_ylim(-0.5, n - 0.5)
        bar_ax.set_yticks([])
        lim = max([abs(d) for d in diffs] + [1.0]) * 1.9
        bar_ax.set_xlim(-lim, lim)
        for y, f, d in zip(ys, rows, diffs):
            label = f"#{f.filter} {', '.join(f.words[:2]) or '?'}" + (" *" if f.q_value <= result.alpha else "")
            bar_ax.text(-lim * 0.97 if d > 0 else lim * 0.97, y, label, va="center",
                        ha="left" if d > 0 else "right", fontsize=8)
        bar_ax.set_xlabel(f"qualified share: {c.group} minus {c.other} (percentage points)", fontsize=8)
        bar_ax.tick_params(labelsize=7)
        bar_ax.set_title(f"{c.group}  vs  {c.other}", fontsize=9)
        for i, f in enumerate(rows):
            row = r0 + (n - 1 - ys[i])
            for side, group in ((0, c.group), (1, c.other)):
                names = list(f.examples.get(group, ()))[:examples]
                for j in range(examples):
                    col = j if side == 0 else examples + 1 + j
                    ax = fig.add_subplot(gs[row, col])
                    ax.axis("off")
                    if i == 0 and j == 0:
                        ax.set_title(f"{group}: qualified images", fontsize=8, loc="left")
                    img = _thumbnail(result.image_paths.get(names[j])) if j < len(names) else None
                    if img is not None:
                        ax.imshow(img)
        r0 += n
    fig.suptitle(f"{result.model} {result.layer}: filters most tied to each group "
                 f"(* q <= {result.alpha:g}, {'Fisher' if result.test == 'fisher' else 'z'} test, BH)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_model_comparison(result: "ModelComparison", path: str | Path) -> Path:
    """Writes bars of distinct concepts per model (top-1, top k; shared and unique)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [m.name for m in result.models]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(names), 3.8))
    for ax, level in zip(axes, ("top1", "topk")):
        total = [len(getattr(m, f"concepts_{level}")) for m in result.models]
        unique = [len(result.unique(level)[m.name]) for m in result.models]
        shared = len(result.shared(level))
        ax.bar(x - 0.2, total, width=0.4, label="distinct concepts", color="#4f81bd")
        ax.bar(x + 0.2, unique, width=0.4, label="unique to the model", color="#c0504d")
        ax.axhline(shared, color="black", ls="--", lw=1, label=f"shared by all ({shared})")
        for xi, t, u in zip(x, total, unique):
            ax.text(xi - 0.2, t, str(t), ha="center", va="bottom", fontsize=8)
            ax.text(xi + 0.2, u, str(u), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_title("top-1 word" if level == "top1" else f"within top {result.top_k}", fontsize=9)
        ax.set_ylim(0, max(total + [1]) * 1.4)
        ax.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)
    fig.suptitle(f"Concepts the filters express (a word counts when >= {result.min_count} "
                 "of a filter's top images agree)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
