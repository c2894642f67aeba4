"""Cost of each lavise stage relative to a bare backbone forward pass, measured in one run.

Usage:
    python benchmarks/bench_pipeline.py [--images sample/coco-panoptic] [--split val2017] [--device cpu]

The floor is the FASTEST bare configuration of the same model on the same images
(tried: NCHW and channels-last, batch 1, 8 and 16 (and 32 on a GPU), images already
decoded and in memory). Every later stage is reported as a ratio to that floor, and
the optimised paths beside the paths they replace, measured in the same run:

* extraction at several batch sizes, beside the previous extraction loop (dataset
  items with their concept masks, decoded in series with the forward pass);
* the ``image`` masking method, batched (:meth:`lavise.masking.ImageMasking.pool_pairs`),
  beside the previous per-image loop, with the largest difference of their pooled
  vectors;
* the IoU ground truth of the split, computed, then again from its cache.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

import lavise
from lavise.api import features_of, filter_stats, open_dataset
from lavise.evaluate import compute_ground_truth
from lavise.explain import explain_filters, pooled_top_image_features
from lavise.explainer import fit_head, pool_concept_features
from lavise.masking import get_masking_method
from lavise.models import LayerExtractor
from lavise.vocabulary import load_vocabulary


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_forward(model, images: torch.Tensor, device: str) -> tuple[float, str]:
    """Best images/s of a plain forward pass (no hooks, no cache) over configurations."""
    best, best_cfg = 0.0, ""
    net = model.module
    x_all = model.preprocessing.normalise(images).to(device)
    for channels_last in (False, True):
        net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for bs in (1, 8, 16, 32) if device.startswith("cuda") else (1, 8, 16):
            with torch.inference_mode():
                net(x_all[:bs].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format))
                _sync(device)
                t = time.perf_counter()
                for i in range(0, len(x_all), bs):
                    xb = x_all[i:i + bs]
                    if channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    net(xb)
                _sync(device)
                rate = len(x_all) / (time.perf_counter() - t)
            if rate > best:
                best, best_cfg = rate, f"{'channels_last' if channels_last else 'NCHW'}, batch {bs}"
    return best, best_cfg


def previous_extraction(model, layer: str, dataset, batch_size: int) -> None:
    """The extraction loop before issue 10: dataset items (image + concept masks), decoded
    in series with the forward pass, float16 rows kept (no cache files)."""
    from torch.utils.data import DataLoader

    from lavise.datasets import collate

    extractor = LayerExtractor(model, layer)
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        if batch["images"] is not None:
            extractor(batch["images"]).to("cpu", torch.float16)


def previous_image_pooling(store, stats, filters, top, images, extract) -> torch.Tensor:
    """The ``image`` method before issue 10: one image at a time, every masked copy of it
    (one per filter that needs it) through the model in chunks of 64, nothing shared."""
    masking = get_masking_method("image")
    d = store.shape[0]
    filt = torch.as_tensor(list(filters), dtype=torch.long)
    top_idx = stats.top_images[filt, :top]
    out = torch.zeros(len(filters), top, d)
    for row in torch.unique(top_idx).tolist():
        pos, slot = torch.nonzero(top_idx == row, as_tuple=True)
        feats = torch.from_numpy(store.array[row:row + 1].astype("float32"))
        img = images([row])
        size = (int(img.shape[2]), int(img.shape[3]))
        need = filt[pos]
        for start in range(0, len(need), 64):
            sl = slice(start, start + 64)
            u = need[sl]
            mask = masking.masks(feats, u, stats.thresholds, size,
                                 (torch.zeros(len(u), dtype=torch.long), torch.arange(len(u))))
            pooled = extract(img.expand(len(u), -1, -1, -1) * mask).flatten(2).mean(dim=2)
            out[pos[sl], slot[sl]] = pooled
    return out


def main(argv: Sequence[str] | None = None) -> list[tuple[str, float]]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "sample" / "coco-panoptic"))
    ap.add_argument("--split", default="val2017")
    ap.add_argument("--train-split", default="train2017")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16],
                    help="extraction batch sizes tried (default 1 8 16)")
    ap.add_argument("--image-filters", default="0-63", help="filters explained with the image method")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--methods", nargs="+", default=["attention", "projection", "activation", "original"],
                    help="masking methods timed on all filters")
    args = ap.parse_args(argv)
    device = args.device
    cache = Path(tempfile.mkdtemp(prefix="lavise-bench-"))
    try:
        config = lavise.Config(cache_dir=str(cache), progress=False, device=device, epochs=args.epochs)
        model = lavise.load_model("efficientnet-lite0").to(device)
        spec = f"coco-panoptic:{args.images}"
        target = open_dataset(spec, args.split, model)
        n = len(target)
        images = torch.stack([torch.as_tensor(target[i]["image"]) for i in range(n)])
        floor, floor_cfg = bare_forward(model, images, device)
        floor_s = n / floor

        rows: list[tuple[str, float]] = []

        def timed(name, fn):
            _sync(device)
            t = time.perf_counter()
            out = fn()
            _sync(device)
            rows.append((name, time.perf_counter() - t))
            return out

        if device == "cpu":
            timed("previous extraction loop (items with masks, serial decoding; batch 8)",
                  lambda: previous_extraction(model, "_head_act", target, 8))
        for bs in args.batch_sizes:
            cfg = config.replace(image_batch_size=bs, cache_dir=str(cache / f"bs{bs}"))
            timed(f"feature extraction, batch {bs} (decode + forward + float16 cache write)",
                  lambda c=cfg: features_of(model, "_head_act", target, c))
        store = timed("feature extraction again (cache hit)",
                      lambda: features_of(model, "_head_act", target, config.replace(cache_dir=str(cache / "bs8"))))
        config = config.replace(cache_dir=str(cache / "bs8"))
        stats = timed("filter statistics (thresholds, top images)", lambda: filter_stats(store, config))
        timed("IoU ground truth of the split (computed and cached)",
              lambda: compute_ground_truth(store, target, stats, progress=False))
        timed("IoU ground truth again (from its cache)",
              lambda: compute_ground_truth(store, target, stats, progress=False))
        train_ds = open_dataset(spec, args.train_split, model)
        train_store = features_of(model, "_head_act", train_ds, config)
        pairs = timed("pool concept masks of the training set (no backbone)",
                      lambda: pool_concept_features(train_store, train_ds, progress=False))
        t0 = time.perf_counter()
        explainer = lavise.train(model, spec, args.train_split, config=config)
        rows.append((f"train explainer end to end on {len(train_store)} cached images ({config.epochs} epochs)",
                     time.perf_counter() - t0))
        timed(f"  of which {config.epochs} epochs of the head on {len(pairs.concepts)} pooled pairs",
              lambda: fit_head(pairs, None, explainer.split, explainer.word_space, epochs=config.epochs,
                               progress=False))
        vocab = load_vocabulary("default", explainer.word_space, config.vocabulary_size)
        top = min(config.top_images, n)
        for method in args.methods:
            timed(f"explain all 1280 filters ({method}, p={top})",
                  lambda m=method: explain_filters(explainer, store, stats, vocab, method=m,
                                                   top=top, progress=False))
        from lavise.explain import parse_filters

        filters = parse_filters(args.image_filters, store.shape[0])
        loader = lavise.api._image_loader(target, model)
        extract = LayerExtractor(model, "_head_act").features
        old = timed(f"image masking, {len(filters)} filters x p={top}: previous per-image loop",
                    lambda: previous_image_pooling(store, stats, filters, top, loader, extract))
        new = timed(f"image masking, {len(filters)} filters x p={top}: batched pairs",
                    lambda: pooled_top_image_features(store, stats, filters, "image", top=top, images=loader,
                                                      extract=extract, device=device, progress=False))
        diff = float((old - new).abs().max())

        dev = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
        print(f"machine: {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        print(f"images: {n} ({args.split}); bare forward floor: {floor:.1f} img/s ({floor_cfg}) = {floor_s:.2f} s")
        print(f"{'stage':<90} {'seconds':>8} {'x floor':>8}")
        for name, s in rows:
            print(f"{name:<90} {s:>8.2f} {s / floor_s:>8.2f}")
        extraction = [s for name, s in rows if name.startswith("feature extraction, batch")]
        best = min(extraction)
        print(f"fastest extraction: {best / floor_s:.2f} x the floor")
        if device == "cpu":
            print(f"previous extraction loop / fastest extraction: {rows[0][1] / best:.2f}")
        image_rows = [s for name, s in rows if name.startswith("image masking")]
        print(f"image masking speed-up (previous / batched): {image_rows[0] / image_rows[1]:.2f}; "
              f"largest difference of the pooled vectors: {diff:.2e} (largest value {float(old.abs().max()):.2f}); "
              f"masked images per second: {len(filters) * top / image_rows[1]:.1f} "
              f"(floor {floor:.1f})")
        return rows
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
