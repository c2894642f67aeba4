"""Feature-extraction throughput on a folder of images against the bare forward floor.

Usage:
    python benchmarks/bench_extraction.py FOLDER [--device cuda] [--workers 0 8] [--batch-size 32]
        [--decode cpu device] [--precision auto float32]

The floor is the fastest bare forward pass (NCHW or channels-last, several batch
sizes) of EfficientNet-Lite0 on up to 512 of the images, decoded and in memory.
Extraction includes JPEG decoding, resizing, the forward pass to the hooked layer and
the float16 cache write, each run into a fresh cache, for every combination of
DataLoader workers, decoding place (``cpu``: PIL in the workers or a background
thread; ``device``: ``torchvision.io.decode_jpeg`` on the model's device) and
forward precision (``auto``: float16 autocast on CUDA).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import lavise
from lavise.api import open_dataset
from lavise.features import extract_features
from bench_pipeline import bare_forward, _sync


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--decode", nargs="+", default=["cpu", "device"])
    ap.add_argument("--precision", nargs="+", default=["auto"])
    args = ap.parse_args()
    model = lavise.load_model("efficientnet-lite0").to(args.device)
    dataset = open_dataset(args.folder, None, model)
    n = len(dataset)
    sample = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(min(512, n))])
    floor, cfg = bare_forward(model, sample, args.device, [args.batch_size])
    print(f"{n} images; bare forward floor {floor:.0f} img/s ({cfg}) on {args.device}")
    for workers in args.workers:
        for decode in args.decode:
            for precision in args.precision:
                cache = Path(tempfile.mkdtemp(prefix="lavise-bench-"))
                try:
                    _sync(args.device)
                    t = time.perf_counter()
                    extract_features(model, "_head_act", dataset, cache, batch_size=args.batch_size,
                                     num_workers=workers, decode=decode, precision=precision, progress=False)
                    _sync(args.device)
                    rate = n / (time.perf_counter() - t)
                    print(f"extraction, {workers} workers, decode {decode}, precision {precision}: "
                          f"{rate:.0f} img/s = {floor / rate:.2f} x floor time")
                finally:
                    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
