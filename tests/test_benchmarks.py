"""Smoke runs of the benchmarks on a few images: they keep working (the numbers come
from running them for real, see docs/performance.md)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _mini_panoptic(sample: Path, root: Path, counts: dict[str, int]) -> Path:
    """A copy of the bundled panoptic sample with the first few images of each split."""
    for split, n in counts.items():
        data = json.loads((sample / "annotations" / f"panoptic_{split}.json").read_text())
        anns = [a for a in data["annotations"] if a["segments_info"]][:n]
        keep = {a["image_id"] for a in anns}
        data["annotations"] = anns
        data["images"] = [im for im in data["images"] if im["id"] in keep]
        (root / "annotations" / f"panoptic_{split}").mkdir(parents=True)
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))
        for a in anns:
            shutil.copy(sample / "annotations" / f"panoptic_{split}" / a["file_name"],
                        root / "annotations" / f"panoptic_{split}" / a["file_name"])
        for im in data["images"]:
            shutil.copy(sample / "images" / split / im["file_name"], root / "images" / split / im["file_name"])
    return root


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for name in ("bench_pipeline", "bench_scale", "bench_extraction", "bench_cpu_time"):
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_pipeline_benchmark_smoke(bench, sample_dir, tmp_path, capsys):
    import bench_pipeline

    root = _mini_panoptic(sample_dir / "coco-panoptic", tmp_path / "coco", {"val2017": 4, "train2017": 12})
    rows = bench_pipeline.main(["--images", str(root), "--device", "cpu", "--batch-sizes", "4", "--repeats", "2",
                                "--image-filters", "0-3", "--epochs", "2", "--methods", "activation"])
    out = capsys.readouterr().out
    assert "bare forward floor" in out and "image masking speed-up" in out
    assert "IoU ground truth again (from its cache)" in dict(rows)
    # The floor is the fastest of every bare configuration, the extraction's batch size
    # included, each the minimum of interleaved repeats.
    bare = out.split("bare configurations (min of 2 interleaved repeats, x floor): ")[1].splitlines()[0]
    ratios = [float(part.rsplit(" ", 1)[1]) for part in bare.split("; ")]
    assert min(ratios) == 1.0 and "batch 4" in bare and "channels-last" in bare and "NCHW" in bare
    assert bench_pipeline.bare_configs("cpu", [4])[-1][1] == 16
    diff = float(out.split("largest difference of the pooled vectors: ")[1].split()[0])
    assert diff < 1e-3  # batched image masking gives the previous results


@pytest.mark.slow
def test_scale_benchmark_smoke(bench, tmp_path, capsys):
    import bench_scale

    bench_scale.main(["--images", "6", "--resolution", "14", "--layer", "_blocks.3",
                      "--head-pairs", "256", "--head-sample", "128", "--workdir", str(tmp_path),
                      "--json", str(tmp_path / "scale.json")])
    result = json.loads((tmp_path / "scale.json").read_text())
    size = result["sizes"][0]
    assert size["images"] == 6 and set(size["ms_per_image"]) == {
        "extraction", "filter statistics", "IoU ground truth", "pool concept masks"}
    assert size["peak_anon_mib"] > 0 and result["head"]["extrapolated_50_epochs_s"] > 0
    assert "peak anonymous RSS" in capsys.readouterr().out


@pytest.mark.slow
def test_extraction_benchmark_smoke(bench, tmp_path, capsys, monkeypatch):
    import bench_extraction
    from tiny import image_folder

    folder = image_folder(tmp_path / "imgs", n=4, size=(64, 80))
    monkeypatch.setattr(sys, "argv", ["bench_extraction.py", str(folder), "--device", "cpu", "--workers", "0",
                                      "--batch-size", "2", "--decode", "cpu", "device"])
    bench_extraction.main()
    out = capsys.readouterr().out
    assert "decode cpu" in out and "decode device" in out


@pytest.mark.slow
def test_cpu_time_benchmark_smoke(bench, sample_dir, tmp_path, capsys):
    import bench_cpu_time

    root = _mini_panoptic(sample_dir / "coco-panoptic", tmp_path / "coco", {"val2017": 3})
    bench_cpu_time.main(["--images", str(root), "--repeats", "1", "--image-filters", "0-1"])
    out = capsys.readouterr().out
    assert "fastest extraction / floor" in out and "previous / batched" in out
    assert float(out.split("largest difference ")[1].split()[0]) < 1e-3
