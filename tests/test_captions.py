"""Caption nouns as image-level targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lavise.captions import caption_nouns, image_level_pairs, read_captions

pytestmark = pytest.mark.skipif(not Path("/usr/share/wordnet/index.noun").is_file(),
                                reason="WordNet (wordnet-base) not installed")

ALLOWED = {"dog", "frisbee", "grass", "man", "woman", "park", "front", "child", "bus"}


def test_nouns_need_min_count_captions_plural_forms_and_no_fillers():
    caps = ["A dog catches a frisbee on the grass.", "Two dogs in front of a man.",
            "Dogs playing with frisbees in a park.", "The children ran."]
    assert caption_nouns(caps, ALLOWED) == ["dog", "frisbee"]  # dog 3x, frisbee 2x; front is filler
    assert caption_nouns(caps, ALLOWED, min_count=1) == ["dog", "frisbee", "child", "grass", "man", "park"]
    assert caption_nouns(caps, {"frisbee"}, min_count=1) == ["frisbee"]  # only allowed words


def test_read_captions_by_file_name_and_bad_files(tmp_path):
    data = {"images": [{"id": 7, "file_name": "000000000007.jpg"}],
            "annotations": [{"image_id": 7, "id": 1, "caption": "a bus"}, {"image_id": 7, "id": 2, "caption": "bus"}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert read_captions([tmp_path / "c.json"]) == {"000000000007.jpg": ["a bus", "bus"]}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="captions"):
        read_captions([tmp_path / "bad.json"])
    with pytest.raises(FileNotFoundError):
        read_captions([tmp_path / "none.json"])


class _Store:
    def __init__(self, arr, ids):
        self.array, self.ids, self.failed, self.shape = arr, ids, {}, arr.shape[1:]


class _Data:
    image_ids = ["a", "b", "c"]
    image_paths = ["x/1.jpg", "x/2.jpg", "x/3.jpg"]


def test_image_level_pairs_pool_the_whole_map_and_skip_excluded_words():
    arr = np.arange(3 * 2 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 2)
    caps = {"1.jpg": ["a dog and a man", "dog, man"], "3.jpg": ["bus", "a bus"]}
    pairs = image_level_pairs(_Store(arr, ["a", "b", "c"]), _Data(), caps, ALLOWED, exclude_words={"man"})
    assert pairs.concepts == ["dog", "bus"]
    assert pairs.images.tolist() == [0, 2]
    assert torch.allclose(pairs.pooled[1], torch.from_numpy(arr[2]).reshape(2, -1).mean(1))
    assert pairs.coverage.tolist() == [1.0, 1.0]
