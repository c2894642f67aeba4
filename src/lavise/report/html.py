"""The static report site: an index of every filter and one page per filter.

The site opens from ``file://`` with no server, CDN or network: pages are plain HTML
with a small stylesheet and script copied from ``lavise/report/assets/``; highlighted
top images are JPEG files written once (see :mod:`lavise.report.evidence`) and loaded
lazily. Everything that comes from data (file names, image ids, words, concept and
group names) goes through :func:`html.escape`.

Layout of the output folder::

    index.html              every filter: ranked words, thumbnails, search and sort
    filters/<u>.html        one page per filter
    groups.html             with a group comparison: see :mod:`lavise.report.groups_page`
    assets/                 report.css, report.js (and rate.js with a rating page)
    img/, thumb/            top images as the model saw them (page size, index thumbnails), once each
    lit/                    per filter, one overlay strip (a tile per top image): the region
                            >= T_u outlined, the rest dimmed
"""

from __future__ import annotations

import html
import json
import logging
import string
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from lavise.evaluate import FilterEvaluation
from lavise.metrics import concept_match_words, normalise_word
from lavise.report.evidence import RenderedImage, render_explanations

logger = logging.getLogger(__name__)

__all__ = ["load_evaluation", "load_explanations", "build_report", "word_hits", "neighbours"]

INDEX_WORDS = 6
INDEX_THUMBS = 5


def esc(value: Any) -> str:
    """HTML-escapes ``value`` (quotes included) after ``str()``."""
    return html.escape(str(value), quote=True)


def asset_text(name: str) -> str:
    """The text of a packaged asset (``lavise/report/assets/NAME``)."""
    return resources.files("lavise.report").joinpath("assets", name).read_text(encoding="utf-8")


def copy_assets(out: Path, names: Iterable[str]) -> None:
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / "assets" / name).write_text(asset_text(name), encoding="utf-8")


def render_page(title: str, subtitle: str, body: str, *, root: str = "", scripts: Sequence[str] = (),
                body_class: str = "", in_report: bool = True) -> str:
    """A full page from the packaged ``page.html`` template (``title``/``subtitle`` are escaped).

    Args:
        root: Relative path from the page to the report's root folder.
        in_report: The page belongs to a report whose ``index.html`` sits at ``root``: its
            header links there. False for a page written on its own (no such link).
    """
    from lavise import __version__

    tags = "\n".join(f'<script src="{root}assets/{esc(s)}"></script>' for s in scripts)
    home = (f'<a class="home" href="{root}index.html">LaViSE report</a>' if in_report
            else '<span class="home">LaViSE</span>')
    return string.Template(asset_text("page.html")).substitute(
        title=esc(title), subtitle=esc(subtitle), body=body, root=root, scripts=tags,
        body_class=esc(body_class), version=esc(__version__), home=home,
    )


def load_evaluation(path: str | Path, layer: str | None = None) -> dict[int, FilterEvaluation]:
    """Per-filter evaluation records from ``lavise evaluate``'s output.

    Args:
        path: An ``evaluation*.json`` file or the folder holding it.
        layer: Expected layer; with several ``evaluation-<layer>.json`` files it picks one.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("evaluation*.json"))
        if layer is not None and len(files) > 1:
            files = [f for f in files if f.stem == f"evaluation-{layer}"] or files
        if not files:
            raise FileNotFoundError(f"no evaluation*.json in {path} (run lavise evaluate --out {path})")
        path = files[0]
    if not path.is_file():
        raise FileNotFoundError(f"evaluation not found: {path}")
    data = json.loads(path.read_text())
    if layer is not None and data.get("layer") not in (None, layer):
        raise ValueError(f"the evaluation is of layer {data.get('layer')!r}, the explanations of {layer!r}")
    if "filters" not in data:
        raise ValueError(f"{path} has no per-filter records; evaluate again with this version of lavise")
    return {int(f["filter"]): FilterEvaluation.from_dict(f) for f in data["filters"]}


def load_explanations(path: str | Path) -> Any:
    """Explanations from ``explanations.json`` (or the folder holding it): :meth:`Explanations.load`."""
    from lavise.explain import Explanations

    return Explanations.load(path)


def word_hits(words: Sequence[str], concepts: Sequence[str]) -> set[str]:
    """The words that name one of ``concepts`` (same matching as the metrics, no synonyms)."""
    keys = set()
    for c in concepts:
        keys |= concept_match_words(c)
    return {w for w in words if normalise_word(w) in keys}


def agreement(f: Any) -> float:
    """Share of the filter's p top images that have its first word among their s nearest words."""
    if not f.words or not f.top_images:
        return 0.0
    return min(1.0, f.words[0].count / len(f.top_images))


def neighbours(filters: Sequence[Any], k: int = 6, words: int = 10) -> dict[int, list[tuple[int, float, list[str]]]]:
    """For each filter, the ``k`` filters whose words overlap most (Jaccard of top words).

    Returns:
        ``filter -> [(other filter, similarity, shared words)]``, most similar first.
    """
    import numpy as np

    ids = [f.filter for f in filters]
    sets = [set(f.labels[:words]) for f in filters]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*sets)))} if sets else {}
    member = np.zeros((len(ids), max(1, len(vocab))), np.float32)
    for r, ws in enumerate(sets):
        member[r, [vocab[w] for w in ws]] = 1.0
    inter = member @ member.T
    sizes = member.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    np.fill_diagonal(sim, 0.0)
    out: dict[int, list[tuple[int, float, list[str]]]] = {}
    for r, u in enumerate(ids):
        best = [c for c in np.argsort(-sim[r], kind="stable")[:k] if sim[r, c] > 0]
        out[u] = [(ids[c], float(sim[r, c]), sorted(sets[r] & sets[c])) for c in best]
    return out


def evidence_tag(r: RenderedImage, root: str = "", *, thumb: bool = False, alt: str = "") -> str:
    """The highlighted image: the shared image with the filter's overlay laid over it (lazy)."""
    src = r.thumb if thumb else r.image
    return (f'<span class="ev"><img loading="lazy" src="{root}{esc(src)}" alt="{esc(alt)}">'
            f'<i style="background-image:url(\'{root}{esc(r.lit)}\');{r.lit_position}"></i></span>')


def _fmt(x: float | None, nd: int = 3) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _card(f: Any, ev: FilterEvaluation | None, rendered: dict, matched: bool) -> str:
    hits = word_hits(f.labels, ev.concepts) if ev and ev.ground_truth else set()
    iou = ev.best[1] if ev and ev.best else None
    meta = f"T<sub>u</sub> {f.threshold:.3g} · agree {agreement(f):.2f}"
    if ev and ev.best:
        meta += f" · IoU {iou:.2f} {esc(ev.best[0])}"
    words = "".join(
        f'<li{" class=hit" if w.word in hits else ""}>{esc(w.word)} <small>{w.count}</small></li>'
        for w in f.words[:INDEX_WORDS])
    # Thumbnails as "strip slots image image ..." file stems; report.js adds them when the card
    # scrolls into view, so the index stays small and parses fast for a whole layer.
    shown = [r for r in (rendered.get((f.filter, s)) for s in range(min(INDEX_THUMBS, len(f.evidence))))
             if r is not None]
    thumbs = (f"{Path(shown[0].lit).stem} {shown[0].slots} " + " ".join(Path(r.thumb).stem for r in shown)
              if shown else "")
    badge = '<span class="badge">matches GT</span>' if matched else ""
    return (f'<article class="card{" match" if matched else ""}" data-u="{f.filter}" '
            f'data-w="{esc("|".join(w.lower() for w in f.labels))}" data-agree="{agreement(f):.4f}" '
            f'data-t="{f.threshold:.6g}" data-iou="{_fmt(iou, 4)}">'
            f'<h2><a href="filters/{f.filter}.html">#{f.filter}</a></h2><span class="meta">{meta}</span>{badge}'
            f'<ol class="words">{words}</ol><div class="thumbs" data-th="{esc(thumbs)}"></div></article>')


def _index(explanations: Any, evals: dict[int, FilterEvaluation], rendered: dict, matched: set[int],
           extra_links: str) -> str:
    vocab = sorted({w for f in explanations.filters for w in f.labels})
    options = "".join(f'<option value="{esc(w)}">' for w in vocab)
    sort_iou = '<option value="iou">IoU of best ground-truth concept</option>' if evals else ""
    only = ('<label><input type="checkbox" id="matched"> only filters whose words match their ground truth'
            f' ({len(matched)})</label>') if evals else ""
    s = explanations.settings
    summary = (f"{len(explanations)} filters of <code>{esc(explanations.layer)}</code> in {esc(explanations.model)}; "
               f"masking <code>{esc(explanations.method)}</code>, explainer <code>{esc(explanations.explainer)}</code>; "
               f"p={esc(s.get('p'))}, s={esc(s.get('s'))}, {esc(s.get('images'))} images.")
    body = (f"<h1>What each filter of {esc(explanations.layer)} responds to</h1><p>{summary} {extra_links}</p>"
            '<div class="controls"><input type="search" id="q" list="vocab" placeholder="search a word, e.g. dog" '
            'aria-label="search filters by word" autocomplete="off">'
            '<label>sort by <select id="sort"><option value="filter">filter index</option>'
            '<option value="agree">agreement of top images</option><option value="t">threshold T_u</option>'
            f'{sort_iou}</select></label>{only}<span id="count"></span></div>'
            f'<datalist id="vocab">{options}</datalist>'
            '<div id="cards">'
            + "".join(_card(f, evals.get(f.filter), rendered, f.filter in matched) for f in explanations.filters)
            + "</div>")
    return render_page(f"LaViSE: {explanations.model} {explanations.layer}",
                       f"{explanations.model} · {explanations.layer} · {explanations.method}", body,
                       scripts=["report.js"])


def _filter_page(f: Any, explanations: Any, ev: FilterEvaluation | None, rendered: dict,
                 near: list[tuple[int, float, list[str]]], prev_u: int | None, next_u: int | None) -> str:
    hits = word_hits(f.labels, ev.concepts) if ev and ev.ground_truth else set()
    pager = '<nav class="pager"><a href="../index.html">all filters</a>'
    if prev_u is not None:
        pager += f'<a href="{prev_u}.html">&larr; #{prev_u}</a>'
    if next_u is not None:
        pager += f'<a href="{next_u}.html">#{next_u} &rarr;</a>'
    pager += "</nav>"
    voters = sum(1 for t in f.evidence if t.voted)
    figs = []
    for slot, t in enumerate(f.evidence):
        r: RenderedImage | None = rendered.get((f.filter, slot))
        if r is None:
            continue
        note = "voted" if t.voted else "display only"
        missing = " · image file missing" if r.missing else ""
        figs.append(f'<figure class="{"vote" if t.voted else "novote"}">{evidence_tag(r, "../", alt=t.image_id)}'
                    f'<figcaption>{slot + 1}. '
                    f'{esc(t.image_id)}<br>max activation {t.activation:.3g} · {note}{missing}</figcaption></figure>')
    words = "".join(
        f'<tr{" class=hit" if w.word in hits else ""}><td class="num">{i + 1}</td><td>{esc(w.word)}'
        f'{" ✓" if w.word in hits else ""}</td><td class="num">{w.count}</td><td class="num">{w.score:.3f}</td>'
        f'<td class="num">{"" if w.weight is None else f"{w.weight:.3f}"}</td></tr>'
        for i, w in enumerate(f.words))
    parts = [pager, f"<h1>Filter #{f.filter} of {esc(f.layer)}</h1>",
             f'<p>T<sub>u</sub> = {f.threshold:.4g} · agreement of top images {agreement(f):.2f} '
             f'({voters} of {len(f.evidence)} shown images voted for the words)</p>',
             "<section><h3>Words</h3><table><tr><th>#</th><th>word</th><th>count</th><th>score</th><th>weight</th></tr>"
             f"{words}</table></section>"]
    if ev is not None:
        gt = "".join(f'<tr><td>{esc(c)}{" ✓" if word_hits(f.labels, [c]) else ""}</td><td class="num">{i:.3f}</td></tr>'
                     for c, i in ev.ground_truth)
        if not gt:
            best = f"best concept {esc(ev.best[0])} (IoU {ev.best[1]:.3f})" if ev.best else ""
            gt = f'<tr><td colspan="2" class="muted">none above the IoU threshold; {best}</td></tr>'
        parts.append(f"<section><h3>Ground truth (IoU with annotated concepts)</h3><table>"
                     f"<tr><th>concept</th><th>IoU</th></tr>{gt}</table>")
        if ev.words:
            rows = "".join(f"<tr><td>{esc(m)}</td><td>{esc(', '.join(ws))}</td></tr>" for m, ws in ev.words.items())
            parts.append(f"<h3>Words of each evaluated method</h3><table><tr><th>method</th><th>words</th></tr>{rows}</table>")
        parts.append("</section>")
    if near:
        rows = "".join(f'<tr><td><a href="{v}.html">#{v}</a></td><td class="num">{s:.2f}</td><td>{esc(", ".join(ws))}</td></tr>'
                       for v, s, ws in near)
        parts.append(f"<section><h3>Filters with similar words</h3><table><tr><th>filter</th><th>Jaccard</th>"
                     f"<th>shared words</th></tr>{rows}</table></section>")
    parts.append(f'<section><h3>Top images</h3><div class="grid">{"".join(figs)}</div></section>')
    return render_page(f"Filter {f.filter} · {f.layer}", f"{explanations.model} · {f.layer} · {explanations.method}",
                       "".join(parts), root="../")


def matched_filters(explanations: Any, evals: dict[int, FilterEvaluation], words: int = 10) -> set[int]:
    """Filters whose top ``words`` name at least one of their ground-truth concepts."""
    return {f.filter for f in explanations.filters
            if f.filter in evals and evals[f.filter].ground_truth
            and word_hits(f.labels[:words], evals[f.filter].concepts)}


def build_report(
    explanations: Any,
    out: str | Path,
    *,
    evaluation: dict[int, FilterEvaluation] | None = None,
    image_size: int = 224,
    thumb_size: int = 96,
    extra_links: str = "",
) -> Path:
    """Writes the static site for ``explanations`` into ``out`` and returns its ``index.html``.

    Args:
        explanations: :class:`lavise.explain.Explanations` with evidence (``lavise explain``
            records it); filters without evidence get pages without images.
        out: Output folder (created; rendered images already there are reused).
        evaluation: Per-filter records from :func:`load_evaluation` (optional).
        image_size: Side of the images on filter pages.
        thumb_size: Side of the index thumbnails.
        extra_links: Trusted HTML appended to the index's summary (e.g. a link to a rating page).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not any(f.evidence for f in explanations.filters):
        logger.warning("the explanations carry no top-image evidence (explained by an older lavise?): "
                       "pages will have no images; run lavise explain again")
    evals = evaluation or {}
    copy_assets(out, ["report.css", "report.js"])
    rendered = render_explanations(explanations, out, size=image_size, thumb=thumb_size)
    matched = matched_filters(explanations, evals)
    near = neighbours(explanations.filters)
    (out / "filters").mkdir(exist_ok=True)
    order = [f.filter for f in explanations.filters]
    for i, f in enumerate(explanations.filters):
        page = _filter_page(f, explanations, evals.get(f.filter), rendered, near.get(f.filter, []),
                            order[i - 1] if i > 0 else None, order[i + 1] if i + 1 < len(order) else None)
        (out / "filters" / f"{f.filter}.html").write_text(page, encoding="utf-8")
    index = out / "index.html"
    index.write_text(_index(explanations, evals, rendered, matched, extra_links), encoding="utf-8")
    return index
