"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (``<repo>/../shared/data``); skips the test if absent."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The sample data shipped in the repository (``<repo>/sample``)."""
    return REPO / "sample"


@pytest.fixture(scope="session")
def lite0():
    """The real pretrained EfficientNet-Lite0 (offline, from its registry package)."""
    from lavise.models import load_model

    return load_model("efficientnet-lite0")


@pytest.fixture(scope="session")
def lavise_cache(tmp_path_factory) -> Path:
    """One feature cache for the whole test session."""
    return tmp_path_factory.mktemp("lavise-cache")


@pytest.fixture(scope="session")
def coco_explainer(shared_data, lite0, lavise_cache):
    """A trained+conse explainer for EfficientNet-Lite0's last layer, trained on every
    annotated shared COCO train2017 image (panoptic + instances)."""
    from lavise import Config, train

    refs = [f"coco-panoptic:{shared_data / 'coco-panoptic'}", f"coco-instances:{shared_data / 'coco-mini'}",
            f"coco-instances:{shared_data / 'coco-tiny'}"]
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu", explainer="trained+conse")
    return train(lite0, refs, "train2017", config=config)
