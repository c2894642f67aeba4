"""Damaged or foreign files: checkpoints fail in one line naming the file; caches heal themselves."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lavise.checkpoint import CheckpointError, read_metadata, upgrade_checkpoint
from lavise.cli import error_line, main
from lavise.datasets import load_dataset
from lavise.explainer import Explainer, ExplainerHead, split_concepts
from lavise.features import FeatureStore, extract_features
from lavise.wordspace import WordSpace, load_text_word_space
from tiny import TINY_PRE, image_folder, tiny_model

WORDS = ["dog", "cat", "car", "tree", "sky", "grass", "road", "water"]
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    space = WordSpace("toy", WORDS, torch.randn(len(WORDS), 8, generator=torch.Generator().manual_seed(0)))
    head = ExplainerHead(6, 8).eval()
    exp = Explainer(model, "features", space, "trained", head, split_concepts(WORDS, 0.5))
    exp.save(tmp_path / "ckpt")
    return tmp_path / "ckpt", exp


def _edit_meta(path: Path, fn) -> None:
    meta = json.loads((path / "lavise.json").read_text())
    fn(meta)
    (path / "lavise.json").write_text(json.dumps(meta))


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


DAMAGE = {
    "truncated weights": ("explainer.safetensors", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
    "flipped byte in weights": ("explainer.safetensors",
                                lambda p: p.write_bytes(p.read_bytes()[:-5] + bytes([p.read_bytes()[-5] ^ 1]) + p.read_bytes()[-4:])),
    "zero-byte weights": ("explainer.safetensors", lambda p: p.write_bytes(b"")),
    "missing weights": ("explainer.safetensors", lambda p: p.unlink()),
    "truncated metadata": ("lavise.json", lambda p: p.write_text(p.read_text()[:40])),
    "binary metadata": ("lavise.json", lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
    "metadata is a list": ("lavise.json", lambda p: p.write_text("[1, 2]")),
    "no model field": ("lavise.json", lambda p: _edit_meta(p.parent, _drop("model"))),
    "no layer field": ("lavise.json", lambda p: _edit_meta(p.parent, _drop("layer"))),
    "no version": ("lavise.json", lambda p: _edit_meta(p.parent, _drop("version"))),
    "channels not a number": ("lavise.json", lambda p: _edit_meta(p.parent, lambda m: m["layer"].__setitem__("channels", "6"))),
    "newer version": ("lavise.json", lambda p: _edit_meta(p.parent, _set("version", 99))),
    "another program's json": ("lavise.json", lambda p: p.write_text('{"format": "keras", "model": {}}')),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_every_damaged_checkpoint_is_one_error_naming_the_file(ckpt, case):
    path, exp = ckpt
    name, damage = DAMAGE[case]
    damage(path / name)
    with pytest.raises(CheckpointError) as info:
        Explainer.load(path, model=exp.model, word_space=exp.word_space)
    msg = str(info.value)
    assert str(path / name) in msg and "\n" not in msg and "; " in msg, msg
    if case == "newer version":
        assert "newer lavise" in msg and "upgrade lavise" in msg


def test_weights_that_do_not_match_the_metadata_shapes(ckpt):
    from safetensors.torch import save_file

    path, exp = ckpt
    other = ExplainerHead(6, 5).state_dict()  # a 5-d word space, not 8-d
    save_file({k: v.contiguous() for k, v in other.items()}, str(path / "explainer.safetensors"))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        Explainer.load(path, model=exp.model, word_space=exp.word_space)
    # without the v2 weights record (a version-1 checkpoint), the shapes still catch it
    _edit_meta(path, lambda m: (m.pop("weights"), m.__setitem__("version", 1)))
    with pytest.raises(CheckpointError, match="do not match the head"):
        Explainer.load(path, model=exp.model, word_space=exp.word_space)


def test_older_format_loads_and_can_be_upgraded(ckpt):
    path, exp = ckpt
    _edit_meta(path, lambda m: (m.pop("weights"), m.__setitem__("version", 1), m["explainer"].pop("pooling")))
    back = Explainer.load(path, model=exp.model, word_space=exp.word_space)
    x = torch.randn(4, 6)
    assert torch.allclose(back.embed(x), exp.embed(x)) and back.pooling == "mean"
    upgrade_checkpoint(path)
    meta = read_metadata(path)
    assert json.loads((path / "lavise.json").read_text())["version"] == 2 and meta["weights"]["sha256"]
    assert torch.allclose(Explainer.load(path, model=exp.model, word_space=exp.word_space).embed(x), exp.embed(x))


def test_cli_reports_a_damaged_checkpoint_in_one_line(ckpt, tmp_path, capsys):
    path, _ = ckpt
    _edit_meta(path, _drop("model"))
    code = main(["explain", "--checkpoint", str(path), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("lavise: error:")]
    assert len(lines) == 1 and str(path / "lavise.json") in lines[0] and "'model'" in lines[0]


def test_error_lines_keep_whole_paths(ckpt, tmp_path):
    odd = "/data/it's a \"dir\"/out'"
    assert error_line(PermissionError(13, "Permission denied", odd)) == f"Permission denied: {odd}"
    assert error_line(OSError(28, "No space left on device", "/a/b")) == "No space left on device: /a/b"
    path, exp = ckpt
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        exp.save(blocker / "sub" / "ckpt")
    line = error_line(info.value)
    assert str(blocker / "sub" / "ckpt") in line and str(blocker / "sub") in line


# --------------------------------------------------------------------------- feature cache


@pytest.fixture
def feature_cache(tmp_path):
    ds = load_dataset(f"folder:{image_folder(tmp_path / 'imgs', n=7)}", preprocessing=TINY_PRE)
    model = tiny_model()
    store = extract_features(model, "features", ds, tmp_path / "cache", batch_size=3, progress=False)
    return model, ds, store, np.array(store.array)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-100])


def _flip_row(p: Path) -> None:
    arr = np.load(p, mmap_mode="r+")
    arr[3, 0, 0, 0] += 1
    arr.flush()


CACHE_DAMAGE = {
    "truncated features.npy": ("features.npy", _truncate),
    "features.npy of another shape": ("features.npy", lambda p: np.save(p, np.zeros((7, 6, 8, 7), np.float16))),
    "bit flip in a finished shard": ("features.npy", _flip_row),
    "garbage meta.json": ("meta.json", lambda p: p.write_text("{not json")),
    "meta.json without ids": ("meta.json", lambda p: p.write_text(json.dumps(
        {k: v for k, v in json.loads(p.read_text()).items() if k != "ids"}))),
    "meta.json with fewer ids": ("meta.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "ids": json.loads(p.read_text())["ids"][:5]}))),
    "empty meta.json": ("meta.json", lambda p: p.write_text("")),
}


@pytest.mark.parametrize("case", sorted(CACHE_DAMAGE))
def test_damaged_feature_cache_is_reported_and_rebuilt(feature_cache, case, caplog):
    model, ds, store, before = feature_cache
    name, damage = CACHE_DAMAGE[case]
    damage(store.path / name)
    with pytest.raises(ValueError, match="damaged cache entry"):
        FeatureStore.open(store.path)
    with caplog.at_level(logging.WARNING):
        again = extract_features(model, "features", ds, store.path.parents[1], batch_size=3, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(store.path) in w and "rebuilding" in w for w in warnings), warnings
    assert np.array_equal(np.array(again.array), before)
    assert np.array_equal(np.array(FeatureStore.open(store.path).array), before)


def test_damaged_resume_state_restarts_the_shard(tmp_path, caplog, monkeypatch):
    from lavise.models import LayerExtractor

    ds = load_dataset(f"folder:{image_folder(tmp_path / 'imgs', n=7)}", preprocessing=TINY_PRE)
    model = tiny_model()
    full = extract_features(model, "features", ds, tmp_path / "full", batch_size=3, progress=False)
    real, calls = LayerExtractor.__call__, []

    def dies_on_second_batch(self, x):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(LayerExtractor, "__call__", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, "features", ds, tmp_path / "c", batch_size=3, progress=False, flush_every=1)
    monkeypatch.setattr(LayerExtractor, "__call__", real)
    entry = next((tmp_path / "c" / "features").iterdir())
    (entry / "done-0-of-1.npy").write_bytes(b"\x93NUMPY garbage")
    with caplog.at_level(logging.WARNING):
        store = extract_features(model, "features", ds, tmp_path / "c", batch_size=3, progress=False)
    assert any("done-0-of-1.npy" in r.getMessage() for r in caplog.records)
    assert np.array_equal(np.array(store.array), np.array(full.array))


def test_a_finished_shard_that_fails_its_checksum_is_redone(tmp_path, caplog):
    ds = load_dataset(f"folder:{image_folder(tmp_path / 'imgs', n=7)}", preprocessing=TINY_PRE)
    model = tiny_model()
    full = np.array(extract_features(model, "features", ds, tmp_path / "full", progress=False).array)
    first = extract_features(model, "features", ds, tmp_path / "c", rank=0, world_size=2, progress=False)
    assert not first.meta["complete"] and (first.path / "shard-0-of-2.json").is_file()
    _flip_row(first.path / "features.npy")  # row 3: not shard 0's
    arr = np.load(first.path / "features.npy", mmap_mode="r+")
    arr[2, 0, 0, 0] += 1  # row 2: shard 0's, finished
    arr.flush()
    with caplog.at_level(logging.WARNING):
        second = extract_features(model, "features", ds, tmp_path / "c", rank=1, world_size=2, progress=False)
    assert any("shard 0-of-2 fails its checksum" in r.getMessage() and str(first.path) in r.getMessage()
               for r in caplog.records)
    assert not second.meta["complete"]  # shard 0 must be redone
    store = extract_features(model, "features", ds, tmp_path / "c", rank=0, world_size=2, progress=False)
    assert store.meta["complete"] and np.array_equal(np.array(store.array), full)


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path[:0] = [{tests!r}, {src!r}]
    from lavise.datasets import load_dataset
    from lavise.features import extract_features
    from tiny import TINY_PRE, tiny_model

    root, me = Path(sys.argv[1]), sys.argv[2]
    ds = load_dataset(f"folder:{{root / 'imgs'}}", preprocessing=TINY_PRE)
    import lavise.decode
    loaded = []
    real_decode = lavise.decode.decode_image
    def slow_decode(*args, **kwargs):
        loaded.append(1)
        time.sleep(0.1)
        return real_decode(*args, **kwargs)
    lavise.decode.decode_image = slow_decode
    (root / f"ready-{{me}}").touch()
    while not all((root / f"ready-{{w}}").exists() for w in "ab"):
        time.sleep(0.01)
    store = extract_features(tiny_model(), "features", ds, root / "cache", batch_size=2, progress=False)
    print(len(loaded), store.meta["complete"])
""")


@pytest.mark.slow
def test_two_writers_of_one_cache_entry_are_serialised(tmp_path):
    image_folder(tmp_path / "imgs", n=8)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(tests=str(TESTS), src=str(SRC)))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), w], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for w in "ab"]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    loaded = sorted(int(o[0].split()[0]) for o in outs)
    # one process decoded every image; the other waited for the lock and reused the entry
    assert loaded == [0, 8], outs
    assert all(o[0].split()[1] == "True" for o in outs)
    entry = next((tmp_path / "cache" / "features").iterdir())
    assert FeatureStore.open(entry).meta["complete"]


# --------------------------------------------------------------------------- other caches


def test_damaged_filter_statistics_are_recomputed(feature_cache, caplog):
    from lavise import Config
    from lavise.api import filter_stats

    _, _, store, _ = feature_cache
    config = Config(progress=False, top_images=2)
    first = filter_stats(store, config)
    path = next(store.path.glob("stats-*.safetensors"))
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:-3] + bytes([b[-3] ^ 0xFF]) + b[-2:], lambda b: b"junk"):
        path.write_bytes(damage(path.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = filter_stats(store, config)
        assert any(str(path) in r.getMessage() for r in caplog.records)
        assert torch.equal(again.thresholds, first.thresholds) and torch.equal(again.top_images, first.top_images)


def test_damaged_word_vector_cache_is_reported_and_rebuilt(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("LAVISE_CACHE_DIR", str(tmp_path / "cache"))
    text = tmp_path / "vecs.txt"
    text.write_text("\n".join(f"w{i} " + " ".join(str((i * 7 + j) % 5 - 2) for j in range(4)) for i in range(30)))
    first = load_text_word_space(text)
    cache = text.with_name(text.name + ".lavise-cache.npz")
    assert cache.is_file()
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:200] + bytes(50) + b[250:]):
        cache.write_bytes(damage(cache.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = load_text_word_space(text)
        assert any(str(cache) in r.getMessage() for r in caplog.records), caplog.text
        assert again.words == first.words and torch.equal(again.vectors, first.vectors)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_text_word_space(text)  # healed: a clean hit
    assert not caplog.records
