"""The feature cache: a layer's activations of a dataset, computed once, kept on disk.

The backbone is the cost floor of everything lavise does, so it runs once per
image. Activations are stored as float16 in a memory-mapped ``.npy`` file under a
key derived from the model's weights, the layer, the preprocessing and the image
list: any change is a cache miss, never a stale hit. Extraction is resumable (a
``done`` mask is saved as it goes) and can be split across processes
(``rank``/``world_size``), each writing its own rows of the same file.

An entry is checked whenever it is opened (see :mod:`lavise._cache`): a damaged one
is reported, removed and rebuilt. Two writers of one shard are serialised by a file
lock; the shards of one entry are filled in parallel.

Extraction reads only the pixels (:mod:`lavise.decode`: JPEGs at reduced size where the
resize allows, or file bytes decoded on the GPU) and decodes the next batch while the
model runs on the current one (DataLoader workers, or :func:`lavise.prefetch.prefetch`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from lavise import _cache
from lavise._parallel import InOrder, resolve_passes, side_by_side
from lavise._io import save_npy_atomic, write_json_atomic
from lavise.decode import DecodedImages, EncodedImages, collate_images, decode_on_device
from lavise.models import LayerExtractor, TargetModel
from lavise.prefetch import prefetch

logger = logging.getLogger(__name__)

__all__ = ["FeatureStore", "extract_features", "feature_cache_key", "default_cache_dir", "features_with_masks"]

_FORMAT_VERSION = 2  # 2: shard checksums in meta.json


def default_cache_dir() -> Path:
    """``$LAVISE_CACHE_DIR`` or ``~/.cache/lavise``."""
    return Path(os.environ.get("LAVISE_CACHE_DIR", Path.home() / ".cache" / "lavise"))


def _image_list_digest(dataset: Any) -> str:
    """Digest of the image list by content (``lavise.identity``) and row id, in row order.

    Ids stay in the key because the store's rows are looked up by id; paths do not, so
    moving a dataset keeps its cache.
    """
    from lavise.identity import content_hashes

    hashes = getattr(dataset, "image_hashes", None)
    if hashes is None:
        hashes = content_hashes(dataset.image_paths)
    h = hashlib.sha256()
    for image_id, digest in zip(dataset.image_ids, hashes):
        h.update(f"{image_id}\t{digest}\n".encode())
    return h.hexdigest()


_PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _resolve_decode(decode: str, device: torch.device) -> bool:
    """True when images are decoded on ``device`` (``decode`` is auto, cpu or device)."""
    if decode not in ("auto", "cpu", "device"):
        raise ValueError(f"unknown decode {decode!r} (valid: auto, cpu, device)")
    return decode == "device" or (decode == "auto" and device.type == "cuda")


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward pass, or None for float32."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (valid: auto, {', '.join(_PRECISIONS)})")
    return _PRECISIONS[precision]


def feature_cache_key(model: TargetModel, layer: str, dataset: Any) -> str:
    """The cache key of ``layer``'s features of ``dataset`` under ``model``."""
    blob = json.dumps(
        {"v": _FORMAT_VERSION, "model": model.meta(), "layer": layer,
         "images": _image_list_digest(dataset)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class FeatureStore:
    """Read access to cached feature maps of one layer over one image list.

    Attributes:
        path: Folder of this cache entry.
        ids: Image ids, row order.
        failed: Ids of images that could not be decoded (their rows are zeros and
            are skipped by :meth:`batches`).
    """

    path: Path
    ids: list[str]
    failed: dict[str, str]
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        """Opens a complete cache entry written by :func:`extract_features`.

        Raises:
            FileNotFoundError: No cache entry at ``path``.
            lavise._cache.CacheDamaged: The entry's metadata is unreadable, its array
                disagrees with the metadata, or a shard fails its checksum.
            ValueError: The entry is incomplete.
        """
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"no feature cache at {path}")
        meta = _cache.check_meta(path, _cache.read_json(meta_file), version=_FORMAT_VERSION)
        if not meta.get("complete"):
            raise ValueError(f"feature cache at {path} is incomplete; run the extraction again")
        _cache.verify_feature_entry(path, meta)
        return cls(path=path, ids=list(meta["ids"]), failed=dict(meta.get("failed", {})), meta=meta)

    @property
    def array(self) -> np.ndarray:
        """The (N, d, h, w) float16 memory map."""
        return np.load(self.path / "features.npy", mmap_mode="r")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(d, h, w) of one image's feature map."""
        return tuple(self.meta["shape"])  # type: ignore[return-value]

    @property
    def layer(self) -> str:
        return self.meta["layer"]

    def __len__(self) -> int:
        return len(self.ids)

    def valid_indices(self) -> np.ndarray:
        """Row indices of images that were decoded."""
        bad = set(self.failed)
        return np.array([i for i, k in enumerate(self.ids) if k not in bad], dtype=np.int64)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[i]))

    def batches(
        self, batch_size: int = 64, indices: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields ``(row indices, float32 features (B, d, h, w))``, skipping failed images."""
        arr = self.array
        idx = self.valid_indices() if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(idx), batch_size):
            rows = idx[start:start + batch_size]
            contiguous = rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1)
            block = arr[rows[0]:rows[-1] + 1] if contiguous else arr[rows]
            yield torch.from_numpy(rows.copy()), torch.from_numpy(np.asarray(block, dtype=np.float32))


@_cache.holding_locks
def extract_features(
    model: TargetModel,
    layer: str,
    dataset: Any,
    cache_dir: str | Path | None = None,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    channels_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    flush_every: int = 20,
    decode: str = "auto",
    precision: str = "auto",
    forward_passes: int | None = None,
) -> FeatureStore:
    """Computes (or reuses) the cached features of ``layer`` for every image of ``dataset``.

    Args:
        model: Target model (on the device to use).
        layer: Dotted module path.
        dataset: A :class:`lavise.datasets.ReferenceDataset` (its images are loaded).
        cache_dir: Root of the cache (default :func:`default_cache_dir`).
        batch_size: Images per forward pass.
        num_workers: DataLoader workers decoding images.
        channels_last: Run the backbone in channels-last memory format.
        rank: This process's shard (images ``i`` with ``i % world_size == rank``).
        world_size: Number of processes sharing the extraction.
        progress: Show a tqdm progress bar.
        flush_every: Batches between saves of the resume state.
        decode: Where JPEGs are decoded: ``cpu`` (PIL, at reduced size where the
            resize allows, see :mod:`lavise.decode`), ``device`` (file bytes decoded by
            ``torchvision.io.decode_jpeg`` on the model's device) or ``auto``
            (``device`` on CUDA, else ``cpu``). Decoding overlaps with the forward
            pass: in DataLoader workers, or a background thread when ``num_workers=0``.
        precision: Forward-pass precision: ``float32``, ``float16`` or ``bfloat16``
            (autocast), or ``auto`` (``float16`` on CUDA, else ``float32``). Features
            are stored as float16 either way.
        forward_passes: Batches whose forward passes run at once, each in its own
            thread with an equal share of the intra-op threads (default: on a CPU the
            intra-op thread count, at most 4; on a GPU 1). On a small CPU, batch-1
            passes side by side beat one pass split across all cores
            (docs/performance.md).

    Returns:
        The store; complete once every shard has finished.

    A damaged cache entry is reported as a warning and rebuilt. A second process
    filling the same shard waits for the first (file lock), then reuses its result.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    device = torch.device(model.device)
    on_device = _resolve_decode(decode, device)
    amp = _resolve_precision(precision, device)
    extractor = LayerExtractor(model, layer, channels_last=channels_last)
    info = extractor.info
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = feature_cache_key(model, info.name, dataset)
    path = root / "features" / key
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset has no images")
    shape = (info.channels, info.height, info.width)
    meta_file = path / "meta.json"
    _cache.hold(_cache.lock(path / f".shard-{rank}-of-{world_size}", "feature cache shard"))
    hit = _cache.open_or_prepare(path, key=key, version=_FORMAT_VERSION, shape=(n, *shape), dtype=np.float16,
                                 rank=rank, world_size=world_size, open_complete=FeatureStore.open)
    if hit is not None:
        logger.info("feature cache hit: %s", path)
        return hit
    feats_file = path / "features.npy"
    done_file = path / f"done-{rank}-of-{world_size}.npy"
    failed_file = path / f"failed-{rank}-of-{world_size}.json"
    done = np.load(done_file) if done_file.is_file() else np.zeros(n, dtype=bool)
    failed: dict[str, str] = json.loads(failed_file.read_text()) if failed_file.is_file() else {}
    todo = [i for i in range(rank, n, world_size) if not done[i]]
    if len(todo) < len(range(rank, n, world_size)):
        logger.info("resuming feature extraction: %d of %d images left", len(todo), n)
    out = np.load(feats_file, mmap_mode="r+")

    def save_state() -> None:
        out.flush()
        save_npy_atomic(done_file, done)
        write_json_atomic(failed_file, failed)

    if todo:
        source = EncodedImages(dataset) if on_device else DecodedImages(dataset)
        loader = DataLoader(
            Subset(source, todo), batch_size=batch_size, num_workers=num_workers,
            collate_fn=collate_images, persistent_workers=False,
            pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None,
        )
        passes = resolve_passes(forward_passes, device)

        def forward(images: torch.Tensor) -> np.ndarray:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                feats = extractor(images.to(device, non_blocking=True))
            return feats.to("cpu", torch.float16).numpy()

        def write(rows: np.ndarray, feats: np.ndarray) -> None:
            # A row counts as done only once its features are written (resume stays exact).
            out[rows] = feats
            done[rows] = True

        bar = tqdm(total=len(todo), desc=f"features {info.name}", unit="img", disable=not progress)
        try:
            with side_by_side(passes, "lavise-forward") as pool:
                passes_in_order = InOrder(pool, write, limit=passes)
                batches = loader if num_workers else prefetch(loader, depth=2 * passes)
                for step, batch in enumerate(batches, 1):
                    fails = list(batch["failed"])
                    images, rows = batch["images"], batch["index"]
                    if on_device:
                        images, rows, more = decode_on_device(batch, dataset.preprocessing, device)
                        fails += more
                    for item in fails:
                        failed[str(item["image_id"])] = str(item["error"])
                        done[int(item["index"])] = True
                    if images is not None and len(rows):
                        passes_in_order.submit(rows.numpy(), forward, images)
                    bar.update(len(batch["index"]) + len(batch["failed"]))
                    if step % flush_every == 0:
                        save_state()
                passes_in_order.drain()
        finally:
            save_state()
            bar.close()
    for item_id, err in failed.items():
        logger.warning("skipped unreadable image %s: %s", item_id, err)
    # Gather shards: complete when every rank's done mask covers the whole list and
    # every shard's checksum is recorded.
    with _cache.lock(path / ".entry", "feature cache entry"):
        all_done, all_failed, checksums = _cache.gather_shards(path, out, done, rank, world_size)
        complete = bool(all_done.all()) and len(checksums) == world_size
        meta = {
            "version": _FORMAT_VERSION,
            "key": key,
            "model": model.meta(),
            "layer": info.name,
            "shape": list(shape),
            "ids": [str(i) for i in dataset.image_ids],
            "failed": all_failed,
            "decode": "device" if on_device else "cpu",
            "precision": str(amp or torch.float32).replace("torch.", ""),
            "complete": complete,
            "world_size": world_size,
            "checksums": checksums,
        }
        write_json_atomic(meta_file, meta)
    if not meta["complete"]:
        logger.info("shard %d/%d done; waiting for the other shards", rank, world_size)
        return FeatureStore(path=path, ids=meta["ids"], failed=all_failed, meta=meta)
    if len(all_failed) == n:
        raise ValueError("no image of the dataset could be read")
    if all_failed:
        logger.warning("%d of %d images could not be read and were skipped", len(all_failed), n)
    return FeatureStore(path=path, ids=meta["ids"], failed=all_failed, meta=meta)


def features_with_masks(
    store: FeatureStore,
    dataset: Any,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "masks",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
    """Streams a dataset's concept masks beside its cached features, image by image.

    Masks are read without decoding images; images the cache could not read are
    skipped. Yields ``(store rows (B,), float32 features (B, d, h, w), masks, concept_ids)``
    where ``masks[i]`` is ``(K_i, H, W)`` and ``concept_ids[i]`` indexes ``dataset.concepts``.
    """
    from lavise.datasets import collate, masks_only

    row_of = {k: i for i, k in enumerate(store.ids)}
    failed = set(store.failed)
    loader = DataLoader(masks_only(dataset), batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    arr = store.array
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        keep = [j for j, iid in enumerate(batch["image_id"]) if str(iid) not in failed]
        if not keep:
            continue
        rows = [row_of[str(batch["image_id"][j])] for j in keep]
        feats = torch.from_numpy(np.asarray(arr[rows], dtype=np.float32))
        yield (torch.tensor(rows, dtype=torch.long), feats,
               [torch.as_tensor(batch["masks"][j]) for j in keep], [batch["concept_ids"][j] for j in keep])
