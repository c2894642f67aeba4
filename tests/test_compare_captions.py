"""Group labels from captions (Zhao et al.'s gender rule), and compare-groups end to end."""

from __future__ import annotations

import json

import pytest

import lavise
from lavise.captions import gender_of_captions, gender_words, groups_from_captions
from lavise.labels import load_labels
from tiny import image_folder, tiny_model


def test_gender_of_hand_written_captions():
    assert gender_of_captions(["A man riding a horse.", "The boy's bike is red."]) == "male"
    assert gender_of_captions(["Two women at a table", "a girl holds an umbrella"]) == "female"
    assert gender_of_captions(["A man and a woman walk a dog."]) == "both"
    assert gender_of_captions(["A man sits.", "A lady stands nearby."]) == "both"
    assert gender_of_captions(["People on a beach", "a surfer in the waves"]) == "neither"
    # whole tokens only: "woman" is not "man", "manhole" not "man", "shemale"-like runs never split
    assert gender_of_captions(["A woman near a manhole"]) == "female"
    assert gender_of_captions(["MEN playing frisbee"]) == "male"
    words = gender_words()
    assert {"man", "woman", "boy", "girl"} <= words["male"] | words["female"]
    assert not words["male"] & words["female"]


def test_groups_from_captions_counts_what_is_left_out():
    caps = {"a.jpg": ["a man"], "b.jpg": ["a woman"], "c.jpg": ["a man and a girl"], "d.jpg": ["a cat"]}
    g = groups_from_captions(caps)
    assert g.groups == {"a.jpg": "male", "b.jpg": "female"}
    assert g.left_out == {"both": ("c.jpg",), "neither": ("d.jpg",)}
    assert g.counts() == {"female": 1, "male": 1, "left out (both)": 1, "left out (neither)": 1}
    with pytest.raises(ValueError, match="unknown caption rule"):
        groups_from_captions(caps, rule="age")


def _captioned(tmp_path, n: int = 6):
    images = image_folder(tmp_path / "coco" / "val2017", n=2 * n + 2)
    names = sorted(p.name for p in images.iterdir())
    caps = [["A man with a kite."]] * n + [["A woman at a desk."]] * n + [["A man and a woman."], ["A bus."]]
    data = {"images": [{"id": i, "file_name": f} for i, f in enumerate(names)],
            "annotations": [{"image_id": i, "id": 10 * i + j, "caption": c}
                            for i, cs in enumerate(caps) for j, c in enumerate(cs)]}
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "captions_val2017.json").write_text(json.dumps(data))
    return images, names


def test_captions_labels_find_their_file_and_refuse_uncaptioned_images(tmp_path):
    images, names = _captioned(tmp_path)
    labels = load_labels("captions:gender", images)
    assert labels.counts() == {"female": 6, "male": 6}
    assert labels.left_out == {"captions name both": (names[12],), "captions name neither": (names[13],)}
    image_folder(images / "extra", n=2, seed=5)
    with pytest.raises(ValueError, match=r"2 of 16 images have no captions .*extra/img000.jpg.*--ignore-missing"):
        load_labels("captions:gender", images)
    labels = load_labels("captions:gender", images, ignore_missing=True)
    assert len(labels) == 12 and len(labels.left_out["no captions"]) == 2


def test_compare_groups_end_to_end_on_a_tiny_model(tmp_path):
    for k, name in enumerate(["dog", "cat", "car", "tree"]):
        image_folder(tmp_path / "ref" / name, n=4, seed=k)
    config = lavise.Config(cache_dir=str(tmp_path / "c"), progress=False, epochs=1, batch_size=4,
                           vocabulary="concepts", top_images=3, s=1, x=2, seen_fraction=0.5)
    explainer = lavise.train(tiny_model(), f"imagefolder:{tmp_path / 'ref'}", config=config)
    images, _ = _captioned(tmp_path, n=10)
    from lavise.compare_groups import GroupComparison, compare_groups

    result = compare_groups(explainer, images, "captions:gender", config=config, min_group_size=5, examples=2)
    assert result.group_sizes == {"female": 10, "male": 10}
    assert result.left_out == {"captions name both": 1, "captions name neither": 1, "in no group": 2}
    (c,) = result.contrasts
    assert (c.group, c.other) == ("female", "male") and len(c.filters) == 6
    assert all(0 <= f.q_value <= 1 and f.size == 10 for f in c.filters)
    paths = result.save(tmp_path / "out", top=3)
    assert [p.name for p in paths] == ["groups.json", "groups.csv", "groups.md", "groups.png"]
    assert GroupComparison.from_dict(json.loads(paths[0].read_text())) == result
    from PIL import Image

    with Image.open(paths[-1]) as im:
        assert im.size[0] > 300 and im.size[1] > 150
        import numpy as np

        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # bars, text and thumbnails, not blank
    with pytest.raises(ValueError, match="too few images"):
        compare_groups(explainer, images, "captions:gender", config=config, min_group_size=11)
    one = tmp_path / "one.csv"
    one.write_text("".join(f"{p.name},solo\n" for p in sorted(images.iterdir())[:4]))
    with pytest.raises(ValueError, match="at least two groups"):
        compare_groups(explainer, images, f"csv:{one}", config=config, min_group_size=2)
    other = lavise.explain(explainer, str(images), config=config.replace(quantile=0.05))
    with pytest.raises(ValueError, match="explanations were made at quantile 0.05"):
        compare_groups(explainer, images, "captions:gender", config=config, min_group_size=5, explanations=other)
    same = lavise.explain(explainer, str(images), config=config)
    again = compare_groups(explainer, images, "captions:gender", config=config, min_group_size=5, examples=2,
                           explanations=same)
    assert again.contrasts == result.contrasts
