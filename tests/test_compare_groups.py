"""Group comparison statistics on synthetic activations with planted differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lavise.compare_groups import GroupComparison, benjamini_hochberg, contrast_groups
from lavise.statistics import compute_filter_stats, TensorFeatureSource


def _synthetic(n_per: int = 60, d: int = 40, planted: dict[int, int] | None = None, seed: int = 0):
    """Image maxima of two groups; planted filters fire far more often in one group."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * n_per
    image_max = torch.rand(n, d, generator=g)
    groups = ["a"] * n_per + ["b"] * n_per
    for u, sign in (planted or {}).items():
        rows = slice(0, n_per) if sign > 0 else slice(n_per, n)
        image_max[rows, u] += 0.6 * (torch.rand(n_per, generator=g) > 0.3).float()
    thresholds = torch.quantile(image_max, 0.8, dim=0)
    return image_max, thresholds, groups


def test_planted_filters_come_out_on_top_in_both_directions():
    planted = {3: 1, 17: 1, 25: -1, 31: -1}
    image_max, thr, groups = _synthetic(planted=planted)
    words = [[f"w{u % 10}"] for u in range(40)]
    (c,) = contrast_groups(image_max, thr, groups, words=words, min_group_size=10)
    assert (c.group, c.other) == ("a", "b")
    top_a = {f.filter for f in c.ranked(1, 2)}
    top_b = {f.filter for f in c.ranked(-1, 2)}
    assert top_a == {3, 17} and top_b == {25, 31}
    for u in planted:
        f = c.filters[u]
        assert f.q_value < 0.01 and np.sign(f.difference) == planted[u]
        assert f.qualified == int(((image_max[:60, u] >= thr[u]) & (image_max[:60, u] > 0)).sum())
    unplanted = [f for f in c.filters if f.filter not in planted]
    assert sum(f.q_value <= 0.05 for f in unplanted) <= 2
    # examples are qualified images of each group, most activated first
    ex = c.filters[3].examples["a"]
    assert ex and all(int(e) < 60 for e in ex)
    # word aggregate: w3 (filters 3, 13, 23, 33) is tied to a; w5 (25) and w1 (31) to b
    by_word = {w.words[0]: w for w in c.words}
    assert by_word["w7"].filters == (7, 17, 27, 37)
    assert by_word["w5"].difference < 0 and by_word["w1"].difference < 0


def test_z_test_agrees_with_fisher_on_the_planted_filters():
    image_max, thr, groups = _synthetic(planted={3: 1, 25: -1})
    (f,) = contrast_groups(image_max, thr, groups, test="fisher")
    (z,) = contrast_groups(image_max, thr, groups, test="z")
    assert {x.filter for x in z.ranked(1, 1)} == {3} and {x.filter for x in z.ranked(-1, 1)} == {25}
    assert z.filters[3].p_value == pytest.approx(f.filters[3].p_value, rel=5, abs=1e-3)


def test_bh_keeps_the_false_discovery_rate_on_null_data():
    # 200 null data sets of 50 filters: the share of runs with any discovery at q <= 0.1
    # (the FDR under the complete null) stays near or below 0.1.
    runs = 200
    any_disc = 0
    rng = np.random.default_rng(0)
    for r in range(runs):
        p = rng.uniform(size=50)
        any_disc += bool((benjamini_hochberg(p) <= 0.1).any())
    assert any_disc / runs <= 0.15
    image_max, thr, groups = _synthetic(seed=1)
    (c,) = contrast_groups(image_max, thr, groups)
    assert sum(f.q_value <= 0.05 for f in c.filters) == 0


def test_bh_matches_the_textbook_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    q = benjamini_hochberg(p)
    m = len(p)
    order = np.argsort(p)
    expect = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    assert np.allclose(q[order], expect)


def test_three_groups_each_against_the_rest_and_bad_input():
    image_max, thr, groups = _synthetic(n_per=30, planted={2: 1})
    three = ["x"] * 20 + ["y"] * 20 + ["z"] * 20
    cs = contrast_groups(image_max, thr, three)
    assert [(c.group, c.other) for c in cs] == [("x", "rest"), ("y", "rest"), ("z", "rest")]
    with pytest.raises(ValueError, match="at least two groups"):
        contrast_groups(image_max, thr, ["x"] * 60)
    with pytest.raises(ValueError, match="too few images.*'y' has 3"):
        contrast_groups(image_max, thr, ["x"] * 57 + ["y"] * 3)
    with pytest.raises(ValueError, match="unknown test"):
        contrast_groups(image_max, thr, three, test="t")


def test_thresholds_from_filter_stats_and_round_trip(tmp_path):
    feats = torch.rand(40, 6, 4, 4)
    feats[:20, 0] += 1.0  # filter 0 fires only in the first half
    stats = compute_filter_stats(TensorFeatureSource(feats), quantile=0.05, top_k=5, progress=False)
    groups = ["first"] * 20 + ["second"] * 20
    cs = contrast_groups(stats.image_max, stats.thresholds, groups, words=[["red"]] * 6)
    assert cs[0].ranked(1, 1)[0].filter == 0
    result = GroupComparison("tiny", "features", "fisher", 0.05, 0.05, {"first": 20, "second": 20}, {}, cs)
    back = GroupComparison.from_dict(result.to_dict())
    assert back == result
    md = result.to_markdown()
    assert "Filters most tied to first" in md and "| 0 |" in md
    assert result.to_csv().count("\n") == 1 + 6 + 1


def test_a_subset_of_filters_keeps_its_filter_ids():
    image_max, thr, groups = _synthetic(planted={3: 1})
    cols = [3, 4, 5]
    (c,) = contrast_groups(image_max[:, cols], thr[cols], groups, words=[["a"], ["b"], ["a"]], filter_ids=cols)
    assert [f.filter for f in c.filters] == cols and c.ranked(1, 1)[0].filter == 3
    assert next(w for w in c.words if w.words == ("a",)).filters == (3, 5)
