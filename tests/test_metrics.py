"""Tests of lavise.metrics: IoU ground truth, recall/precision, baselines, controls, table."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest
import torch

from lavise.metrics import (
    IoUAccumulator,
    MethodScores,
    WordNetSynonyms,
    concept_match_words,
    constant_baseline,
    netdissect_baseline,
    precision_at_1,
    random_words_baseline,
    recall_at_k,
    restrict_ground_truth,
    score_method,
    scores_table,
    specificity_test,
)



def _mask(*rows: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in r] for r in rows], dtype=torch.uint8)


# ---------------------------------------------------------------------------- IoU


def test_iou_hand_built_with_absent_concept_in_union():
    # One filter, 2x2 grid, resolution=None (evaluate at the mask resolution).
    # Features already at mask resolution -> bilinear upsampling is the identity.
    acc = IoUAccumulator(1, 2, resolution=None)
    thr = torch.tensor([0.5])
    # Image 1: activation on the top row; concept 0 on the left column.
    f1 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    acc.update(f1, thr, [_mask("10", "10")[None]], [torch.tensor([0])])
    # Image 2: activation on the whole image; no concept 0, concept 1 bottom-right.
    f2 = torch.ones(1, 1, 2, 2)
    acc.update(f2, thr, [_mask("00", "01")[None]], [torch.tensor([1])])
    assert acc.intersection.tolist() == [[1, 1]]
    assert acc.act_area.tolist() == [6]
    assert acc.mask_area.tolist() == [2, 1]
    iou = acc.iou()
    # concept 0: inter 1; union = 6 + 2 - 1 = 7 (image 2's activation counts although it lacks concept 0)
    assert iou[0, 0].item() == pytest.approx(1 / 7)
    # concept 1: inter 1; union = 6 + 1 - 1 = 6
    assert iou[0, 1].item() == pytest.approx(1 / 6)
    assert acc.images == 2


def test_bilinear_upsampling_2x2_to_4x4_then_threshold():
    acc = IoUAccumulator(1, 1, resolution=None)
    feat = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # align_corners=False upsampling gives rows
    # [0 .25 .75 1], [.5 .75 1.25 1.5], [1.5 1.75 2.25 2.5], [2 2.25 2.75 3]; >= 1.0:
    expected = _mask("0001", "0011", "1111", "1111")
    full = torch.ones(1, 4, 4, dtype=torch.uint8)
    acc.update(feat, torch.tensor([1.0]), [full], [torch.tensor([0])])
    assert acc.act_area.tolist() == [int(expected.sum())] == [11]
    assert acc.intersection.tolist() == [[11]]
    assert acc.iou()[0, 0].item() == pytest.approx(11 / 16)
    # The exact pixels: concept mask = expected pattern gives IoU 1.
    acc2 = IoUAccumulator(1, 1, resolution=None)
    acc2.update(feat, torch.tensor([1.0]), [expected[None]], [torch.tensor([0])])
    assert acc2.iou()[0, 0].item() == pytest.approx(1.0)


def test_masks_resized_by_area_to_resolution():
    # 4x4 mask to 2x2 by area: each quadrant kept when > 50% covered.
    acc = IoUAccumulator(1, 1, resolution=2)
    m = _mask("1100", "1100", "1000", "0000")  # top-left full, bottom-left 25% -> only top-left
    feat = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # at 2x2 already: top-left active
    acc.update(feat, torch.tensor([0.5]), [m[None].bool()], [torch.tensor([0])])
    assert acc.mask_area.tolist() == [1]
    assert acc.iou()[0, 0].item() == pytest.approx(1.0)


def test_duplicate_concept_ids_are_merged():
    acc = IoUAccumulator(1, 3, resolution=None)
    masks = torch.stack([_mask("10", "00"), _mask("11", "00"), _mask("00", "01")])
    acc.update(torch.ones(1, 1, 2, 2), torch.tensor([0.5]), [masks], [torch.tensor([2, 2, 0])])
    assert acc.mask_area.tolist() == [1, 0, 2]
    assert acc.intersection.tolist() == [[1, 0, 2]]


def test_ground_truth_threshold_and_order():
    acc = IoUAccumulator(3, 3, resolution=None)
    acc.load_state_dict({
        "num_filters": 3, "num_concepts": 3, "resolution": None, "images": 1,
        # act_area 100 each; mask_area 100 each; IoU = i / (200 - i)
        "intersection": torch.tensor([[8, 20, 0], [7, 0, 0], [0, 0, 0]]),
        "act_area": torch.tensor([100, 100, 100]),
        "mask_area": torch.tensor([100, 100, 100]),
    })
    iou = acc.iou()
    assert iou[0, 0].item() == pytest.approx(8 / 192)  # 0.0417 > 0.04
    assert iou[1, 0].item() == pytest.approx(7 / 193)  # 0.0363 < 0.04
    assert acc.ground_truth(0.04) == [[1, 0], [], []]
    assert acc.ground_truth(0.03) == [[1, 0], [0], []]


def test_netdissect_label_of_a_filter_firing_exactly_on_one_concept():
    torch.manual_seed(0)
    n_concepts, d = 4, 3
    acc = IoUAccumulator(d, n_concepts, resolution=8)
    rng = random.Random(0)
    for _ in range(5):
        region = torch.zeros(8, 8, dtype=torch.uint8)
        r, c = rng.randint(0, 2), rng.randint(0, 4)
        region[r:r + 4, c:c + 3] = 1
        other = torch.zeros(8, 8, dtype=torch.uint8)
        other[6:, :] = 1
        masks = torch.stack([region, other])
        ids = torch.tensor([2, 0])
        feat = torch.zeros(1, d, 8, 8)
        feat[0, 1] = region.float() * 5  # filter 1 fires exactly on concept 2
        feat[0, 0] = torch.rand(8, 8)  # filter 0: noise
        acc.update(feat, torch.tensor([0.9, 1.0, 10.0]), [masks], [ids])
    labels, ious = acc.netdissect_labels()
    assert labels[1].item() == 2
    assert ious[1].item() == pytest.approx(1.0)
    assert ious[2].item() == 0.0  # filter 2 never fires
    assert acc.ground_truth()[1][0] == 2


def _random_batch(gen: torch.Generator, b: int, d: int, n_concepts: int):
    feats = torch.rand(b, d, 3, 3, generator=gen)
    masks, ids = [], []
    for _ in range(b):
        k = int(torch.randint(0, 3, (1,), generator=gen))
        masks.append((torch.rand(k, 12, 12, generator=gen) > 0.6).to(torch.uint8))
        ids.append(torch.randperm(n_concepts, generator=gen)[:k])
    return feats, masks, ids


def test_merge_equals_single_accumulator_and_state_roundtrip():
    gen = torch.Generator().manual_seed(1)
    d, n_c = 5, 4
    thr = torch.full((d,), 0.6)
    batches = [_random_batch(gen, 3, d, n_c) for _ in range(4)]
    whole = IoUAccumulator(d, n_c, resolution=6)
    a, b = IoUAccumulator(d, n_c, resolution=6), IoUAccumulator(d, n_c, resolution=6)
    for i, (f, m, c) in enumerate(batches):
        whole.update(f, thr, m, c)
        (a if i % 2 else b).update(f, thr, m, c)
    a.merge(b)
    assert torch.equal(a.intersection, whole.intersection)
    assert torch.equal(a.act_area, whole.act_area)
    assert torch.equal(a.mask_area, whole.mask_area)
    assert a.images == whole.images == 12
    assert torch.allclose(a.iou(), whole.iou())
    restored = IoUAccumulator(d, n_c, resolution=6)
    restored.load_state_dict(whole.state_dict())
    assert torch.equal(restored.iou(), whole.iou())
    with pytest.raises(ValueError):
        a.merge(IoUAccumulator(d, n_c, resolution=None))


def test_update_rejects_bad_input():
    acc = IoUAccumulator(2, 2)
    with pytest.raises(ValueError):
        acc.update(torch.zeros(1, 3, 2, 2), torch.zeros(3), [torch.zeros(0, 4, 4)], [torch.zeros(0, dtype=torch.long)])
    with pytest.raises(ValueError):
        acc.update(torch.zeros(1, 2, 2, 2), torch.zeros(2), [torch.ones(1, 4, 4)], [torch.tensor([5])])


# ---------------------------------------------------------------------------- matching / metrics


def test_concept_match_words():
    assert concept_match_words("traffic light") == {"traffic", "light", "traffic light", "trafficlight"}
    assert concept_match_words("wall-other-merged") == {"wall"}
    assert concept_match_words("Dog") == {"dog"}


def test_recall_and_precision_hand_example():
    predicted = [["dog", "cat", "light", "tree"], ["sky", "grass"], ["car"], ["x"]]
    gt = [{"dog", "traffic light", "person"}, {"grass", "wall-other-merged"}, set(), {"sky"}]
    # filter 0: top-2 hits dog (1/3); top-3 hits dog + traffic light (2/3)
    # filter 1: top-2 hits grass (1/2); filter 2 has no GT (skipped); filter 3: 0
    assert recall_at_k(predicted, gt, 2) == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
    assert recall_at_k(predicted, gt, 3) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # first words: dog (hit), sky (miss), x (miss)
    assert precision_at_1(predicted, gt) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        recall_at_k(predicted[:2], gt, 2)
    with pytest.raises(ValueError):
        recall_at_k([["a"]], [set()], 5)


def test_unseen_restriction_and_score_method():
    predicted = [["dog", "cat"], ["sky"], ["tree", "bus"]]
    gt = [["dog", "cat"], ["sky"], ["bus", "tree"]]
    unseen = {"cat", "bus"}
    restricted = restrict_ground_truth(gt, unseen)
    assert restricted == [{"cat"}, set(), {"bus"}]
    s = score_method("m", predicted, gt, unseen, ks=(1, 2))
    assert s.recall == {1: pytest.approx((0.5 + 1 + 0.5) / 3), 2: pytest.approx(1.0)}
    # unseen: filters 0 and 2 only; k=1: 'dog' misses cat, 'tree' misses bus
    assert s.recall_unseen == {1: 0.0, 2: 1.0}
    assert s.filters_with_unseen_ground_truth == 2
    assert s.precision_at_1 == 1.0
    assert (s.filters_with_ground_truth, s.num_filters) == (3, 3)
    d = s.to_dict()
    json.dumps(d)
    assert MethodScores.from_dict(d) == s
    none = score_method("m", predicted, gt, {"zebra"}, ks=(1,))
    assert none.recall_unseen is None and none.filters_with_unseen_ground_truth == 0


# ---------------------------------------------------------------------------- baselines


def test_constant_baseline_oracle_and_source():
    gt = [["dog", "cat"], ["dog"], ["sky", "dog"], ["cat"]]
    assert constant_baseline(gt, 2) == [["dog", "cat"]] * 4
    s = score_method("constant", constant_baseline(gt, 2), gt, ks=(2,))
    assert s.recall[2] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    # separate split: counts come from the source, one list per evaluated filter
    source = [["sky"], ["sky", "tree"], ["tree"], ["sky"]]
    assert constant_baseline(gt, 1, ground_truth_source=source) == [["sky"]] * 4
    # exclusion of counted filters
    assert constant_baseline(gt, 1, exclude_filters=[0, 1, 2]) == [["cat"]] * 4


def test_random_words_baseline():
    vocab = [f"w{i}" for i in range(10)]
    a = random_words_baseline(vocab, 5, 4, seed=3)
    assert len(a) == 5 and all(len(w) == 4 and len(set(w)) == 4 for w in a)
    assert a == random_words_baseline(vocab, 5, 4, seed=3)
    assert sorted(random_words_baseline(vocab, 1, 10, seed=0)[0]) == sorted(vocab)
    # vocabulary of exactly the GT words with x = all words -> recall 1
    gt = [["w1"], ["w2", "w3"]]
    s = score_method("random", random_words_baseline(vocab, 2, 10, seed=0), gt, ks=(10,))
    assert s.recall[10] == 1.0
    with pytest.raises(ValueError):
        random_words_baseline(vocab, 2, 11)


def test_netdissect_baseline():
    assert netdissect_baseline(["dog", None]) == [["dog"], []]
    assert netdissect_baseline(torch.tensor([1, 0]), ["wall-other-merged", "car"]) == [["car"], ["wall-other-merged"]]
    gt = [["car"], ["wall-other-merged", "sky"]]
    s = score_method("netdissect", netdissect_baseline(torch.tensor([1, 0]), ["wall-other-merged", "car"]), gt)
    assert s.precision_at_1 == 1.0
    assert s.recall[5] == pytest.approx((1 + 0.5) / 2)


# ---------------------------------------------------------------------------- specificity


def _synthetic_gt(n: int, n_concepts: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample([f"c{i}" for i in range(n_concepts)], rng.randint(1, 3)) for _ in range(n)]


def test_specificity_own_ground_truth_is_significant():
    gt = _synthetic_gt(60, 40, 0)
    res = specificity_test(gt, gt, k=10, permutations=500, seed=0)
    assert res.observed_recall == 1.0
    assert res.p_value < 0.01
    assert res.null_mean < 0.3
    json.dumps(res.to_dict())


def test_specificity_independent_words_not_significant():
    gt = _synthetic_gt(60, 40, 0)
    pvals = []
    for seed in range(8):
        words = _synthetic_gt(60, 40, 100 + seed)  # independent of gt
        res = specificity_test(words, gt, k=10, permutations=200, seed=seed)
        pvals.append(res.p_value)
        assert res.observed_recall == pytest.approx(recall_at_k(words, gt, 10))
    assert min(pvals) > 0.005
    assert sum(p > 0.05 for p in pvals) >= 6
    # roughly uniform: mean p-value well away from 0
    assert 0.2 < sum(pvals) / len(pvals) < 0.8


def test_specificity_rejects_too_few_filters():
    with pytest.raises(ValueError):
        specificity_test([["a"]], [["a"]])


# ---------------------------------------------------------------------------- synonyms


def test_wordnet_synonym_matching(wordnet):
    syn = WordNetSynonyms(wordnet)
    assert "car" in syn.synonyms("automobile")
    assert "car" in syn.synonyms("automobiles")  # base form
    assert syn.synonyms("qwzxv") == set()
    predicted, gt = [["automobile"]], [["car"]]
    assert recall_at_k(predicted, gt, 1) == 0.0
    assert recall_at_k(predicted, gt, 1, synonyms=syn) == 1.0
    assert precision_at_1([["stoplight"]], [["traffic light"]], synonyms=syn) == 1.0
    s = score_method("m (+synonyms)", predicted, gt, synonyms=syn)
    assert s.synonyms and s.precision_at_1 == 1.0


def test_wordnet_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="WordNet"):
        WordNetSynonyms(tmp_path)


# ---------------------------------------------------------------------------- table


def test_scores_table_markdown_and_csv():
    gt = [["dog", "cat"], ["sky"], ["bus"]]
    rows = [
        score_method("attention", [["dog"], ["sky"], ["bus"]], gt, {"cat", "bus"}),
        score_method("random | words", [["x"], ["y"], ["z"]], gt, {"cat", "bus"}),
        score_method("no-unseen", [["dog"], ["x"], ["y"]], gt, None),
    ]
    md = scores_table(rows)
    for r in rows:
        assert r.method.replace("|", "\\|") in md
    assert "recall@20 (unseen)" in md and "precision@1" in md
    out = list(csv.reader(io.StringIO(scores_table(rows, fmt="csv"))))
    assert out[0][0] == "method" and len(out) == 4
    for line in out[1:]:
        for cell in line[1:-1]:
            if cell:
                assert 0.0 <= float(cell) <= 1.0
    assert out[3][4] == ""  # no unseen recall
    with pytest.raises(ValueError):
        scores_table(rows, fmt="html")


def test_skipping_silent_filters_matches_the_full_computation():
    import torch.nn.functional as F

    from lavise.statistics import fires

    g = torch.Generator().manual_seed(0)
    feats = torch.rand(4, 7, 3, 3, generator=g) * 6
    thr = torch.rand(7, generator=g) * 6 + 1  # several filters never fire in some images
    masks = [(torch.rand(2, 12, 12, generator=g) > 0.6).to(torch.uint8) for _ in range(4)]
    ids = [torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([2, 0])]
    acc = IoUAccumulator(7, 3, resolution=None)
    acc.update(feats, thr, masks, ids)
    inter = torch.zeros(7, 3, dtype=torch.long)
    act_total = torch.zeros(7, dtype=torch.long)
    for i in range(4):
        up = F.interpolate(feats[i:i + 1], size=(12, 12), mode="bilinear", align_corners=False)[0]
        a = fires(up, thr[:, None, None]).reshape(7, -1).long()
        act_total += a.sum(1)
        for k, c in enumerate(ids[i].tolist()):
            inter[:, c] += (a * masks[i][k].reshape(-1).long()).sum(1)
    assert torch.equal(acc.intersection.cpu(), inter) and torch.equal(acc.act_area.cpu(), act_total)


# ------------------------------------------------------------ novel concepts (issue 11)


def test_novel_concepts_are_those_no_known_concept_names():
    from lavise.metrics import novel_concepts

    known = ["traffic light", "dog", "dining table"]
    got = novel_concepts(["wall-other-merged", "light", "dog", "table", "sky", "tree-merged"], known)
    assert got == {"wall-other-merged", "sky", "tree-merged"}  # light, table: tokens of known names


def test_score_method_reports_recall_on_novel_concepts_only():
    from lavise.metrics import MethodScores, score_method, scores_table

    words = [["sky", "dog"], ["cat", "car"], ["wall", "x"]]
    gts = [["sky", "dog"], ["cat"], ["dog"]]
    r = score_method("m", words, gts, unseen=["cat"], ks=(1, 2), novel=["sky", "wall"])
    assert r.filters_with_novel_ground_truth == 1  # only filter 0 has a novel GT concept
    assert r.recall_novel == {1: 1.0, 2: 1.0}
    assert MethodScores.from_dict(r.to_dict()) == r
    table = scores_table([r])
    assert "recall@2 (novel)" in table
    none = score_method("m", words, gts, ks=(1,), novel=["grass"])
    assert none.recall_novel is None and none.filters_with_novel_ground_truth == 0
    assert "(novel)" not in scores_table([score_method("m", words, gts, ks=(1,))])


def test_known_concepts_read_from_the_checkpoint_with_or_without_caption_targets():
    from types import SimpleNamespace

    from lavise.evaluate import known_concepts
    from lavise.explainer import ConceptSplit
    from lavise.metrics import novel_concepts

    split = ConceptSplit(concepts=("dog", "cat"), seen=("dog",), unseen=("cat",), missing=("hair drier",))
    exp = SimpleNamespace(split=split, meta={"training": {"caption_words": ["grass"]}})
    assert known_concepts(exp) == {"dog", "cat", "hair drier"}
    assert known_concepts(exp, captions=True) == {"dog", "cat", "hair drier", "grass"}
    gt = {"dog", "grass-merged", "sky-other-merged", "hair brush"}
    assert novel_concepts(gt, known_concepts(exp)) == {"grass-merged", "sky-other-merged"}  # hair: known token
    assert novel_concepts(gt, known_concepts(exp, captions=True)) == {"sky-other-merged"}
