"""Several reference datasets as one, images identified by content.

Kept apart from the registry (``__init__``) because it is not a format: it knows only
the :class:`~lavise.datasets.base.ReferenceDataset` contract.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torchvision import tv_tensors

from lavise.datasets.base import ReferenceDataset

logger = logging.getLogger(__name__)


class CombinedDataset(ReferenceDataset):
    """Several datasets as one: concepts unioned by name, images deduplicated by content.

    Images are identified by the hash of their file's bytes (:attr:`image_hashes`), never
    by their dataset ids: the same file under two ids or in two datasets is one image,
    whose masks are the union of every member's annotation of it (the first member's
    file is decoded); two different files with the same id are two images. Each image
    keeps its first member's id for display, qualified as ``"FORMAT[k]:ID"`` (``k`` the
    member's position) only when that id is already taken by another image. Items carry
    ``concept_ids`` into the combined ``concepts`` list and ``index`` into the combined
    dataset; members are in ``.datasets``.

    Args:
        datasets: Datasets sharing the same preprocessing.
        exclude_hashes: Content hashes of images to leave out (e.g. an evaluation
            split's :attr:`image_hashes`).

    Raises:
        ValueError: If ``datasets`` is empty or their preprocessing differs.
    """

    name = "combined"

    def __init__(self, datasets: Iterable[ReferenceDataset], exclude_hashes: Iterable[str] = ()) -> None:
        datasets = list(datasets)
        if not datasets:
            raise ValueError("combine() needs at least one dataset")
        for ds in datasets:
            if not isinstance(ds, ReferenceDataset):
                raise ValueError(f"combine() takes lavise datasets, got {type(ds).__name__}")
        prep = datasets[0].preprocessing
        for ds in datasets[1:]:
            if ds.preprocessing != prep:
                raise ValueError(
                    "cannot combine datasets with different preprocessing "
                    f"({prep} vs {ds.preprocessing})"
                )
        # ReferenceDataset.__init__ is not called: attributes are derived from the members.
        self.datasets = datasets
        self.root = Path(".")
        self.split = None
        self.preprocessing = prep
        self._transform = prep.geometric()
        # Own flag (members are never mutated): False yields masks only from every member.
        self.load_images = all(ds.load_images for ds in datasets)
        self.concepts = []
        position: dict[str, int] = {}
        self._remap: list[torch.Tensor] = []
        for ds in datasets:
            table = []
            for name in ds.concepts:
                if name not in position:
                    position[name] = len(self.concepts)
                    self.concepts.append(name)
                table.append(position[name])
            self._remap.append(torch.tensor(table, dtype=torch.long))
        excluded = set(exclude_hashes)
        row_of: dict[str, int] = {}
        taken: set[str] = set()
        # Per image: its (member, index) sources; the first is decoded.
        self._items: list[list[tuple[int, int]]] = []
        self.image_ids = []
        self.image_paths = []
        hashes: list[str] = []
        n_excluded = n_merged = 0
        for d, ds in enumerate(datasets):
            for j, h in enumerate(ds.image_hashes):
                if h in excluded:
                    n_excluded += 1
                    continue
                if h in row_of:
                    self._items[row_of[h]].append((d, j))
                    n_merged += 1
                    continue
                iid = str(ds.image_ids[j])
                if iid in taken:
                    iid = f"{ds.name}[{d}]:{iid}"
                taken.add(iid)
                row_of[h] = len(self._items)
                self._items.append([(d, j)])
                self.image_ids.append(iid)
                self.image_paths.append(ds.image_paths[j])
                hashes.append(h)
        self.__dict__["_image_hashes"] = hashes
        self.excluded = n_excluded
        self.merged = n_merged
        if n_excluded or n_merged:
            logger.info("combined datasets: %d excluded images left out; %d duplicate files merged "
                        "into one image each", n_excluded, n_merged)

    def __len__(self) -> int:
        return len(self._items)

    def _get(self, i: int, load_images: bool) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for dataset of {len(self)} images")
        i = int(i) % len(self)
        sources = self._items[i]
        d, j = sources[0]
        item = self.datasets[d]._get(j, load_images)
        item["index"] = i
        item["image_id"] = self.image_ids[i]
        item["concept_ids"] = self._remap[d][item["concept_ids"]]
        if item["error"] is not None or len(sources) == 1:
            return item
        masks = [item["masks"].as_subclass(torch.Tensor)]
        ids = [item["concept_ids"]]
        for d2, j2 in sources[1:]:
            other = self.datasets[d2]._get(j2, False)
            if other["error"] is None:
                masks.append(other["masks"].as_subclass(torch.Tensor))
                ids.append(self._remap[d2][other["concept_ids"]])
        all_ids, all_masks = torch.cat(ids), torch.cat(masks)
        uniq = torch.unique(all_ids)
        merged = torch.stack([all_masks[all_ids == c].amax(dim=0) for c in uniq]) if len(uniq) else all_masks
        item["masks"] = tv_tensors.Mask(merged)
        item["concept_ids"] = uniq
        return item

    def _annotated_concepts(self, i: int) -> list[int]:
        found: set[int] = set()
        for d, j in self._items[i]:
            table = self._remap[d]
            found.update(int(table[c]) for c in self.datasets[d]._annotated_concepts(j))
        return sorted(found)

    def describe(self, word_space: Any = None) -> str:
        """Summary of the combination and of each member."""
        head = ReferenceDataset.describe(self, word_space).replace(f"{self.name}:{self.root}", "combined", 1)
        extra = f" ({self.merged} duplicate files merged, {self.excluded} excluded)"
        return head + extra + "".join(f"\n  - {ds.describe(word_space)}" for ds in self.datasets)

    def __repr__(self) -> str:
        return (
            f"CombinedDataset({len(self.datasets)} datasets, images={len(self)}, "
            f"concepts={len(self.concepts)})"
        )


def combine(datasets: Sequence[ReferenceDataset], exclude_hashes: Iterable[str] = ()) -> CombinedDataset:
    """Combines datasets: union of concepts by name, images deduplicated by content."""
    return CombinedDataset(datasets, exclude_hashes=exclude_hashes)
