"""Feature-extraction throughput on a folder of images against the bare forward floor.

Usage:
    python benchmarks/bench_extraction.py FOLDER [--device cuda] [--workers 0 8] [--batch-size 32]

The floor is the fastest bare forward pass (NCHW or channels-last, several batch
sizes) of EfficientNet-Lite0 on up to 512 of the images, decoded and in memory.
Extraction includes JPEG decoding, resizing, the forward pass to the hooked layer and
the float16 cache write, each run into a fresh cache.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import lavise
from lavise.api import features_of, open_dataset
from bench_pipeline import bare_forward, _sync


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    model = lavise.load_model("efficientnet-lite0").to(args.device)
    dataset = open_dataset(args.folder, None, model)
    n = len(dataset)
    sample = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(min(512, n))])
    floor, cfg = bare_forward(model, sample, args.device)
    print(f"{n} images; bare forward floor {floor:.0f} img/s ({cfg}) on {args.device}")
    for workers in args.workers:
        cache = Path(tempfile.mkdtemp(prefix="lavise-bench-"))
        try:
            config = lavise.Config(cache_dir=str(cache), progress=False, device=args.device,
                                   num_workers=workers, image_batch_size=args.batch_size)
            _sync(args.device)
            t = time.perf_counter()
            features_of(model, "_head_act", dataset, config)
            _sync(args.device)
            rate = n / (time.perf_counter() - t)
            print(f"extraction with {workers} workers: {rate:.0f} img/s = {floor / rate:.2f} x floor time")
        finally:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
