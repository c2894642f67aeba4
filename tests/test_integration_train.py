"""Issue 2 end to end: train on real COCO annotations with the real EfficientNet-Lite0."""

from __future__ import annotations

import json

import pytest
import torch

from lavise import Config
from lavise.api import features_of, open_dataset
from lavise.explainer import Explainer, pool_concept_features

pytestmark = pytest.mark.slow


def test_training_records_split_history_and_metadata(coco_explainer, tmp_path):
    exp = coco_explainer
    t = exp.meta["training"]
    assert t["images"] > 200 and t["pairs"] > 800
    assert len(exp.split.seen) == round(0.7 * len(exp.split.concepts))
    assert not set(exp.split.seen) & set(exp.split.unseen)
    assert len(t["history"]) == Config().epochs
    exp.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "lavise.json").read_text())
    assert meta["model"]["name"] == "efficientnet-lite0" and meta["layer"]["name"] == "_head_act"
    assert meta["word_space"]["name"] == "word2vec-300-filled" and meta["explainer"]["kind"] == "trained+conse"
    assert meta["model"]["preprocessing"]["mean"][0] == pytest.approx(127 / 255)
    assert len(meta["split"]["unseen"]) > 10
    back = Explainer.load(tmp_path / "ckpt", model=exp.model)
    x = torch.rand(3, 1280)
    assert torch.allclose(back.embed(x), exp.embed(x), atol=1e-5)


def _rank_of_true_concepts(explainer, store, dataset, kind):
    pairs = pool_concept_features(store, dataset, progress=False)
    vecs, kept, _ = explainer.word_space.concept_matrix(list(explainer.split.concepts))
    index = {c: i for i, c in enumerate(kept)}
    rows = [i for i, c in enumerate(pairs.concepts) if c in index]
    out = explainer.with_kind(kind).embed(pairs.pooled[rows])
    sims = out @ vecs.T
    target = torch.tensor([index[pairs.concepts[i]] for i in rows])
    ranks = (sims > sims.gather(1, target[:, None])).sum(1).float()
    return ranks, len(kept), [pairs.concepts[i] for i in rows]


@pytest.mark.parametrize("kind", ["trained", "trained+conse"])
def test_explainer_ranks_true_concepts_of_heldout_images_well_above_chance(coco_explainer, shared_data, lavise_cache, kind):
    exp = coco_explainer
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu")
    val = open_dataset(f"coco-panoptic:{shared_data / 'coco-panoptic'}", "val2017", exp.model)
    assert not set(val.image_ids) & set(exp.meta["training"]["image_ids"])
    store = features_of(exp.model, exp.layer, val, config)
    ranks, n, names = _rank_of_true_concepts(exp, store, val, kind)
    top5 = (ranks < 5).float().mean().item()
    chance = 5 / n
    assert top5 > 4 * chance, (top5, chance)
    assert (ranks / n).mean().item() < 0.3  # chance: 0.5
    unseen = torch.tensor([c in set(exp.split.unseen) for c in names])
    if unseen.sum() > 20:
        assert (ranks[unseen] / n).mean().item() < 0.45
