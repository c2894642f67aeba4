"""Tests of lavise.masking: hand-computed examples and naive per-filter loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lavise.masking import (
    MaskingMethod,
    get_masking_method,
    list_masking_methods,
    pool_in_chunks,
    register_masking_method,
)

FEATURE_METHODS = ["attention", "projection", "activation", "original"]

# One image, d=3 filters of 2x2: F0 diagonal, F1 a single corner, F2 all zero.
HAND = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]],
                      [[2.0, 0.0], [0.0, 0.0]],
                      [[0.0, 0.0], [0.0, 0.0]]]])
HAND_T = torch.tensor([0.5, 1.0, 0.0])
R2 = math.sqrt(2.0)


def test_registry():
    assert list_masking_methods()[:5] == ["attention", "projection", "activation", "original", "image"]
    for name in list_masking_methods():
        m = get_masking_method(name)
        assert isinstance(m, MaskingMethod) and m.name == name
        assert m.needs_model == (name == "image")
    with pytest.raises(ValueError, match="attention"):
        get_masking_method("atention")
    with pytest.raises(ValueError):
        @register_masking_method
        class Again(MaskingMethod):
            name = "attention"


def test_attention_by_hand():
    # a(F0, F1) = <[1,0,0,1], [2,0,0,0]> / (sqrt2 * 2) = 1/sqrt2; a(., F2) = 0 (zero map).
    got = get_masking_method("attention").pool(HAND, torch.tensor([0, 1, 2]), HAND_T)
    want = torch.tensor([[[0.5, 0.5 / R2, 0.0],
                          [0.5 / R2, 0.5, 0.0],
                          [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(got, want)


def test_projection_by_hand():
    # mean_xy(F_k * F_u / ||F_u||): u=0 -> F_u/||F_u|| = [1,0,0,1]/sqrt2.
    got = get_masking_method("projection").pool(HAND, [0, 1, 2], HAND_T)
    want = torch.tensor([[[2 / (4 * R2), 2 / (4 * R2), 0.0],
                          [0.25, 0.5, 0.0],
                          [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(got, want)


def test_activation_by_hand():
    # masks (F >= T and F > 0): u=0 -> [1,0,0,1]; u=1 -> [1,0,0,0] (saturated: T = max); u=2 -> none.
    got = get_masking_method("activation").pool(HAND, [0, 1, 2], HAND_T)
    want = torch.tensor([[[0.5, 0.5, 0.0],
                          [0.25, 0.5, 0.0],
                          [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(got, want)


def test_original_by_hand():
    got = get_masking_method("original").pool(HAND, [2, 0], HAND_T)
    torch.testing.assert_close(got, torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]]))


def _naive(name: str, feats: torch.Tensor, filters: list[int], t: torch.Tensor) -> torch.Tensor:
    """One filter and one image at a time, straight from the formulas."""
    out = torch.zeros(feats.shape[0], len(filters), feats.shape[1])
    for b in range(feats.shape[0]):
        fb = feats[b]  # (d, h, w)
        for j, u in enumerate(filters):
            fu = fb[u]
            if name == "attention":
                for k in range(fb.shape[0]):
                    nu, nk = fu.norm(), fb[k].norm()
                    a = (fu * fb[k]).sum() / (nu * nk) if nu > 0 and nk > 0 else torch.tensor(0.0)
                    out[b, j, k] = (a * fb[k]).mean()
            elif name == "projection":
                nu = fu.norm()
                att = fu / nu if nu > 0 else torch.zeros_like(fu)
                out[b, j] = (fb * att).mean(dim=(1, 2))
            elif name == "activation":
                out[b, j] = (fb * ((fu >= t[u]) & (fu > 0)).float()).mean(dim=(1, 2))
            else:
                out[b, j] = fb.mean(dim=(1, 2))
    return out


def _random_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.relu(torch.randn(3, 7, 4, 5, generator=g))
    feats[1, 2] = 0.0  # an all-zero map
    feats[0, 5] = 0.0
    t = torch.rand(7, generator=g)
    return feats, t


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_vectorised_equals_naive_loop(name):
    feats, t = _random_features()
    filters = [5, 0, 2, 6, 2]
    got = get_masking_method(name).pool(feats, torch.tensor(filters), t)
    assert got.shape == (3, 5, 7)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _naive(name, feats, filters, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_all_zero_features_give_no_nan(name):
    feats = torch.zeros(2, 4, 3, 3)
    got = get_masking_method(name).pool(feats, [0, 3], torch.zeros(4))
    assert torch.equal(got, torch.zeros(2, 2, 4))
    half = get_masking_method(name).pool(feats.half(), [1], torch.zeros(4))
    assert torch.isfinite(half).all()


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_pool_in_chunks_matches_one_call(name):
    feats, t = _random_features(1)
    filters = torch.arange(7)
    whole = get_masking_method(name).pool(feats, filters, t)
    parts = list(pool_in_chunks(name, feats, filters, t, max_elements=3 * 7 * 2))
    assert [len(c) for c, _ in parts] == [2, 2, 2, 1]
    torch.testing.assert_close(torch.cat([p for _, p in parts], dim=1), whole)


def test_invalid_inputs():
    m = get_masking_method("attention")
    with pytest.raises(ValueError):
        m.pool(torch.zeros(3, 2, 2), [0], torch.zeros(3))
    with pytest.raises(ValueError):
        m.pool(torch.zeros(1, 3, 2, 2), [3], torch.zeros(3))
    with pytest.raises(ValueError):
        get_masking_method("activation").pool(torch.zeros(1, 3, 2, 2), [0], torch.zeros(2))


def _toy_extract() -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, stride=4, padding=1)
    return torch.nn.Sequential(conv, torch.nn.ReLU()).eval()


@torch.no_grad()
def test_image_masking_equals_naive_loop():
    extract = _toy_extract()
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 16, 16, generator=g)
    feats = extract(images)  # (2, 5, 4, 4)
    t = feats.flatten(2).transpose(0, 1).reshape(5, -1).median(dim=1).values
    filters = [4, 1, 3]
    m = get_masking_method("image")
    with pytest.raises(ValueError, match="images"):
        m.pool(feats, filters, t)
    want = torch.zeros(2, 3, 5)
    for b in range(2):
        for j, u in enumerate(filters):
            up = F.interpolate(feats[b, u][None, None], size=(16, 16), mode="bilinear", align_corners=False)
            masked = images[b:b + 1] * ((up >= t[u]) & (up > 0)).float()
            want[b, j] = extract(masked).mean(dim=(2, 3))[0]
    for chunk in (1, 4, 64):
        got = m.pool_images(images, feats, torch.tensor(filters), t, extract, chunk_size=chunk)
        assert got.shape == (2, 3, 5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # A filter whose mask is empty sees an all-mean-colour (zero) image.
    zero = m.pool_images(images, feats, [0], torch.full((5,), 1e9), extract)
    torch.testing.assert_close(zero[0, 0], extract(torch.zeros(1, 3, 16, 16)).mean(dim=(2, 3))[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_follows_the_input_device(name):
    feats, t = _random_features()
    got = get_masking_method(name).pool(feats.cuda(), torch.tensor([0, 3]), t)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), get_masking_method(name).pool(feats, [0, 3], t))


@torch.no_grad()
def test_batched_image_masking_equals_the_per_filter_path_and_skips_known_passes():
    """pool_pairs over many images and filters gives the old per-(filter, image) results,
    with one forward pass for all empty masks and none for a repeated mask."""
    extract = _toy_extract()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 16, 16, generator=g)
    feats = extract(images)
    t = feats.flatten(2).transpose(0, 1).reshape(5, -1).quantile(0.8, dim=1)
    t[2] = 1e9  # filter 2 never fires: empty masks
    t[3] = -1e9  # filter 3 fires everywhere
    feats[:, 3] = feats[:, 3].abs() + 1
    feats[:, 4] = feats[:, 3]  # filter 4 fires everywhere too: the same mask as 3
    m = get_masking_method("image")
    pair_b = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 2, 3, 1])
    pair_u = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 1])
    filters = torch.tensor([0, 1, 2, 3, 4])
    want = torch.stack([m.pool_images(images[b:b + 1], feats[b:b + 1], filters[u:u + 1], t, extract)[0, 0]
                        for b, u in zip(pair_b.tolist(), pair_u.tolist())])
    calls = []

    def counting(x):
        calls.append(len(x))
        return extract(x)

    threads = torch.get_num_threads()
    for chunk, workers in ((1, 1), (3, 1), (64, 1), (1, 2), (3, 3)):
        calls.clear()
        got = m.pool_pairs(images, feats, filters, t, counting, (pair_b, pair_u), chunk_size=chunk,
                           workers=workers)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # 12 pairs - 2 empty (run once, as one zero image) - 1 repeat (filters 3 and 4 on image 2)
        assert sum(calls) == 12 - 2 + 1 - 1
        assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="side by side"):
        m.pool_pairs(images, feats, filters, t, extract, (pair_b, pair_u), workers=0)
    with pytest.raises(ValueError, match="pairs"):
        m.pool_pairs(images, feats, filters, t, extract, (pair_b, pair_u[:-1]))


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["mean", "rescaled"])
def test_explain_pools_image_pairs_like_a_per_filter_per_image_loop(pooling):
    """The batched image path of explain equals one forward pass per (filter, top image)."""
    from lavise.explain import pooled_top_image_features
    from lavise.explainer import rescale_pooled
    from lavise.statistics import TensorFeatureSource, compute_filter_stats

    extract = _toy_extract()
    images = torch.randn(20, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    feats = extract(images)
    stats = compute_filter_stats(TensorFeatureSource(feats), quantile=0.05, top_k=4, progress=False)
    filters = [0, 2, 3]
    out = pooled_top_image_features(TensorFeatureSource(feats), stats, filters, "image", top=4,
                                    images=lambda rows: images[list(rows)], extract=extract,
                                    progress=False, pooling=pooling)
    m = get_masking_method("image")
    for pos, u in enumerate(filters):
        for slot, img in enumerate(stats.top_images[u, :4].tolist()):
            ref = m.pool_images(images[img:img + 1], feats[img:img + 1], [u], stats.thresholds, extract)[0, 0]
            if pooling == "rescaled":
                ref = rescale_pooled(ref, feats[img].mean((1, 2)).norm())
            torch.testing.assert_close(out[pos, slot], ref, rtol=1e-5, atol=1e-6)


def test_image_masking_passes_in_threads_give_the_one_thread_results_with_the_layer_extractor():
    """Independent forward passes in worker threads (one intra-op thread each) through
    LayerExtractor: each thread's hook captures its own pass, and the pooled vectors
    are exactly those of the passes run one by one with one thread."""
    import threading

    from lavise.models import LayerExtractor
    from tiny import tiny_model

    model = tiny_model()
    extract = LayerExtractor(model, "features").features
    g = torch.Generator().manual_seed(5)
    images = torch.randn(6, 3, 32, 32, generator=g)
    feats = extract(images)
    t = feats.flatten(2).transpose(0, 1).reshape(feats.shape[1], -1).quantile(0.7, dim=1)
    pairs = (torch.arange(6).repeat_interleave(6), torch.arange(6).repeat(6))
    m = get_masking_method("image")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = m.pool_pairs(images, feats, torch.arange(6), t, extract, pairs, workers=1)
    finally:
        torch.set_num_threads(threads)
    seen = set()

    def tracking(x):
        seen.add(threading.get_ident())
        return extract(x)

    many = m.pool_pairs(images, feats, torch.arange(6), t, tracking, pairs, workers=3)
    assert torch.equal(many, one)
    assert seen - {threading.get_ident()}  # the passes ran in the worker threads
    assert torch.get_num_threads() == threads
