"""Tests of lavise.statistics: thresholds, image maxima, top images, persistence."""

from __future__ import annotations

import math

import pytest
import torch

from lavise.statistics import (
    FeatureSource,
    FilterStats,
    TensorFeatureSource,
    compute_filter_stats,
    qualified_fraction,
)


def _values(feats: torch.Tensor) -> torch.Tensor:
    """All spatial activations per filter: (d, N*h*w)."""
    n, d = feats.shape[:2]
    return feats.transpose(0, 1).reshape(d, -1)


def _kth_largest(feats: torch.Tensor, quantile: float) -> torch.Tensor:
    vals = _values(feats)
    k = max(1, math.ceil(round(quantile * vals.shape[1], 9)))
    return vals.sort(dim=1, descending=True).values[:, k - 1]


def _distributions() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (40, 6, 7, 7)
    uniform = torch.rand(shape, generator=g) * 3 - 1
    lognormal = torch.exp(torch.randn(shape, generator=g) * 1.5)
    relu = torch.relu(torch.randn(shape, generator=g) - 0.8)  # ~79% exact zeros
    return {"uniform": uniform, "lognormal": lognormal, "relu": relu}


class SkippingSource(TensorFeatureSource):
    """Yields only some rows, like a FeatureStore with failed images."""

    def __init__(self, features: torch.Tensor, rows: list[int]) -> None:
        super().__init__(features)
        self.rows = rows

    def batches(self, batch_size: int = 64, indices=None):
        return super().batches(batch_size, indices=self.rows)


def test_tensor_source_is_a_feature_source():
    src = TensorFeatureSource(torch.zeros(5, 3, 2, 2))
    assert isinstance(src, FeatureSource)
    assert len(src) == 5 and src.shape == (3, 2, 2)
    got = list(src.batches(2))
    assert [b[0].tolist() for b in got] == [[0, 1], [2, 3], [4]]
    assert got[0][1].dtype == torch.float32
    with pytest.raises(ValueError):
        TensorFeatureSource(torch.zeros(3, 2, 2))


@pytest.mark.parametrize("quantile", [0.005, 0.01, 0.1, 0.5])
def test_exact_threshold_is_kth_largest_and_brackets_torch_quantile(quantile):
    feats = torch.randn(30, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    stats = compute_filter_stats(TensorFeatureSource(feats), quantile=quantile, top_k=5,
                                 batch_size=7, method="exact", progress=False)
    assert stats.exact
    torch.testing.assert_close(stats.thresholds, _kth_largest(feats, quantile), rtol=0, atol=0)
    vals = _values(feats)
    lower = torch.quantile(vals, 1 - quantile, dim=1, interpolation="lower")
    higher = torch.quantile(vals, 1 - quantile, dim=1, interpolation="higher")
    linear = torch.quantile(vals, 1 - quantile, dim=1)
    assert bool(((stats.thresholds >= lower) & (stats.thresholds <= higher)).all())
    torch.testing.assert_close(stats.thresholds, linear, atol=(higher - lower).max().item() + 1e-6, rtol=0)
    # The upper tail: a fraction < quantile strictly above T_u, >= quantile at or above.
    n = vals.shape[1]
    assert bool(((vals > stats.thresholds[:, None]).sum(1) < quantile * n + 1e-9).all())
    assert bool(((vals >= stats.thresholds[:, None]).sum(1) >= quantile * n - 1e-9).all())


@pytest.mark.parametrize("name", ["uniform", "lognormal", "relu"])
@pytest.mark.parametrize("quantile", [0.005, 0.05])
def test_sketch_error_within_one_bin(name, quantile):
    feats = _distributions()[name]
    src = TensorFeatureSource(feats)
    bins = 64
    exact = compute_filter_stats(src, quantile=quantile, top_k=3, method="exact", progress=False)
    sketch = compute_filter_stats(src, quantile=quantile, top_k=3, method="sketch", bins=bins,
                                  batch_size=9, progress=False)
    assert not sketch.exact
    vals = _values(feats)
    width = (vals.amax(1) - vals.amin(1)) / bins
    err = (sketch.thresholds - exact.thresholds).abs()
    assert bool((err <= width * (1 + 1e-4) + 1e-6).all()), (err, width)
    # Image maxima and top images do not depend on the method.
    torch.testing.assert_close(sketch.image_max, exact.image_max)
    torch.testing.assert_close(sketch.top_values, exact.top_values)


def test_sketch_constant_filter():
    feats = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    feats[:, 1] = 0.25
    stats = compute_filter_stats(TensorFeatureSource(feats), method="sketch", progress=False)
    assert stats.thresholds[1].item() == pytest.approx(0.25)
    assert torch.isfinite(stats.thresholds).all()


def test_auto_picks_sketch_when_the_table_is_too_big():
    feats = torch.rand(20, 3, 4, 4)
    src = TensorFeatureSource(feats)
    assert compute_filter_stats(src, quantile=0.1, method="auto", progress=False).exact
    assert not compute_filter_stats(src, quantile=0.1, method="auto", max_exact_values=10,
                                    progress=False).exact


@pytest.mark.parametrize("method", ["exact", "sketch"])
def test_streaming_is_independent_of_batch_size(method):
    feats = torch.randn(23, 5, 3, 4, generator=torch.Generator().manual_seed(3))
    src = TensorFeatureSource(feats)
    ref = compute_filter_stats(src, quantile=0.02, top_k=6, batch_size=23, method=method, progress=False)
    for bs in (1, 4, 10):
        got = compute_filter_stats(src, quantile=0.02, top_k=6, batch_size=bs, method=method, progress=False)
        torch.testing.assert_close(got.thresholds, ref.thresholds, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.image_max, ref.image_max)
        assert torch.equal(got.top_images, ref.top_images)


def test_top_images_and_image_max_match_argsort():
    feats = torch.randn(31, 6, 3, 3, generator=torch.Generator().manual_seed(4))
    stats = compute_filter_stats(TensorFeatureSource(feats), top_k=8, batch_size=5, progress=False)
    image_max = feats.flatten(2).amax(2)
    torch.testing.assert_close(stats.image_max, image_max)
    order = image_max.t().argsort(dim=1, descending=True)[:, :8]
    assert stats.top_images.dtype == torch.long
    assert torch.equal(stats.top_images, order)
    torch.testing.assert_close(stats.top_values, image_max.t().gather(1, order))
    assert stats.num_images == 31


def test_top_k_is_clipped_to_the_number_of_images(caplog):
    caplog.set_level("INFO", logger="lavise.statistics")
    stats = compute_filter_stats(TensorFeatureSource(torch.rand(4, 2, 2, 2)), top_k=25, progress=False)
    assert stats.top_images.shape == (2, 4)
    assert "top_k=25" in caplog.text


def test_skipped_rows():
    feats = torch.randn(10, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    rows = [0, 2, 3, 5, 7, 9]
    stats = compute_filter_stats(SkippingSource(feats, rows), quantile=0.1, top_k=4, progress=False)
    assert stats.num_images == 6
    assert torch.isinf(stats.image_max[[1, 4, 6, 8]]).all()
    assert set(stats.top_images.flatten().tolist()) <= set(rows)
    torch.testing.assert_close(stats.thresholds, _kth_largest(feats[rows], 0.1))


def test_invalid_arguments():
    src = TensorFeatureSource(torch.rand(4, 2, 2, 2))
    for kwargs in ({"quantile": 0.0}, {"quantile": 1.0}, {"quantile": -0.1}, {"top_k": 0},
                   {"method": "median"}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            compute_filter_stats(src, progress=False, **kwargs)


def test_save_load_and_dict_roundtrip(tmp_path):
    feats = torch.randn(12, 4, 3, 3, generator=torch.Generator().manual_seed(6))
    stats = compute_filter_stats(SkippingSource(feats, list(range(11))), top_k=5, progress=False)
    path = stats.save(tmp_path / "sub" / "stats.safetensors")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    for other in (FilterStats.load(path), FilterStats.from_dict(stats.to_dict())):
        assert other.quantile == stats.quantile and other.exact == stats.exact
        assert other.num_images == stats.num_images
        for name in ("thresholds", "image_max", "top_images", "top_values"):
            a, b = getattr(stats, name), getattr(other, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
    with pytest.raises(ValueError):
        FilterStats.load(tmp_path / "missing.safetensors")


def test_qualified_fraction():
    image_max = torch.tensor([[1.0, 5.0], [3.0, 0.0], [2.0, 4.0], [-math.inf, -math.inf]])
    thresholds = torch.tensor([1.5, 3.0])
    torch.testing.assert_close(qualified_fraction(image_max, thresholds), torch.tensor([2 / 3, 2 / 3]))
    group = torch.tensor([True, True, False, True])
    torch.testing.assert_close(qualified_fraction(image_max, thresholds, group), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError):
        qualified_fraction(image_max, thresholds, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        qualified_fraction(image_max, torch.zeros(3))


def test_saturated_filters_rank_ties_by_mean_and_still_fire():
    from lavise.statistics import fires

    feats = torch.zeros(3, 1, 2, 2)
    feats[0, 0, 0, 0] = 6.0  # saturated at one position
    feats[1, 0] = 6.0  # saturated everywhere: most active
    feats[2, 0, 0, :] = 6.0
    stats = compute_filter_stats(TensorFeatureSource(feats), quantile=0.25, top_k=3, progress=False)
    assert stats.thresholds[0].item() == 6.0
    assert stats.top_images[0].tolist() == [1, 2, 0]
    assert fires(feats[:, 0], stats.thresholds[0]).sum().item() == 7
    assert not fires(torch.zeros(2, 2), torch.tensor(0.0)).any()
