"""Figure 4 rows drawn with matplotlib, checked as rendered PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lavise.cli import main
from lavise.report.figures import filter_rows_figure, save_figure
from report_fixtures import tiny_explanations


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    result = tiny_explanations(root)
    result.save(root / "ex")
    return root, result


def test_figure_rows_png_and_svg(tiny, tmp_path):
    root, result = tiny
    fig = filter_rows_figure(result, [3, 1], images=4, other={3: ["dog"]})
    png, svg = save_figure(fig, tmp_path / "fig.png")
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] < img.shape[1]  # two rows, wide
    assert img.std() > 10  # not blank: images and text drawn
    text = svg.read_text()
    assert "<svg" in text and "filter 3" in text and "NetDissect: dog" in text
    # The top half (filter 3) and the bottom half (filter 1) both hold image content.
    h = img.shape[0]
    assert img[: h // 2, : img.shape[1] // 2].std() > 5 and img[h // 2:, : img.shape[1] // 2].std() > 5


def test_cli_figure(tiny, tmp_path, capsys):
    root, _ = tiny
    assert main(["figure", "--explanations", str(root / "ex"), "--filters", "2,0", "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file() and (tmp_path / "f.svg").is_file()
    assert main(["figure", "--explanations", str(root / "ex"), "--filters", "99", "--out", str(tmp_path / "g.png")]) == 2
    assert "not in the explanations" in capsys.readouterr().err
