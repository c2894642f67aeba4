"""Fine-tune the target model on image-level labels, so the filters explained are those
of a model trained for the question (the paper explains a gender classifier in 4.6 and
COCO multi-label classifiers in 4.5.5).

The network is cut into a frozen prefix and a trainable suffix of stages (the stem, the
blocks, the head convolution, then the new linear classifier). The frozen prefix runs
**once** per image and its output is cached in memory, so each epoch costs only the
trainable stages: with ``train="head"`` the cache holds the pooled features and an epoch
is a few matrix products. Images are resized and centre-cropped as the model expects
(no augmentation, which is what makes the cache possible). The cache lives in memory,
which suits the few thousand images fine-tuning is meant for; a run whose cache would
pass 8 GiB is refused before it starts to fill it.

The result is a safetensors weights file whose metadata carries the class names;
``load_model(name, weights=FILE)`` (and ``--weights FILE`` of ``train``/``explain``/
``evaluate``) reads them back, so the ConSE explainer knows what the outputs mean.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lavise.labels import LabelSet
from lavise.models import RANDOM_INIT, TargetModel, load_model, save_weights

logger = logging.getLogger(__name__)

__all__ = ["FinetuneEpoch", "FinetuneResult", "finetune", "parse_trainable", "split_stages", "INITS"]

INITS = ("pretrained", "random")
# The frozen prefix's outputs live in memory (fine-tuning is for thousands of images).
_MAX_CACHE_BYTES = 8 * 2**30


@dataclass(frozen=True)
class FinetuneEpoch:
    """One epoch: mean training loss, held-out loss and accuracy."""

    epoch: int
    train_loss: float
    heldout_loss: float
    heldout_accuracy: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneResult:
    """What ``lavise finetune`` produced.

    Attributes:
        weights: The weights file written (None when no ``out`` was given).
        model: Registry name of the model.
        class_names: Outputs of the new classifier, in order.
        multi_label: Sigmoid outputs (one per class) rather than a softmax.
        history: Per-epoch metrics.
        best_epoch: The epoch whose weights were kept (lowest held-out loss).
        heldout_accuracy: Held-out accuracy of the kept weights (single-label: top-1;
            multi-label: per-label accuracy at 0.5).
        majority_accuracy: Accuracy of always answering the most frequent training
            class (the baseline to beat).
        settings: Training settings (trainable part, init, lr, split, seed...).
    """

    weights: str | None
    model: str
    class_names: tuple[str, ...]
    multi_label: bool
    history: tuple[FinetuneEpoch, ...]
    best_epoch: int
    heldout_accuracy: float
    majority_accuracy: float
    settings: dict

    def to_dict(self) -> dict:
        return {"weights": self.weights, "model": self.model, "class_names": list(self.class_names),
                "multi_label": self.multi_label, "history": [h.to_dict() for h in self.history],
                "best_epoch": self.best_epoch, "heldout_accuracy": self.heldout_accuracy,
                "majority_accuracy": self.majority_accuracy, "settings": self.settings}

    def table(self) -> str:
        """Per-epoch held-out metrics as plain text."""
        lines = [f"{'epoch':>5} {'train loss':>10} {'held-out loss':>13} {'held-out acc':>12}"]
        for h in self.history:
            mark = " *" if h.epoch == self.best_epoch else ""
            lines.append(f"{h.epoch:>5} {h.train_loss:>10.4f} {h.heldout_loss:>13.4f} {h.heldout_accuracy:>12.3f}{mark}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- stages


class _Block(nn.Module):
    """An EfficientNet block called without drop-connect (as at inference)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=None)


@dataclass
class _Stages:
    """A network as ``stages`` (feature map -> feature map) then ``pool`` and ``head``."""

    stages: list[nn.Module]
    pool: Callable[[torch.Tensor], torch.Tensor]
    head_name: str


def split_stages(module: nn.Module) -> _Stages:
    """Cuts a classifier into sequential stages, a pooling step and its final linear layer.

    Knows EfficientNet-Lite (stem, 16 blocks, head convolution), torchvision ResNets
    (stem, each residual block) and networks with a ``features`` sequence followed by
    pooling and a ``classifier``/``fc`` (torchvision MobileNet/EfficientNet/VGG...).

    Raises:
        ValueError: For an architecture it cannot cut.
    """
    names = {n for n, _ in module.named_children()}
    if {"_conv_stem", "_blocks", "_conv_head", "_fc"} <= names:
        m: Any = module
        stages = [nn.Sequential(m._conv_stem, m._bn0, m._stem_act), *[_Block(b) for b in m._blocks],
                  nn.Sequential(m._conv_head, m._bn1, m._head_act)]
        return _Stages(stages, lambda x: m._dropout(torch.flatten(m._avg_pooling(x), 1)), "_fc")
    if {"conv1", "layer4", "fc"} <= names:
        m = module
        stem = [m.conv1, m.bn1, m.relu] + ([m.maxpool] if hasattr(m, "maxpool") else [])
        blocks = [b for layer in ("layer1", "layer2", "layer3", "layer4") for b in getattr(m, layer)]
        return _Stages([nn.Sequential(*stem), *blocks], lambda x: torch.flatten(m.avgpool(x), 1), "fc")
    if "features" in names and isinstance(getattr(module, "features"), nn.Sequential):
        m = module
        pool_mod = getattr(m, "avgpool", None) or getattr(m, "pool", None) or nn.AdaptiveAvgPool2d(1)
        if hasattr(m, "classifier"):
            cls = m.classifier
            if isinstance(cls, nn.Linear):
                head, pre = "classifier", nn.Identity()
            else:
                linears = [i for i, c in enumerate(cls) if isinstance(c, nn.Linear)]
                if not linears:
                    raise ValueError("its classifier has no linear layer")
                last = linears[-1]
                head, pre = f"classifier.{last}", nn.Sequential(*list(cls)[:last])
        elif hasattr(m, "fc") and isinstance(m.fc, nn.Linear):
            head, pre = "fc", nn.Identity()
        else:
            raise ValueError("it has neither a classifier nor an fc layer")
        return _Stages(list(m.features), lambda x: pre(torch.flatten(pool_mod(x), 1)), head)
    raise ValueError(
        f"lavise finetune cannot cut a {type(module).__name__} into stages "
        "(known: EfficientNet-Lite, ResNets, models with features + classifier)"
    )


def _run(stages: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for s in stages:
        x = s(x)
    return x


def parse_trainable(spec: str, num_stages: int) -> int:
    """How many final stages train: ``head`` -> 0, ``last:N`` -> N, ``all`` -> all.

    Raises:
        ValueError: An unknown spec or N out of range.
    """
    if spec == "head":
        return 0
    if spec == "all":
        return num_stages
    if spec.startswith("last:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = -1
        if not 1 <= n <= num_stages:
            raise ValueError(f"--train last:N needs 1 <= N <= {num_stages} (the model's stages), got {spec!r}")
        return n
    raise ValueError(f"unknown --train {spec!r} (valid: head, last:N, all)")


def _set_submodule(module: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, attr, new)


# --------------------------------------------------------------------------- data


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], model: TargetModel) -> None:
        self.paths = list(paths)
        self.transform = model.preprocessing.geometric()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        try:
            with Image.open(self.paths[i]) as pil:
                img = tv_tensors.Image(TF.pil_to_tensor(pil.convert("RGB")))
            return self.transform(img).as_subclass(torch.Tensor), True
        except Exception as exc:  # noqa: BLE001 - a bad file is skipped, not fatal
            logger.warning("skipping unreadable image %s: %s", self.paths[i], exc)
            return torch.zeros(0), False


def _collate(batch: list[tuple[torch.Tensor, bool]]) -> tuple[list[torch.Tensor], list[bool]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def _split_rows(labels: LabelSet, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/held-out split, stratified by (first) label."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(labels.targets):
        by_class.setdefault(t[0] if t else -1, []).append(i)
    train, held = [], []
    for k in sorted(by_class):
        rows = by_class[k]
        perm = torch.randperm(len(rows), generator=g).tolist()
        n = int(round(fraction * len(rows)))
        if fraction > 0 and len(rows) > 1:
            n = max(1, min(n, len(rows) - 1))
        held += [rows[j] for j in perm[:n]]
        train += [rows[j] for j in perm[n:]]
    return sorted(train), sorted(held)


# --------------------------------------------------------------------------- training


def finetune(
    model: str | TargetModel,
    labels: LabelSet,
    *,
    weights: str | None = None,
    train: str = "head",
    init: str = "pretrained",
    epochs: int = 15,
    lr: float = 1e-3,
    backbone_lr_scale: float = 0.1,
    batch_size: int = 32,
    holdout: float = 0.2,
    patience: int = 3,
    seed: int = 0,
    device: str = "cpu",
    image_batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
    out: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tunes ``model`` on image-level ``labels`` with a new linear classifier.

    Args:
        model: Registry name (or a :class:`TargetModel`, trained in place).
        labels: Images and their labels (:func:`lavise.labels.load_labels`).
        weights: Start from these weights (registry name only; default: the model's own).
        train: ``head`` (the new classifier only), ``last:N`` (also the last N stages) or
            ``all``.
        init: ``pretrained`` or ``random`` (a seeded random initialisation).
        epochs: At most this many epochs.
        lr: Adam learning rate of the new classifier.
        backbone_lr_scale: The trained stages learn at ``lr * backbone_lr_scale``.
        batch_size: Images per step.
        holdout: Share of images held out (stratified, seeded) for per-epoch accuracy
            and early stopping.
        patience: Stop after this many epochs without a lower held-out loss; the
            weights of the best epoch are kept.
        seed: Seed of the split, the new classifier's initialisation and the batches.
        device: ``cpu`` or ``cuda``.
        image_batch_size: Images per forward pass while caching the frozen prefix.
        num_workers: DataLoader workers decoding images.
        progress: Show progress bars.
        out: Write the weights file (``.safetensors``) here.

    Raises:
        ValueError: Bad settings, fewer than two classes, or too few images to hold out.
    """
    start = time.time()
    if init not in INITS:
        raise ValueError(f"unknown --init {init!r} (valid: {', '.join(INITS)})")
    if not 0 <= holdout < 1:
        raise ValueError(f"--holdout must be in [0, 1), got {holdout}")
    if epochs < 1 or batch_size < 1 or patience < 1 or lr <= 0:
        raise ValueError("epochs, batch size and patience must be >= 1 and lr > 0")
    if len(labels.class_names) < 2:
        raise ValueError(f"fine-tuning needs at least two classes; {labels.source} gives "
                         f"{list(labels.class_names)}")
    if out is not None and Path(out).suffix != ".safetensors":
        raise ValueError(f"the weights file must end in .safetensors, got {out}")
    if isinstance(model, TargetModel):
        target = model
        if init == "random":
            raise ValueError("init='random' needs a model name, not a loaded model")
    else:
        target = load_model(model, RANDOM_INIT if init == "random" else weights)
    if init == "random" and train == "head":
        logger.warning("training only the head of a randomly initialised network: its filters stay random")
    net = target.module.to(device)
    stages = split_stages(net)
    n_train = parse_trainable(train, len(stages.stages))
    old_head = net.get_submodule(stages.head_name)
    if not isinstance(old_head, nn.Linear):
        raise ValueError(f"{stages.head_name} is not a linear layer")
    n_cls = len(labels.class_names)
    torch.manual_seed(seed)
    head = nn.Linear(old_head.in_features, n_cls).to(device)
    _set_submodule(net, stages.head_name, head)
    frozen, trainable = stages.stages[: len(stages.stages) - n_train], stages.stages[len(stages.stages) - n_train:]
    # Cache the frozen prefix once (pooled when only the head trains).
    cache, ok = _cache_prefix(target, labels, frozen, stages.pool if n_train == 0 else None,
                              device, image_batch_size, num_workers, progress)
    rows = [i for i in range(len(labels)) if ok[i]]
    if len(rows) < len(labels):
        logger.warning("%d unreadable images left out", len(labels) - len(rows))
    sub = LabelSet(tuple(labels.paths[i] for i in rows), tuple(labels.names[i] for i in rows),
                   tuple(labels.targets[i] for i in rows), labels.class_names, labels.multi_label, labels.source)
    train_rows, held_rows = _split_rows(sub, holdout, seed)
    if not train_rows:
        raise ValueError("no images left to train on")
    if holdout > 0 and not held_rows:
        raise ValueError("too few images to hold any out; lower --holdout or add images")
    y = _targets(sub, device)
    for p in net.parameters():
        p.requires_grad_(False)
    params = [{"params": list(head.parameters()), "lr": lr}]
    back = [p for s in trainable for p in s.parameters()]
    if back:
        params.append({"params": back, "lr": lr * backbone_lr_scale})
    for group in params:
        for p in group["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam(params)
    g = torch.Generator().manual_seed(seed)

    def forward(x: torch.Tensor, training: bool) -> torch.Tensor:
        for s in trainable:
            s.train(training)
        if n_train:
            x = stages.pool(_run(trainable, x))
        return head(F.dropout(x, 0.2, training) if n_train == 0 else x)

    def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if labels.multi_label:
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target)

    history: list[FinetuneEpoch] = []
    best = (math.inf, 0, copy.deepcopy(_trainable_state(head, trainable)))
    bar = tqdm(range(1, epochs + 1), desc="finetune", unit="epoch", disable=not progress)
    stale = 0
    for epoch in bar:
        t0 = time.time()
        perm = torch.tensor(train_rows)[torch.randperm(len(train_rows), generator=g)]
        total, seen = 0.0, 0
        for idx in perm.split(batch_size):
            x = _inputs(cache, idx, target, n_train == len(stages.stages), device)
            loss = loss_of(forward(x, True), y[idx.to(device)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        eval_rows = held_rows or train_rows
        h_loss, h_acc = _evaluate(forward, loss_of, cache, eval_rows, y, target, n_train == len(stages.stages),
                                  device, labels.multi_label, batch_size)
        history.append(FinetuneEpoch(epoch, total / max(seen, 1), h_loss, h_acc, round(time.time() - t0, 2)))
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}", held_loss=f"{h_loss:.3f}", held_acc=f"{h_acc:.3f}")
        logger.info("epoch %d: train loss %.4f, held-out loss %.4f, accuracy %.3f", epoch, total / max(seen, 1), h_loss, h_acc)
        if h_loss < best[0] - 1e-6:
            best = (h_loss, epoch, copy.deepcopy(_trainable_state(head, trainable)))
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                logger.info("early stop after epoch %d (held-out loss rose %d times)", epoch, patience)
                break
    _load_trainable_state(head, trainable, best[2])
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    best_epoch = best[1]
    best_acc = next(h.heldout_accuracy for h in history if h.epoch == best_epoch)
    majority = _majority_accuracy(sub, train_rows, held_rows or train_rows)
    settings = {"train": train, "init": init, "epochs": epochs, "lr": lr, "backbone_lr_scale": backbone_lr_scale,
                "batch_size": batch_size, "holdout": holdout, "patience": patience, "seed": seed,
                "images": len(sub), "train_images": len(train_rows), "heldout_images": len(held_rows),
                "labels": labels.source, "class_counts": sub.counts(), "start_weights": target.weights_id,
                "seconds": round(time.time() - start, 2)}
    path = None
    if out is not None:
        meta = {"model": target.name, "class_names": list(labels.class_names), "num_classes": n_cls,
                "multi_label": labels.multi_label, "best_epoch": best_epoch, "heldout_accuracy": best_acc,
                "majority_accuracy": majority, "history": [h.to_dict() for h in history], "settings": settings,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path = str(save_weights(net.to("cpu"), out, meta))
        logger.info("weights written to %s", path)
    return FinetuneResult(path, target.name, tuple(labels.class_names), labels.multi_label, tuple(history),
                          best_epoch, best_acc, majority, settings)


def _trainable_state(head: nn.Module, trainable: Sequence[nn.Module]) -> list[dict]:
    return [head.state_dict()] + [s.state_dict() for s in trainable]


def _load_trainable_state(head: nn.Module, trainable: Sequence[nn.Module], state: list[dict]) -> None:
    head.load_state_dict(state[0])
    for s, st in zip(trainable, state[1:]):
        s.load_state_dict(st)


@torch.inference_mode()
def _cache_prefix(target: TargetModel, labels: LabelSet, frozen: Sequence[nn.Module],
                  pool: Callable | None, device: str, batch_size: int, num_workers: int,
                  progress: bool) -> tuple[torch.Tensor, list[bool]]:
    """The frozen prefix's output per image (uint8 images when nothing is frozen)."""
    for s in frozen:
        s.eval()
    loader = torch.utils.data.DataLoader(_Images(labels.paths, target), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate)
    parts: list[torch.Tensor] = []
    ok: list[bool] = []
    template: torch.Tensor | None = None
    for imgs, good in tqdm(loader, desc="caching frozen layers", unit="batch", disable=not progress):
        ok += good
        x = [im for im, g_ in zip(imgs, good) if g_]
        out = torch.zeros(0)
        if x:
            batch = torch.stack(x).to(device)
            if frozen:
                out = _run(frozen, target.preprocessing.normalise(batch))
                out = (pool(out) if pool is not None else out).float().cpu()
            else:
                out = batch.cpu()
            if template is None:
                need = out[0].numel() * out.element_size() * len(labels)
                if need > _MAX_CACHE_BYTES:
                    raise ValueError(
                        f"the cached frozen layers of {len(labels)} images would take {need / 2**30:.1f} GiB "
                        "of memory; train fewer stages (--train head or last:N with small N) or use fewer images")
            template = out[:1]
        # Unreadable images get a placeholder row so cache rows stay aligned with labels.
        it = iter(out)
        parts.extend(next(it) if g_ else None for g_ in good)
    if template is None:
        raise ValueError("no readable images")
    filled = [p if p is not None else torch.zeros_like(template[0]) for p in parts]
    return torch.stack(filled), ok


def _inputs(cache: torch.Tensor, idx: torch.Tensor, target: TargetModel, raw: bool, device: str) -> torch.Tensor:
    x = cache[idx].to(device)
    return target.preprocessing.normalise(x) if raw else x


def _targets(labels: LabelSet, device: str) -> torch.Tensor:
    if labels.multi_label:
        y = torch.zeros(len(labels), len(labels.class_names))
        for i, t in enumerate(labels.targets):
            y[i, list(t)] = 1.0
        return y.to(device)
    return torch.tensor(labels.single(), dtype=torch.long, device=device)


@torch.no_grad()
def _evaluate(forward, loss_of, cache, rows, y, target, raw, device, multi, batch_size) -> tuple[float, float]:
    total, correct, count = 0.0, 0.0, 0
    for idx in torch.tensor(rows).split(batch_size):
        logits = forward(_inputs(cache, idx, target, raw, device), False)
        t = y[idx.to(device)]
        total += float(loss_of(logits, t)) * len(idx)
        if multi:
            correct += float(((logits > 0).float() == t).float().mean(1).sum())
        else:
            correct += float((logits.argmax(1) == t).sum())
        count += len(idx)
    return total / max(count, 1), correct / max(count, 1)


def _majority_accuracy(labels: LabelSet, train_rows: list[int], eval_rows: list[int]) -> float:
    """Accuracy on ``eval_rows`` of predicting the most frequent training label(s)."""
    from collections import Counter

    if labels.multi_label:
        freq = Counter(k for i in train_rows for k in labels.targets[i])
        always = {k for k, n in freq.items() if n > len(train_rows) / 2}
        n = len(labels.class_names)
        return sum(sum((k in always) == (k in labels.targets[i]) for k in range(n)) / n for i in eval_rows) / max(len(eval_rows), 1)
    freq = Counter(labels.targets[i][0] for i in train_rows)
    top = freq.most_common(1)[0][0]
    return sum(labels.targets[i][0] == top for i in eval_rows) / max(len(eval_rows), 1)
