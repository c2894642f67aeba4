"""The report rendered in a real browser (headless Chromium from file://).

Skips with a reason when Chromium (or, for the typing tests, chromedriver and selenium)
is absent; `.ci/run` installs them so these run in CI.
"""

from __future__ import annotations

import dataclasses
import html
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from lavise.report import build_report
from lavise.report.browser import chromium_flags, dump_dom, find_chromium, screenshot
from report_fixtures import EVIL_FILE, EVIL_WORD, tiny_explanations, with_varied_words

# .ci/run sets LAVISE_REQUIRE_BROWSER=1 once Chromium is installed: then a missing piece fails
# the tests instead of skipping them.
REQUIRED = os.environ.get("LAVISE_REQUIRE_BROWSER") == "1"


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (LAVISE_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def _chromium():
    if find_chromium() is None:
        _missing("chromium not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    result = with_varied_words(tiny_explanations(root, x=3))
    return result, build_report(result, root / "site")


@pytest.fixture(scope="module")
def evil_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("evil")
    result = tiny_explanations(root, x=7)  # every filter holds every allowed word, <b> included
    assert all(EVIL_WORD in f.labels for f in result)
    return result, build_report(result, root / "site")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium not installed (pip install -e '.[test]')")
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None or find_chromium() is None:
        _missing("chromium or chromedriver not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = find_chromium()
    for flag in chromium_flags(tmp_path_factory.mktemp("profile")):
        opts.add_argument(flag)
    opts.add_argument("--window-size=1280,900")
    drv = webdriver.Chrome(options=opts, service=Service(chromedriver))
    try:
        yield drv
    finally:
        drv.quit()


def test_screenshot_is_not_blank_and_one_card_per_filter(site, tmp_path):
    result, index = site
    png = screenshot(index, tmp_path / "index.png", wait_ms=1500)
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.std() > 10  # text, cards and thumbnails, not an empty page
    dom = dump_dom(index)
    assert dom.count('class="card') == len(result)
    assert f"{len(result)} of {len(result)} filters" in dom  # the script ran


def test_typing_a_word_leaves_only_the_filters_with_that_word(site, driver):
    from selenium.webdriver.common.by import By

    result, index = site
    driver.get(index.as_uri())
    counts: dict[str, int] = {}
    for f in result:
        for w in f.labels:
            counts[w] = counts.get(w, 0) + 1
    word = next(w for w, n in sorted(counts.items(), key=lambda t: t[1]) if n < len(result))
    box = driver.find_element(By.ID, "q")
    box.send_keys(word)
    visible = {int(c.get_attribute("data-u")) for c in driver.find_elements(By.CSS_SELECTOR, ".card")
               if c.is_displayed()}
    assert visible == {f.filter for f in result if word in f.labels}
    assert driver.find_element(By.ID, "count").text.startswith(f"{len(visible)} of")
    box.clear()
    box.send_keys(" ")
    assert sum(c.is_displayed() for c in driver.find_elements(By.CSS_SELECTOR, ".card")) == len(result)


def test_sorting_by_threshold_reorders_cards(site, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    result, index = site
    driver.get(index.as_uri())
    Select(driver.find_element(By.ID, "sort")).select_by_value("t")
    order = [int(c.get_attribute("data-u")) for c in driver.find_elements(By.CSS_SELECTOR, ".card")]
    assert order == [f.filter for f in sorted(result, key=lambda f: (-float(f"{f.threshold:.6g}"), f.filter))]


def test_file_names_and_words_from_data_show_as_text(evil_site, driver):
    from selenium.webdriver.common.by import By

    result, index = evil_site
    dom = dump_dom(index)
    assert html.escape(EVIL_WORD, quote=False) in dom
    u = result.filters[0].filter
    page = index.parent / "filters" / f"{u}.html"
    driver.get(page.as_uri())
    body = driver.find_element(By.TAG_NAME, "body").text
    assert EVIL_FILE in body  # shown as text...
    assert not driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]')  # ...never as an element
    assert not driver.find_elements(By.CSS_SELECTOR, "td b, li b, figcaption b")
    words = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "table tr td:nth-child(2)")]
    assert any(w.startswith(EVIL_WORD) for w in words)
    driver.get(index.as_uri())
    assert EVIL_WORD in driver.find_element(By.ID, "cards").text
    assert not driver.find_elements(By.CSS_SELECTOR, ".words b")


def test_a_whole_layer_index_is_small_and_opens_fast(site, driver, tmp_path):
    """1,280 filters (the default layer): index under 2 MB, open in under 2 s."""
    from selenium.webdriver.common.by import By

    result, _ = site
    fs = [dataclasses.replace(result.filters[i % len(result)], filter=i) for i in range(1280)]
    big = dataclasses.replace(result, filters=tuple(fs))
    start = time.time()
    index = build_report(big, tmp_path / "big")
    built = time.time() - start
    assert index.stat().st_size < 2_000_000
    assert built < 60
    driver.get(index.as_uri())
    ms = driver.execute_script(
        "var t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;")
    assert 0 < ms < 2000, f"the index took {ms:.0f} ms to load"
    assert len(driver.find_elements(By.CSS_SELECTOR, ".card")) == 1280
    # Thumbnails are made lazily: the cards near the viewport have them, the far ones not yet.
    time.sleep(0.5)
    made = driver.execute_script("return Array.prototype.map.call(document.querySelectorAll('.thumbs'), "
                                 "function (t) { return t.querySelectorAll('img').length; });")
    assert made[0] == 5 and made[-1] == 0
    loaded = driver.execute_script("var i = document.querySelector('.thumbs img'); return i.complete && i.naturalWidth;")
    assert loaded == 96


def test_rating_page_keeps_answers_in_the_browser_and_they_summarize(tmp_path, driver):
    import json

    from selenium.webdriver.common.by import By

    from lavise.report.ratings import RatingSource, summarize, write_rating_page

    result = tiny_explanations(tmp_path / "data")
    other = RatingSource("other", {f.filter: ["dog", "cat"] for f in result})
    page, key = write_rating_page(result, other, tmp_path / "site", 3, seed=0, words=2)
    driver.get(page.as_uri())
    driver.find_element(By.ID, "rater").send_keys("ann")
    items = driver.find_elements(By.CSS_SELECTOR, ".item")
    assert len(items) == 3
    for item in items:
        item.find_element(By.CSS_SELECTOR, 'input[data-side="A"][data-rank="0"]').click()
        item.find_element(By.CSS_SELECTOR, 'input[type=radio][value="A"]').click()
    assert "3 of 3 items answered" in driver.find_element(By.ID, "status").text
    driver.refresh()  # answers survive a reload
    assert all(i.find_element(By.CSS_SELECTOR, 'input[type=radio][value="A"]').is_selected()
               for i in driver.find_elements(By.CSS_SELECTOR, ".item"))
    stored = driver.execute_script("for (var i = 0; i < localStorage.length; i++) {"
                                   " var k = localStorage.key(i); if (k.indexOf('lavise-ratings-') === 0)"
                                   " return localStorage.getItem(k); }")
    answers = tmp_path / "ann.json"
    answers.write_text(stored)
    assert json.loads(stored)["rater"] == "ann"
    s = summarize([answers], key, bootstrap=50)
    k = json.loads(key.read_text())
    first_is_a = sum(it["A"] == k["sources"][0] for it in k["items"])
    assert s.prefer[k["sources"][0]][0] == pytest.approx(first_is_a / 3)
    assert s.top1[k["sources"][0]][0] == pytest.approx(first_is_a / 3)
