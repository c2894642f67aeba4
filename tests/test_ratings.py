"""The rating kit: blind page and key, and `ratings summarize` on hand-made answers."""

from __future__ import annotations

import json
import math

import pytest

from lavise.cli import main
from lavise.evaluate import FilterEvaluation
from lavise.report.ratings import RatingSource, krippendorff_alpha, rating_source, summarize, write_rating_page
from report_fixtures import tiny_explanations

KEY = {
    "format": "lavise-rating-key/1", "page": "p1", "sources": ["X", "Y"], "layer": "l", "seed": 0,
    "items": [
        {"item": 0, "filter": 5, "A": "X", "B": "Y", "words": {"A": ["a", "b"], "B": ["c", "d"]}},
        {"item": 1, "filter": 7, "A": "Y", "B": "X", "words": {"A": ["e", "f"], "B": ["g", "h"]}},
    ],
}
T, F = True, False
RATERS = {
    "r1": {0: ([T, F], [F, F], "A"), 1: ([T, T], [T, F], "B")},
    "r2": {0: ([T, T], [F, F], "A"), 1: ([F, F], [T, F], "same")},
    "r3": {0: ([F, F], [T, F], "B"), 1: ([T, F], [T, T], "B")},
}


def _write(tmp_path, raters=RATERS, key=KEY):
    kp = tmp_path / "rate-key.json"
    kp.write_text(json.dumps(key))
    files = []
    for name, items in raters.items():
        data = {"format": "lavise-ratings/1", "page": key["page"], "rater": name,
                "items": {str(i): {"A": a, "B": b, "prefer": p} for i, (a, b, p) in items.items()}}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        files.append(path)
    return files, kp


def test_summary_has_the_known_answers(tmp_path):
    files, key = _write(tmp_path)
    s = summarize(files, key, bootstrap=500, seed=1)
    assert s.raters == 3 and s.filters == 2 and s.answers == 6
    # Filter 5: X precisions (.5, 1, 0) -> median .5; filter 7: X (.5, .5, 1) -> .5.
    assert s.precision["X"][0] == pytest.approx(0.5)
    assert s.precision["Y"][0] == pytest.approx(0.25)  # medians 0 and .5
    assert s.top1["X"][0] == pytest.approx(1.0) and s.top1["X"][1:] == (1.0, 1.0)
    assert s.top1["Y"][0] == pytest.approx(0.5)
    assert s.prefer["X"][0] == pytest.approx(4 / 6) and s.prefer["Y"][0] == pytest.approx(1 / 6)
    assert s.prefer["same"][0] == pytest.approx(1 / 6) and s.prefer["neither"][0] == 0
    for v in (*s.precision.values(), *s.top1.values(), *s.prefer.values()):
        assert v[1] - 1e-9 <= v[0] <= v[2] + 1e-9
    md = s.to_markdown()
    assert "| X | 0.500" in md and "Krippendorff" in md
    assert json.loads(s.to_json())["prefer"]["X"][0] == pytest.approx(4 / 6)


def test_identical_raters_agree_perfectly(tmp_path):
    same = {"r1": RATERS["r3"], "r2": RATERS["r3"]}
    files, key = _write(tmp_path, same)
    s = summarize(files, key, bootstrap=50)
    assert s.alpha["preference (nominal)"] == pytest.approx(1.0)
    assert s.alpha["precision (interval)"] == pytest.approx(1.0)


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units.
    n = None
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
            [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    assert krippendorff_alpha(data, "nominal") == pytest.approx(0.743, abs=1e-3)
    assert krippendorff_alpha(data, "interval") == pytest.approx(0.849, abs=1e-3)
    assert math.isnan(krippendorff_alpha([[1, n], [n, 2]]))


def test_ratings_of_another_page_are_refused(tmp_path):
    files, key = _write(tmp_path)
    bad = json.loads(files[0].read_text())
    bad["page"] = "other"
    files[0].write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="page"):
        summarize(files, key)


def test_cli_summarize_markdown_and_json(tmp_path, capsys):
    files, key = _write(tmp_path)
    assert main(["ratings", "summarize", *map(str, files), "--key", str(key), "--bootstrap", "100",
                 "--out", str(tmp_path / "summary")]) == 0
    out = capsys.readouterr().out
    assert "top-1 precision" in out and (tmp_path / "summary.json").is_file() and (tmp_path / "summary.md").is_file()
    assert main(["ratings", "summarize", *map(str, files), "--key", str(key), "--bootstrap", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == ["X", "Y"]


def test_rating_page_is_blind_seeded_and_keyed(tmp_path):
    result = tiny_explanations(tmp_path / "data")
    evaluation = {f.filter: FilterEvaluation(f.filter, (("concept", 0.1),), (f"label{f.filter}", 0.1), {})
                  for f in result}
    other = rating_source("netdissect", result, evaluation)
    assert other.words[0] == ["label0"]
    page, key = write_rating_page(result, other, tmp_path / "site", 4, seed=3)
    text = page.read_text()
    k = json.loads(key.read_text())
    assert key.parent == page.parent and len(k["items"]) == 4
    assert "netdissect" not in text and "lavise attention" not in text  # blind: no source names
    assert "rate-key" not in text
    assert text.count('class="item"') == 4 and "localStorage" not in text  # logic lives in rate.js
    assert (tmp_path / "site" / "assets" / "rate.js").is_file()
    page2, key2 = write_rating_page(result, other, tmp_path / "site2", 4, seed=3)
    assert json.loads(key2.read_text())["items"] == k["items"]
    orders = {it["A"] for it in json.loads(write_rating_page(result, other, tmp_path / "s3", 6, seed=0)[1]
                                           .read_text())["items"]}
    assert orders == {"netdissect", "lavise attention"}  # both orders occur
    with pytest.raises(ValueError, match="evaluation"):
        rating_source("netdissect", result, None)
    with pytest.raises(ValueError, match="at least 1"):
        write_rating_page(result, RatingSource("y", {}), tmp_path / "s4", 0)
