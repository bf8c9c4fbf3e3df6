#!/usr/bin/env python
"""Two Fashion-MNIST classes as image folders: a real pair of unpaired domains for model=cyclegan, offline.

    python scripts/fashion_domains.py --out data/fashion_domains       # sneakers (7) <-> ankle boots (9)
    python scripts/fashion_domains.py --a 0 --b 6 --out data/tops      # T-shirts <-> shirts

writes OUT/train/a_<name>/NNNNN.png and OUT/train/b_<name>/NNNNN.png (6,000 28 px grayscale images each
for two classes of the training set) and the same under OUT/test/ from the test set (1,000 each), read
from Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist) or --root in torchvision's
layout. Then:

    ganlab train model=cyclegan dataset.root_a=OUT/train/a_sneaker dataset.root_b=OUT/train/b_ankle_boot \\
        dataset.resolution=32 dataset.channels=1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ganlab.data.sources import IdxSource  # noqa: E402

DEBIAN = "/usr/share/datasets/fashion-mnist"
CLASSES = ["t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def export(out: Path, a: int, b: int, root: str = "data") -> dict[str, Path]:
    """The folders {"train_a", "train_b", "test_a", "test_b"}, written unless already complete."""
    from PIL import Image

    folders = {}
    for split in ("train", "test"):
        x, y = IdxSource("fashion_mnist", "FashionMNIST", root, split=split, system_dirs=[DEBIAN], download=False).load()
        for side, cls in (("a", a), ("b", b)):
            folder = out / split / f"{side}_{CLASSES[cls]}"
            images = x[y == cls][:, 0].numpy()
            if not (folder.is_dir() and len(list(folder.glob("*.png"))) == len(images)):
                folder.mkdir(parents=True, exist_ok=True)
                for i, im in enumerate(images):
                    Image.fromarray(im).save(folder / f"{i:05d}.png")
            folders[f"{split}_{side}"] = folder
    return folders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/fashion_domains"))
    ap.add_argument("--a", type=int, default=7, help="class of domain A (7: sneaker)")
    ap.add_argument("--b", type=int, default=9, help="class of domain B (9: ankle boot)")
    ap.add_argument("--root", default="data", help="dataset.root (Debian's package is looked up after it)")
    args = ap.parse_args()
    for name, folder in export(args.out, args.a, args.b, args.root).items():
        print(f"{name}: {folder} ({len(list(folder.glob('*.png')))} images)")


if __name__ == "__main__":
    main()
