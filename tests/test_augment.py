"""Augmented views: flips and crops of images and masks alike, cached apart."""

from __future__ import annotations

import pytest
import torch

from lavise.augment import AUGMENT_VIEWS, AugmentedView, view_transform
from lavise.datasets import load_dataset, masks_only
from lavise.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def panoptic(sample_dir):
    return load_dataset(f"coco-panoptic:{sample_dir / 'coco-panoptic'}", split="val2017",
                        preprocessing=Preprocessing(resize=64, crop=64))


def test_hflip_mirrors_image_and_masks_and_renames_ids(panoptic):
    view = AugmentedView(panoptic, "hflip")
    a, b = view[0], panoptic[0]
    assert a["image_id"] == f"{b['image_id']}#hflip" and view.image_ids[0] == a["image_id"]
    assert torch.equal(a["image"].as_subclass(torch.Tensor), b["image"].as_subclass(torch.Tensor).flip(-1))
    assert torch.equal(a["masks"].as_subclass(torch.Tensor), b["masks"].as_subclass(torch.Tensor).flip(-1))
    assert torch.equal(a["concept_ids"], b["concept_ids"])
    assert len(view) == len(panoptic) and view.concepts == panoptic.concepts


@pytest.mark.parametrize("name", ["crop-tl", "crop-br", "zoom"])
def test_crops_keep_masks_binary_aligned_and_drop_empty_ones(panoptic, name):
    view = AugmentedView(masks_only(panoptic), name)
    for i in range(len(view)):
        item = view[i]
        m = item["masks"].as_subclass(torch.Tensor)
        assert m.shape[1:] == (64, 64) and m.dtype == torch.uint8
        assert set(m.unique().tolist()) <= {0, 1}
        assert len(item["concept_ids"]) == m.shape[0]
        assert bool((m.flatten(1).amax(1) > 0).all())
    # The top-left crop of a mask is the mask's top-left 75%, resized: check one pixel.
    if name == "crop-tl":
        base = masks_only(panoptic)[0]["masks"].as_subclass(torch.Tensor)
        mine = view[0]["masks"].as_subclass(torch.Tensor)
        assert torch.equal(mine[:, 0, 0], base[: len(mine), 0, 0]) or len(mine) != len(base)


def test_unknown_view_is_a_value_error(panoptic):
    with pytest.raises(ValueError, match="hflip"):
        AugmentedView(panoptic, "rotate")
    with pytest.raises(ValueError):
        view_transform("rotate", 32)
    assert set(AUGMENT_VIEWS) == {"hflip", "crop-tl", "crop-br", "zoom"}


def test_config_checks_views():
    from lavise import Config

    assert Config(augment=["hflip"]).augment == ("hflip",)
    with pytest.raises(ValueError, match="augmented view"):
        Config(augment=("rotate",))
