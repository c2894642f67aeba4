"""Issue 3 end to end: explain every filter of EfficientNet-Lite0's last layer on real COCO images."""

from __future__ import annotations

import torch

import pytest

from lavise import Config, explain
from lavise.api import open_dataset
from lavise.wordspace import normalise_concept_name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def val_explanations(coco_explainer, shared_data, lavise_cache):
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu")
    spec = f"coco-panoptic:{shared_data / 'coco-panoptic'}"
    return explain(coco_explainer, spec, "val2017", config=config), open_dataset(spec, "val2017", coco_explainer.model)


def test_filters_get_different_words(val_explanations):
    result, _ = val_explanations
    assert len(result) == 1280
    tops = [tuple(f.labels[:5]) for f in result]
    assert len(set(tops)) > 0.3 * len(tops)
    assert len({w for f in result for w in f.labels}) > 100
    assert all(len(f.words) == 10 for f in result)


def test_concepts_in_a_filters_top_images_are_named_more_often_than_chance(val_explanations):
    result, dataset = val_explanations
    index = {iid: i for i, iid in enumerate(dataset.image_ids)}
    concepts = dataset.concepts
    tokens = [set(normalise_concept_name(c)) for c in concepts]
    present = torch.zeros(len(dataset), len(concepts))
    for i in range(len(dataset)):
        for c in dataset._annotated_concepts(i):
            present[i, c] = 1
    share = torch.stack([present[[index[t.image_id] for t in f.top_images]].mean(0) for f in result])  # (U, C)
    hits = torch.tensor([[bool(tokens[c] & set(f.labels)) for c in range(len(concepts))] for f in result]).float()
    frequent = share >= 0.5

    def rate(h: torch.Tensor) -> float:
        return (h * frequent).sum().item() / frequent.sum().item()

    observed = rate(hits)
    g = torch.Generator().manual_seed(0)
    null = [rate(hits[torch.randperm(len(hits), generator=g)]) for _ in range(200)]
    assert observed > sorted(null)[int(0.95 * len(null))], (observed, sum(null) / len(null))
