"""Target models, layers by dotted path, hooks."""

from __future__ import annotations

import pytest
import torch
import torchvision

from lavise.models import (
    FeatureHook,
    LayerExtractor,
    list_layers,
    list_models,
    load_model,
    resolve_layer,
    state_dict_hash,
)
from tiny import tiny_model


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


def test_efficientnet_lite0_loads_offline_with_its_default_layer(lite0):
    assert lite0.default_layer == "_head_act"
    info = lite0.layer()
    assert (info.channels, info.height, info.width) == (1280, 7, 7)
    assert lite0.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert len(lite0.class_names) == 1000


def test_lite0_classifier_reproduces_the_model_output(lite0):
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    feats = LayerExtractor(lite0, "_head_act")(x)
    logits = lite0.module(lite0.preprocessing.normalise(x))
    head = lite0.classifier_for("_head_act")
    assert torch.allclose(head(feats.mean((2, 3))), logits, atol=1e-4)
    assert lite0.classifier_for("_blocks.15") is None


def test_lite0_pretrained_weights_classify_a_plain_image_sensibly(lite0):
    # A uniformly blue-sky-like image should not produce a degenerate distribution.
    x = torch.zeros(1, 3, 224, 224, dtype=torch.uint8)
    x[:, 2] = 200
    x[:, 1] = 150
    p = torch.softmax(lite0.module(lite0.preprocessing.normalise(x)), 1)
    assert p.max() < 0.999 and p.sum().item() == pytest.approx(1.0, abs=1e-4)


def test_nested_layers_and_shared_modules(lite0):
    assert resolve_layer(lite0, "_blocks.15").channels == 320
    with pytest.raises(ValueError, match="shared module"):
        resolve_layer(lite0, "_blocks.1._swish")
    with pytest.raises(ValueError, match="_head_act"):
        resolve_layer(lite0, "_swish")
    with pytest.raises(ValueError, match="closest: _blocks.15"):
        resolve_layer(lite0, "_blok.15")
    with pytest.raises(ValueError, match="no spatial map"):
        resolve_layer(lite0, "_fc")


def test_torchvision_resnet_layers_random_weights():
    model = load_model("resnet18")
    names = {i.name: i for i in list_layers(model)}
    assert model.default_layer == "layer4"
    assert (names["layer4"].channels, names["layer4"].height) == (512, 7)
    assert names["layer3.1.conv2"].channels == 256
    assert model.classifier_for("layer4") is None  # random weights: no class names
    feats = LayerExtractor(model, "layer3.1.conv2")(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert feats.shape == (1, 256, 14, 14)


def test_unknown_model_names_close_choices():
    with pytest.raises(ValueError, match="resnet18"):
        load_model("resnet-18")
    assert "efficientnet-lite0" in list_models() and "vgg16" in list_models()


def test_hook_is_removed_even_when_the_forward_pass_fails():
    model = tiny_model()
    target = model.module.get_submodule("features.2")
    with pytest.raises(RuntimeError):
        with FeatureHook(model.module, "features.2") as hook:
            assert len(target._forward_hooks) == 1
            hook.run(torch.zeros(1, 5, 32, 32))  # wrong channel count
    assert len(target._forward_hooks) == 0


def test_hook_stops_the_forward_pass_early():
    model = tiny_model()
    calls = []
    model.module.fc.register_forward_hook(lambda *a: calls.append(1))
    with FeatureHook(model.module, "features", stop=True) as hook:
        out = hook.run(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 6, 8, 8) and not calls


def test_local_state_dict_torchscript_and_pickle(tmp_path):
    net = torchvision.models.resnet18(num_classes=10)
    sd = tmp_path / "r18.pt"
    torch.save(net.state_dict(), sd)
    m = load_model("resnet18", sd)
    assert m.weights_hash == state_dict_hash(net)
    whole = tmp_path / "whole.pt"
    torch.save(net, whole)
    with pytest.raises(ValueError, match="allow-pickle"):
        load_model("resnet18", whole)
    assert load_model("resnet18", whole, allow_pickle=True).weights_hash == m.weights_hash
    ts = tmp_path / "r18.ts"
    torch.jit.script(net.eval()).save(str(ts))
    assert load_model("resnet18", ts).layer("layer4").channels == 512
    bad = tmp_path / "bad.pt"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="does not fit"):
        load_model("resnet18", bad)
    with pytest.raises(FileNotFoundError):
        load_model("resnet18", tmp_path / "missing.pt")


def test_wrapped_module_defaults():
    model = tiny_model()
    assert model.default_layer == "features"
    assert model.layer().channels == 6
    assert model.classifier_for("features") is not None


def test_feature_hooks_of_two_threads_capture_their_own_passes():
    """Two threads run the same network at the same time, each with its own hook on the
    same layer (both hooks are registered while both passes run): each captures the
    output of its own pass only."""
    import threading

    from torch import nn

    barrier = threading.Barrier(2, timeout=10)

    class Meet(nn.Module):
        def forward(self, x):
            barrier.wait()  # both passes are inside the network, both hooks registered
            return x * 2

    net = nn.Sequential(nn.Identity(), Meet(), nn.Identity())
    inputs = {0: torch.zeros(1, 3), 1: torch.ones(1, 3)}
    got, errors = {}, []

    def run(k):
        try:
            with FeatureHook(net, "1", stop=True) as hook:
                got[k] = hook.run(inputs[k])
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert torch.equal(got[0], inputs[0] * 2) and torch.equal(got[1], inputs[1] * 2)
