"""Tests for lavise.preprocessing."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision import tv_tensors

from lavise.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def test_defaults_are_imagenet():
    p = Preprocessing()
    assert (p.resize, p.crop) == (256, 224)
    assert p.mean == IMAGENET_MEAN and p.std == IMAGENET_STD


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resize": 0}, "resize"),
        ({"crop": -1}, "crop"),
        ({"resize": 2.5}, "resize"),
        ({"resize": 200, "crop": 224}, "must not exceed"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"mean": "abc"}, "mean"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"std": (1.0, float("nan"), 1.0)}, "std"),
    ],
)
def test_invalid_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(**kwargs)


def test_dict_round_trip_through_json():
    p = Preprocessing(resize=240, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    q = Preprocessing.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p
    assert isinstance(q.mean, tuple)
    assert q.fingerprint == p.fingerprint


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({"resize": 256, "size": 3})


def test_fingerprint_is_stable_and_sensitive():
    assert Preprocessing().fingerprint == Preprocessing().fingerprint
    assert Preprocessing().fingerprint != Preprocessing(crop=200).fingerprint
    assert len(Preprocessing().fingerprint) == 12


def test_geometric_resizes_shorter_side_then_crops():
    img = tv_tensors.Image(torch.zeros(3, 300, 500, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(2, 300, 500, dtype=torch.uint8))
    out_img, out_mask = Preprocessing().geometric()(img, mask)
    assert out_img.shape == (3, 224, 224) and out_mask.shape == (2, 224, 224)
    assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.uint8


def test_geometric_keeps_image_and_mask_aligned():
    # Non-square image: 200 rows x 300 columns, a red rectangle and its mask.
    img = torch.zeros(3, 200, 300, dtype=torch.uint8)
    img[0, 40:120, 100:220] = 255
    mask = torch.zeros(1, 200, 300, dtype=torch.uint8)
    mask[0, 40:120, 100:220] = 1
    p = Preprocessing(resize=100, crop=100)
    out_img, out_mask = p.geometric()(tv_tensors.Image(img), tv_tensors.Mask(mask))
    # scale 1/2 then centre crop of columns 25..125 of 150
    expected = torch.zeros(100, 100, dtype=torch.uint8)
    expected[20:60, 25:85] = 1
    assert torch.equal(out_mask[0].as_subclass(torch.Tensor), expected)
    assert set(out_mask.unique().tolist()) <= {0, 1}
    red = out_img[0] > 127
    assert torch.equal(red, expected.bool())


def test_normalise_uint8_and_float_agree():
    p = Preprocessing()
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    y = p.normalise(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(y, (x.float() / 255 - mean) / std)
    torch.testing.assert_close(p.normalise(x.float() / 255), y)
    assert p.normalise(x[0]).shape == (3, 8, 8)


def test_normalise_efficientnet_lite_convention():
    p = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    x = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 1, 3).expand(3, 1, 3)
    torch.testing.assert_close(p.normalise(x)[0, 0], torch.tensor([-127 / 128, 0.0, 1.0]))


def test_normalise_rejects_wrong_channels():
    with pytest.raises(ValueError, match="3, H, W"):
        Preprocessing().normalise(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))
