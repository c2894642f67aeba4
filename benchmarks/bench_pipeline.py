"""Cost of each lavise stage relative to a bare backbone forward pass, measured in one run.

Usage:
    python benchmarks/bench_pipeline.py [--images sample/coco-panoptic] [--split val2017] [--device cpu]

The floor is the FASTEST bare configuration of the same model on the same images
(tried: NCHW and channels-last; batch 1, 8 and 16 (and 32 on a GPU) and every
extraction batch size; on the CPU all intra-op threads and one less; images already
decoded and in memory). The floor configurations, the previous extraction loop and
every extraction batch size are run ``--repeats`` times (default 3), interleaved, and
each keeps its minimum, so that ratios do not depend on when a slow moment of the
machine fell. Every later stage (run once) is reported as a ratio to that floor, and
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
from lavise._parallel import resolve_passes, side_by_side
from lavise.models import LayerExtractor
from lavise.vocabulary import load_vocabulary


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


Config = tuple[bool, int, int, int]  # (channels-last, batch size, intra-op threads per pass, passes side by side)


def bare_configs(device: str, batch_sizes: Sequence[int]) -> list[Config]:
    """Every bare configuration the floor tries.

    NCHW and channels-last; batch 1, 8 and 16 (and 32 on a GPU) and every extraction
    batch size; on the CPU every thread count from all cores down to one less (the
    extraction's decoding thread may leave one core to the forward pass), and passes
    side by side in threads sharing the cores (as extraction runs them on a CPU:
    :mod:`lavise._parallel`)."""
    sizes = sorted({1, 8, 16, *((32,) if device.startswith("cuda") else ()), *batch_sizes})
    n = torch.get_num_threads()
    if device.startswith("cuda") or n == 1:
        return [(cl, bs, n, 1) for cl in (False, True) for bs in sizes]
    passes = resolve_passes(None, "cpu")
    return [(cl, bs, t, p) for cl in (False, True) for bs in sizes
            for t, p in ((n, 1), (n - 1, 1), (max(1, n // passes), passes))]


def bare_forward_once(model, x_all: torch.Tensor, device: str, config: Config) -> float:
    """Seconds of one plain forward pass over ``x_all`` (normalised, on ``device``): no hooks, no cache."""
    channels_last, bs, threads, passes = config
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = model.module
    net.to(memory_format=fmt)
    before = torch.get_num_threads()
    torch.set_num_threads(threads * passes)

    def run(i: int) -> None:
        with torch.inference_mode():
            net(x_all[i:i + bs].contiguous(memory_format=fmt))

    try:
        with side_by_side(passes, "bench-forward") as pool:
            if pool is None:
                run(0)  # warm-up
                _sync(device)
                t = time.perf_counter()
                for i in range(0, len(x_all), bs):
                    run(i)
            else:
                list(pool.map(run, [0] * passes))  # warm-up, every thread
                t = time.perf_counter()
                list(pool.map(run, range(0, len(x_all), bs)))
            _sync(device)
            return time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
        net.to(memory_format=torch.contiguous_format)


def bare_forward(model, images: torch.Tensor, device: str, batch_sizes: Sequence[int] = (),
                 repeats: int = 1) -> tuple[float, str]:
    """Best images/s of a plain forward pass of uint8 ``images`` over :func:`bare_configs`
    (each the minimum of ``repeats`` interleaved runs), and its configuration."""
    x_all = model.preprocessing.normalise(images).to(device)
    configs = bare_configs(device, batch_sizes)
    times = {c: bare_forward_once(model, x_all, device, c) for c in configs}
    for _ in range(repeats - 1):
        for c in configs:
            times[c] = min(times[c], bare_forward_once(model, x_all, device, c))
    best = min(times, key=times.get)
    return len(x_all) / times[best], describe(best)


def describe(config: Config) -> str:
    channels_last, bs, threads, passes = config
    side = f" x {passes} passes side by side" if passes > 1 else ""
    return (f"{'channels-last' if channels_last else 'NCHW'}, batch {bs}, "
            f"{threads} thread{'s' * (threads > 1)}{side}")


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
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved repeats of the floor and the extraction configurations (minimum kept)")
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
        x_all = model.preprocessing.normalise(images).to(device)

        rows: list[tuple[str, float]] = []

        def timed(name, fn):
            _sync(device)
            t = time.perf_counter()
            out = fn()
            _sync(device)
            rows.append((name, time.perf_counter() - t))
            return out

        # The floor and every extraction configuration, interleaved over the repeats
        # (a slow moment of the machine hits all of them alike); each keeps its minimum.
        repeated: dict[str, list[float]] = {}
        configs = bare_configs(device, args.batch_sizes)
        for r in range(args.repeats):
            for c in configs:
                repeated.setdefault(f"bare forward, {describe(c)}", []).append(bare_forward_once(model, x_all, device, c))
            if device == "cpu":
                t = time.perf_counter()
                previous_extraction(model, "_head_act", target, 8)
                repeated.setdefault("previous extraction loop (items with masks, serial decoding; batch 8)",
                                    []).append(time.perf_counter() - t)
            for bs in args.batch_sizes:
                cfg = config.replace(image_batch_size=bs, cache_dir=str(cache / f"r{r}" / f"bs{bs}"))
                _sync(device)
                t = time.perf_counter()
                features_of(model, "_head_act", target, cfg)
                _sync(device)
                repeated.setdefault(f"feature extraction, batch {bs} (decode + forward + float16 cache write)",
                                    []).append(time.perf_counter() - t)
        bare = {k: min(v) for k, v in repeated.items() if k.startswith("bare forward")}
        floor_name = min(bare, key=bare.get)
        floor_s = bare[floor_name]
        floor = n / floor_s
        floor_cfg = floor_name.removeprefix("bare forward, ")
        rows += [(k, min(v)) for k, v in repeated.items() if not k.startswith("bare forward")]
        config = config.replace(cache_dir=str(cache / "r0" / ("bs8" if 8 in args.batch_sizes else f"bs{args.batch_sizes[0]}")))
        store = timed("feature extraction again (cache hit)", lambda: features_of(model, "_head_act", target, config))
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
        print(f"bare configurations (min of {args.repeats} interleaved repeats, x floor): "
              + "; ".join(f"{k.removeprefix('bare forward, ')} {v / floor_s:.2f}" for k, v in sorted(bare.items(), key=lambda kv: kv[1])))
        print(f"{'stage':<90} {'seconds':>8} {'x floor':>8}")
        for name, s in rows:
            print(f"{name:<90} {s:>8.2f} {s / floor_s:>8.2f}")
        extraction = [s for name, s in rows if name.startswith("feature extraction, batch")]
        best = min(extraction)
        print(f"fastest extraction: {best / floor_s:.2f} x the floor")
        if device == "cpu":
            previous = next(s for name, s in rows if name.startswith("previous extraction"))
            print(f"previous extraction loop / fastest extraction: {previous / best:.2f}")
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
