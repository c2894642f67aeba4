"""Sweeps over lavise's settings on the shared data, printed as Markdown tables.

Two roles, so that defaults are never tuned on the evaluation split:

* ``--role dev`` (used to CHOOSE defaults): the explainer is trained on the instance
  annotations of coco-mini and coco-tiny (train2017 + val2017) and evaluated on
  coco-panoptic **train2017**; coco-panoptic val2017 is excluded from everything.
* ``--role eval`` (REPORTED, never used for choices): trained on every annotated image
  not in coco-panoptic val2017 (COCO, ADE20K, Pascal VOC), evaluated on coco-panoptic
  **val2017**.
* ``--role ade`` (REPORTED, never used for choices): trained on every annotated image
  not in the ADE20K sample (COCO, Pascal VOC), evaluated on **ADE20K** validation
  (150 things-and-stuff classes).

Usage:
    python scripts/sweeps.py --role dev --shared ../shared/data [--only kinds,vocabulary,...]
    python scripts/sweeps.py --role dev --only vocabulary-files --vocabulary-files old.txt,new.tsv
    python scripts/sweeps.py --role dev --only levers      # issue 11's ablation table
    python scripts/sweeps.py --role dev --only levers --levers word-space \
        --word-spaces word2vec-300,word2vec-300-filled,knn=runs/word2vec-300-filled-knn.npz

The ``levers`` sweep computes the target's ground truth once per quantile and scores
each variant (a training setting, a combination setting, a ranking rule: activation
weights and the registered word rankings of :mod:`lavise.words`, p, T_u's quantile)
for the explainer kinds ``trained`` and ``trained+conse``, with recall on unseen
concepts (held out of training) and on *novel* ones (annotated by no training
reference: on the development protocol, COCO's stuff categories). Its ``word-space``
lever trains one explainer per word space of ``--word-spaces`` and adds, per space,
coverage counts and how often words mapped from GloVe (absent from ``word2vec-300``)
are said, against their share of the vocabulary (hubness).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import lavise
from lavise.evaluate import evaluate

SWEEPS = ("pooling", "kinds", "vocabulary", "vocabulary-files", "p", "s", "seen")
LEVERS = ("base", "margin", "negatives", "combination", "ranking", "p-quantile", "captions", "augment", "all-data",
          "word-space")


def refs(role: str, shared: Path) -> tuple[list[str], list[str], str, str]:
    """``(training references, excluded references, target, target split)`` of a role."""
    pan, mini, tiny = shared / "coco-panoptic", shared / "coco-mini", shared / "coco-tiny"
    instances = [f"coco-instances:{d}@{s}" for d in (mini, tiny) for s in ("train2017", "val2017")]
    ade = f"ade20k:{shared / 'ade20k-sample'}@validation"
    voc = f"voc:{shared / 'voc2012-sample'}@trainval"
    if role == "dev":
        return instances, [f"coco-panoptic:{pan}@val2017", f"coco-panoptic:{pan}@train2017"], f"coco-panoptic:{pan}", "train2017"
    if role == "ade":
        coco = [f"coco-panoptic:{pan}@train2017", f"coco-panoptic:{pan}@val2017", *instances]
        return [*coco, voc], [ade], f"ade20k:{shared / 'ade20k-sample'}", "validation"
    return [f"coco-panoptic:{pan}@train2017", *instances, ade, voc], [f"coco-panoptic:{pan}@val2017"], f"coco-panoptic:{pan}", "val2017"


def row(label: str, report, methods=("attention",)) -> list[str]:
    out = []
    for m in methods:
        r = report.row(m)
        unseen = r.recall_unseen or {}
        out.append(f"| {label} | {m} | " + " | ".join(f"{r.recall[k]:.3f}" for k in (5, 10, 20))
                   + f" | {unseen.get(10, float('nan')):.3f} | {r.precision_at_1:.3f} |")
    return out


HEADER = ["| setting | method | R@5 | R@10 | R@20 | R@10 unseen | P@1 |", "|---|---|---:|---:|---:|---:|---:|"]


class Bench:
    """Ground truth of one target split, computed once per quantile, and a fast scorer."""

    def __init__(self, target: str, split: str, config) -> None:
        from lavise.api import open_dataset, prepare_model

        self.model = prepare_model(None, config)
        self.dataset = open_dataset(target, split, self.model)
        self.config = config
        self._gt: dict = {}
        self._voc: dict = {}

    def ground_truth(self, exp, config):
        from lavise.api import features_of, filter_stats
        from lavise.evaluate import compute_ground_truth

        key = (exp.layer, config.quantile)
        if key not in self._gt:
            store = features_of(exp.model, exp.layer, self.dataset, config)
            stats = filter_stats(store, config)
            gt = compute_ground_truth(store, self.dataset, stats, progress=False)
            self._gt[key] = (store, stats, gt)
        return self._gt[key]

    def score(self, label, exp, config, method="activation", weight_by_activation=False, ranking=None):
        from lavise.evaluate import known_concepts
        from lavise.explain import explain_filters
        from lavise.metrics import novel_concepts, score_method
        from lavise.vocabulary import load_vocabulary

        store, stats, gt = self.ground_truth(exp, config)
        filters = gt.filters_with_ground_truth
        vkey = (config.vocabulary, config.vocabulary_size, exp.word_space.name)
        if vkey not in self._voc:
            self._voc[vkey] = load_vocabulary(config.vocabulary, exp.word_space, config.vocabulary_size,
                                              concepts=exp.split.concepts)
        res = explain_filters(exp, store, stats, self._voc[vkey], filters=filters, method=method,
                              top=min(config.top_images, len(store.valid_indices())), s=config.s, x=20,
                              weight_by_activation=weight_by_activation, progress=False,
                              ranking=ranking or config.ranking)
        gts = [list(gt.per_filter[u]) for u in filters]
        concepts = set(c for g in gts for c in g)
        novel = novel_concepts(concepts, known_concepts(exp))
        strict = novel_concepts(concepts, known_concepts(exp, captions=True))
        r = score_method(label, res.words(), gts, set(exp.split.unseen), novel=novel)
        self.last = (res.words(), self._voc[vkey], gts)
        never = score_method(label, res.words(), gts, novel=strict).recall_novel if strict != novel else r.recall_novel
        return r, never


LEVER_HEADER = ["| lever | setting | kind | R@5 | R@10 | R@20 | R@10 unseen | R@10 novel | R@10 never named | P@1 |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]


def lever_row(lever: str, setting: str, kind: str, scores) -> str:
    r, never = scores
    unseen = (r.recall_unseen or {}).get(10, float("nan"))
    novel = (r.recall_novel or {}).get(10, float("nan"))
    strict = (never or {}).get(10, float("nan"))
    return (f"| {lever} | {setting} | {kind} | " + " | ".join(f"{r.recall[k]:.3f}" for k in (5, 10, 20))
            + f" | {unseen:.3f} | {novel:.3f} | {strict:.3f} | {r.precision_at_1:.3f} |")


def word_space_spec(spec: str) -> str:
    """A word-space name for ``--word-spaces``: a registered name, or ``NAME=FILE.npz`` (a
    filled space built by ``scripts/build_filled_word_space.py``), registered here."""
    from lavise.wordspace import list_word_spaces, load_filled_word_space, register_word_space

    name, _, path = spec.partition("=")
    if path and name not in list_word_spaces():
        register_word_space(name, lambda: load_filled_word_space(path, name))
    return name


def coverage(space_name: str, shared: Path) -> str:
    """Coverage counts of a word space: default-vocabulary words, COCO categories with a
    vector, and ADE20K classes that no COCO / VOC category names (novel) that a
    vocabulary word can say."""
    import json

    from lavise.datasets.ade20k import read_object_info
    from lavise.datasets.voc import VOC_CLASSES
    from lavise.metrics import concept_match_words, normalise_word, novel_concepts
    from lavise.vocabulary import load_vocabulary
    from lavise.wordspace import load_word_space

    space = load_word_space(space_name)
    voc = load_vocabulary("default", space)
    said = {normalise_word(w) for w in voc.words}
    coco: dict[str, None] = {}
    for f in sorted(shared.glob("coco-*/annotations/*_*2017.json")):
        if f.name.startswith(("instances", "panoptic")):
            coco.update(dict.fromkeys(c["name"] for c in json.loads(f.read_text())["categories"]))
    inst = json.loads(next(shared.glob("coco-mini/annotations/instances_*2017.json")).read_text())["categories"]
    ade = read_object_info(shared / "ade20k-sample" / "objectInfo150.txt")
    novel = sorted(novel_concepts(ade, [*coco, *VOC_CLASSES]))
    sayable = [c for c in novel if not concept_match_words(c).isdisjoint(said)]
    trainable = sum(space.concept_vector(c["name"]) is not None for c in inst)
    panoptic = sum(space.concept_vector(c) is not None for c in coco)
    return (f"{space_name}: {len(space)} words; default vocabulary {len(voc)} words; COCO instance categories "
            f"with a vector {trainable}/{len(inst)}, COCO (all) {panoptic}/{len(coco)}; ADE20K novel classes "
            f"sayable {len(sayable)}/{len(novel)} (not: {', '.join(c for c in novel if c not in sayable)})")


def levers(base, train_refs, exclude, target, split, only, shared: Path, kinds=("trained", "trained+conse"),
           word_spaces: tuple[str, ...] = ()) -> None:
    """Issue 11's levers on one protocol, one line per (lever, setting, kind)."""
    bench = Bench(target, split, base)
    captions = tuple(str(p) for p in sorted((shared).glob("coco-*/annotations/captions_*2017.json")))

    def train(config, refs=train_refs):
        return lavise.train(bench.model, refs, None, config=config, exclude=exclude)

    def emit(lever, setting, exp, config, only_kinds=kinds, **kw):
        lines = []
        for kind in only_kinds:
            e = exp.with_kind(kind)
            lines.append(lever_row(lever, setting, kind, bench.score(setting, e, config, **kw)))
        print("\n".join(lines), flush=True)

    print("\n".join(LEVER_HEADER), flush=True)
    exp = train(base) if any(name != "word-space" for name in only) else None

    def lever_base():
        emit("none", "defaults", exp, base)

    def lever_margin():
        for m in (0.5, 0.1):
            cfg = base.replace(margin=m)
            emit("loss margin", f"margin {m}", train(cfg), cfg)

    def lever_negatives():
        cfg = base.replace(loss_negatives="vocabulary")
        emit("loss negatives", "+ 256 vocabulary words per step", train(cfg), cfg)
        cfg = base.replace(loss_negatives="hardest")
        emit("loss negatives", "hardest only", train(cfg), cfg)

    def lever_combination():
        for w in (0.5, 1.5, 2.0):
            emit("trained+ConSE", f"ConSE weight {w}", exp.with_combination(conse_weight=w), base,
                 only_kinds=("trained+conse",))
        for t in (3, 20):
            emit("trained+ConSE", f"ConSE top T={t}", exp.with_combination(conse_top=t), base,
                 only_kinds=("trained+conse",))

    def lever_ranking():
        from lavise.words import get_word_ranking, list_word_rankings

        emit("word ranking", "activation-weighted votes", exp, base, weight_by_activation=True)
        for name in list_word_rankings():
            if name != base.ranking:
                rule = get_word_ranking(name)
                fields = {k: v for k, v in rule.to_dict().items() if k != "name" and v != getattr(type(rule)(), k)}
                emit("word ranking", f"{name} ({', '.join(f'{k}={v}' for k, v in fields.items())})", exp, base,
                     ranking=rule)

    def lever_p_quantile():
        for q, p in ((0.005, 10), (0.01, 5), (0.01, 10), (0.02, 5), (0.02, 10)):
            cfg = base.replace(quantile=q, top_images=p)
            emit("p, T_u quantile", f"quantile {q}, p={p}", exp, cfg)

    def lever_captions():
        cfg = base.replace(captions=captions)
        emit("captions", "caption nouns (>= 2 of 5 captions)", train(cfg), cfg)

    def lever_augment():
        for views in (("hflip",), ("hflip", "zoom")):
            cfg = base.replace(augment=views)
            emit("augmented pairs", "+".join(views), train(cfg), cfg)

    def lever_all_data():
        gender = f"folder:{shared / 'coco-gender' / 'val2017'}"
        cfg = base.replace(captions=captions)
        emit("all data", "+ coco-gender (captions only)", train(cfg, [*train_refs, gender]), cfg)

    def lever_word_space():
        from lavise.metrics import concept_match_words, normalise_word
        from lavise.wordspace import WORD2VEC_300, load_word_space

        from lavise.metrics import score_method

        real = load_word_space(WORD2VEC_300).index
        notes = []
        kept = {}
        for spec in word_spaces:
            name = word_space_spec(spec)
            cfg = base.replace(word_space=name)
            e = train(cfg)
            for kind in kinds:
                r = bench.score(name, e.with_kind(kind), cfg)
                print(lever_row("word space", name, kind, r), flush=True)
                words, voc, gts = bench.last
                kept[(name, kind)] = (words, gts, set(e.split.unseen))
                mapped = {w for w in voc.words if w not in real}
                top = [w for ws in words for w in ws[:10]]
                hits = [w for ws, g in zip(words, gts) for w in ws[:10]
                        if any(normalise_word(w) in concept_match_words(c) for c in g)]
                share = lambda ws: sum(w in mapped for w in ws) / max(1, len(ws))  # noqa: E731
                notes.append(f"{name} {kind}: mapped words are {share(voc.words):.3f} of the vocabulary "
                             f"({len(mapped)} of {len(voc)}), {share(top):.3f} of the top-10 words said "
                             f"({len(top)}), {share(hits):.3f} of the top-10 words that hit ({len(hits)}); "
                             f"distinct mapped words said: {len(set(top) & mapped)}")
            notes.append(coverage(name, shared))
        # Spaces with other trainable concepts sample other unseen splits: compare on the
        # concepts that every space held out.
        common = set.intersection(*(u for _, _, u in kept.values()))
        notes.append(f"R@10 on the {len(common)} concepts unseen by every space ({', '.join(sorted(common))}): "
                     + ", ".join(f"{n} {k} {score_method(n, w, g, common).recall_unseen[10]:.3f}"
                                 for (n, k), (w, g, _) in kept.items()))
        print("\n" + "\n".join(notes), flush=True)

    table = {"base": lever_base, "margin": lever_margin, "negatives": lever_negatives,
             "combination": lever_combination, "ranking": lever_ranking, "p-quantile": lever_p_quantile,
             "captions": lever_captions, "augment": lever_augment, "all-data": lever_all_data,
             "word-space": lever_word_space}
    for name in only:
        table[name]()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["dev", "eval", "ade"], default="dev")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--only", default=",".join(SWEEPS), help=f"sweeps: {', '.join(SWEEPS)}, levers")
    ap.add_argument("--levers", default=",".join(LEVERS), help=f"with --only levers: {', '.join(LEVERS)}")
    ap.add_argument("--cache-dir")
    ap.add_argument("--word-spaces", default="word2vec-300,word2vec-300-filled",
                    help="with --levers word-space: registered names or NAME=FILE.npz (filled spaces)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a Config field of the base setting (e.g. loss_negatives=vocabulary)")
    ap.add_argument("--pooling", default=None, help="pooling for the sweeps after the pooling sweep")
    ap.add_argument("--method", default=None, help="masking method for the sweeps after the pooling sweep")
    ap.add_argument("--vocabulary-files", default="",
                    help="comma-separated word lists compared by the vocabulary-files sweep (default settings)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    only = args.only.split(",")
    train_refs, exclude, target, split = refs(args.role, args.shared)
    base = lavise.Config(progress=False, cache_dir=args.cache_dir, **({"pooling": args.pooling} if args.pooling else {}))
    if args.method:
        base = base.replace(method=args.method)
    for item in args.set:
        key, _, value = item.partition("=")
        kind = type(getattr(base, key))
        base = base.replace(**{key: value if kind in (str, type(None)) else kind(value)})
    one = (base.method,)
    methods = ("attention", "projection", "activation", "original")
    print(f"# sweeps, role {args.role}: train on {len(train_refs)} reference sets, evaluate on {target} {split}\n")
    t0 = time.time()
    if "levers" in only:
        print(f"## levers (method {base.method}, pooling {base.pooling})\n")
        levers(base, train_refs, exclude, target, split, args.levers.split(","), args.shared,
               word_spaces=tuple(args.word_spaces.split(",")))
        print(f"\n({time.time() - t0:.0f} s)")
        return

    def trained(config):
        return lavise.train(None, train_refs, None, config=config, exclude=exclude)

    def ev(exp, config, **kw):
        return evaluate(exp, target, split, config=config, baselines=False, **kw)

    if "pooling" in only:
        print("## pooling x explainer kind x masking method\n")
        lines = list(HEADER)
        for pooling in ("mean", "rescaled"):
            cfg = base.replace(pooling=pooling)
            exp = trained(cfg)
            for kind in ("trained", "conse", "trained+conse"):
                lines += row(f"{pooling}, {kind}", ev(exp.with_kind(kind), cfg, methods=methods), methods)
        print("\n".join(lines) + "\n", flush=True)
    exp = trained(base)
    if "kinds" in only:
        print(f"## explainer kind (pooling {base.pooling}, method {base.method})\n")
        lines = list(HEADER)
        for kind in ("trained", "conse", "trained+conse"):
            lines += row(kind, ev(exp.with_kind(kind), base, methods=one), one)
        print("\n".join(lines) + "\n", flush=True)
    if "vocabulary" in only:
        print(f"## vocabulary (method {base.method})\n")
        lines = list(HEADER)
        for voc, size in (("concepts", None), ("default", 300), ("default", 1000), ("default", 3000),
                          ("default", 10000), ("default", None), ("glove", 20000), ("glove", 100000)):
            cfg = base.replace(vocabulary=voc, vocabulary_size=size)
            lines += row(f"{voc} {size or 'all'}", ev(exp, cfg, methods=one), one)
        print("\n".join(lines) + "\n", flush=True)
    if "vocabulary-files" in only and args.vocabulary_files:
        print(f"## vocabulary files (method {base.method}, p {base.top_images}, s {base.s})\n")
        lines = list(HEADER)
        for path in args.vocabulary_files.split(","):
            cfg = base.replace(vocabulary=path)
            report = ev(exp, cfg, methods=one)
            lines += row(f"{Path(path).name} ({report.settings['vocabulary_size']} words)", report, one)
        print("\n".join(lines) + "\n", flush=True)
    if "p" in only:
        print("## p (top images per filter)\n")
        lines = list(HEADER)
        for p in (5, 10, 25, 50):
            lines += row(f"p={p}", ev(exp, base.replace(top_images=p), methods=one), one)
        print("\n".join(lines) + "\n", flush=True)
    if "s" in only:
        print("## s (nearest words per image)\n")
        lines = list(HEADER)
        for s in (1, 3, 5, 10, 25):
            lines += row(f"s={s}", ev(exp, base.replace(s=s), methods=one), one)
        print("\n".join(lines) + "\n", flush=True)
    if "seen" in only:
        print("## seen fraction of categories (paper Figure 7), explainer kind `trained`\n")
        lines = list(HEADER)
        for frac in (0.3, 0.5, 0.7, 0.9):
            cfg = base.replace(seen_fraction=frac, explainer="trained")
            lines += row(f"seen {frac}", ev(trained(cfg), cfg, methods=one), one)
        print("\n".join(lines) + "\n", flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
