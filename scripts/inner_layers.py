"""Why do inner layers score about 0 (paper Table 3)? The method or the measure?

For each layer, on one annotated split, prints how the ground truth itself behaves:
how many filters have any ground-truth concept (IoU > 0.04) at the evaluation grid
and at the full mask resolution, for several T_u quantiles; how many filters saturate
(T_u equal to the filter's maximum) or are dead (T_u <= 0); the median best IoU; and
which concepts the ground truth consists of. No explainer is involved: a layer whose
filters have no ground truth cannot be scored, whatever the method.

Usage:
    python scripts/inner_layers.py --target coco-panoptic:../shared/data/coco-panoptic --split train2017 \
        --layers _head_act,_blocks.15,_blocks.10,_blocks.4
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

import torch

import lavise
from lavise.api import features_of, open_dataset, prepare_model
from lavise.evaluate import compute_ground_truth
from lavise.statistics import compute_filter_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--layers", default="_head_act,_blocks.15,_blocks.10,_blocks.4")
    ap.add_argument("--quantiles", default="0.005,0.02,0.05")
    ap.add_argument("--resolutions", default="112,full")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    config = lavise.Config(progress=False)
    model = prepare_model(None, config)
    dataset = open_dataset(args.target, args.split, model)
    print("| layer | filters | map | quantile | grid | filters with GT | saturated T_u | T_u <= 0 | "
          "median best IoU | most common GT concepts |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|---|")
    for layer in args.layers.split(","):
        store = features_of(model, layer, dataset, config)
        d, h, w = store.shape
        for q in (float(x) for x in args.quantiles.split(",")):
            stats = compute_filter_stats(store, quantile=q, top_k=5, progress=False)
            top_max = stats.image_max.max(0).values
            saturated = int((stats.thresholds >= top_max - 1e-6).sum())
            dead = int((stats.thresholds <= 0).sum())
            for res in args.resolutions.split(","):
                r = None if res == "full" else int(res)
                gt = compute_ground_truth(store, dataset, stats, resolution=r, progress=False)
                n = len(gt.filters_with_ground_truth)
                best = gt.iou.max(1).values
                counts = Counter(c for g in gt.per_filter for c in g[:1])
                common = ", ".join(f"{c} ({k})" for c, k in counts.most_common(4))
                print(f"| `{layer}` | {d} | {h}x{w} | {q:g} | {res} | {n} | {saturated} | {dead} | "
                      f"{float(best.median()):.3f} | {common} |", flush=True)


if __name__ == "__main__":
    main()
