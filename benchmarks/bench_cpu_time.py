"""Load-robust ratios on a shared CPU: process CPU time, one thread, interleaved repeats.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_time.py [--images sample/coco-panoptic] [--n 24]

Wall-clock ratios (``bench_pipeline.py``) need an idle machine. When the machine is
shared, this measures the process CPU time (one intra-op thread, so no spin-waiting
inflates it) of: the bare forward floor, the previous extraction loop, the new
extraction (decoding included, in its background thread), and the ``image`` masking
method before and after batching, each repeated ``--repeats`` times in alternation;
the minimum of the repeats is reported. CPU time counts decoding that a second core
would overlap with the forward pass, so the extraction ratio here is an upper bound
of the wall-clock ratio on an idle multi-core machine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import lavise
from lavise.api import _image_loader, features_of, filter_stats, open_dataset
from lavise.explain import parse_filters, pooled_top_image_features
from lavise.models import LayerExtractor
from bench_pipeline import previous_extraction, previous_image_pooling


CLOCK = time.process_time


def cpu(fn) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "sample" / "coco-panoptic"))
    ap.add_argument("--split", default="val2017")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-filters", default="0-15", help="filters for the image method ('' skips it)")
    ap.add_argument("--wall", action="store_true", help="wall-clock time with the default threads instead")
    args = ap.parse_args(argv)
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    else:
        torch.set_num_threads(1)
    cache = Path(tempfile.mkdtemp(prefix="lavise-bench-"))
    try:
        model = lavise.load_model("efficientnet-lite0")
        target = open_dataset(f"coco-panoptic:{args.images}", args.split, model)
        n = len(target)
        x = model.preprocessing.normalise(torch.stack([torch.as_tensor(target[i]["image"]) for i in range(n)]))
        net = model.module.to(memory_format=torch.channels_last)
        results: dict[str, list[float]] = {}

        def floor(bs):
            with torch.inference_mode():
                for i in range(0, n, bs):
                    net(x[i:i + bs].contiguous(memory_format=torch.channels_last))

        config = lavise.Config(cache_dir=str(cache), progress=False, device="cpu")
        store = features_of(model, "_head_act", target, config.replace(cache_dir=str(cache / "s")))
        stats = filter_stats(store, config)
        filters = parse_filters(args.image_filters, store.shape[0]) if args.image_filters else []
        loader = _image_loader(target, model)
        extract = LayerExtractor(model, "_head_act").features
        top = min(config.top_images, n)
        old = new = None
        for r in range(args.repeats):
            for bs in (1, 8):
                results.setdefault(f"bare forward, channels-last, batch {bs}", []).append(cpu(lambda: floor(bs)))
            results.setdefault("previous extraction loop (batch 8)", []).append(
                cpu(lambda: previous_extraction(model, "_head_act", target, 8)))
            for bs in (1, 8):
                c = config.replace(cache_dir=str(cache / f"r{r}b{bs}"), image_batch_size=bs)
                results.setdefault(f"extraction, batch {bs}", []).append(
                    cpu(lambda: features_of(model, "_head_act", target, c)))
            if not filters:
                continue
            results.setdefault("image masking, previous per-image loop", []).append(
                cpu(lambda: globals().__setitem__("_old", previous_image_pooling(store, stats, filters, top, loader, extract))))
            results.setdefault("image masking, batched pairs", []).append(
                cpu(lambda: globals().__setitem__("_new", pooled_top_image_features(
                    store, stats, filters, "image", top=top, images=loader, extract=extract, progress=False))))
            old, new = globals()["_old"], globals()["_new"]
        best = {k: min(v) for k, v in results.items()}
        fl = min(v for k, v in best.items() if k.startswith("bare forward"))
        what = f"wall seconds, {torch.get_num_threads()} threads" if args.wall else "1 thread, process CPU seconds"
        print(f"{n} images, {what} (min of {args.repeats})")
        for k, v in best.items():
            print(f"{k:<45} {v:8.2f} {v / fl:8.2f} x floor")
        ext = min(best["extraction, batch 1"], best["extraction, batch 8"])
        print(f"fastest extraction / floor: {ext / fl:.2f}; previous loop / fastest extraction: "
              f"{best['previous extraction loop (batch 8)'] / ext:.2f}")
        if not filters:
            return
        print(f"image masking ({len(filters)} filters x p={top}) previous / batched: "
              f"{best['image masking, previous per-image loop'] / best['image masking, batched pairs']:.2f}; "
              f"largest difference {float((old - new).abs().max()):.2e}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
