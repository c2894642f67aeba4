#!/usr/bin/env python
"""Which novel concepts an explainer names, per concept and per explainer kind (analysis).

Trains the explainer of a ``scripts/sweeps.py`` role (``dev``: COCO instances only;
``ade``: COCO + VOC), explains the filters with ground truth on the role's target (or,
with ``--split``, another split of it: the development explainer on coco-panoptic
val2017 is the "Novel concepts" table of docs/results.md) and prints, for the explainer
kinds ``trained``, ``conse`` and ``trained+conse``: recall@10 on novel concepts, how many
filters have each novel concept, how many of them name it in their top 10 and with which
words. ``--concept NAME`` adds the recall without that concept, and the images that
occur most often among the top images of its filters. Nothing here chooses a setting.

Usage:
    python scripts/novel_breakdown.py --role dev                    # coco-panoptic train2017
    python scripts/novel_breakdown.py --role dev --split val2017 --concept bridge
    python scripts/novel_breakdown.py --role ade --concept animal --ranking hypernyms
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import lavise
from lavise.api import features_of, filter_stats, open_dataset
from lavise.evaluate import compute_ground_truth, known_concepts
from lavise.explain import explain_filters
from lavise.metrics import concept_match_words, novel_concepts, score_method
from lavise.vocabulary import load_vocabulary
from lavise.words import list_word_rankings
from sweeps import refs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["dev", "ade", "eval"], default="dev")
    ap.add_argument("--split", help="another split of the role's target (default: the role's)")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--concept", help="a novel concept to break down further")
    ap.add_argument("--ranking", choices=list_word_rankings(), default="votes")
    ap.add_argument("--top", type=int, default=20, help="concepts listed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    train_refs, exclude, target, split = refs(args.role, args.shared)
    split = args.split or split
    config = lavise.Config(progress=False, ranking=args.ranking)
    exp = lavise.train(None, train_refs, None, config=config, exclude=exclude)
    dataset = open_dataset(target, split, exp.model)
    store = features_of(exp.model, exp.layer, dataset, config)
    stats = filter_stats(store, config)
    gt = compute_ground_truth(store, dataset, stats, progress=False)
    filters = gt.filters_with_ground_truth
    gts = [list(gt.per_filter[u]) for u in filters]
    novel = novel_concepts({c for g in gts for c in g}, known_concepts(exp))
    with_novel = [i for i, g in enumerate(gts) if set(g) & novel]
    per_concept = Counter(c for i in with_novel for c in set(gts[i]) & novel)
    print(f"# {target} {split}, role {args.role}, ranking {args.ranking}: {len(filters)} filters with ground "
          f"truth, {len(with_novel)} with one of {len(per_concept)} novel concepts")
    print("filters per novel concept:", ", ".join(f"{c} {n}" for c, n in per_concept.most_common(args.top)))
    vocabulary = load_vocabulary(config.vocabulary, exp.word_space, config.vocabulary_size, concepts=exp.split.concepts)
    top = min(config.top_images, len(store.valid_indices()))
    for kind in ("trained", "conse", "trained+conse"):
        res = explain_filters(exp.with_kind(kind), store, stats, vocabulary, filters=filters, method=config.method,
                              top=top, s=config.s, x=10, ranking=args.ranking, progress=False, display=0)
        words = res.words()
        scores = score_method(kind, words, gts, novel=novel)
        hits, hit_words, said = Counter(), Counter(), Counter()
        for i in with_novel:
            said.update(words[i][:10])
            for c in set(gts[i]) & novel:
                matched = concept_match_words(c) & set(words[i][:10])
                if matched:
                    hits[c] += 1
                    hit_words.update(matched)
        line = f"\n## {kind}: recall@10 {scores.recall[10]:.3f}, novel {scores.recall_novel[10]:.3f}"
        if args.concept:
            rest = novel - {args.concept}
            n_rest = sum(1 for g in gts if set(g) & rest)
            without = score_method(kind, words, gts, novel=rest).recall_novel if n_rest else None
            line += f", novel without {args.concept} {(without or {}).get(10, float('nan')):.3f} ({n_rest} filters)"
        print(line)
        print("filters naming a novel concept, per concept:", ", ".join(f"{c} {n}" for c, n in hits.most_common()) or "none")
        print("words that hit:", ", ".join(f"{w} {n}" for w, n in hit_words.most_common()) or "none")
        print("words said most to filters with a novel concept:",
              ", ".join(f"{w} {n}" for w, n in said.most_common(args.top)))
    if args.concept:
        rows = [i for i, g in enumerate(gts) if args.concept in g]
        images = Counter(Path(dataset.image_paths[int(r)]).name
                         for i in rows for r in stats.top_images[filters[i], :top].tolist())
        print(f"\n{len(rows)} filters have {args.concept!r}; images most often among their {top} top images:",
              ", ".join(f"{name} {n}" for name, n in images.most_common(8)))


if __name__ == "__main__":
    main()
