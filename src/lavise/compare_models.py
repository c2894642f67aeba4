"""Compare models through the concepts their filters express (paper 4.5.5).

Each model's inventory comes from its explanation files (``explanations.json`` of
``lavise explain``; several files of one model, e.g. one per layer, merge). A word
counts for a filter only when at least ``min_count`` of the filter's top images chose
it (the ``count`` of a ranked word), so a filter whose top images disagree expresses
no concept. Concepts are the distinct counted words at top-1 and within the top k;
the comparison reports them per model and per layer, those shared by all models and
those unique to each. Filters are never matched across models, so architectures with
different numbers of filters compare directly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lavise._io import write_text_atomic
from lavise.explain import Explanations

logger = logging.getLogger(__name__)

__all__ = ["ModelInventory", "ModelComparison", "concept_inventory", "compare_models"]

# Settings that must agree for concept counts to be comparable.
_MUST_AGREE = {"quantile": "thresholds (quantile)", "vocabulary_size": "vocabularies (size)",
               "word_space": "word spaces", "p": "numbers of top images p", "s": "s (words per image)",
               "x": "x (words per filter)", "method": "masking methods", "explainer": "explainer kinds",
               "images": "image sets (number of images)"}


@dataclass(frozen=True)
class ModelInventory:
    """The concepts one model's filters express.

    Attributes:
        name: Label of the model in the comparison.
        model: Model id from the explanations.
        layers: Layers explained.
        filters: Filters explained (all layers).
        interpretable: Filters whose top-1 word counts (enough top images agree).
        dead: Filters that never fire (T_u <= 0: not even their upper activations are
            positive); their "explanations" are the words of an empty map and never count.
        concepts_top1: Distinct counted top-1 words.
        concepts_topk: Distinct counted words within each filter's top k.
        word_filters: Word -> number of filters whose counted top-1 word it is.
        per_layer: Layer -> ``{"filters", "interpretable", "top1", "topk"}`` counts.
    """

    name: str
    model: str
    layers: tuple[str, ...]
    filters: int
    interpretable: int
    concepts_top1: tuple[str, ...]
    concepts_topk: tuple[str, ...]
    word_filters: dict[str, int] = field(default_factory=dict)
    per_layer: dict[str, dict[str, int]] = field(default_factory=dict)
    dead: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "layers": list(self.layers), "filters": self.filters,
                "interpretable": self.interpretable, "dead": self.dead, "concepts_top1": list(self.concepts_top1),
                "concepts_topk": list(self.concepts_topk), "word_filters": self.word_filters,
                "per_layer": self.per_layer}


def concept_inventory(name: str, runs: Sequence[Explanations], top_k: int = 3, min_count: int = 2) -> ModelInventory:
    """The concept inventory of one model from its explanations (one per layer)."""
    if top_k < 1 or min_count < 1:
        raise ValueError(f"top k and min count must be >= 1, got {top_k} and {min_count}")
    top1: set[str] = set()
    topk: set[str] = set()
    word_filters: Counter[str] = Counter()
    per_layer: dict[str, dict[str, int]] = {}
    filters = interpretable = dead = 0
    for run in runs:
        l1: set[str] = set()
        lk: set[str] = set()
        l_interp = l_dead = 0
        for f in run.filters:
            if f.threshold <= 0:
                l_dead += 1
                continue
            counted = [w.word for w in f.words[:top_k] if w.count >= min_count]
            lk.update(counted)
            if f.words and f.words[0].count >= min_count:
                l1.add(f.words[0].word)
                word_filters[f.words[0].word] += 1
                l_interp += 1
        prev = per_layer.get(run.layer, {"filters": 0, "interpretable": 0, "dead": 0, "top1": 0, "topk": 0})
        per_layer[run.layer] = {"filters": prev["filters"] + len(run.filters),
                                "interpretable": prev["interpretable"] + l_interp,
                                "dead": prev["dead"] + l_dead, "top1": len(l1), "topk": len(lk)}
        filters += len(run.filters)
        interpretable += l_interp
        dead += l_dead
        top1 |= l1
        topk |= lk
    model = runs[0].model if runs else ""
    return ModelInventory(name, model, tuple(dict.fromkeys(r.layer for r in runs)), filters, interpretable,
                          tuple(sorted(top1)), tuple(sorted(topk)), dict(word_filters.most_common()), per_layer,
                          dead)


@dataclass(frozen=True)
class ModelComparison:
    """Concept inventories of several models, with what they share and what is unique."""

    models: tuple[ModelInventory, ...]
    top_k: int
    min_count: int
    warnings: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)

    def _sets(self, level: str) -> dict[str, set[str]]:
        if level not in ("top1", "topk"):
            raise ValueError(f"unknown level {level!r} (valid: top1, topk)")
        return {m.name: set(getattr(m, f"concepts_{level}")) for m in self.models}

    def shared(self, level: str = "top1") -> list[str]:
        """Concepts every model expresses."""
        sets = list(self._sets(level).values())
        return sorted(set.intersection(*sets)) if sets else []

    def unique(self, level: str = "top1") -> dict[str, list[str]]:
        """Per model, the concepts no other model expresses."""
        sets = self._sets(level)
        return {n: sorted(s - set().union(*(o for m, o in sets.items() if m != n))) for n, s in sets.items()}

    def overlap(self, level: str = "top1") -> dict[str, dict[str, int]]:
        """Concepts shared by each pair of models."""
        sets = self._sets(level)
        return {a: {b: len(sa & sb) for b, sb in sets.items()} for a, sa in sets.items()}

    def to_dict(self) -> dict:
        return {"top_k": self.top_k, "min_count": self.min_count, "warnings": list(self.warnings),
                "settings": self.settings, "models": [m.to_dict() for m in self.models],
                "shared": {lv: self.shared(lv) for lv in ("top1", "topk")},
                "unique": {lv: self.unique(lv) for lv in ("top1", "topk")},
                "overlap": {lv: self.overlap(lv) for lv in ("top1", "topk")}}

    def to_csv(self) -> str:
        """One row per model and layer, then one per model over all its layers."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["name", "model", "layer", "filters", "dead", "interpretable", "concepts_top1",
                    f"concepts_top{self.top_k}", "unique_top1", f"unique_top{self.top_k}"])
        u1, uk = self.unique("top1"), self.unique("topk")
        for m in self.models:
            for layer, c in m.per_layer.items():
                w.writerow([m.name, m.model, layer, c["filters"], c["dead"], c["interpretable"], c["top1"], c["topk"],
                            "", ""])
            w.writerow([m.name, m.model, "all", m.filters, m.dead, m.interpretable, len(m.concepts_top1),
                        len(m.concepts_topk), len(u1[m.name]), len(uk[m.name])])
        return buf.getvalue()

    def to_markdown(self, show: int = 40) -> str:
        """Counts per model and layer, shared and unique concepts."""
        k = self.top_k
        lines = ["# Concepts the models' filters express", "",
                 f"A word counts for a filter when at least {self.min_count} of its top images chose it; "
                 f"concepts are the distinct counted words at top-1 and within the top {k}.", ""]
        for wmsg in self.warnings:
            lines.append(f"> warning: {wmsg}")
        if self.warnings:
            lines.append("")
        u1, uk = self.unique("top1"), self.unique("topk")
        lines += [f"| model | layer | filters | dead | interpretable | concepts (top-1) | concepts (top-{k}) | "
                  f"unique (top-1) | unique (top-{k}) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in self.models:
            if len(m.per_layer) > 1:
                for layer, c in m.per_layer.items():
                    lines.append(f"| {m.name} | {layer} | {c['filters']} | {c['dead']} | {c['interpretable']} | "
                                 f"{c['top1']} | {c['topk']} | | |")
            layer = "all" if len(m.per_layer) > 1 else m.layers[0]
            lines.append(f"| **{m.name}** | {layer} | {m.filters} | {m.dead} | {m.interpretable} | "
                         f"{len(m.concepts_top1)} | {len(m.concepts_topk)} | {len(u1[m.name])} | {len(uk[m.name])} |")
        for level, title in (("top1", "top-1"), ("topk", f"within top {k}")):
            shared = self.shared(level)
            lines += ["", f"## Concepts ({title}) shared by all {len(self.models)} models: {len(shared)}", "",
                      _words(shared, show)]
            for name, words in self.unique(level).items():
                lines += ["", f"### Only {name} ({title}): {len(words)}", "", _words(words, show)]
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path, figure: bool = True) -> list[Path]:
        """Writes ``models.json``, ``models.csv``, ``models.md`` and ``models.png``."""
        directory = Path(directory)
        paths = [write_text_atomic(directory / "models.json", json.dumps(self.to_dict(), indent=1)),
                 write_text_atomic(directory / "models.csv", self.to_csv()),
                 write_text_atomic(directory / "models.md", self.to_markdown())]
        if figure:
            from lavise.report.comparison import plot_model_comparison

            paths.append(plot_model_comparison(self, directory / "models.png"))
        return paths


def _words(words: Sequence[str], show: int) -> str:
    if not words:
        return "(none)"
    return ", ".join(words[:show]) + (f", ... ({len(words) - show} more)" if len(words) > show else "")


def compare_models(
    explanations: Sequence[Explanations | str | Path],
    names: Sequence[str] | None = None,
    *,
    top_k: int = 3,
    min_count: int = 2,
    strict: bool = False,
) -> ModelComparison:
    """Compares the concept inventories of models from their explanations.

    Args:
        explanations: Explanations (or their JSON files/folders); several of one model
            (same name) merge into one inventory with a row per layer.
        names: A label per entry (default: the model id; entries of the same model and
            layer get their folder name instead, e.g. pretrained vs random weights).
        top_k: Words per filter counted for "within top k".
        min_count: A word counts when at least this many of a filter's top images chose it.
        strict: Raise instead of warning when the runs were explained with different
            settings (thresholds, vocabularies, word spaces, p, s, x, method, images).

    Raises:
        ValueError: Fewer than two models, names that do not fit, or (``strict``)
            differing settings.
    """
    runs: list[Explanations] = []
    sources: list[str] = []
    for e in explanations:
        if isinstance(e, Explanations):
            runs.append(e)
            sources.append(e.model)
        else:
            runs.append(Explanations.load(e))
            p = Path(e)
            sources.append((p if p.is_dir() else p.parent).name)
    if names is not None:
        names = list(names)
        if len(names) != len(runs):
            raise ValueError(f"{len(names)} names for {len(runs)} explanation files")
    else:
        keys = Counter((r.model, r.layer) for r in runs)
        names = [src if keys[(r.model, r.layer)] > 1 else r.model for r, src in zip(runs, sources)]
        if len(set(zip(names, (r.layer for r in runs)))) < len(runs):
            raise ValueError("two explanation files have the same model, layer and folder name; pass --names")
    by_name: dict[str, list[Explanations]] = {}
    for n, r in zip(names, runs):
        by_name.setdefault(n, []).append(r)
    if len(by_name) < 2:
        raise ValueError(f"comparing models needs at least two models, got {len(by_name)} ({', '.join(by_name)})")
    warnings = []
    for key, what in _MUST_AGREE.items():
        values = {n: (r.settings.get(key) if key not in ("method", "explainer") else getattr(r, key))
                  for n, r in zip(names, runs)}
        if len({json.dumps(v) for v in values.values()}) > 1:
            msg = f"models explained with different {what}: " + ", ".join(f"{n} {v}" for n, v in values.items())
            if strict:
                raise ValueError(msg)
            logger.warning("%s; concept counts are not comparable", msg)
            warnings.append(msg)
    models = tuple(concept_inventory(n, rs, top_k, min_count) for n, rs in by_name.items())
    for m in models:
        if m.dead:
            msg = f"{m.name}: {m.dead} of {m.filters} filters never fire (T_u <= 0) and express no concept"
            logger.warning(msg)
            warnings.append(msg)
    settings = {"runs": [{"name": n, "model": r.model, "layer": r.layer, "method": r.method,
                          "explainer": r.explainer, **r.settings} for n, r in zip(names, runs)]}
    return ModelComparison(models, top_k, min_count, tuple(warnings), settings)
