"""Compare groups of images through the filters they qualify for (paper 4.6, Figure 8).

For each filter u, an image is *qualified* when its maximum activation reaches T_u
(the threshold over **all** images of the set, :func:`lavise.statistics.fires`). Each
group's share of qualified images is compared with the other group's (two groups) or
with the rest (more groups): their difference, a two-sided test per filter (Fisher's
exact test, or a two-proportion z-test) and Benjamini-Hochberg q-values across all
filters (and comparisons). Words are aggregated the same way: an image is qualified
for a word when it qualifies for any filter whose top-1 word it is.

:func:`contrast_groups` is the statistics on a ``(N, d)`` matrix of image maxima;
:func:`compare_groups` runs it for a checkpoint, an image set and a group spec.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lavise._io import write_text_atomic
from lavise.statistics import fires

logger = logging.getLogger(__name__)

__all__ = ["FilterContrast", "GroupContrast", "GroupComparison", "contrast_groups", "compare_groups",
           "benjamini_hochberg", "GROUP_TESTS"]

GROUP_TESTS = ("fisher", "z")


@dataclass(frozen=True)
class FilterContrast:
    """One filter (or word) in one comparison of a group against the other(s).

    Attributes:
        filter: Filter index (-1 for a word aggregate).
        words: The filter's explanation, best first (for a word aggregate: the word).
        qualified: Qualified images of the group.
        size: Images of the group (valid for this filter).
        other_qualified: Qualified images of the other group(s).
        other_size: Images of the other group(s).
        fraction: ``qualified / size``.
        other_fraction: ``other_qualified / other_size``.
        difference: ``fraction - other_fraction``.
        p_value: Two-sided p-value of the test.
        q_value: Benjamini-Hochberg adjusted p-value.
        examples: Group -> the most activated qualified images (names).
        filters: For a word aggregate, the filters whose top-1 word it is.
    """

    filter: int
    words: tuple[str, ...]
    qualified: int
    size: int
    other_qualified: int
    other_size: int
    fraction: float
    other_fraction: float
    difference: float
    p_value: float
    q_value: float
    examples: dict[str, tuple[str, ...]] = field(default_factory=dict)
    filters: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["words"], d["filters"] = list(self.words), list(self.filters)
        d["examples"] = {k: list(v) for k, v in self.examples.items()}
        return d


@dataclass(frozen=True)
class GroupContrast:
    """One group against the other group (or the rest), over every filter and word."""

    group: str
    other: str
    filters: tuple[FilterContrast, ...]
    words: tuple[FilterContrast, ...]

    def ranked(self, direction: int = 1, n: int | None = 10, words: bool = False) -> list[FilterContrast]:
        """Filters (or words) most tied to ``group`` (direction 1) or to ``other`` (-1).

        Ordered by difference, then q-value; only those with a difference of that sign.
        """
        items = self.words if words else self.filters
        picked = [f for f in items if f.difference * direction > 0]
        picked.sort(key=lambda f: (-abs(f.difference), f.q_value))
        return picked[:n] if n else picked

    def to_dict(self) -> dict:
        return {"group": self.group, "other": self.other, "filters": [f.to_dict() for f in self.filters],
                "words": [w.to_dict() for w in self.words]}


@dataclass(frozen=True)
class GroupComparison:
    """The result of ``lavise compare-groups``.

    Attributes:
        model: Model name.
        layer: Layer compared.
        test: ``fisher`` or ``z``.
        alpha: FDR level at which q-values are called significant.
        quantile: The quantile of T_u.
        group_sizes: Images per group.
        left_out: Images left out, by reason (counts).
        contrasts: One per comparison (two groups: one; more: each against the rest).
        image_paths: Image name -> file, for the example images.
        settings: Everything else that produced the result.
    """

    model: str
    layer: str
    test: str
    alpha: float
    quantile: float
    group_sizes: dict[str, int]
    left_out: dict[str, int]
    contrasts: tuple[GroupContrast, ...]
    image_paths: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def significant(self, words: bool = False) -> list[tuple[str, FilterContrast]]:
        """(group, filter-or-word) pairs with ``q <= alpha`` and a positive difference."""
        out = []
        for c in self.contrasts:
            for f in (c.words if words else c.filters):
                if f.q_value <= self.alpha and f.difference != 0:
                    out.append((c.group if f.difference > 0 else c.other, f))
        return out

    def to_dict(self) -> dict:
        return {"model": self.model, "layer": self.layer, "test": self.test, "alpha": self.alpha,
                "quantile": self.quantile, "group_sizes": self.group_sizes, "left_out": self.left_out,
                "contrasts": [c.to_dict() for c in self.contrasts], "image_paths": self.image_paths,
                "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict) -> "GroupComparison":
        def fc(x: dict) -> FilterContrast:
            return FilterContrast(**{**x, "words": tuple(x["words"]), "filters": tuple(x.get("filters", ())),
                                     "examples": {k: tuple(v) for k, v in x.get("examples", {}).items()}})
        contrasts = tuple(GroupContrast(c["group"], c["other"], tuple(fc(f) for f in c["filters"]),
                                        tuple(fc(w) for w in c["words"])) for c in d["contrasts"])
        return cls(d["model"], d["layer"], d["test"], float(d["alpha"]), float(d["quantile"]),
                   dict(d["group_sizes"]), dict(d["left_out"]), contrasts, dict(d.get("image_paths", {})),
                   dict(d.get("settings", {})))

    def to_csv(self) -> str:
        """One row per comparison and filter (then per word)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["kind", "group", "other", "filter", "words", "qualified", "size", "other_qualified",
                    "other_size", "fraction", "other_fraction", "difference", "p_value", "q_value"])
        for c in self.contrasts:
            for kind, items in (("filter", c.filters), ("word", c.words)):
                for f in items:
                    w.writerow([kind, c.group, c.other, f.filter, " ".join(f.words), f.qualified, f.size,
                                f.other_qualified, f.other_size, f"{f.fraction:.4f}", f"{f.other_fraction:.4f}",
                                f"{f.difference:.4f}", f"{f.p_value:.4g}", f"{f.q_value:.4g}"])
        return buf.getvalue()

    def to_markdown(self, top: int = 10) -> str:
        """Tables of the filters and words most tied to each group, with q-values."""
        sizes = ", ".join(f"{g}: {n}" for g, n in self.group_sizes.items())
        left = "; ".join(f"{n} {k}" for k, n in self.left_out.items() if n)
        lines = [f"# Groups compared through {self.model} {self.layer}", "",
                 f"Images per group: {sizes}" + (f" (left out: {left})" if left else "") + ". "
                 f"A filter's qualified images reach its T_u (upper {self.quantile:g} of all its activations "
                 f"over all images). Test: {'Fisher exact' if self.test == 'fisher' else 'two-proportion z'}, "
                 f"two-sided; q: Benjamini-Hochberg over all {sum(len(c.filters) for c in self.contrasts)} "
                 f"filter tests; significant at q <= {self.alpha:g}.", ""]
        n_sig = len(self.significant())
        n_sig_w = len(self.significant(words=True))
        lines += [f"Significant filters: {n_sig}; significant words: {n_sig_w}.", ""]
        for c in self.contrasts:
            for direction, name in ((1, c.group), (-1, c.other)):
                if c.other == "rest" and direction == -1:
                    continue
                lines += [f"## Filters most tied to {name}" + (f" (vs {c.other})" if c.other == "rest" else ""), "",
                          f"| filter | words | {c.group} | {c.other} | difference | p | q |",
                          "|---:|---|---:|---:|---:|---:|---:|"]
                for f in c.ranked(direction, top):
                    lines.append(_md_row(f, str(f.filter)))
                lines += ["", f"## Words most tied to {name}" + (f" (vs {c.other})" if c.other == "rest" else ""), "",
                          f"| word | filters | {c.group} | {c.other} | difference | p | q |",
                          "|---|---:|---:|---:|---:|---:|---:|"]
                for f in c.ranked(direction, top, words=True):
                    lines.append(_md_row(f, f.words[0], len(f.filters)))
                lines.append("")
        return "\n".join(lines)

    def save(self, directory: str | Path, top: int = 10, figure: bool = True) -> list[Path]:
        """Writes ``groups.json``, ``groups.csv``, ``groups.md`` and ``groups.png``."""
        directory = Path(directory)
        paths = [write_text_atomic(directory / "groups.json", json.dumps(self.to_dict(), indent=1)),
                 write_text_atomic(directory / "groups.csv", self.to_csv()),
                 write_text_atomic(directory / "groups.md", self.to_markdown(top))]
        if figure:
            from lavise.report.comparison import plot_group_comparison

            paths.append(plot_group_comparison(self, directory / "groups.png", top=min(top, 8)))
        return paths


def _md_row(f: FilterContrast, first: str, n_filters: int | None = None) -> str:
    words = ", ".join(f.words[:4])
    mid = f"{n_filters}" if n_filters is not None else words
    return (f"| {first} | {mid} | {f.fraction:.1%} ({f.qualified}/{f.size}) | "
            f"{f.other_fraction:.1%} ({f.other_qualified}/{f.other_size}) | {f.difference:+.1%} | "
            f"{f.p_value:.2g} | {f.q_value:.2g}{' *' if f.q_value <= 0.05 else ''} |")


# --------------------------------------------------------------------------- statistics


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (adjusted p-values) of independent or PRDS tests."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return p
    from scipy.stats import false_discovery_control

    return false_discovery_control(np.clip(p, 0.0, 1.0), method="bh")


def _two_sided(a: np.ndarray, n1: np.ndarray, b: np.ndarray, n2: np.ndarray, test: str) -> np.ndarray:
    """p-values of ``a/n1`` vs ``b/n2`` per element."""
    if test == "fisher":
        from scipy.stats import fisher_exact

        out = np.empty(len(a))
        cache: dict[tuple[int, int, int, int], float] = {}
        for i, key in enumerate(zip(a.tolist(), n1.tolist(), b.tolist(), n2.tolist())):
            if key not in cache:
                x, m, y, k = key
                cache[key] = float(fisher_exact([[x, m - x], [y, k - y]], alternative="two-sided").pvalue)
            out[i] = cache[key]
        return out
    from scipy.stats import norm

    p1, p2 = a / np.maximum(n1, 1), b / np.maximum(n2, 1)
    pooled = (a + b) / np.maximum(n1 + n2, 1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n1, 1) + 1 / np.maximum(n2, 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (p1 - p2) / np.where(se > 0, se, 1), 0.0)
    return 2 * norm.sf(np.abs(z))


def contrast_groups(
    image_max: torch.Tensor,
    thresholds: torch.Tensor,
    groups: Sequence[str | None],
    *,
    words: Sequence[Sequence[str]] | None = None,
    image_names: Sequence[str] | None = None,
    test: str = "fisher",
    alpha: float = 0.05,
    min_group_size: int = 10,
    examples: int = 3,
    filter_ids: Sequence[int] | None = None,
) -> tuple[GroupContrast, ...]:
    """Per-filter qualified shares of groups, their difference, p- and q-values.

    Args:
        image_max: ``(N, d)`` per-image max activation (non-finite rows: skipped images).
        thresholds: ``(d,)`` T_u, computed over all N images.
        groups: The group of each row (None: the image is in no group).
        words: Each filter's explanation words (best first), for the word aggregate.
        image_names: A name per row, for the example images.
        test: ``fisher`` (exact) or ``z`` (two-proportion z-test); both two-sided.
        alpha: Only used to check it is in (0, 1).
        min_group_size: Refuse groups smaller than this.
        examples: Most activated qualified images kept per group and filter.
        filter_ids: The filter index of each column (default ``0..d-1``).

    Returns:
        Two groups: one contrast (the first group in sorted order against the second);
        more: one per group against the rest. q-values are Benjamini-Hochberg over all
        filter tests of all contrasts (words: over all word tests).

    Raises:
        ValueError: Fewer than two groups, a group smaller than ``min_group_size``,
            an unknown test, or shapes that do not fit.
    """
    if test not in GROUP_TESTS:
        raise ValueError(f"unknown test {test!r} (valid: {', '.join(GROUP_TESTS)})")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    image_max = torch.as_tensor(image_max).float().cpu()
    n, d = image_max.shape
    if len(groups) != n or thresholds.shape != (d,):
        raise ValueError(f"expected {n} group entries and {d} thresholds, got {len(groups)} and {tuple(thresholds.shape)}")
    if words is not None and len(words) != d:
        raise ValueError(f"expected words for {d} filters, got {len(words)}")
    names = list(image_names) if image_names is not None else [str(i) for i in range(n)]
    ids = list(filter_ids) if filter_ids is not None else list(range(d))
    if len(ids) != d:
        raise ValueError(f"expected {d} filter ids, got {len(ids)}")
    valid = torch.isfinite(image_max).all(1)
    labels = np.array([g if (g is not None and bool(valid[i])) else "" for i, g in enumerate(groups)], dtype=object)
    present = sorted({g for g in labels.tolist() if g})
    if len(present) < 2:
        raise ValueError(f"comparing groups needs at least two groups, got {len(present)}"
                         + (f" ({present[0]})" if present else ""))
    sizes = {g: int((labels == g).sum()) for g in present}
    small = {g: s for g, s in sizes.items() if s < min_group_size}
    if small:
        raise ValueError("too few images for the test: " + ", ".join(f"group {g!r} has {s}" for g, s in small.items())
                         + f" (at least {min_group_size} needed; see --min-group-size)")
    qualified = fires(image_max, thresholds.float().unsqueeze(0)).numpy()  # (N, d)
    top_words = [list(w) if w else [] for w in words] if words is not None else [[] for _ in range(d)]
    word_filters: dict[str, list[int]] = {}
    for u, ws in enumerate(top_words):
        if ws:
            word_filters.setdefault(ws[0], []).append(u)  # columns; reported as filter ids below
    word_list = sorted(word_filters)
    word_qualified = (np.stack([qualified[:, word_filters[w]].any(1) for w in word_list], 1)
                      if word_list else np.zeros((n, 0), bool))
    pairs = [(present[0], present[1])] if len(present) == 2 else [(g, "rest") for g in present]
    act = image_max.numpy()
    raw: list[tuple[str, str, dict, dict]] = []
    for g, other in pairs:
        in_g = labels == g
        in_o = (labels == other) if other != "rest" else ((labels != "") & ~in_g)
        raw.append((g, other, _counts(qualified, in_g, in_o, test), _counts(word_qualified, in_g, in_o, test)))
    q_f = benjamini_hochberg(np.concatenate([r[2]["p"] for r in raw]))
    q_w = benjamini_hochberg(np.concatenate([r[3]["p"] for r in raw]))
    out = []
    for k, (g, other, cf, cw) in enumerate(raw):
        in_g = labels == g
        in_o = (labels == other) if other != "rest" else ((labels != "") & ~in_g)
        filt = tuple(
            FilterContrast(ids[u], tuple(top_words[u]), *_row(cf, u), float(q_f[k * d + u]),
                           _examples(act[:, u], qualified[:, u], in_g, in_o, g, other, names, examples))
            for u in range(d))
        nw = len(word_list)
        wrd = tuple(
            FilterContrast(-1, (w,), *_row(cw, j), float(q_w[k * nw + j]),
                           _examples(act[:, word_filters[w]].max(1), word_qualified[:, j], in_g, in_o, g, other,
                                     names, examples),
                           tuple(ids[u] for u in word_filters[w]))
            for j, w in enumerate(word_list))
        out.append(GroupContrast(g, other, filt, wrd))
    return tuple(out)


def _counts(qualified: np.ndarray, in_g: np.ndarray, in_o: np.ndarray, test: str) -> dict:
    a = qualified[in_g].sum(0).astype(int)
    b = qualified[in_o].sum(0).astype(int)
    n1 = np.full_like(a, int(in_g.sum()))
    n2 = np.full_like(b, int(in_o.sum()))
    p = _two_sided(a, n1, b, n2, test) if len(a) else np.zeros(0)
    return {"a": a, "n1": n1, "b": b, "n2": n2, "p": p}


def _row(c: dict, u: int) -> tuple:
    a, n1, b, n2 = int(c["a"][u]), int(c["n1"][u]), int(c["b"][u]), int(c["n2"][u])
    f1, f2 = a / max(n1, 1), b / max(n2, 1)
    return a, n1, b, n2, f1, f2, f1 - f2, float(c["p"][u])


def _examples(values: np.ndarray, qual: np.ndarray, in_g: np.ndarray, in_o: np.ndarray, g: str, other: str,
              names: list[str], k: int) -> dict[str, tuple[str, ...]]:
    out = {}
    for name, mask in ((g, in_g), (other, in_o)):
        rows = np.nonzero(mask & qual)[0]
        rows = rows[np.argsort(-values[rows], kind="stable")][:k]
        out[name] = tuple(names[r] for r in rows)
    return out


# --------------------------------------------------------------------------- pipeline


def compare_groups(
    checkpoint: Any,
    images: str | Path,
    groups: str,
    *,
    split: str | None = None,
    captions: str | Path | None = None,
    ignore_missing: bool = False,
    explanations: Any = None,
    config: Any = None,
    test: str = "fisher",
    alpha: float = 0.05,
    min_group_size: int = 10,
    examples: int = 3,
    filters: str | Sequence[int] | None = None,
    allow: set[str] | None = None,
    block: set[str] | None = None,
    **overrides: Any,
) -> GroupComparison:
    """Compares groups of images through the filters of a checkpoint's layer.

    Args:
        checkpoint: An :class:`~lavise.explainer.Explainer` or a checkpoint folder.
        images: The image folder (``folders:DIR`` groups: default their folder).
        groups: ``csv:FILE`` (``image,group``), ``folders:DIR`` or ``captions:gender``.
        split: Split for the captions file lookup.
        captions: COCO captions JSON for ``captions:gender``.
        ignore_missing: Go on (with a warning) when the group file names images not in
            the set, or when images have no captions.
        explanations: :class:`~lavise.explain.Explanations` (or a JSON path) of the same
            images; default: explained now with ``config``.
        config: :class:`~lavise.config.Config` for features and explanations.
        test, alpha, min_group_size, examples: See :func:`contrast_groups`.
        filters: Compare only these filters (indices or ``"0-99"``; q-values over them).
        allow, block: Words explanations may (not) use, when explaining now.

    Raises:
        ValueError: See :func:`contrast_groups` and :func:`lavise.labels.load_labels`.
    """
    from lavise.api import explain, features_of, filter_stats, open_dataset, resolve_explainer, with_overrides
    from lavise.explain import Explanations
    from lavise.labels import load_labels

    config = with_overrides(config, overrides)
    if groups.startswith("folders:") and images is None:
        images = groups.split(":", 1)[1]
    if images is None:
        raise ValueError("compare-groups needs --images")
    labels = load_labels(groups, images, split=split, captions=captions, ignore_missing=ignore_missing)
    if labels.multi_label:
        raise ValueError(f"groups from {groups} put some images in several groups; each image needs one group")
    explainer = resolve_explainer(checkpoint, config, kind=overrides.get("explainer"))
    dataset = open_dataset(str(images), None, explainer.model)
    store = features_of(explainer.model, explainer.layer, dataset, config)
    stats = filter_stats(store, config)
    by_path = {Path(p).resolve(): i for i, p in enumerate(labels.paths)}
    row_group: list[str | None] = []
    for p in dataset.image_paths:
        i = by_path.get(Path(p).resolve())
        row_group.append(labels.class_names[labels.targets[i][0]] if i is not None else None)
    outside = len(labels) - sum(g is not None for g in row_group)
    if outside:
        raise ValueError(f"{outside} labelled images are not in the image set {images}")
    if isinstance(explanations, (str, Path)):
        explanations = Explanations.load(explanations)
    if explanations is None:
        explanations = explain(explainer, dataset, config=config, filters=filters, allow=allow, block=block)
    elif explanations.layer != explainer.layer or explanations.model != explainer.model.name:
        raise ValueError(f"the explanations are of {explanations.model} {explanations.layer}, "
                         f"the checkpoint's layer is {explainer.model.name} {explainer.layer}")
    else:
        q, n_img = explanations.settings.get("quantile"), explanations.settings.get("images")
        if q is not None and float(q) != stats.quantile:
            raise ValueError(f"the explanations were made at quantile {q}, this comparison's T_u at "
                             f"{stats.quantile:g}; pass --quantile {q} or explain again")
        if n_img is not None and int(n_img) != len(store):
            logger.warning("the explanations were made on %s images, the groups cover %d; their words "
                           "come from another image set", n_img, len(store))
    d = stats.num_filters
    words: list[list[str]] = [[] for _ in range(d)]
    for f in explanations.filters:
        words[f.filter] = f.labels
    names = [str(i) for i in dataset.image_ids]
    from lavise.explain import parse_filters

    cols = parse_filters(filters, d)
    contrasts = contrast_groups(stats.image_max[:, cols], stats.thresholds[cols], row_group,
                                words=[words[u] for u in cols], image_names=names, test=test, alpha=alpha,
                                min_group_size=min_group_size, examples=examples, filter_ids=cols)
    used = {n for c in contrasts for f in (*c.filters, *c.words) for v in f.examples.values() for n in v}
    paths = {n: str(Path(p).resolve()) for n, p in zip(names, dataset.image_paths) if n in used}
    sizes = {g: sum(1 for r in row_group if r == g) for g in sorted({r for r in row_group if r})}
    left = {k: len(v) for k, v in labels.left_out.items()}
    unlabelled = sum(r is None for r in row_group)
    if unlabelled:
        left["in no group"] = unlabelled
    settings = {"images": str(images), "groups": groups, "labels": labels.source, "min_group_size": min_group_size,
                "explanations": explanations.settings, "explainer": explanations.explainer,
                "method": explanations.method, "examples": examples}
    return GroupComparison(explainer.model.name, explainer.layer, test, alpha, stats.quantile, sizes, left,
                           contrasts, paths, settings)
