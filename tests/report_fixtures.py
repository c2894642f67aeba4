"""Small real explanations with evidence for the report tests (tiny model, random images)."""

from __future__ import annotations

from pathlib import Path

import torch

from lavise import Config, explain
from lavise.explainer import Explainer, ExplainerHead, split_concepts
from lavise.wordspace import WordSpace
from tiny import image_folder, tiny_model

EVIL_FILE = "<img src=x onerror=alert(1)>.jpg"
EVIL_WORD = "<b>"
WORDS = [f"w{i}" for i in range(12)] + [EVIL_WORD]


def tiny_explanations(root: Path, n_images: int = 9, x: int = 3):
    """Explanations of the tiny model's 6 filters over a folder that holds a file named
    like an HTML tag; filters choose ``x`` of 7 allowed words, one of which is ``<b>``."""
    torch.manual_seed(0)
    model = tiny_model()
    space = WordSpace("toy", WORDS, torch.randn(len(WORDS), 8))
    head = ExplainerHead(6, 8).eval()
    exp = Explainer(model, "features", space, "trained", head, split_concepts(WORDS[:10], 0.5))
    folder = image_folder(root / "imgs", n=n_images + 1)
    # A distinct image: a copy of another file would be the same image (identity by content).
    (folder / f"img{n_images:03d}.jpg").rename(folder / EVIL_FILE)
    config = Config(cache_dir=str(root / "cache"), progress=False, device="cpu", top_images=3, s=3, x=x,
                    vocabulary="glove", vocabulary_size=None, method="attention")
    return explain(exp, str(folder), config=config, allow=set(WORDS[6:]))


def with_varied_words(result):
    """``result`` with each filter's words rotated through the allowed words, so filters
    differ (the tiny random model gives every filter the same words)."""
    import dataclasses

    from lavise.words import RankedWord

    pool = WORDS[6:]
    filters = []
    for f in result:
        words = tuple(RankedWord(pool[(f.filter + k) % len(pool)], w.count, w.score, w.weight)
                      for k, w in enumerate(f.words))
        filters.append(dataclasses.replace(f, words=words))
    return dataclasses.replace(result, filters=tuple(filters))
