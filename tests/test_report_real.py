"""A whole layer's report from a real explanation (EfficientNet-Lite0, COCO), in Chromium."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from lavise import Config, explain
from lavise.report import build_report
from lavise.report.browser import dump_dom, find_chromium, screenshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_report(coco_explainer, shared_data, lavise_cache, tmp_path_factory):
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu")
    result = explain(coco_explainer, f"coco-panoptic:{shared_data / 'coco-panoptic'}", "val2017", config=config)
    out = tmp_path_factory.mktemp("real-report")
    start = time.time()
    index = build_report(result, out)
    return result, index, time.time() - start


def test_real_explanations_carry_evidence(real_report):
    result, _, _ = real_report
    assert len(result) == 1280
    for f in result.filters[:50]:
        assert len(f.evidence) == 15 and sum(t.voted for t in f.evidence) <= result.settings["p"]
        assert all(t.path.endswith(".jpg") and t.map_shape == (7, 7) for t in f.evidence)


def test_whole_layer_report_in_chromium(real_report, tmp_path):
    result, index, seconds = real_report
    assert index.stat().st_size < 2_000_000
    if find_chromium() is None:
        pytest.skip("chromium not installed (apt-get install chromium chromium-driver)")
    start = time.time()
    dom = dump_dom(index, wait_ms=1000, timeout=180)
    assert dom.count('class="card') == 1280
    png = screenshot(index, tmp_path / "index.png", wait_ms=2000, timeout=180)
    img = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    assert img.std() > 20
    # Thumbnails were drawn: a good share of the card area is photograph (dimmed, so
    # dark), not text on white (text alone darkens about 2% of it).
    assert (img[250:800].mean(axis=2) < 120).mean() > 0.1
    print(f"report built in {seconds:.1f} s; dom dump in {time.time() - start:.1f} s")
