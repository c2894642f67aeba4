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
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import lavise
from lavise.evaluate import evaluate

SWEEPS = ("pooling", "kinds", "vocabulary", "vocabulary-files", "p", "s", "seen")


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["dev", "eval", "ade"], default="dev")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--only", default=",".join(SWEEPS))
    ap.add_argument("--cache-dir")
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
    one = (base.method,)
    methods = ("attention", "projection", "activation", "original")
    print(f"# sweeps, role {args.role}: train on {len(train_refs)} reference sets, evaluate on {target} {split}\n")
    t0 = time.time()

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
