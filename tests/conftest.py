"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (``$LAVISE_SHARED_DATA``, else ``<repo>/../shared/data``);
    skips the test if absent."""
    path = Path(os.environ.get("LAVISE_SHARED_DATA") or REPO.parent / "shared" / "data")
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


def wordnet_missing_reason() -> str | None:
    """Why WordNet tests cannot run here (None when the database is installed)."""
    from lavise.metrics import wordnet_dir

    root = wordnet_dir()
    if (root / "index.noun").is_file() and (root / "data.noun").is_file():
        return None
    return (f"WordNet database not found in {root} (apt-get install wordnet-base, or set "
            "LAVISE_WORDNET_DIR)")


@pytest.fixture(scope="session")
def wordnet() -> Path:
    """The WordNet database directory; skips the test, saying why, when it is absent."""
    from lavise.metrics import wordnet_dir

    reason = wordnet_missing_reason()
    if reason:
        pytest.skip(reason)
    return wordnet_dir()
