"""Write a CIFAR-10 stand-in in CIFAR-10's native format (a script; docs/q1.md says why and how it is used).

    python scripts/cifar_standin.py data/standin --train-per-class 500 --test-per-class 100

-> <out>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: 32x32 RGB patches cut at random
(seeded) from ten of scikit-image's bundled sample pictures, class i = picture i (medgen.standin). Train
and test patches are drawn independently from the same pictures (they may overlap). The label names are
CIFAR-10's, so the folder reads as `data.flag: cifar10`; its split sizes are not CIFAR-10's: run it with
`-S data.check_counts=false`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from medgen.standin import skimage_patches, write_cifar10


def shuffled(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's files hold the classes in random order; so does the stand-in (seeded)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return images[order], labels[order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write cifar-10-batches-py/ into")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train = shuffled(*skimage_patches(args.train_per_class, seed=args.seed), seed=args.seed)
    test = shuffled(*skimage_patches(args.test_per_class, seed=args.seed + 1), seed=args.seed + 1)
    folder = write_cifar10(args.out, train, test)
    print(f"{folder}: {len(train[1])} training and {len(test[1])} test images, 10 classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
