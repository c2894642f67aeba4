"""Per-image cost and peak memory from 1,000 to 10,000 generated images; head training at COCO scale.

Usage:
    python benchmarks/bench_scale.py --images 1000 10000            # the scale table
    python benchmarks/bench_scale.py --images 20 --head-pairs 2000  # a smoke run

For each size N a fresh process generates N synthetic JPEGs (smooth random colour
fields, ``--size`` pixels, spread over ``--classes`` class folders so that every image
has a whole-image concept mask) and runs the stages whose cost grows with N, each
into a fresh cache: feature extraction (decode + forward + float16 cache write),
filter statistics (T_u, top images), the IoU ground truth and the pooling of the
concept masks. It reports milliseconds per image for each stage and the peak memory
of the process: the peak of its anonymous resident memory (what it holds; sampled
every 50 ms) and Linux's ``VmHWM`` (which also counts pages of the memory-mapped
feature cache that the kernel may drop at any time).

The head is timed separately on ``--head-sample`` random pooled pairs for
``--head-epochs`` epochs (minus a one-epoch run, which removes the fixed set-up
cost; the explainer head never touches the backbone: an epoch's
cost is linear in the number of pairs), and extrapolated to ``--head-pairs`` pairs
(COCO train2017's panoptic concept masks: about 860,000) and 50 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _rss_anon_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _vm_hwm_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakMemory:
    """Samples the process's anonymous resident memory in a background thread."""

    def __init__(self, every: float = 0.05) -> None:
        self.peak_kb = _rss_anon_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.peak_kb = max(self.peak_kb, _rss_anon_kb())

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _rss_anon_kb())


def generate_images(root: Path, n: int, size: tuple[int, int], classes: int, seed: int = 0) -> Path:
    """Writes ``n`` JPEGs of ``size`` (w, h) into ``classes`` sub-folders of ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        img.save(root / f"class{i % classes:02d}" / f"img{i:06d}.jpg", quality=85)
    return root


def small_cnn():
    """A small random CNN (``--model small-cnn``): 4 strided convolutions to a 64-channel
    8 x 8 map at 128 x 128 input, for scale runs on a shared CPU where the per-image cost
    that matters is the pipeline's, not the backbone's."""
    from torch import nn

    from lavise.models import wrap_model
    from lavise.preprocessing import Preprocessing

    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
    )
    net = nn.Sequential()
    net.add_module("features", body)
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(64, 10))
    return wrap_model(net.eval(), Preprocessing(resize=144, crop=128), name="small-cnn",
                      class_names=[f"class{i}" for i in range(10)], default_layer="features",
                      classifier_modules=("fc",))


def run_one(args: argparse.Namespace, n: int) -> dict:
    """All N-dependent stages of one size, in this process."""
    import lavise
    from lavise.api import features_of, filter_stats, open_dataset
    from lavise.evaluate import compute_ground_truth
    from lavise.explainer import pool_concept_features
    from lavise.models import LayerExtractor

    work = Path(tempfile.mkdtemp(prefix=f"lavise-scale-{n}-", dir=args.workdir))
    try:
        images = generate_images(work / "images", n, args.size, args.classes)
        model = small_cnn() if args.model == "small-cnn" else lavise.load_model(args.model)
        config = lavise.Config(cache_dir=str(work / "cache"), progress=False, device="cpu",
                               image_batch_size=args.batch_size, num_workers=args.workers)
        dataset = open_dataset(f"imagefolder:{images}", None, model)
        layer = args.layer or model.default_layer
        crop = model.preprocessing.crop
        LayerExtractor(model, layer).features(torch.zeros(2, 3, crop, crop))  # warm-up, not timed
        times: dict[str, float] = {}
        cpu: dict[str, float] = {}

        def timed(name, fn):
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            times[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
            return out

        with PeakMemory() as mem:
            store = timed("extraction", lambda: features_of(model, layer, dataset, config))
            stats = timed("filter statistics", lambda: filter_stats(store, config))
            timed("IoU ground truth", lambda: compute_ground_truth(store, dataset, stats, resolution=args.resolution,
                                                                   progress=False, cache=False))
            pairs = timed("pool concept masks", lambda: pool_concept_features(store, dataset, progress=False))
        cache_bytes = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file())
        return {"images": n, "layer": layer, "ms_per_image": {k: 1000 * v / n for k, v in times.items()},
                "cpu_ms_per_image": {k: 1000 * v / n for k, v in cpu.items()},
                "seconds": times, "pairs": len(pairs.concepts),
                "peak_anon_mib": mem.peak_kb / 1024, "vm_hwm_mib": _vm_hwm_kb() / 1024,
                "cache_mib": cache_bytes / 2 ** 20}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def time_head(sample: int, epochs: int, d: int, concepts_file: Path | None, seed: int = 0,
              dtype: str = "float32") -> dict:
    """Seconds per epoch of the explainer head on ``sample`` random pooled pairs (stored
    as ``dtype``), and the anonymous memory ``fit_head`` needs beyond the pairs."""
    from lavise.explainer import ConceptFeatures, fit_head, split_concepts
    from lavise.wordspace import load_word_space

    space = load_word_space("glove-6b-50d")  # the 50-d head of the numbers in docs/performance.md
    names = [w for w in ("person", "car", "dog", "cat", "tree", "road", "sky", "grass", "wall", "table",
                         "chair", "bus", "train", "horse", "bird", "boat", "house", "window", "door", "water",
                         "bottle", "cup", "bed", "sofa", "floor", "ceiling", "river", "bridge", "fence", "sheep")
             if w in space]
    split = split_concepts(names, 0.7, seed)
    gen = torch.Generator().manual_seed(seed)
    pooled = torch.empty(sample, d, dtype=getattr(torch, dtype))
    for start in range(0, sample, 65536):  # in slices: no float32 copy of every pair
        pooled[start:start + 65536] = torch.rand(min(65536, sample - start), d, generator=gen)
    concepts = [names[i % len(names)] for i in range(sample)]
    pairs = ConceptFeatures(pooled, concepts, torch.arange(sample), torch.ones(sample))
    runs = []
    base_kb = _rss_anon_kb()
    with PeakMemory() as mem:
        for e in (1, 1 + epochs):  # the difference removes fit_head's fixed set-up cost
            t, c = time.perf_counter(), time.process_time()
            fit_head(pairs, None, split, space, epochs=e, progress=False)
            runs.append((time.perf_counter() - t, time.process_time() - c))
    per_epoch = (runs[1][0] - runs[0][0]) / epochs
    return {"sample_pairs": sample, "epochs_measured": epochs, "seconds_per_epoch": per_epoch,
            "cpu_seconds_per_epoch": (runs[1][1] - runs[0][1]) / epochs, "setup_seconds": runs[0][0] - per_epoch,
            "seen_pairs_share": sum(c in split.seen for c in concepts) / sample,
            "dtype": dtype, "pairs_mib_per_1k": pooled.element_size() * d * 1000 / 2 ** 20,
            "training_extra_mib": (mem.peak_kb - base_kb) / 1024}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(320, 240),
                    help="generated image size WxH (default 320x240)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--model", default="efficientnet-lite0", help="a registered model, or small-cnn")
    ap.add_argument("--layer", default=None)
    ap.add_argument("--resolution", type=int, default=112, help="IoU grid side (default 112)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where images and caches are generated (default: temp)")
    ap.add_argument("--head-pairs", type=int, default=860_000)
    ap.add_argument("--head-sample", type=int, default=8_600)
    ap.add_argument("--head-epochs", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=1280)
    ap.add_argument("--head-dtype", default="float32", choices=["float32", "float16"],
                    help="storage of the pooled pairs the head trains on")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--run-one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one is not None:
        print(json.dumps(run_one(args, args.run_one)))
        return

    rows = []
    for n in args.images:
        cmd = [sys.executable, __file__, "--run-one", str(n), "--size", "x".join(map(str, args.size)),
               "--classes", str(args.classes), "--model", args.model, "--batch-size", str(args.batch_size),
               "--resolution", str(args.resolution),
               "--workers", str(args.workers)]
        if args.layer:
            cmd += ["--layer", args.layer]
        if args.workdir:
            cmd += ["--workdir", args.workdir]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n} images done", file=sys.stderr, flush=True)
    head = None
    if args.head_pairs:
        head = time_head(min(args.head_sample, args.head_pairs), args.head_epochs, args.head_dim, None,
                         dtype=args.head_dtype)
        head["pairs"] = args.head_pairs
        head["extrapolated_50_epochs_cpu_s"] = head["cpu_seconds_per_epoch"] * args.head_pairs / head["sample_pairs"] * 50
        head["pairs_gib"] = head["pairs_mib_per_1k"] * args.head_pairs / 1000 / 1024
        head["extrapolated_50_epochs_s"] = head["seconds_per_epoch"] * args.head_pairs / head["sample_pairs"] * 50

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; model {args.model}; "
          f"layer {rows[0]['layer'] if rows else '-'}; images {args.size[0]}x{args.size[1]} JPEG; IoU grid {args.resolution}")
    stages = list(rows[0]["ms_per_image"]) if rows else []
    print(f"{'stage (wall ms per image)':<26}" + "".join(f"{r['images']:>12,}" for r in rows)
          + (f"{'last/first':>12}" if len(rows) > 1 else ""))
    for unit in ("ms_per_image", "cpu_ms_per_image"):
        for s in stages:
            vals = [r[unit][s] for r in rows]
            ratio = f"{vals[-1] / vals[0]:>12.2f}" if len(rows) > 1 and vals[0] > 0 else ""
            label = s if unit == "ms_per_image" else f"  CPU time: {s}"
            print(f"{label:<26}" + "".join(f"{v:>12.2f}" for v in vals) + ratio)
    for key, label in (("peak_anon_mib", "peak anonymous RSS, MiB"), ("vm_hwm_mib", "VmHWM (with mapped cache)"),
                       ("cache_mib", "feature cache on disk, MiB")):
        print(f"{label:<26}" + "".join(f"{r[key]:>12.0f}" for r in rows))
    if head:
        print(f"head: {head['seconds_per_epoch']:.1f} s per epoch ({head['cpu_seconds_per_epoch']:.1f} s CPU) "
              f"on {head['sample_pairs']:,} pairs "
              f"({head['epochs_measured']} epoch(s) measured) -> 50 epochs on {head['pairs']:,} pairs: "
              f"{head['extrapolated_50_epochs_s'] / 60:.1f} min, "
              f"{head['extrapolated_50_epochs_cpu_s'] / 60:.1f} min CPU (extrapolated, linear in pairs)")
        print(f"head memory: the pairs ({head['dtype']}) {head['pairs_gib']:.2f} GiB at {head['pairs']:,} pairs; "
              f"training needs {head['training_extra_mib']:.0f} MiB beyond them "
              f"(measured at {head['sample_pairs']:,} pairs)")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": rows, "head": head, "argv": sys.argv}, indent=2))


if __name__ == "__main__":
    main()
