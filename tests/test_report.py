"""Evidence in explanations, the static report's files, per-filter evaluation records."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavise.cli import main
from lavise.evaluate import EvaluationReport, FilterEvaluation, GroundTruth, filter_records
from lavise.explain import DISPLAY_IMAGES, Explanations
from lavise.report import build_report, load_evaluation, load_explanations
from lavise.report.evidence import crop_like_model, highlight, lit_region, overlay
from lavise.report.html import matched_filters, neighbours
from report_fixtures import EVIL_FILE, EVIL_WORD, tiny_explanations


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    result = tiny_explanations(root, x=7)
    result.save(root / "ex")
    return root, result


def test_explanations_carry_up_to_15_top_images_with_paths_maps_and_votes(tiny):
    root, result = tiny
    n_images = 10  # 9 random images + one with an HTML-tag name
    for f in result:
        assert len(f.top_images) == 3
        assert len(f.evidence) == min(DISPLAY_IMAGES, n_images)  # more than p, kept for display
        assert [t.image_id for t in f.evidence[:3]] == [t.image_id for t in f.top_images]
        assert all(t.voted for t in f.evidence[:3]) and not any(t.voted for t in f.evidence[3:])
        for t in f.evidence:
            assert Path(t.path).is_file() and Path(t.path).name == t.image_id
            amap = t.activation_map
            assert amap.shape == t.map_shape and amap.ndim == 2
            assert np.isclose(amap.max(), t.activation, rtol=1e-2, atol=1e-3)  # the map's max is the activation
    # JSON round trip keeps the evidence; maps are base64 float16.
    back = Explanations.from_dict(json.loads(result.to_json()))
    assert back == result
    ev = json.loads(result.to_json())["filters"][0]["evidence"][0]
    assert set(ev) == {"image_id", "activation", "path", "voted", "map_shape", "map"}


def test_evidence_works_for_datasets_and_without_paths(tiny, tmp_path):
    root, result = tiny
    # The same explanation without recorded evidence still loads (older results).
    d = json.loads(result.to_json())
    for f in d["filters"]:
        f.pop("evidence")
    old = Explanations.from_dict(d)
    assert all(f.evidence == () for f in old)
    index = build_report(old, tmp_path / "old")
    assert index.is_file()


def test_lit_region_and_highlight():
    amap = np.zeros((7, 7), np.float32)
    amap[3, 3] = 2.0
    mask = lit_region(amap, 1.0, 70)
    assert mask[35, 35] and not mask[0, 0] and mask.sum() < 70 * 70 / 4
    img = Image.new("RGB", (70, 70), (200, 200, 200))
    out = np.asarray(highlight(img, mask))
    assert out[0, 0].max() < 100  # dimmed outside
    assert tuple(out[35, 35]) == (200, 200, 200)  # bright inside
    layer = np.asarray(overlay(mask).convert("RGBA"))
    assert layer[35, 35, 3] == 0 and layer[0, 0, 3] > 100  # clear inside, dark outside
    wide = Image.new("RGB", (300, 100))
    assert crop_like_model(wide, {"resize": 256, "crop": 224}, 50).size == (50, 50)


def test_report_files_escaping_and_reuse(tiny, tmp_path):
    root, result = tiny
    out = tmp_path / "site"
    index = build_report(result, out)
    text = index.read_text()
    assert text.count('class="card') == len(result)
    assert EVIL_WORD not in text.replace("<b>Explanation", "")  # the word is never raw HTML
    assert html.escape(EVIL_WORD) in text
    for f in result:
        page = (out / "filters" / f"{f.filter}.html").read_text()
        assert html.escape(EVIL_FILE) in page and EVIL_FILE not in page
        assert "onerror=alert(1)>" not in page
    # Every referenced file exists; each image is written once as small JPEG files
    # (10 images), each filter adds one overlay strip (a tile per top image).
    thumbs = list((out / "thumb").glob("*.jpg"))
    assert len(thumbs) == len(list((out / "img").glob("*.jpg"))) <= 10
    assert all(p.stat().st_size < 20_000 for p in thumbs)
    strips = list((out / "lit").glob("*.png"))
    assert len(strips) <= len(result) and all(p.stat().st_size < 20_000 for p in strips)
    specs = [spec.split() for spec in re.findall(r'data-th="([^"]*)"', text)]
    assert len(specs) == len(result) and all(len(sp) == 2 + 5 for sp in specs)  # five thumbnails per card
    for sp in specs:
        assert (out / "lit" / f"{sp[0]}.png").is_file() and all((out / "thumb" / f"{t}.jpg").is_file() for t in sp[2:])
        assert Image.open(out / "lit" / f"{sp[0]}.png").size == (112 * int(sp[1]), 112)
    page = (out / "filters" / f"{result.filters[0].filter}.html").read_text()
    refs = re.findall(r'src="\.\./(img/[^"]+)"', page) + re.findall(r"url\('\.\./(lit/[^']+)'\)", page)
    assert len(refs) == 2 * len(result.filters[0].evidence) and all((out / r).is_file() for r in refs)
    # Written once: building again writes no file.
    files = [p for sub in ("img", "thumb", "lit") for p in (out / sub).iterdir()]
    before = {p: p.stat().st_mtime_ns for p in files}
    build_report(result, out)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_neighbours_by_shared_words():
    class F:
        def __init__(self, u, labels):
            self.filter, self.labels = u, labels

    near = neighbours([F(0, ["dog", "cat"]), F(1, ["dog", "cat", "car"]), F(2, ["tree"])])
    assert near[0][0][0] == 1 and near[0][0][2] == ["cat", "dog"]
    assert near[2] == []


def _ground_truth():
    iou = torch.tensor([[0.10, 0.02, 0.05], [0.01, 0.03, 0.02], [0.0, 0.2, 0.0]])
    return GroundTruth(("dog", "car", "dining table"), iou, 0.04,
                       (("dog", "dining table"), (), ("car",)))


def test_evaluation_records_ground_truth_and_words_per_filter(tmp_path):
    gt = _ground_truth()
    preds = {"attention": [["dog", "cat"], ["road"]], "netdissect (oracle: eval-split labels)": [["dog"], ["car"]]}
    recs = filter_records(gt, [0, 2], preds)
    assert len(recs) == 3
    assert recs[0].ground_truth == (("dog", pytest.approx(0.10)), ("dining table", pytest.approx(0.05)))
    assert recs[1].ground_truth == () and recs[1].best == ("car", pytest.approx(0.03)) and recs[1].words == {}
    assert recs[2].words["attention"] == ["road"]
    report = EvaluationReport("m", "layer", "trained", "ds", (), filters=recs)
    report.save(tmp_path)
    rows = report.filters_csv().splitlines()
    assert len(rows) == 4 and rows[1].startswith("0,dog:0.1000 dining table:0.0500,dog,0.1000,dog cat,dog")
    loaded = load_evaluation(tmp_path, "layer")
    assert loaded[0] == FilterEvaluation.from_dict(recs[0].to_dict())
    with pytest.raises(ValueError, match="layer"):
        load_evaluation(tmp_path, "other")


def test_report_with_evaluation_marks_matching_filters(tiny, tmp_path):
    root, result = tiny
    u0, u1 = result.filters[0].filter, result.filters[1].filter
    word = result.filters[0].labels[0]
    evals = {u0: FilterEvaluation(u0, ((word, 0.2),), (word, 0.2), {"attention": [word]}),
             u1: FilterEvaluation(u1, (), ("zebra", 0.01), {})}
    assert matched_filters(result, evals) == {u0}
    index = build_report(result, tmp_path / "site", evaluation=evals)
    text = index.read_text()
    assert text.count('class="card match"') == 1 and 'value="iou"' in text
    page = (tmp_path / "site" / "filters" / f"{u0}.html").read_text()
    assert "Ground truth" in page and "0.200" in page


def test_cli_report_and_errors(tiny, tmp_path, capsys):
    root, _ = tiny
    assert main(["report", "--explanations", str(root / "ex"), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "index.html" in out and (tmp_path / "r" / "index.html").is_file()
    assert main(["report", "--explanations", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "lavise: error: explanations not found" in capsys.readouterr().err
    assert load_explanations(root / "ex").layer == "features"


def test_an_isolated_peak_at_the_threshold_is_lit():
    amap = np.full((7, 7), 1.0, np.float32)
    amap[2, 5] = 6.0  # saturated (ReLU6) and exactly T_u
    mask = lit_region(amap, 6.0, 112)
    assert mask.any() and mask[2 * 16 + 8, 5 * 16 + 8] and mask.sum() < 2 * 16 * 16
    batch = lit_region(np.stack([amap, amap * 0]), np.array([6.0, 6.0]), 112)
    assert batch.shape == (2, 112, 112) and (batch[0] == mask).all() and not batch[1].any()


def test_cli_report_with_a_rating_page_against_other_explanations(tiny, tmp_path, capsys):
    root, _ = tiny
    code = main(["report", "--explanations", str(root / "ex"), "--out", str(tmp_path / "r"), "--rate", "2",
                 "--rate-against", str(root / "ex"), "--seed", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "rate-key.json" in out and (tmp_path / "r" / "rate.html").is_file()
    assert 'href="rate.html"' in (tmp_path / "r" / "index.html").read_text()
    key = json.loads((tmp_path / "r" / "rate-key.json").read_text())
    assert len(key["items"]) == 2 and len(set(key["sources"])) == 2
    assert main(["report", "--explanations", str(root / "ex"), "--out", str(tmp_path / "r2"), "--rate", "2"]) == 2
    assert "needs --evaluation" in capsys.readouterr().err
