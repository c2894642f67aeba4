"""Fault injection: `extract`, `train` and `explain` are SIGKILLed at several points in a
subprocess; no output file is ever left half-written, and the next run finishes with
results equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lavise.cli import main
from lavise.features import FeatureStore
from tiny import tiny_model

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
SAMPLE = TESTS.parent / "sample" / "coco-panoptic"

pytestmark = pytest.mark.slow

# Runs the CLI with a tiny model registered as "tiny", and SIGKILLs itself on the N-th
# call of one function: os.replace (the atomic renames: features.npy, resume state,
# shard checksum, meta.json, then the checkpoint folder, or the statistics and the two
# result files), the backbone forward pass, an optimiser step, or safetensors'
# save_file (after writing half of the file).
_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{tests!r}, {src!r}]
    import torch, safetensors.torch
    from tiny import tiny_model
    from lavise import models
    from lavise.models import LayerExtractor

    models._MODELS.register("tiny")(lambda weights=None, allow_pickle=False: tiny_model())
    point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    owner, name = {{"rename": (os, "replace"), "forward": (LayerExtractor, "__call__"),
                    "step": (torch.optim.Adam, "step"),
                    "save_file": (safetensors.torch, "save_file")}}[point]
    real, calls = getattr(owner, name), [0]

    def fault(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            if point == "save_file":
                real(*args, **kwargs)
                with open(args[1], "r+b") as f:
                    f.truncate(os.path.getsize(args[1]) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, fault)
    from lavise.cli import main
    sys.exit(main(argv))
""")


@pytest.fixture(scope="module")
def tiny_registered():
    from lavise import models

    models._MODELS._items["tiny"] = lambda weights=None, allow_pickle=False: tiny_model()
    yield
    models._MODELS._items.pop("tiny", None)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """The first 24 train and 12 val images of the bundled sample, and 16-d word vectors of its concepts."""
    from lavise.wordspace import normalise_concept_name

    root = tmp_path_factory.mktemp("sample")
    words: set[str] = set()
    for split, n in (("train2017", 24), ("val2017", 12)):
        ann = json.loads((SAMPLE / "annotations" / f"panoptic_{split}.json").read_text())
        ann["annotations"] = sorted(ann["annotations"], key=lambda a: a["image_id"])[:n]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(ann))
        (root / "annotations" / f"panoptic_{split}").symlink_to(SAMPLE / "annotations" / f"panoptic_{split}")
        (root / "images").mkdir(exist_ok=True)
        (root / "images" / split).symlink_to(SAMPLE / "images" / split)
        words.update(t for c in ann["categories"] for t in normalise_concept_name(c["name"]))
    rng = np.random.default_rng(0)
    vectors = root / "vectors.txt"
    vectors.write_text("".join(f"{w} " + " ".join(f"{v:.4f}" for v in rng.standard_normal(16)) + "\n"
                               for w in sorted(words)))
    return root, vectors


def _extract(data, cache: Path) -> list[str]:
    return ["extract", "--model", "tiny", "--images", f"coco-panoptic:{data[0]}", "--split", "train2017",
            "--image-batch-size", "4", "--cache-dir", str(cache), "-q"]


def _train(data, cache: Path, out: Path) -> list[str]:
    return ["train", "--model", "tiny", "--reference", f"coco-panoptic:{data[0]}", "--split", "train2017",
            "--embeddings", str(data[1]), "--epochs", "4", "--image-batch-size", "4",
            "--cache-dir", str(cache), "-q", "--out", str(out)]


def _explain(data, ckpt: Path, cache: Path, out: Path) -> list[str]:
    return ["explain", "--checkpoint", str(ckpt), "--images", f"coco-panoptic:{data[0]}", "--split", "val2017",
            "--vocabulary", "concepts", "--image-batch-size", "4", "--cache-dir", str(cache), "-q",
            "--out", str(out)]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_registered, data):
    """Uninterrupted runs of the three commands."""
    root = tmp_path_factory.mktemp("baseline")
    assert main(_extract(data, root / "cache-x")) == 0
    assert main(_train(data, root / "cache-t", root / "ckpt")) == 0
    assert main(_explain(data, root / "ckpt", root / "cache-e", root / "out")) == 0
    return root


def _features(cache: Path) -> np.ndarray:
    (entry,) = (cache / "features").iterdir()
    return np.array(FeatureStore.open(entry).array)


def _checkpoint(path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    meta = json.loads((path / "lavise.json").read_text())
    meta.pop("created")
    meta["training"].pop("seconds")
    meta["training"]["references"] = None
    return meta, load_file(str(path / "explainer.safetensors"))


def _assert_nothing_half_written(*roots: Path) -> None:
    """Every file a reader would open (not hidden temporaries or locks) is whole."""
    from lavise.checkpoint import read_metadata, read_weights

    for root in roots:
        for f in root.rglob("*") if root.exists() else ():
            rel = f.relative_to(root)
            if not f.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".npy":
                np.load(f, mmap_mode="r")  # shape agrees with size, or this raises
            elif f.suffix == ".csv":
                assert f.read_text().endswith("\n"), f
            elif f.suffix == ".safetensors" and f.name != "explainer.safetensors":
                from lavise.statistics import FilterStats

                FilterStats.load(f)
            if f.name == "lavise.json":
                meta = read_metadata(f.parent)
                read_weights(f.parent, meta)
            if f.name == "meta.json" and json.loads(f.read_text()).get("complete"):
                FeatureStore.open(f.parent)


def _kill(point: str, nth: int, argv: list[str], tmp_path: Path) -> None:
    script = tmp_path / "faulty.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS), src=str(SRC)))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(script), point, str(nth), *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (point, nth, proc.returncode, proc.stderr[-3000:])


@pytest.mark.parametrize("point, nth", [("forward", 3), ("rename", 5)])
def test_killed_extract_resumes_to_the_same_features(baseline, data, tmp_path, point, nth):
    cache = tmp_path / "cache"
    _kill(point, nth, _extract(data, cache), tmp_path)
    _assert_nothing_half_written(cache)
    assert main(_extract(data, cache)) == 0
    assert np.array_equal(_features(cache), _features(baseline / "cache-x"))


@pytest.mark.parametrize("point, nth", [("step", 3), ("save_file", 1), ("rename", 6)])
def test_killed_train_reruns_to_the_same_checkpoint(baseline, data, tmp_path, point, nth):
    cache, ckpt = tmp_path / "cache", tmp_path / "ckpt"
    _kill(point, nth, _train(data, cache, ckpt), tmp_path)
    _assert_nothing_half_written(cache, tmp_path)
    assert not ckpt.exists()  # a checkpoint appears whole or not at all
    assert main(_train(data, cache, ckpt)) == 0
    meta, weights = _checkpoint(ckpt)
    want_meta, want_weights = _checkpoint(baseline / "ckpt")
    assert meta == want_meta
    assert weights.keys() == want_weights.keys()
    assert all(torch.equal(weights[k], want_weights[k]) for k in weights)


@pytest.mark.parametrize("point, nth", [("rename", 6), ("rename", 8)])
def test_killed_explain_reruns_to_the_same_explanations(baseline, data, tmp_path, point, nth):
    cache, out = tmp_path / "cache", tmp_path / "out"
    _kill(point, nth, _explain(data, baseline / "ckpt", cache, out), tmp_path)
    _assert_nothing_half_written(cache, out)
    assert main(_explain(data, baseline / "ckpt", cache, out)) == 0
    for name in ("explanations.json", "explanations.csv"):
        assert (out / name).read_text() == (baseline / "out" / name).read_text()
