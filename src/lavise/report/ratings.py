"""The human-rating kit of the paper's Table 1: a blind rating page and the summary of ratings.

The page shows, for each of N sampled filters (seeded), its 15 highlighted top images
and the explanations of two sources (two masking methods, two checkpoints, or LaViSE
against the NetDissect label) in random order per item, labelled only ``A`` and ``B``.
Per explanation the rater ticks the words that describe the highlighted regions
(precision); per item they say which explanation is better (A, B, equally good,
neither). Answers stay in the browser (``localStorage``) and download as a JSON file.
The key that unblinds the order is written beside the page (``rate-key.json``), never
into it: keep it away from the raters.

:func:`summarize` reads the raters' files with the key and reports what the paper does:
per source, the mean over filters of the median (over raters) precision and top-1
precision, and the share of answers preferring each source, with bootstrap confidence
intervals (filters resampled) and inter-rater agreement (Krippendorff's alpha).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lavise._io import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["RatingSource", "write_rating_page", "RatingsSummary", "summarize", "krippendorff_alpha",
           "load_ratings"]

PREFERENCES = ("A", "B", "same", "neither")


@dataclass(frozen=True)
class RatingSource:
    """One side of the comparison: a name and each filter's ranked words."""

    name: str
    words: dict[int, list[str]]


def write_rating_page(
    explanations: Any,
    other: RatingSource,
    out: str | Path,
    n: int,
    *,
    seed: int = 0,
    words: int = 5,
    name: str | None = None,
) -> tuple[Path, Path]:
    """Writes ``rate.html`` (blind) and ``rate-key.json`` (the unblinding key) into ``out``.

    Args:
        explanations: The explanations whose top images are shown (first source).
        other: The second source's words per filter.
        out: The report folder.
        n: Filters to sample (fewer if fewer have words in both sources).
        seed: Seeds the sample and the A/B order.
        words: Words shown per explanation; both sides show the same number
            (the shorter list's length, if shorter) so the count does not unblind them.
        name: Name of the first source (default: its masking method).
    """
    from lavise.report.evidence import render_explanations
    from lavise.report.html import copy_assets, esc, evidence_tag, render_page

    if n < 1:
        raise ValueError(f"--rate needs at least 1 filter, got {n}")
    if words < 1:
        raise ValueError(f"words per explanation must be >= 1, got {words}")
    first = RatingSource(name or f"lavise {explanations.method}",
                         {f.filter: f.labels for f in explanations.filters})
    if first.name == other.name:
        first = RatingSource(first.name + " (1)", first.words)
        other = RatingSource(other.name + " (2)", other.words)
    candidates = [f.filter for f in explanations.filters
                  if f.evidence and first.words.get(f.filter) and other.words.get(f.filter)]
    if not candidates:
        raise ValueError("no filter has top images and words in both sources")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, min(n, len(candidates))))
    rng.shuffle(chosen)
    out = Path(out)
    copy_assets(out, ["report.css", "rate.js"])
    rendered = render_explanations(explanations, out, filters=chosen)
    page_id = hashlib.sha1(json.dumps([explanations.layer, explanations.method, other.name, chosen, seed]).encode()
                           ).hexdigest()[:12]
    key_items, blocks = [], []
    for item, u in enumerate(chosen):
        a_src, b_src = (first, other) if rng.random() < 0.5 else (other, first)
        k = min(words, len(first.words[u]), len(other.words[u]))
        shown = {"A": a_src.words[u][:k], "B": b_src.words[u][:k]}
        key_items.append({"item": item, "filter": u, "A": a_src.name, "B": b_src.name,
                          "words": {"A": shown["A"], "B": shown["B"]}})
        f = explanations[u]
        imgs = "".join(evidence_tag(rendered[(u, s)]) for s in range(len(f.evidence)) if (u, s) in rendered)
        expl = ""
        for side in ("A", "B"):
            boxes = "".join(f'<label><input type="checkbox" data-side="{side}" data-rank="{r}"> {esc(w)}</label>'
                            for r, w in enumerate(shown[side]))
            expl += (f'<div class="expl"><b>Explanation {side}</b><p class="muted">Tick each word that describes '
                     f'the highlighted regions:</p>{boxes}</div>')
        prefs = "".join(
            f'<label><input type="radio" name="prefer-{item}" value="{v}"> {label}</label> '
            for v, label in (("A", "A is better"), ("B", "B is better"), ("same", "equally good"),
                             ("neither", "neither fits")))
        blocks.append(f'<section class="item" data-item="{item}"><h3>Item {item + 1} of {len(chosen)}</h3>'
                      f'<div class="grid rate">{imgs}</div>{expl}<p><b>Which explanation describes the '
                      f'highlighted regions better?</b><br>{prefs}</p></section>')
    body = ('<h1>Rate the explanations</h1><p>Each item shows the 15 images where one filter of a neural network '
            'responds most; its strongest region is outlined, the rest dimmed. Tick the words that describe the '
            'highlighted regions, then say which explanation is better. Your answers are kept in this browser; '
            'when done, download them and send the file back.</p>'
            f'<form id="rating" data-page="{page_id}" onsubmit="return false">'
            '<p><label>Your name or rater id: <input id="rater" autocomplete="off"></label></p>'
            + "".join(blocks)
            + '<p><button type="button" id="download">Download answers (JSON)</button> <span id="status"></span></p>'
              "</form>")
    page = out / "rate.html"
    page.write_text(render_page("Rate filter explanations", f"{len(chosen)} items", body, scripts=["rate.js"],
                                body_class="rating"), encoding="utf-8")
    key = write_json_atomic(out / "rate-key.json", {
        "format": "lavise-rating-key/1", "page": page_id, "sources": [first.name, other.name],
        "layer": explanations.layer, "seed": seed, "items": key_items,
    })
    return page, key


def load_ratings(paths: Sequence[str | Path], key: dict) -> list[dict]:
    """Raters' files, checked against the key's page id; unanswered items dropped."""
    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"ratings file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not JSON: {exc}") from None
        if data.get("page") != key.get("page"):
            raise ValueError(f"{p} rates page {data.get('page')!r}, the key is of page {key.get('page')!r}")
        data["rater"] = data.get("rater") or p.stem
        data["items"] = {int(k): v for k, v in data.get("items", {}).items() if v.get("prefer") in PREFERENCES}
        out.append(data)
    if not out:
        raise ValueError("no ratings files given")
    return out


def krippendorff_alpha(data: np.ndarray | Sequence[Sequence[Any]], metric: str = "nominal") -> float:
    """Krippendorff's alpha for a ``(raters, units)`` table with ``None``/NaN for missing.

    Args:
        data: Rows are raters (coders), columns units; values are labels (nominal) or
            numbers (interval).
        metric: ``nominal`` or ``interval``.

    Returns:
        alpha (1 perfect agreement, 0 chance); NaN when fewer than two pairable values
        or no variation at all.
    """
    if metric not in ("nominal", "interval"):
        raise ValueError(f"unknown metric {metric!r} (valid: nominal, interval)")
    rows = [list(r) for r in data]
    units = list(zip(*rows)) if rows else []
    def missing(v: Any) -> bool:
        return v is None or (isinstance(v, float) and np.isnan(v))
    pairable = [[v for v in unit if not missing(v)] for unit in units]
    pairable = [u for u in pairable if len(u) >= 2]
    if not pairable:
        return float("nan")
    values = sorted({v for u in pairable for v in u}, key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for u in pairable:
        m = len(u)
        for i, a in enumerate(u):
            for j, b in enumerate(u):
                if i != j:
                    o[index[a], index[b]] += 1.0 / (m - 1)
    n_c = o.sum(1)
    n = n_c.sum()
    if metric == "nominal":
        delta = 1.0 - np.eye(len(values))
    else:
        x = np.asarray(values, dtype=float)
        delta = (x[:, None] - x[None, :]) ** 2
    d_o = (o * delta).sum() / n
    d_e = (np.outer(n_c, n_c) * delta).sum() / (n * (n - 1))
    if d_e == 0:
        return float("nan")
    return float(1.0 - d_o / d_e)


@dataclass(frozen=True)
class RatingsSummary:
    """What the paper's Table 1 reports, per source, with 95% bootstrap intervals.

    Attributes:
        sources: The two source names (key order).
        raters: Number of raters; ``filters``: filters with at least one answer.
        precision: Source -> ``(mean over filters of the median precision, low, high)``.
        top1: Source -> top-1 precision (the first word judged correct), same form.
        prefer: Choice (a source, ``same``, ``neither``) -> share of all answers, same form.
        alpha: Krippendorff's alpha of the precision (interval), top-1 and preference (nominal).
    """

    sources: tuple[str, str]
    raters: int
    filters: int
    answers: int
    precision: dict
    top1: dict
    prefer: dict
    alpha: dict
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"sources": list(self.sources), "raters": self.raters, "filters": self.filters,
                "answers": self.answers, "precision": {k: list(v) for k, v in self.precision.items()},
                "top1": {k: list(v) for k, v in self.top1.items()},
                "prefer": {k: list(v) for k, v in self.prefer.items()}, "alpha": self.alpha,
                "settings": self.settings}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_markdown(self) -> str:
        ci = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
        lines = [f"{self.raters} raters, {self.filters} filters, {self.answers} answers; "
                 f"95% bootstrap intervals over filters in brackets.", "",
                 "| source | precision (median over raters, mean over filters) | top-1 precision | prefer |",
                 "|---|---|---|---|"]
        for s in self.sources:
            lines.append(f"| {s} | {ci(self.precision[s])} | {ci(self.top1[s])} | {ci(self.prefer[s])} |")
        for s in ("same", "neither"):
            lines.append(f"| ({s}) |  |  | {ci(self.prefer[s])} |")
        fmt = lambda a: "n/a" if a != a else f"{a:.3f}"  # noqa: E731
        lines += ["", "Inter-rater agreement (Krippendorff's alpha): "
                  + ", ".join(f"{k} {fmt(v)}" for k, v in self.alpha.items())]
        return "\n".join(lines) + "\n"

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        stem = Path(stem)
        return (write_text_atomic(stem.with_suffix(".md"), self.to_markdown()),
                write_text_atomic(stem.with_suffix(".json"), self.to_json() + "\n"))


def _per_filter(ratings: list[dict], key: dict) -> dict[int, dict]:
    """filter -> {"precision": {source: [per rater]}, "top1": {...}, "prefer": [choices]}."""
    sources = key["sources"]
    items = {int(it["item"]): it for it in key["items"]}
    out: dict[int, dict] = {}
    for r in ratings:
        for i, ans in r["items"].items():
            if i not in items:
                raise ValueError(f"item {i} of rater {r['rater']!r} is not in the key")
            it = items[i]
            rec = out.setdefault(it["filter"], {"precision": {s: [] for s in sources},
                                                "top1": {s: [] for s in sources}, "prefer": []})
            for side in ("A", "B"):
                ticks = [bool(v) for v in ans.get(side, [])]
                n_words = len(it.get("words", {}).get(side, ticks)) or len(ticks)
                ticks = (ticks + [False] * n_words)[:n_words]
                src = it[side]
                rec["precision"][src].append(sum(ticks) / n_words if n_words else 0.0)
                rec["top1"][src].append(float(ticks[0]) if ticks else 0.0)
            p = ans["prefer"]
            rec["prefer"].append(it[p] if p in ("A", "B") else p)
    return out


def _stats(per: dict[int, dict], sources: Sequence[str], filters: Sequence[int]) -> dict[str, float]:
    res: dict[str, float] = {}
    for s in sources:
        res[f"precision:{s}"] = float(np.mean([np.median(per[u]["precision"][s]) for u in filters]))
        res[f"top1:{s}"] = float(np.mean([np.median(per[u]["top1"][s]) for u in filters]))
    choices = [c for u in filters for c in per[u]["prefer"]]
    for c in (*sources, "same", "neither"):
        res[f"prefer:{c}"] = choices.count(c) / len(choices) if choices else float("nan")
    return res


def summarize(ratings_paths: Sequence[str | Path], key_path: str | Path, *, bootstrap: int = 2000,
              seed: int = 0, confidence: float = 0.95) -> RatingsSummary:
    """Summarises raters' files with the unblinding key (see the module docstring)."""
    key_path = Path(key_path)
    if not key_path.is_file():
        raise FileNotFoundError(f"key not found: {key_path}")
    key = json.loads(key_path.read_text())
    if key.get("format") != "lavise-rating-key/1":
        raise ValueError(f"{key_path} is not a lavise rating key")
    sources = list(key["sources"])
    ratings = load_ratings(ratings_paths, key)
    per = _per_filter(ratings, key)
    filters = sorted(per)
    if not filters:
        raise ValueError("the ratings files answer no item")
    point = _stats(per, sources, filters)
    rng = np.random.default_rng(seed)
    boots = [_stats(per, sources, [filters[i] for i in rng.integers(0, len(filters), len(filters))])
             for _ in range(bootstrap)]
    lo_q, hi_q = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100

    def interval(name: str) -> tuple[float, float, float]:
        vals = np.array([b[name] for b in boots], dtype=float)
        vals = vals[~np.isnan(vals)]
        if not len(vals):
            return (point[name], float("nan"), float("nan"))
        return (point[name], float(np.percentile(vals, lo_q)), float(np.percentile(vals, hi_q)))

    alpha = _agreement(ratings, key)
    return RatingsSummary(
        sources=(sources[0], sources[1]), raters=len(ratings), filters=len(filters),
        answers=sum(len(r["items"]) for r in ratings),
        precision={s: interval(f"precision:{s}") for s in sources},
        top1={s: interval(f"top1:{s}") for s in sources},
        prefer={c: interval(f"prefer:{c}") for c in (*sources, "same", "neither")},
        alpha=alpha, settings={"bootstrap": bootstrap, "seed": seed, "confidence": confidence},
    )


def _agreement(ratings: list[dict], key: dict) -> dict[str, float]:
    """Krippendorff's alpha over (item, source) units for precision and top-1, over items for preference."""
    items = {int(it["item"]): it for it in key["items"]}
    sources = key["sources"]
    units = [(i, s) for i in sorted(items) for s in sources]

    def table(value: Callable[[dict, dict, str], Any]) -> list[list[Any]]:
        rows = []
        for r in ratings:
            row = []
            for i, s in units:
                ans = r["items"].get(i)
                if ans is None:
                    row.append(None)
                    continue
                side = "A" if items[i]["A"] == s else "B"
                row.append(value(ans, items[i], side))
            rows.append(row)
        return rows

    def ticks(ans: dict, it: dict, side: str) -> list[bool]:
        n = len(it.get("words", {}).get(side, ans.get(side, []))) or 1
        return ([bool(v) for v in ans.get(side, [])] + [False] * n)[:n]

    prec = table(lambda a, it, side: sum(ticks(a, it, side)) / len(ticks(a, it, side)))
    top1 = table(lambda a, it, side: int(ticks(a, it, side)[0]))
    pref = [[(items[i][r["items"][i]["prefer"]] if r["items"][i]["prefer"] in ("A", "B")
              else r["items"][i]["prefer"]) if i in r["items"] else None for i in sorted(items)]
            for r in ratings]
    return {"precision (interval)": krippendorff_alpha(prec, "interval"),
            "top-1 (nominal)": krippendorff_alpha(top1, "nominal"),
            "preference (nominal)": krippendorff_alpha(pref, "nominal")}


def rating_source(spec: str, explanations: Any, evaluation: dict | None) -> RatingSource:
    """The second source of a rating page from a CLI spec.

    Args:
        spec: ``netdissect`` (the NetDissect label from ``lavise evaluate``), ``method:NAME``
            (a method's words from ``lavise evaluate``), or a folder of other explanations
            (another masking method or checkpoint, same layer).
        explanations: The first source (its layer is checked).
        evaluation: Per-filter evaluation records (needed by ``netdissect``/``method:``).
    """
    from lavise.report.html import load_explanations

    if spec == "netdissect" or spec.startswith("method:"):
        if not evaluation:
            raise ValueError(f"--rate-against {spec} needs --evaluation DIR (from lavise evaluate)")
        if spec == "netdissect":
            words = {}
            for u, ev in evaluation.items():
                train = [w for k, w in ev.words.items() if k.startswith("netdissect (train")]
                if train and train[0]:
                    words[u] = train[0][:1]
                elif ev.best:
                    words[u] = [ev.best[0]]
            return RatingSource("netdissect", words)
        name = spec.split(":", 1)[1]
        words = {u: ev.words[name] for u, ev in evaluation.items() if name in ev.words}
        if not words:
            known = sorted({k for ev in evaluation.values() for k in ev.words})
            raise ValueError(f"the evaluation has no words of method {name!r} (has: {', '.join(known)})")
        return RatingSource(name, words)
    other = load_explanations(spec)
    if other.layer != explanations.layer:
        raise ValueError(f"the other explanations are of layer {other.layer!r}, not {explanations.layer!r}")
    return RatingSource(f"lavise {other.method} ({Path(spec).name})", {f.filter: f.labels for f in other.filters})
