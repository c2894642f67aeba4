"""The explainer: eq. 1, the concept split, training on pooled features, ConSE, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lavise.explainer import (
    ConceptFeatures,
    ConceptSplit,
    Explainer,
    ExplainerHead,
    fit_head,
    hinge_rank_loss,
    masks_to_feature_grid,
    split_concepts,
)
from lavise.wordspace import WordSpace
from tiny import tiny_model

WORDS = ["dog", "cat", "car", "tree", "sky", "grass", "road", "water"]


def toy_space(dim: int = 8, seed: int = 0) -> WordSpace:
    g = torch.Generator().manual_seed(seed)
    return WordSpace("toy", WORDS, torch.randn(len(WORDS), dim, generator=g))


def test_hinge_rank_loss_equals_eq1_by_hand():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 4, generator=g)
    vecs = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    targets = torch.tensor([0, 3, 1])
    total = 0.0
    for b in range(3):
        v = F.normalize(pred[b], dim=0)
        t = targets[b]
        total += sum(max(0.0, 1 - float(vecs[t] @ v) + float(vecs[c] @ v)) for c in range(5) if c != t)
    assert hinge_rank_loss(pred, targets, vecs).item() == pytest.approx(total / 3, rel=1e-5)


def test_split_is_seeded_without_replacement():
    concepts = [f"c{i}" for i in range(20)]
    a = split_concepts(concepts, 0.7, seed=3)
    assert len(a.seen) == 14 and len(set(a.seen)) == 14 and not set(a.seen) & set(a.unseen)
    assert a == split_concepts(list(reversed(concepts)), 0.7, seed=3)
    assert a.seen != split_concepts(concepts, 0.7, seed=4).seen
    assert ConceptSplit.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(ValueError):
        split_concepts(concepts, 0.0)


def test_masks_resize_to_feature_grid_by_area():
    m = torch.zeros(1, 8, 8, dtype=torch.uint8)
    m[0, :4, :2] = 1  # covers half of the top-left 4x4 cell
    grid = masks_to_feature_grid(m, (2, 2))
    assert grid.tolist() == [[[0.5, 0.0], [0.0, 0.0]]]


def _synthetic_pairs(space: WordSpace, n: int = 400, d: int = 16, seed: int = 0) -> ConceptFeatures:
    """Each concept has its own direction in feature space, plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(len(WORDS), d, generator=g) * 3
    labels = torch.randint(0, len(WORDS), (n,), generator=g)
    x = protos[labels] + torch.randn(n, d, generator=g)
    return ConceptFeatures(x, [WORDS[i] for i in labels], torch.arange(n), torch.ones(n))


def test_head_learns_seen_concepts_from_pooled_features():
    space = toy_space()
    pairs = _synthetic_pairs(space)
    split = split_concepts(WORDS, 0.75, seed=0)
    train, held = pairs.select(torch.arange(0, 300)), pairs.select(torch.arange(300, 400))
    head, history = fit_head(train, held, split, space, epochs=15, lr=3e-3, progress=False)
    assert isinstance(head, ExplainerHead)
    assert history[-1].loss < history[0].loss
    assert history[-1].seen_top1 > 0.9
    assert history[-1].unseen_top1 is not None


def _explainer(kind: str = "trained") -> Explainer:
    model = tiny_model()
    space = toy_space()
    head = ExplainerHead(6, space.dim).eval()
    split = split_concepts(WORDS, 0.5)
    return Explainer(model, "features", space, kind, head, split, conse_top=2, meta={"training": {"epochs": 1}})


def test_checkpoint_roundtrip_and_mismatch_errors(tmp_path):
    exp = _explainer("trained+conse")
    exp.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "explainer.safetensors").is_file()
    meta = json.loads((tmp_path / "ckpt" / "lavise.json").read_text())
    assert meta["layer"]["name"] == "features" and meta["model"]["name"] == "tiny"
    assert meta["split"]["seen"] and meta["explainer"]["kind"] == "trained+conse"
    assert meta["model"]["preprocessing"]["crop"] == 32
    back = Explainer.load(tmp_path / "ckpt", model=exp.model, word_space=exp.word_space)
    x = torch.randn(5, 6)
    assert torch.allclose(back.embed(x), exp.embed(x), atol=1e-6)
    assert back.split == exp.split and back.meta["training"] == {"epochs": 1}
    with pytest.raises(ValueError, match="weights"):
        Explainer.load(tmp_path / "ckpt", model=tiny_model(seed=5), word_space=exp.word_space)
    with pytest.raises(ValueError, match="word space"):
        Explainer.load(tmp_path / "ckpt", model=exp.model, word_space=toy_space(seed=9))
    with pytest.raises(FileNotFoundError):
        Explainer.load(tmp_path / "nothing", model=exp.model, word_space=exp.word_space)


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    exp = _explainer()
    exp.save(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "lavise.json").read_text()
    monkeypatch.setattr(Explainer, "metadata", lambda self: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        exp.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "lavise.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_conse_is_the_probability_weighted_mean_of_class_vectors():
    exp = _explainer("conse")
    pooled = torch.randn(3, 6)
    logits = exp.model.module.fc(pooled)
    top = logits.topk(2, dim=1)
    probs = torch.softmax(top.values, 1)
    names = exp.model.class_names
    vecs = torch.stack([exp.word_space.vector(n) for n in names])
    expected = F.normalize(torch.einsum("nt,nte->ne", probs, vecs[top.indices]), dim=1)
    assert torch.allclose(exp.embed(pooled), expected, atol=1e-5)


def test_combined_kind_sums_normalised_outputs():
    exp = _explainer("trained+conse")
    x = torch.randn(4, 6)
    expected = F.normalize(exp.trained(x) + exp.conse(x), dim=1)
    assert torch.allclose(exp.embed(x), expected, atol=1e-6)


def test_conse_needs_a_layer_that_feeds_the_classifier():
    model = tiny_model()
    with pytest.raises(ValueError, match="trained"):
        Explainer(model, "features.0", toy_space(), "conse")
    with pytest.raises(ValueError, match="trained head"):
        Explainer(model, "features", toy_space(), "trained")


# ------------------------------------------------------------ issue 11: loss, weak pairs, combination


def test_hardest_negative_loss_keeps_only_the_worst_violator():
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cands = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    t = torch.tensor([0, 1])
    sims = pred @ cands.T
    per = (0.5 - sims.gather(1, t[:, None]) + sims).clamp(min=0).scatter(1, t[:, None], 0.0)
    assert torch.allclose(hinge_rank_loss(pred, t, cands, 0.5, negatives="hardest"), per.amax(1).mean())
    assert torch.allclose(hinge_rank_loss(pred, t, cands, 0.5), per.sum(1).mean())
    with pytest.raises(ValueError, match="negatives"):
        hinge_rank_loss(pred, t, cands, negatives="some")


def test_also_positive_candidates_are_not_negatives():
    pred = torch.tensor([[1.0, 0.0]])
    cands = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    t = torch.tensor([0])
    full = hinge_rank_loss(pred, t, cands, 1.0)
    masked = hinge_rank_loss(pred, t, cands, 1.0, also_positive=torch.tensor([[False, True, False]]))
    near = (1.0 - 1.0 + cands[1, 0]).clamp(min=0)
    assert torch.allclose(full - masked, near)


def test_image_level_pairs_join_training_as_extra_targets():
    space = toy_space()
    pairs = _synthetic_pairs(space)
    split = split_concepts(["dog", "cat", "car", "tree"], 1.0)
    keep = torch.tensor([i for i, c in enumerate(pairs.concepts) if c in split.concepts])
    masks = pairs.select(keep)
    # Weak pairs: words that no mask annotates ("sky", "grass"), two per image.
    weak_rows = torch.tensor([i for i, c in enumerate(pairs.concepts) if c in ("sky", "grass")])
    weak = pairs.select(weak_rows)
    weak = ConceptFeatures(weak.pooled, weak.concepts, weak.images, torch.ones(len(weak.concepts)))
    head, _ = fit_head(masks, None, split, space, epochs=15, lr=3e-3, image_level=weak, progress=False)
    with torch.no_grad():
        out = F.normalize(head.eval()(weak.pooled), dim=1)
    sky, grass = space.vector("sky"), space.vector("grass")
    is_sky = torch.tensor([c == "sky" for c in weak.concepts])
    closer = (out @ sky > out @ grass) == is_sky
    assert closer.float().mean() > 0.8  # the head learned words no mask names


def test_conse_weight_scales_conse_in_the_combination(tmp_path):
    exp = _explainer("trained+conse").with_combination(conse_weight=2.0, conse_top=3)
    assert exp.conse_top == 3
    x = torch.randn(4, 6)
    expected = F.normalize(exp.trained(x) + 2.0 * exp.conse(x), dim=1)
    assert torch.allclose(exp.embed(x), expected, atol=1e-6)
    exp.save(tmp_path / "ck")
    back = Explainer.load(tmp_path / "ck", model=exp.model, word_space=exp.word_space)
    assert back.conse_weight == 2.0
    with pytest.raises(ValueError, match="weight"):
        exp.with_combination(conse_weight=-1)


def test_vocabulary_negatives_push_the_head_away_from_other_words():
    space = toy_space()
    pairs = _synthetic_pairs(space)
    split = split_concepts(["dog", "cat", "car", "tree"], 1.0)
    keep = torch.tensor([i for i, c in enumerate(pairs.concepts) if c in split.concepts])
    train = pairs.select(keep)
    others = torch.stack([space.vector(w) for w in ("sky", "grass", "road", "water")])
    head, history = fit_head(train, None, split, space, epochs=10, lr=3e-3, negatives="vocabulary",
                             negative_words=others, progress=False)
    with torch.no_grad():
        out = F.normalize(head.eval()(train.pooled), dim=1)
    truth = torch.stack([space.vector(c) for c in train.concepts])
    # Each pair is closer to its own concept than to every never-target word.
    assert ((out * truth).sum(1) > (out @ others.T).amax(1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="negative_words"):
        fit_head(train, None, split, space, epochs=1, negatives="vocabulary", progress=False)


def _pool_per_image(store, dataset, pooling):
    """The previous pool_concept_features: three small tensors kept per image."""
    from lavise.explainer import rescale_pooled
    from lavise.features import features_with_masks

    d, h, w = store.shape
    pooled, names, images, cover = [], [], [], []
    for rows, batch_feats, batch_masks, batch_ids in features_with_masks(store, dataset, progress=False):
        for row, feats, masks, cids in zip(rows.tolist(), batch_feats, batch_masks, batch_ids):
            if len(cids) == 0:
                continue
            feats = feats.reshape(d, h * w)
            grid = masks_to_feature_grid(masks, (h, w)).reshape(len(cids), h * w)
            vecs = grid @ feats.T / (h * w)
            if pooling == "rescaled":
                vecs = rescale_pooled(vecs, feats.mean(1).norm())
            pooled.append(vecs)
            cover.append(grid.mean(1))
            names.extend(dataset.concepts[int(c)] for c in cids)
            images.append(torch.full((len(cids),), row, dtype=torch.long))
    return torch.cat(pooled), names, torch.cat(images), torch.cat(cover)


@pytest.mark.parametrize("pooling", ["mean", "rescaled"])
def test_pooling_per_batch_equals_the_per_image_loop_on_real_masks(sample_dir, tmp_path, pooling):
    """Rows are collected per batch (resident memory stays flat with the number of
    images); the pairs are the same, bit for bit, as the per-image loop's, on the
    bundled COCO panoptic images (50 images: 4 batches of 16, several masks each)."""
    from lavise.datasets import load_dataset
    from lavise.explainer import pool_concept_features
    from lavise.features import extract_features

    model = tiny_model()
    ds = load_dataset(f"coco-panoptic:{sample_dir / 'coco-panoptic'}", "val2017", preprocessing=model.preprocessing)
    store = extract_features(model, "features", ds, tmp_path / "cache", progress=False)
    new = pool_concept_features(store, ds, progress=False, pooling=pooling)
    pooled, names, images, cover = _pool_per_image(store, ds, pooling)
    assert len(names) > 4 * len(ds) and len(set(images.tolist())) == len(ds)
    assert new.concepts == names
    assert torch.equal(new.pooled, pooled) and new.pooled.dtype == torch.float32
    assert torch.equal(new.images, images) and new.images.dtype == torch.long
    assert torch.equal(new.coverage, cover)
    some = pool_concept_features(store, ds, progress=False, pooling=pooling, min_coverage=0.1)
    keep = cover >= 0.1
    assert 0 < len(some.concepts) < len(names) and torch.equal(some.pooled, pooled[keep])


def _fit_head_reference(train, split, word_space, *, epochs, lr, batch_size=64, negatives="all",
                        image_level=None, negative_words=None, seed=0):
    """The previous fit_head's training loop: a float32 copy of the seen rows, the
    per-tensor Adam loop (held-out metrics left out: they do not touch the weights)."""
    from lavise.explainer import VOCABULARY_NEGATIVES, concat_features

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    all_vecs, kept, _ = word_space.concept_matrix(list(split.concepts))
    index = {c: i for i, c in enumerate(kept)}
    seen_names = [c for c in split.seen if c in index]
    seen_list = [all_vecs[index[c]] for c in seen_names]
    if image_level is not None:
        extra = sorted(set(image_level.concepts) - set(seen_names))
        extra_vecs, extra_kept, _ = word_space.concept_matrix(extra)
        seen_names += list(extra_kept)
        seen_list += list(extra_vecs)
        train = concat_features([train, image_level])
    seen_pos = {c: j for j, c in enumerate(seen_names)}
    seen_vecs = torch.stack(seen_list)
    rows = [i for i, c in enumerate(train.concepts) if c in seen_pos]
    x = train.pooled[rows].float()
    y = torch.tensor([seen_pos[train.concepts[i]] for i in rows])
    also = None
    if image_level is not None:
        whole = train.coverage[rows] >= 1.0 - 1e-6
        img = train.images[rows]
        groups: dict[int, set[int]] = {}
        for r, w, t in zip(img.tolist(), whole.tolist(), y.tolist()):
            if w:
                groups.setdefault(r, set()).add(t)
        also = torch.zeros(len(rows), len(seen_names), dtype=torch.bool)
        for j, (r, w) in enumerate(zip(img.tolist(), whole.tolist())):
            if w and len(groups.get(r, ())) > 1:
                also[j, list(groups[r])] = True
    vocab_neg = F.normalize(negative_words.float(), dim=1) if negatives == "vocabulary" else None
    head = ExplainerHead(x.shape[1], word_space.dim)
    opt = torch.optim.Adam(head.parameters(), lr=lr, foreach=False)
    losses = []
    for _ in range(epochs):
        head.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            b = perm[start:start + batch_size]
            if len(b) < 2:
                continue
            cands, also_b = seen_vecs, None if also is None else also[b]
            if vocab_neg is not None:
                pick = torch.randperm(len(vocab_neg), generator=gen)[:VOCABULARY_NEGATIVES]
                cands = torch.cat([seen_vecs, vocab_neg[pick]])
                if also_b is not None:
                    also_b = F.pad(also_b, (0, len(pick)))
            loss = hinge_rank_loss(head(x[b]), y[b], cands, 1.0,
                                   negatives="hardest" if negatives == "hardest" else "all", also_positive=also_b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        losses.append(total / len(x))
    return head.eval(), losses


@pytest.mark.parametrize("negatives,weak", [("all", False), ("hardest", False), ("vocabulary", True)])
def test_fit_head_trains_the_same_head_as_before_for_a_fixed_seed(negatives, weak):
    """Minibatches gathered from the caller's tensors (no float32 copy of every pair)
    and the foreach Adam give bit-identical weights and losses to the previous loop;
    float16 storage trains exactly as its float32 values do."""
    space = toy_space()
    pairs = _synthetic_pairs(space, n=330)
    split = split_concepts(WORDS[:6], 0.7, seed=1)
    kw = dict(epochs=3, lr=3e-3, batch_size=16, negatives=negatives)
    if weak:
        # Two whole-image words per image: each is not a negative of the other.
        rows = torch.arange(40)
        kw["image_level"] = ConceptFeatures(pairs.pooled[rows % 20], [WORDS[6 + int(r) % 2] for r in rows],
                                            rows // 2 + 1000, torch.ones(40))
    if negatives == "vocabulary":
        kw["negative_words"] = torch.randn(300, 8, generator=torch.Generator().manual_seed(2))
    head, history = fit_head(pairs, None, split, space, progress=False, **kw)
    ref, losses = _fit_head_reference(pairs, split, space, **kw)
    assert [m.loss for m in history] == losses
    for k, v in ref.state_dict().items():
        assert torch.equal(head.state_dict()[k], v), k
    half = ConceptFeatures(pairs.pooled.half(), pairs.concepts, pairs.images, pairs.coverage)
    if weak:
        w = kw["image_level"]
        kw["image_level"] = ConceptFeatures(w.pooled.half(), w.concepts, w.images, w.coverage)
    head16, _ = fit_head(half, None, split, space, progress=False, **kw)
    exact = ConceptFeatures(half.pooled.float(), pairs.concepts, pairs.images, pairs.coverage)
    if weak:
        kw["image_level"] = ConceptFeatures(w.pooled.half().float(), w.concepts, w.images, w.coverage)
    head32, _ = fit_head(exact, None, split, space, progress=False, **kw)
    for k, v in head32.state_dict().items():
        assert torch.equal(head16.state_dict()[k], v), k
