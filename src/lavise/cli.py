"""The ``lavise`` command: a thin layer over the Python API.

Every choice list (models, masking methods, dataset formats, word spaces,
vocabularies, explainer kinds) comes from the registries in code.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("lavise")

EPILOG = "Docs: README.md. Errors are one line on stderr with exit status 2."


def _config_from(args: argparse.Namespace) -> Any:
    from lavise.config import Config

    names = {f.name for f in dataclasses.fields(Config)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if getattr(args, "quiet", False):
        values["progress"] = False
    return Config(**values)


def _add_model(p: argparse.ArgumentParser, layer: bool = True) -> None:
    p.add_argument("--model", help="efficientnet-lite0 (default) or a torchvision model name; see `lavise list models`")
    p.add_argument("--weights", help="torchvision weights enum value (e.g. ResNet18_Weights.IMAGENET1K_V1) or a local state_dict / TorchScript file")
    p.add_argument("--allow-pickle", action="store_true", default=None, help="allow loading a whole pickled model (runs code from the file)")
    if layer:
        p.add_argument("--layer", help="dotted module path (default: the last convolutional stage); see `lavise layers MODEL`")


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--image-batch-size", type=int, help="images per forward pass (default: 1 on a CPU, 32 on a GPU)")
    p.add_argument("--num-workers", "--workers", type=int, dest="num_workers", help="DataLoader workers (default: 0 on CPU, up to 8 on a GPU)")
    p.add_argument("--cache-dir", help="feature cache root (default $LAVISE_CACHE_DIR or ~/.cache/lavise)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")


def _add_words(p: argparse.ArgumentParser) -> None:
    from lavise.explainer import EXPLAINER_KINDS
    from lavise.masking import list_masking_methods
    from lavise.words import list_word_rankings

    p.add_argument("--vocabulary", help="default, glove, concepts, or a word-list file")
    p.add_argument("--vocabulary-size", type=int, help="keep the N most common vocabulary words")
    p.add_argument("--allow-offensive", action="store_true", default=None,
                   help="keep slurs and obscenities (removed from every vocabulary by default)")
    p.add_argument("--method", choices=list_masking_methods(),
                   help="masking method (default activation, chosen by measurement)")
    p.add_argument("-p", "--top-images", type=int, dest="top_images", help="p, top-activated images per filter (default 5)")
    p.add_argument("-s", type=int, help="nearest words per image (default 3)")
    p.add_argument("-x", type=int, help="words kept per filter (default 10)")
    p.add_argument("--ranking", choices=list_word_rankings(),
                   help="how words are ranked across a filter's top images (default votes, the paper's rule)")
    p.add_argument("--quantile", type=float, help="fraction of activations above T_u (default 0.005)")
    p.add_argument("--filters", help="filters to explain, e.g. 0-99,120 (default: all)")
    p.add_argument("--explainer", choices=EXPLAINER_KINDS, help="override the checkpoint's explainer kind")
    p.add_argument("--allow", type=Path, help="file of words explanations may use (one per line)")
    p.add_argument("--block", type=Path, help="file of words explanations may not use")


def build_parser() -> argparse.ArgumentParser:
    from lavise.augment import AUGMENT_VIEWS
    from lavise.datasets import list_dataset_formats
    from lavise.explainer import EXPLAINER_KINDS, LOSS_NEGATIVES, POOLINGS

    parser = argparse.ArgumentParser(
        prog="lavise",
        description="Explain what every filter of a CNN has learned, in words (LaViSE, CVPR 2022).",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train on the bundled COCO sample and explain the last layer of EfficientNet-Lite0")
    p.add_argument("--sample", type=Path, help="sample folder (default: sample/coco-panoptic of the repository)")
    p.add_argument("--out", type=Path, default=Path("lavise-out"), help="output folder (default lavise-out)")
    p.add_argument("--show", type=int, default=8, help="filters to print")
    _add_runtime(p)

    p = sub.add_parser("layers", help="list the layers of a model with channel counts and map sizes")
    p.add_argument("model", nargs="?", default="efficientnet-lite0")
    p.add_argument("--weights")
    p.add_argument("--allow-pickle", action="store_true", default=None)
    p.add_argument("--all", action="store_true", help="also list shared modules that cannot be hooked")
    p.add_argument("-v", "--verbose", action="count", default=0)

    p = sub.add_parser("list", help="list the registered choices")
    p.add_argument("what", choices=["models", "methods", "formats", "word-spaces", "vocabularies", "explainers",
                                    "rankings"])
    p.add_argument("-v", "--verbose", action="count", default=0)

    p = sub.add_parser("train", help="train an explainer for one layer on annotated reference data")
    _add_model(p)
    p.add_argument("--reference", action="append", required=True,
                   help=f"FORMAT:PATH, repeatable; formats: {', '.join(list_dataset_formats())}")
    p.add_argument("--split", help="split of the reference data, e.g. train2017 (FORMAT:PATH@SPLIT overrides it)")
    p.add_argument("--exclude", action="append",
                   help="FORMAT:PATH[@SPLIT] whose images are left out of training (e.g. the evaluation split)")
    p.add_argument("--embeddings", dest="word_space", help="word space: word2vec-300-filled (default), word2vec-300, glove-6b-50d, a GloVe/word2vec text file or a word2vec binary file")
    p.add_argument("--explainer", choices=EXPLAINER_KINDS, help="explainer kind (default trained+conse)")
    p.add_argument("--seen-fraction", type=float, help="share of categories that supervise training (default 0.7)")
    p.add_argument("--pooling", choices=POOLINGS, help="pooling of masked features: mean (paper, default) or rescaled")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--margin", type=float, help="hinge margin of the rank loss (default 1)")
    p.add_argument("--loss-negatives", choices=LOSS_NEGATIVES,
                   help="negatives of the rank loss: all (eq. 1, default), hardest, vocabulary")
    p.add_argument("--augment", action="append", choices=list(AUGMENT_VIEWS),
                   help="augmented view of every reference image whose pairs join training (repeatable; cached)")
    p.add_argument("--captions", action="append",
                   help="COCO captions JSON: its nouns become image-level targets (repeatable)")
    p.add_argument("--conse-weight", type=float, help="weight of ConSE against the trained head (default 1)")
    p.add_argument("--conse-top", type=int, help="T, the top classes ConSE averages (default 10)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    _add_runtime(p)

    p = sub.add_parser("extract", help="fill the feature cache of a dataset (one shard per torchrun process)")
    _add_model(p)
    p.add_argument("--images", required=True, action="append", help="folder of images or FORMAT:PATH[@SPLIT], repeatable")
    p.add_argument("--split")
    _add_runtime(p)

    p = sub.add_parser("explain", help="explain every filter of a checkpoint's layer in words")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--images", required=True, help="folder of images or FORMAT:PATH")
    p.add_argument("--split", help="split, when --images is a dataset spec")
    p.add_argument("--weights", help="local weights of the checkpoint's model, if it was trained on such")
    p.add_argument("--allow-pickle", action="store_true", default=None)
    p.add_argument("--weight-by-activation", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--show", type=int, default=10, help="filters to print")
    _add_words(p)
    _add_runtime(p)

    _add_evaluate_parser(sub)
    _add_report_parsers(sub)
    _add_comparison_parsers(sub)
    return parser


def _add_report_parsers(sub: Any) -> None:
    p = sub.add_parser("report", help="write a static HTML report of explanations (opens from file://)")
    p.add_argument("--explanations", type=Path, required=True, help="folder of explanations.json (lavise explain --out)")
    p.add_argument("--evaluation", type=Path, help="folder of evaluation.json (lavise evaluate --out): ground truth and IoU")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--rate", type=int, metavar="N", help="also write a blind rating page for N sampled filters")
    p.add_argument("--rate-against", metavar="SOURCE",
                   help="second source of the rating page: netdissect, method:NAME (both need --evaluation) "
                        "or a folder of other explanations (default: netdissect)")
    p.add_argument("--rate-words", type=int, default=5, help="words shown per explanation on the rating page")
    p.add_argument("--seed", type=int, default=0, help="seeds the rating sample and order")
    p.add_argument("--comparison", type=Path,
                   help="folder of groups.json (lavise compare-groups --out): adds groups.html, linked from the index")

    p = sub.add_parser("figure", help="draw the paper's Figure 4 rows (top images + words) as PNG and SVG")
    p.add_argument("--explanations", type=Path, required=True)
    p.add_argument("--filters", required=True, help="filters, one row each, e.g. 938,1174")
    p.add_argument("--out", type=Path, required=True, help="figure file (PNG; an SVG is written beside it)")
    p.add_argument("--images", type=int, default=5, help="top images per row")
    p.add_argument("--words", type=int, default=5, help="words per filter")
    p.add_argument("--evaluation", type=Path, help="also show each filter's NetDissect label from lavise evaluate")

    p = sub.add_parser("ratings", help="human ratings from the rating page")
    rs = p.add_subparsers(dest="ratings_command", required=True)
    q = rs.add_parser("summarize", help="precision, top-1 precision, preference with bootstrap CIs and Krippendorff's alpha")
    q.add_argument("ratings", type=Path, nargs="+", help="raters' downloaded JSON files")
    q.add_argument("--key", type=Path, required=True, help="rate-key.json written beside the rating page")
    q.add_argument("--bootstrap", type=int, default=2000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", type=Path, help="also write OUT.md and OUT.json")
    q.add_argument("--json", action="store_true", help="print JSON instead of Markdown")


def cmd_report(args: argparse.Namespace) -> int:
    from lavise.report import build_report, load_evaluation, load_explanations
    from lavise.report.ratings import rating_source, write_rating_page

    explanations = load_explanations(args.explanations)
    evaluation = load_evaluation(args.evaluation, explanations.layer) if args.evaluation else None
    links = ""
    if args.rate:
        other = rating_source(args.rate_against or "netdissect", explanations, evaluation)
        page, key = write_rating_page(explanations, other, args.out, args.rate, seed=args.seed, words=args.rate_words)
        links = '<a href="rate.html">rating page</a>'
        print(f"rating page: {page.resolve()}\nunblinding key (keep it from the raters): {key.resolve()}")
    if args.comparison:
        from lavise.report.groups_page import load_comparison, write_groups_page

        figure = args.comparison / "groups.png" if args.comparison.is_dir() else args.comparison.with_suffix(".png")
        groups = write_groups_page(load_comparison(args.comparison), args.out,
                                   figure=figure if figure.is_file() else None,
                                   linked={f.filter for f in explanations.filters})
        links += ' <a href="groups.html">group comparison</a>'
        print(f"group comparison page: {groups.resolve()}")
    index = build_report(explanations, args.out, evaluation=evaluation, extra_links=links)
    print(f"report: {index.resolve()}")
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from lavise.explain import parse_filters
    from lavise.report import load_evaluation, load_explanations
    from lavise.report.figures import filter_rows_figure, save_figure

    explanations = load_explanations(args.explanations)
    # Rows in the order given (parse_filters checks the syntax and sorts; keep the user's order).
    wanted = parse_filters(args.filters, 1 << 30)
    given = [int(p) for p in args.filters.split(",") if p.strip() and "-" not in p]
    filters = given if sorted(set(given)) == wanted else wanted
    other = None
    if args.evaluation:
        evaluation = load_evaluation(args.evaluation, explanations.layer)
        other = {u: [ev.best[0]] for u, ev in evaluation.items() if ev.best}
    fig = filter_rows_figure(explanations, filters, images=args.images, words=args.words, other=other)
    for path in save_figure(fig, args.out):
        print(f"wrote {path}")
    return 0


def cmd_ratings(args: argparse.Namespace) -> int:
    from lavise.report.ratings import summarize

    summary = summarize(args.ratings, args.key, bootstrap=args.bootstrap, seed=args.seed)
    print(summary.to_json() if args.json else summary.to_markdown(), end="" if not args.json else "\n")
    if args.out:
        md, js = summary.save(args.out)
        print(f"wrote {md} and {js}")
    return 0


def _add_labels(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--images", type=Path, help="image folder (needed for csv: and captions:)")
    p.add_argument("--split", help="split of a COCO label spec or of the captions (e.g. val2017)")
    p.add_argument("--captions", type=Path, help="COCO captions JSON for captions:gender (default: found next to --images)")
    p.add_argument("--ignore-missing", action="store_true",
                   help=f"go on when the {what} names images that are not in the set, or images lack captions")


def _add_comparison_parsers(sub: Any) -> None:
    from lavise.finetune import INITS

    p = sub.add_parser("finetune", help="fine-tune the target model on image-level labels (weights file with class names)")
    p.add_argument("--model", default="efficientnet-lite0", help="registry name (see `lavise list models`)")
    p.add_argument("--weights", help="start from these weights (default: the model's pretrained ones)")
    p.add_argument("--labels", required=True,
                   help="csv:FILE (image,label), folders:DIR, coco-instances:PATH[@SPLIT], coco-panoptic:PATH[@SPLIT] or captions:gender")
    _add_labels(p, "label file")
    p.add_argument("--train", default="head", help="what trains: head (default), last:N (the last N stages too) or all")
    p.add_argument("--init", choices=INITS, default="pretrained", help="start from pretrained weights or a seeded random initialisation")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the new classifier (trained stages: x0.1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--holdout", type=float, default=0.2, help="share of images held out (stratified, seeded)")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a lower held-out loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.safetensors)")
    _add_runtime(p)

    p = sub.add_parser("compare-groups", help="filters and words tied to groups of images (paper 4.6, Figure 8)")
    p.add_argument("--checkpoint", type=Path, required=True, help="explainer checkpoint of the model and layer to compare with")
    p.add_argument("--groups", required=True, help="csv:FILE (image,group), folders:DIR or captions:gender")
    _add_labels(p, "group file")
    p.add_argument("--explanations", type=Path, help="explanations.json of the same images (default: explain them now)")
    p.add_argument("--weights", help="local weights of the checkpoint's model")
    p.add_argument("--allow-pickle", action="store_true", default=None)
    p.add_argument("--test", choices=["fisher", "z"], default="fisher", help="two-sided test per filter (default Fisher's exact)")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate of the Benjamini-Hochberg q-values")
    p.add_argument("--min-group-size", type=int, default=10, help="smallest group the test accepts")
    p.add_argument("--top", type=int, default=10, help="filters listed per direction")
    p.add_argument("--examples", type=int, default=3, help="example qualified images per group and filter")
    p.add_argument("--out", type=Path, required=True)
    _add_words(p)
    _add_runtime(p)

    p = sub.add_parser("compare-models", help="concepts each model's filters express, shared and unique (paper 4.5.5)")
    p.add_argument("--explanations", type=Path, nargs="+", required=True,
                   help="explanations.json files (or folders holding one), one per model or layer")
    p.add_argument("--names", help="comma-separated labels of the explanation files (default: model and layer)")
    p.add_argument("-k", "--top-k", type=int, default=3, dest="top_k", help="words per filter counted for 'within top k'")
    p.add_argument("--min-count", type=int, default=2,
                   help="a word counts for a filter only when at least this many of its top images chose it")
    p.add_argument("--strict", action="store_true", help="error (not warn) when the runs' settings differ")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("-v", "--verbose", action="count", default=0)


def cmd_finetune(args: argparse.Namespace) -> int:
    from lavise._io import write_text_atomic
    from lavise.finetune import finetune
    from lavise.labels import load_labels

    config = _config_from(args)
    labels = load_labels(args.labels, args.images, split=args.split, captions=args.captions,
                         ignore_missing=args.ignore_missing)
    left = "".join(f"; left out: {len(v)} ({k})" for k, v in labels.left_out.items() if v)
    print(f"{len(labels)} images, {len(labels.class_names)} classes "
          f"({', '.join(f'{k} {v}' for k, v in list(labels.counts().items())[:8])}"
          f"{', ...' if len(labels.class_names) > 8 else ''}){left}")
    result = finetune(
        config.model, labels, weights=config.weights, train=args.train, init=args.init, epochs=args.epochs,
        lr=args.lr, batch_size=args.batch_size, holdout=args.holdout, patience=args.patience, seed=args.seed,
        device=config.resolved_device(), image_batch_size=config.image_batch_size or 8,
        num_workers=config.workers(), progress=config.progress, out=args.out,
    )
    import json

    write_text_atomic(args.out.with_suffix(".json"), json.dumps(result.to_dict(), indent=1))
    print(result.table())
    print(f"held-out accuracy {result.heldout_accuracy:.3f} at epoch {result.best_epoch} "
          f"(majority class: {result.majority_accuracy:.3f}); wrote {result.weights}")
    return 0


def _add_evaluate_parser(sub: Any) -> None:
    from lavise.explainer import EXPLAINER_KINDS
    from lavise.words import list_word_rankings

    p = sub.add_parser("evaluate", help="score explanations against segmentation masks (paper Table 2)")
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="checkpoint folder(s); several give one row per layer (paper Table 3)")
    p.add_argument("--reference", required=True, help="annotated evaluation data, FORMAT:PATH")
    p.add_argument("--split", help="its split, e.g. val2017")
    p.add_argument("--methods", default="attention,projection,activation,original",
                   help="comma-separated masking methods or 'all' (image masking reruns the model per filter)")
    p.add_argument("--train-reference", action="append",
                   help="annotated data disjoint from the evaluation images for the non-oracle baselines "
                        "(default: the checkpoint's training data)")
    p.add_argument("--train-split")
    p.add_argument("--synonyms", action="store_true", help="also score with WordNet synonym matching")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--permutations", type=int, default=1000, help="permutations of the specificity test")
    p.add_argument("--explainer", choices=EXPLAINER_KINDS, help="override the checkpoint's explainer kind")
    p.add_argument("--vocabulary")
    p.add_argument("--vocabulary-size", type=int)
    p.add_argument("--allow-offensive", action="store_true", default=None,
                   help="keep slurs and obscenities (removed from every vocabulary by default)")
    p.add_argument("-p", "--top-images", type=int, dest="top_images")
    p.add_argument("-s", type=int)
    p.add_argument("--quantile", type=float)
    p.add_argument("--ranking", choices=list_word_rankings(),
                   help="how words are ranked across a filter's top images (default votes)")
    p.add_argument("--weights", help="local weights of the checkpoint's model")
    p.add_argument("--out", type=Path, required=True)
    _add_runtime(p)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lavise._io import write_text_atomic
    from lavise.evaluate import evaluate, layers_table

    config = _config_from(args)
    reports = []
    for ckpt in args.checkpoint:
        report = evaluate(
            ckpt, args.reference, args.split, methods=args.methods, config=config,
            synonyms=args.synonyms, baselines=not args.no_baselines,
            train_reference=args.train_reference, train_split=args.train_split,
            permutations=args.permutations,
            kind=args.explainer,
        )
        stem = "evaluation" if len(args.checkpoint) == 1 else f"evaluation-{report.layer}"
        report.save(args.out, stem)
        write_text_atomic(args.out / f"{stem}-filters.csv", report.filters_csv())
        print(report.to_markdown())
        reports.append(report)
    if len(reports) > 1:
        table = layers_table(reports, reports[0].settings["methods"])
        write_text_atomic(args.out / "layers.md", table)
        print(table)
    print(f"wrote {args.out}")
    return 0


def _read_words(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"word list not found: {path}")
    return {w.strip().lower() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#")}


def cmd_layers(args: argparse.Namespace) -> int:
    from lavise.models import load_model

    model = load_model(args.model, args.weights, allow_pickle=bool(args.allow_pickle))
    size = model.preprocessing.crop
    print(f"{model.name} at {size}x{size} (default layer: {model.default_layer})")
    print(f"{'layer':<40} {'channels':>8} {'map':>9}")
    for info in model.layers():
        if info.calls > 1 and not args.all:
            continue
        note = f"  (shared: runs {info.calls}x, not hookable)" if info.calls > 1 else ""
        mark = " *" if info.name == model.default_layer else ""
        print(f"{info.name:<40} {info.channels:>8} {info.height:>4}x{info.width:<4}{note}{mark}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from lavise.datasets import list_dataset_formats
    from lavise.explainer import EXPLAINER_KINDS
    from lavise.masking import list_masking_methods
    from lavise.models import list_models
    from lavise.vocabulary import list_vocabularies
    from lavise.words import list_word_rankings
    from lavise.wordspace import list_word_spaces

    choices = {
        "models": list_models, "methods": list_masking_methods, "formats": list_dataset_formats,
        "word-spaces": list_word_spaces, "vocabularies": list_vocabularies,
        "explainers": lambda: list(EXPLAINER_KINDS), "rankings": list_word_rankings,
    }
    print("\n".join(choices[args.what]()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lavise.api import train

    config = _config_from(args)
    explainer = train(config.model, args.reference, args.split, config=config, out=args.out, exclude=args.exclude)
    print(_training_summary(explainer, args.out))
    return 0


def _training_summary(explainer: Any, out: Path) -> str:
    t = explainer.meta.get("training", {})
    split = explainer.split
    lines = [f"trained {explainer.kind} explainer for {explainer.model.name} {explainer.layer} "
             f"on {t.get('images')} images, {t.get('pairs')} concept masks"]
    if split:
        lines.append(f"concepts: {len(split.seen)} seen, {len(split.unseen)} unseen"
                     + (f", {len(split.missing)} without word vector" if split.missing else ""))
    hist = t.get("history") or []
    if hist:
        fmt = lambda v: "n/a" if v is None or v != v else f"{v:.2f}"  # noqa: E731
        lines.append("held-out concept accuracy of the trained head (hold-out images; all concepts compete):")
        lines.append(f"  {'epoch':>5} {'loss':>8} {'seen@1':>7} {'seen@5':>7} {'unseen@1':>9} {'unseen@5':>9}")
        step = max(1, len(hist) // 6)
        shown = sorted({0, *range(step - 1, len(hist), step), len(hist) - 1})
        for i in shown:
            h = hist[i]
            lines.append(f"  {h['epoch']:>5} {h['loss']:>8.3f} {fmt(h['seen_top1']):>7} {fmt(h['seen_top5']):>7} "
                         f"{fmt(h['unseen_top1']):>9} {fmt(h['unseen_top5']):>9}")
    lines.append(f"checkpoint: {out}")
    return "\n".join(lines)


def cmd_explain(args: argparse.Namespace) -> int:
    from lavise.api import explain

    config = _config_from(args)
    result = explain(
        args.checkpoint, args.images, args.split, filters=args.filters, config=config,
        allow=_read_words(args.allow), block=_read_words(args.block),
        weight_by_activation=args.weight_by_activation,
        kind=args.explainer,
    )
    js, cs = result.save(args.out)
    print(result.table(limit=args.show))
    print(f"wrote {js} and {cs}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from lavise.api import features_of, open_dataset, prepare_model, shard_from_env

    config = _config_from(args)
    rank, world_size = shard_from_env()
    if config.device == "auto" and world_size > 1 and _cuda_count() > 1:
        config = config.replace(device=f"cuda:{rank % _cuda_count()}")
    model = prepare_model(None, config)
    layer = model.layer(config.layer).name
    dataset = open_dataset(args.images, args.split, model)
    store = features_of(model, layer, dataset, config, rank=rank, world_size=world_size)
    state = "complete" if store.meta.get("complete") else f"shard {rank}/{world_size} done, others pending"
    print(f"{model.name} {layer}: {len(dataset)} images, {len(store.failed)} unreadable; cache {store.path} ({state})")
    return 0


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def find_sample() -> Path:
    """The bundled COCO sample: ./sample/coco-panoptic or the repository's copy."""
    candidates = [Path.cwd() / "sample" / "coco-panoptic",
                  Path(__file__).resolve().parents[2] / "sample" / "coco-panoptic"]
    for c in candidates:
        if (c / "annotations").is_dir():
            return c
    raise FileNotFoundError("bundled sample not found (run from the repository or pass --sample)")


def cmd_demo(args: argparse.Namespace) -> int:
    from lavise.api import explain, train

    start = time.time()
    config = _config_from(args)
    sample = args.sample or find_sample()
    spec = f"coco-panoptic:{sample}"
    out = Path(args.out)
    print(f"1/2 training a {config.explainer} explainer for {config.model} on {sample} (train2017)")
    explainer = train(config.model, spec, "train2017", config=config, out=out / "checkpoint")
    print(_training_summary(explainer, out / "checkpoint"))
    print(f"2/2 explaining every filter of {explainer.layer} on the held-out val2017 images")
    result = explain(explainer, spec, "val2017", config=config)
    js, cs = result.save(out)
    print(f"the {args.show} filters whose top images agree most on their first word:")
    print(result.table(limit=args.show, order="consistency"))
    from lavise.report import build_report

    index = build_report(result, out / "report")
    print(f"wrote {js} and {cs} in {time.time() - start:.0f} s")
    print(f"report: {index.resolve()} (open it in a browser)")
    return 0


def cmd_compare_groups(args: argparse.Namespace) -> int:
    from lavise.compare_groups import compare_groups

    config = _config_from(args)
    result = compare_groups(
        args.checkpoint, args.images, args.groups, split=args.split, captions=args.captions,
        ignore_missing=args.ignore_missing, explanations=args.explanations, config=config, test=args.test,
        alpha=args.alpha, min_group_size=args.min_group_size, examples=args.examples,
        filters=args.filters, allow=_read_words(args.allow), block=_read_words(args.block),
        **({"explainer": args.explainer} if args.explainer else {}),
    )
    from lavise.report.groups_page import write_groups_page

    paths = result.save(args.out, top=args.top)
    paths.append(write_groups_page(result, args.out, figure=args.out / "groups.png", top=args.top,
                                   examples=args.examples))
    sizes = ", ".join(f"{g} {n}" for g, n in result.group_sizes.items())
    left = "; ".join(f"{n} left out ({k})" for k, n in result.left_out.items() if n)
    print(f"groups: {sizes}" + (f"; {left}" if left else ""))
    n_f, n_w = len(result.significant()), len(result.significant(words=True))
    print(f"{n_f} of {sum(len(c.filters) for c in result.contrasts)} filter tests and {n_w} word tests "
          f"significant at q <= {result.alpha:g} (Benjamini-Hochberg)")
    for c in result.contrasts:
        for direction, name in ((1, c.group), (-1, c.other)):
            if c.other == "rest" and direction == -1:
                continue
            top = c.ranked(direction, 5)
            print(f"most tied to {name}: " + "; ".join(
                f"#{f.filter} {f.words[0] if f.words else '?'} {f.difference:+.1%} (q={f.q_value:.2g})" for f in top))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def cmd_compare_models(args: argparse.Namespace) -> int:
    from lavise.compare_models import compare_models

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    result = compare_models(args.explanations, names, top_k=args.top_k, min_count=args.min_count, strict=args.strict)
    paths = result.save(args.out)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    u1 = result.unique("top1")
    for m in result.models:
        print(f"{m.name}: {m.interpretable}/{m.filters} filters with an agreed top-1 word; "
              f"{len(m.concepts_top1)} concepts at top-1, {len(m.concepts_topk)} within top {result.top_k}; "
              f"{len(u1[m.name])} unique at top-1")
    print(f"shared by all: {len(result.shared('top1'))} at top-1, {len(result.shared('topk'))} within top {result.top_k}")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


COMMANDS = {"demo": cmd_demo, "layers": cmd_layers, "list": cmd_list, "train": cmd_train,
            "extract": cmd_extract, "explain": cmd_explain, "evaluate": cmd_evaluate,
            "report": cmd_report, "figure": cmd_figure, "ratings": cmd_ratings,
            "finetune": cmd_finetune, "compare-groups": cmd_compare_groups,
            "compare-models": cmd_compare_models}


def error_line(exc: BaseException) -> str:
    """The one line ``lavise: error:`` shows for ``exc``, with every path in full."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        msg = f"{exc.strerror}: {exc.filename}"
        return msg + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lavise`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(getattr(args, "verbose", 0), logging.DEBUG)
    logging.basicConfig(level=level, format="lavise: %(levelname)s: %(message)s")
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (`lavise list models | head -1`): not an error. Point stdout
        # at /dev/null so that flushing it at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as exc:
        # User errors, damaged files (CheckpointError, CacheDamaged: ValueErrors) and
        # file-system errors (missing, unwritable, disk full): one line, whole paths.
        print(f"lavise: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lavise: interrupted (the feature cache resumes where it stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
