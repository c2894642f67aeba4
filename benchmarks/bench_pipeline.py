"""Cost of each lavise stage relative to a bare backbone forward pass, measured in one run.

Usage:
    python benchmarks/bench_pipeline.py [--images sample/coco-panoptic] [--split val2017] [--device cpu]

The floor is the FASTEST bare configuration of the same model on the same images
(tried: NCHW and channels-last, batch 1 and 8, images already decoded and in memory).
Every later stage is reported as a ratio to that floor.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

import lavise
from lavise.api import features_of, filter_stats, open_dataset
from lavise.explain import explain_filters
from lavise.explainer import fit_head, pool_concept_features
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
        for bs in (1, 8, 32) if device.startswith("cuda") else (1, 8):
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "sample" / "coco-panoptic"))
    ap.add_argument("--split", default="val2017")
    ap.add_argument("--train-split", default="train2017")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    device = args.device
    cache = Path(tempfile.mkdtemp(prefix="lavise-bench-"))
    try:
        config = lavise.Config(cache_dir=str(cache), progress=False, device=device,
                               image_batch_size=args.batch_size)
        model = lavise.load_model("efficientnet-lite0").to(device)
        spec = f"coco-panoptic:{args.images}"
        target = open_dataset(spec, args.split, model)
        n = len(target)
        images = torch.stack([torch.as_tensor(target[i]["image"]) for i in range(n)])
        floor, floor_cfg = bare_forward(model, images, device)
        floor_s = n / floor

        rows = []

        def timed(name, fn):
            _sync(device)
            t = time.perf_counter()
            out = fn()
            _sync(device)
            rows.append((name, time.perf_counter() - t))
            return out

        store = timed("feature extraction (decode + forward + float16 cache write)",
                      lambda: features_of(model, "_head_act", target, config))
        timed("feature extraction again (cache hit)", lambda: features_of(model, "_head_act", target, config))
        stats = timed("filter statistics (thresholds, top images)", lambda: filter_stats(store, config))
        train_ds = open_dataset(spec, args.train_split, model)
        train_store = features_of(model, "_head_act", train_ds, config)
        pairs = timed("pool concept masks of the training set (no backbone)",
                      lambda: pool_concept_features(train_store, train_ds, progress=False))
        t0 = time.perf_counter()
        explainer = lavise.train(model, spec, args.train_split, config=config)
        train_s = time.perf_counter() - t0
        epochs = config.epochs
        rows.append((f"train explainer end to end on {len(train_store)} cached images ({epochs} epochs)", train_s))
        split = explainer.split
        timed(f"  of which {epochs} epochs of the head on {len(pairs.concepts)} pooled pairs",
              lambda: fit_head(pairs, None, split, explainer.word_space, epochs=epochs, progress=False))
        vocab = load_vocabulary("default", explainer.word_space, config.vocabulary_size)
        for method in ("attention", "projection", "activation", "original"):
            timed(f"explain all 1280 filters ({method}, p={config.top_images})",
                  lambda m=method: explain_filters(explainer, store, stats, vocab, method=m,
                                                   top=config.top_images, progress=False))
        timed("explain 16 filters (image masking: a forward pass per filter and image)",
              lambda: explain_filters(explainer, store, stats, vocab, method="image", filters="0-15",
                                      top=config.top_images, progress=False,
                                      images=lavise.api._image_loader(target, model)))

        dev = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
        print(f"machine: {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        print(f"images: {n} ({args.split}); bare forward floor: {floor:.1f} img/s ({floor_cfg}) = {floor_s:.2f} s")
        print(f"{'stage':<78} {'seconds':>8} {'x floor':>8}")
        for name, s in rows:
            print(f"{name:<78} {s:>8.2f} {s / floor_s:>8.2f}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
