"""The group-comparison page of the report (``groups.html``, paper 4.6 / Figure 8).

Reads a :class:`lavise.compare_groups.GroupComparison` (or the ``groups.json`` that
``lavise compare-groups --out DIR`` writes) and writes ``groups.html`` into a report
folder: the groups with their image counts and what was left out, the Figure-8 PNG,
then per comparison and direction the filters ranked by the difference in qualified
shares (filter ids link to ``filters/<u>.html`` when that page is in the report), their
top words, each group's qualified share, the difference, p and Benjamini-Hochberg q
(significant ones marked), example qualified images of each group as thumbnails, and
the word-level aggregation.

Thumbnails are written by :class:`lavise.report.evidence.EvidenceRenderer` (once per
image, shared with the rest of the report). Everything from data is HTML-escaped; the
page opens from ``file://``. Reads results and image files only; never runs a model.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from lavise.report.evidence import EvidenceRenderer
from lavise.report.html import copy_assets, esc, render_page

if TYPE_CHECKING:
    from lavise.compare_groups import FilterContrast, GroupComparison, GroupContrast

logger = logging.getLogger(__name__)

__all__ = ["load_comparison", "write_groups_page"]

PAGE = "groups.html"
FIGURE = "groups.png"
STAR = ' <b class="star" title="significant">*</b>'


def load_comparison(path: str | Path) -> "GroupComparison":
    """The result of ``lavise compare-groups`` from its ``groups.json`` (or the folder holding it)."""
    from lavise.compare_groups import GroupComparison

    path = Path(path)
    file = path / "groups.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no groups.json at {path} (write one with lavise compare-groups --out DIR)")
    return GroupComparison.from_dict(json.loads(file.read_text(encoding="utf-8")))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _thumbs(f: "FilterContrast", group: str, comparison: "GroupComparison", renderer: EvidenceRenderer,
            n: int) -> str:
    tags = []
    for name in f.examples.get(group, ())[:n]:
        path = comparison.image_paths.get(name, "")
        _, thumb, missing = renderer._base(path)
        tags.append(f'<img class="gthumb" loading="lazy" src="{esc(thumb)}" alt="{esc(name)}" title="{esc(name)}">'
                    if not missing else f'<span class="muted" title="image not found">{esc(name)}</span>')
    return f'<span class="gthumbs">{"".join(tags)}</span>'


def _filter_table(c: "GroupContrast", direction: int, comparison: "GroupComparison", linked: set[int],
                  renderer: EvidenceRenderer, top: int, examples: int) -> str:
    rows = []
    for f in c.ranked(direction, top):
        sig = f.q_value <= comparison.alpha
        fid = (f'<a href="filters/{f.filter}.html">#{f.filter}</a>' if f.filter in linked else f"#{f.filter}")
        rows.append(
            f'<tr class="grow{" sig" if sig else ""}" data-filter="{f.filter}"><td>{fid}</td>'
            f'<td>{esc(", ".join(f.words[:5]))}</td>'
            f'<td class="num">{_pct(f.fraction)} <span class="muted">({f.qualified}/{f.size})</span></td>'
            f'<td class="num">{_pct(f.other_fraction)} <span class="muted">({f.other_qualified}/{f.other_size})</span></td>'
            f'<td class="num">{100 * f.difference:+.1f}</td><td class="num">{f.p_value:.2g}</td>'
            f'<td class="num">{f.q_value:.2g}{STAR if sig else ""}</td>'
            f"<td>{_thumbs(f, c.group, comparison, renderer, examples)}</td>"
            f"<td>{_thumbs(f, c.other, comparison, renderer, examples)}</td></tr>")
    if not rows:
        return '<p class="muted">no filter with a difference in this direction.</p>'
    return (f'<table class="gtable gfilters"><thead><tr><th>filter</th><th>top words</th><th>{esc(c.group)}</th>'
            f"<th>{esc(c.other)}</th><th>difference (points)</th><th>p</th><th>q</th>"
            f"<th>examples: {esc(c.group)}</th><th>examples: {esc(c.other)}</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _word_table(c: "GroupContrast", direction: int, alpha: float, top: int) -> str:
    rows = []
    for w in c.ranked(direction, top, words=True):
        sig = w.q_value <= alpha
        rows.append(
            f'<tr class="wrow{" sig" if sig else ""}"><td>{esc(w.words[0] if w.words else "")}</td>'
            f'<td class="num">{len(w.filters)}</td>'
            f'<td class="num">{_pct(w.fraction)}</td><td class="num">{_pct(w.other_fraction)}</td>'
            f'<td class="num">{100 * w.difference:+.1f}</td><td class="num">{w.p_value:.2g}</td>'
            f'<td class="num">{w.q_value:.2g}{STAR if sig else ""}</td></tr>')
    if not rows:
        return '<p class="muted">no word with a difference in this direction.</p>'
    return (f'<table class="gtable gwords"><thead><tr><th>word</th><th>filters</th><th>{esc(c.group)}</th>'
            f"<th>{esc(c.other)}</th><th>difference (points)</th><th>p</th><th>q</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def write_groups_page(
    comparison: "GroupComparison",
    out: str | Path,
    *,
    figure: str | Path | None = None,
    linked: Iterable[int] | None = None,
    top: int = 10,
    examples: int = 3,
    thumb_size: int = 96,
) -> Path:
    """Writes ``groups.html`` (and ``groups.png``, thumbnails, assets) into ``out``.

    Args:
        comparison: The result of :func:`lavise.compare_groups.compare_groups` (see :func:`load_comparison`).
        out: The report folder (created).
        figure: An existing Figure-8 PNG to copy in; None draws it from ``comparison``
            unless ``out/groups.png`` is already there.
        linked: Filters that have a page ``filters/<u>.html`` in the report; None: those
            whose page exists in ``out`` now.
        top: Filters (and words) listed per direction.
        examples: Example images shown per group and filter.
        thumb_size: Side of the thumbnails (pixels).

    Returns:
        The path of ``groups.html``. Its header links to the report's ``index.html`` when
        the page is part of a report (a filter is linked, or ``out/index.html`` exists);
        a page written on its own has no such link.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(out, ["report.css"])
    fig = out / FIGURE
    if figure is not None and Path(figure).resolve() != fig.resolve():
        shutil.copyfile(figure, fig)
    elif figure is None and not fig.is_file():
        from lavise.report.comparison import plot_group_comparison

        plot_group_comparison(comparison, fig, top=min(top, 8))
    ids = {f.filter for c in comparison.contrasts for f in c.filters}
    linked_set = ({u for u in ids if (out / "filters" / f"{u}.html").is_file()} if linked is None else set(linked))
    pre = comparison.settings.get("explanations", {})
    renderer = EvidenceRenderer(out, pre.get("preprocessing") if isinstance(pre, dict) else None, thumb=thumb_size)
    for sub in ("img", "thumb"):
        (out / sub).mkdir(exist_ok=True)

    sizes = "".join(f'<li><span class="gname">{esc(g)}</span>: {n} images</li>'
                    for g, n in comparison.group_sizes.items())
    left = "".join(f"<li>{n} images: {esc(k)}</li>" for k, n in comparison.left_out.items() if n)
    test = "Fisher's exact" if comparison.test == "fisher" else "two-proportion z"
    n_tests = sum(len(c.filters) for c in comparison.contrasts)
    parts = [
        f"<h1>Groups compared through {esc(comparison.model)} <code>{esc(comparison.layer)}</code></h1>",
        f'<section><ul class="gsizes">{sizes}</ul>',
        f"<p>Left out:</p><ul>{left}</ul>" if left else "<p>No image was left out.</p>",
        f"<p>A filter's qualified images reach its T_u (upper {comparison.quantile:g} of all its activations). "
        f"Test: {test}, two-sided; q: Benjamini-Hochberg over all {n_tests} filter tests; "
        f"<b class=\"star\">*</b> marks q &le; {comparison.alpha:g}. "
        f"Significant filters: {len(comparison.significant())}; significant words: "
        f"{len(comparison.significant(words=True))}.</p></section>",
        f'<section><img class="figure8" src="{FIGURE}" alt="the filters most tied to each group (Figure 8 style)">'
        "</section>",
    ]
    for c in comparison.contrasts:
        for direction, name in ((1, c.group), (-1, c.other)):
            if c.other == "rest" and direction == -1:
                continue
            versus = f" (vs {esc(c.other)})" if c.other == "rest" else ""
            parts.append(f"<section><h3>Filters most tied to {esc(name)}{versus}</h3>"
                         + _filter_table(c, direction, comparison, linked_set, renderer, top, examples)
                         + f"<h3>Words most tied to {esc(name)}{versus}</h3>"
                         + _word_table(c, direction, comparison.alpha, top) + "</section>")
    if renderer.missing:
        logger.warning("%d example images of the group comparison were not found; their names are shown instead",
                       len(renderer.missing))
    page = render_page(f"LaViSE groups: {comparison.model} {comparison.layer}",
                       f"{comparison.model} · {comparison.layer} · " + " vs ".join(comparison.group_sizes),
                       "".join(parts), in_report=bool(linked_set) or (out / "index.html").is_file())
    path = out / PAGE
    path.write_text(page, encoding="utf-8")
    return path
