"""The command line: thin over the API, one-line errors with exit status 2, no partial outputs."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from lavise.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_choices_come_from_the_registries(capsys):
    code, out, _ = run(capsys, "list", "methods")
    assert code == 0 and out.split() == ["attention", "projection", "activation", "original", "image"]
    code, out, _ = run(capsys, "list", "formats")
    assert {"coco-instances", "coco-panoptic", "visual-genome", "imagefolder", "folder"} <= set(out.split())


def test_layers_lists_channels_and_map_sizes(capsys):
    code, out, _ = run(capsys, "layers", "efficientnet-lite0")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("_head_act "))
    assert "1280" in line and "7x7" in line and "*" in line
    assert "_blocks.15 " in out and "_blocks.1._swish" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["layers", "resnet-18"], "resnet18"),
        (["train", "--reference", "coco-panoptic:/no/such/dir", "--split", "train2017", "--out", "{tmp}/c"], "not"),
        (["train", "--layer", "_fc", "--reference", "folder:{tmp}", "--out", "{tmp}/c"], "no spatial map"),
        (["train", "--layer", "_blok.15", "--reference", "folder:{tmp}", "--out", "{tmp}/c"], "_blocks.15"),
        (["train", "--reference", "cocopanoptic:{tmp}", "--out", "{tmp}/c"], "unknown"),
        (["explain", "--checkpoint", "{tmp}/none", "--images", "{tmp}", "--out", "{tmp}/o"], "lavise.json"),
        (["train", "--seen-fraction", "1.5", "--reference", "folder:{tmp}", "--out", "{tmp}/c"], "seen fraction"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    lines = [l for l in err.splitlines() if l.startswith("lavise: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_wrong_annotation_format_is_named(capsys, shared_data, tmp_path):
    code, _, err = run(capsys, "train", "--reference", f"coco-panoptic:{shared_data / 'coco-mini' / 'annotations' / 'instances_train2017.json'}",
                       "--out", str(tmp_path / "c"))
    assert code == 2 and "lavise: error:" in err and not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory, shared_data):
    """A checkpoint for a ResNet-18 (random weights from a local state_dict) via the CLI."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    weights = root / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    code = main(["train", "--model", "resnet18", "--weights", str(weights), "--layer", "layer4",
                 "--reference", f"coco-instances:{shared_data / 'coco-tiny'}", "--split", "train2017",
                 "--explainer", "trained", "--epochs", "3", "--cache-dir", str(root / "cache"), "-q",
                 "--out", str(root / "ckpt")])
    assert code == 0
    return root, weights


def test_cli_train_then_explain(capsys, resnet_checkpoint, shared_data):
    root, weights = resnet_checkpoint
    meta = json.loads((root / "ckpt" / "lavise.json").read_text())
    assert meta["model"]["name"] == "resnet18" and meta["layer"]["channels"] == 512
    code, out, err = run(capsys, "explain", "--checkpoint", str(root / "ckpt"), "--weights", str(weights),
                         "--images", str(shared_data / "coco-tiny" / "val2017"), "--filters", "0-9",
                         "--cache-dir", str(root / "cache"), "-q", "--out", str(root / "expl"))
    assert code == 0, err
    data = json.loads((root / "expl" / "explanations.json").read_text())
    assert [f["filter"] for f in data["filters"]] == list(range(10))
    assert "filter" in out and (root / "expl" / "explanations.csv").is_file()
    code, _, err = run(capsys, "explain", "--checkpoint", str(root / "ckpt"), "--weights", str(weights),
                       "--images", str(shared_data / "coco-tiny" / "val2017"), "--filters", "0-512",
                       "--cache-dir", str(root / "cache"), "-q", "--out", str(root / "expl2"))
    assert code == 2 and "out of range" in err and not (root / "expl2").exists()


def test_checkpoint_for_other_weights_is_refused(capsys, resnet_checkpoint, shared_data, tmp_path):
    root, _ = resnet_checkpoint
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), other)
    code, _, err = run(capsys, "explain", "--checkpoint", str(root / "ckpt"), "--weights", str(other),
                       "--images", str(shared_data / "coco-tiny" / "val2017"), "--out", str(tmp_path / "o"))
    assert code == 2 and "weights" in err


def test_extract_shards_like_torchrun_then_reuses_the_cache(capsys, shared_data, tmp_path, monkeypatch):
    images = str(shared_data / "coco-tiny" / "val2017")
    argv = ["extract", "--model", "resnet18", "--weights", "{w}", "--images", images,
            "--cache-dir", str(tmp_path / "cache"), "-q"]
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "w.pt")
    argv = [a.format(w=tmp_path / "w.pt") for a in argv]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "pending" in out
    monkeypatch.setenv("RANK", "1")
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "(complete)" in out
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "(complete)" in out


def test_explainer_kind_override_applies_to_a_checkpoint(resnet_checkpoint):
    from lavise import Config
    from lavise.api import resolve_explainer

    root, weights = resnet_checkpoint
    config = Config(weights=str(weights), cache_dir=str(root / "cache"))
    assert resolve_explainer(root / "ckpt", config).kind == "trained"
    # a 1000-way local state_dict gets the ImageNet class names, so ConSE is available
    assert resolve_explainer(root / "ckpt", config, kind="conse").kind == "conse"


def test_explainer_flag_of_evaluate_and_explain_overrides_the_kind(capsys, resnet_checkpoint, shared_data):
    """``--explainer KIND`` once collided with the API's first parameter (TypeError)."""
    root, weights = resnet_checkpoint
    common = ["--checkpoint", str(root / "ckpt"), "--weights", str(weights), "--explainer", "conse",
              "--cache-dir", str(root / "cache"), "-q"]
    code, _, err = run(capsys, "evaluate", *common, "--reference", f"coco-instances:{shared_data / 'coco-tiny'}",
                       "--split", "val2017", "--methods", "activation", "--no-baselines", "--out", str(root / "ev"))
    assert code == 0, err
    assert json.loads((root / "ev" / "evaluation.json").read_text())["explainer"] == "conse"
    code, _, err = run(capsys, "explain", *common, "--images", str(shared_data / "coco-tiny" / "val2017"),
                       "--filters", "0-1", "--out", str(root / "ex"))
    assert code == 0, err


def test_train_flags_of_the_issue_11_levers_reach_the_config():
    from lavise.cli import _config_from, build_parser

    args = build_parser().parse_args([
        "train", "--reference", "coco-instances:x", "--out", "y", "--augment", "hflip", "--augment", "zoom",
        "--captions", "c.json", "--loss-negatives", "hardest", "--margin", "0.5", "--conse-weight", "1.5",
        "--conse-top", "3"])
    config = _config_from(args)
    assert config.augment == ("hflip", "zoom") and config.captions == ("c.json",)
    assert (config.loss_negatives, config.margin, config.conse_weight, config.conse_top) == ("hardest", 0.5, 1.5, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--reference", "x", "--out", "y", "--augment", "rotate"])


def test_output_cut_short_by_the_reader_is_not_an_error():
    import subprocess
    import sys

    code = "import sys; from lavise.cli import main; sys.exit(main(['list', 'models']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "error" not in err, err
