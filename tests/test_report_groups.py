"""The group-comparison page (groups.html) rendered in headless Chromium from file://.

Skips with a reason when Chromium is absent, unless LAVISE_REQUIRE_BROWSER=1 (as CI sets).
"""

from __future__ import annotations

import html
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lavise.cli import main
from lavise.compare_groups import GroupComparison, contrast_groups
from lavise.report.browser import dump_dom, find_chromium, screenshot
from lavise.report.groups_page import load_comparison, write_groups_page
from report_fixtures import tiny_explanations, with_varied_words

REQUIRED = os.environ.get("LAVISE_REQUIRE_BROWSER") == "1"
EVIL_GROUP = "<b>women"


def _need_chromium() -> None:
    if find_chromium() is None:
        reason = "chromium not installed (apt-get install chromium chromium-driver)"
        if REQUIRED:
            pytest.fail(f"{reason} (LAVISE_REQUIRE_BROWSER=1)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Tiny explanations (6 filters) and a comparison of two planted groups over them."""
    root = tmp_path_factory.mktemp("groups")
    explanations = with_varied_words(tiny_explanations(root, x=3))
    files = sorted(p for p in (root / "imgs").iterdir() if p.suffix == ".jpg")
    n_per, d = 30, len(explanations.filters)
    g = torch.Generator().manual_seed(0)
    image_max = torch.rand(2 * n_per, d, generator=g)
    image_max[:n_per, 1] += 0.8  # filter 1 fires in the first group
    image_max[n_per:, 4] += 0.8  # filter 4 in the second
    thresholds = torch.quantile(image_max, 0.8, dim=0)
    names = [f"im{i:02d}" for i in range(2 * n_per)]
    words = [list(f.labels[:3]) for f in explanations.filters]
    contrasts = contrast_groups(image_max, thresholds, [EVIL_GROUP] * n_per + ["men"] * n_per, words=words,
                                image_names=names, min_group_size=10,
                                filter_ids=[f.filter for f in explanations.filters])
    comparison = GroupComparison("tiny", "features", "fisher", 0.05, 0.2, {EVIL_GROUP: n_per, "men": n_per},
                                 {"no group": 3}, contrasts,
                                 {n: str(files[i % len(files)]) for i, n in enumerate(names)},
                                 {"explanations": explanations.settings})
    return root, explanations, comparison


def test_comparison_round_trips_through_groups_json(made, tmp_path):
    _, _, comparison = made
    comparison.save(tmp_path, figure=False)
    assert load_comparison(tmp_path) == comparison
    with pytest.raises(FileNotFoundError, match="no groups.json"):
        load_comparison(tmp_path / "nowhere")


def test_groups_page_in_chromium_lists_each_filter_and_escapes_group_names(made, tmp_path):
    _need_chromium()
    root, explanations, comparison = made
    out = tmp_path / "site"
    page = write_groups_page(comparison, out, linked=[1], top=4, examples=2)
    assert (out / "groups.png").is_file() and Image.open(out / "groups.png").size[0] > 100
    (c,) = comparison.contrasts
    listed = c.ranked(1, 4) + c.ranked(-1, 4)
    png = screenshot(page, tmp_path / "groups.png", wait_ms=1000)
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.std() > 10  # text, tables and the figure, not an empty page
    dom = dump_dom(page)
    rows = re.findall(r'<tr class="grow[^"]*" data-filter="(\d+)"', dom)
    assert sorted(map(int, rows)) == sorted(f.filter for f in listed)
    assert {1, 4} <= set(map(int, rows))
    # the group name shows as text, never as a <b> element
    assert html.escape(EVIL_GROUP, quote=False) in dom
    assert "<b>women" not in dom.replace(html.escape(EVIL_GROUP, quote=False), "")
    # filter 1 has a page in the report and links to it; others do not link
    assert 'href="filters/1.html"' in dom and 'href="filters/4.html"' not in dom
    # thumbnails of example images are written once each and referenced relatively
    thumbs = set(re.findall(r'src="(thumb/[0-9a-f]+\.jpg)"', dom))
    assert thumbs and all((out / t).is_file() for t in thumbs)
    assert 'src="groups.png"' in dom
    assert re.search(r'<tr class="grow sig" data-filter="1">.*?class="star"', dom)  # planted: marked significant
    assert dom.count('class="wrow') >= 1  # the word-level table


def test_cli_report_adds_the_groups_page_and_links_it(made, tmp_path, capsys):
    root, explanations, comparison = made
    explanations.save(tmp_path / "exp")
    comparison.save(tmp_path / "cmp", figure=False)
    code = main(["report", "--explanations", str(tmp_path / "exp"), "--comparison", str(tmp_path / "cmp"),
                 "--out", str(tmp_path / "site")])
    assert code == 0
    index = (tmp_path / "site" / "index.html").read_text()
    assert 'href="groups.html"' in index
    page = (tmp_path / "site" / "groups.html").read_text()
    assert 'href="filters/1.html"' in page and (tmp_path / "site" / "filters" / "1.html").is_file()
    assert html.escape(EVIL_GROUP, quote=False) in page


def test_cli_compare_groups_writes_the_page_beside_its_outputs(made, tmp_path, capsys, monkeypatch):
    import sys

    cg = sys.modules["lavise.compare_groups"]  # the package re-exports a function of the same name

    _, _, comparison = made
    monkeypatch.setattr(cg, "compare_groups", lambda *a, **k: comparison)  # the statistics are tested elsewhere
    out = tmp_path / "cmp"
    code = main(["compare-groups", "--checkpoint", str(tmp_path), "--images", str(tmp_path), "--groups",
                 "csv:x.csv", "--out", str(out), "--device", "cpu"])
    assert code == 0
    for name in ("groups.json", "groups.png", "groups.html"):
        assert (out / name).is_file()
    page = (out / "groups.html").read_text()
    assert 'src="groups.png"' in page and "filters/" not in page  # no filter pages here: no links
    code = main(["report", "--explanations", str(tmp_path), "--comparison", str(tmp_path / "none"),
                 "--out", str(tmp_path / "site")])
    assert code == 2


def test_groups_page_links_home_only_inside_a_report(made, tmp_path):
    """A page written on its own has no link to a report index that is not there."""
    _, _, comparison = made
    alone = write_groups_page(comparison, tmp_path / "alone", top=2, examples=1)
    assert not (tmp_path / "alone" / "index.html").exists()
    assert 'href="index.html"' not in alone.read_text()
    inside = write_groups_page(comparison, tmp_path / "report", linked=[1], top=2, examples=1)
    assert '<a class="home" href="index.html">' in inside.read_text()
