#!/usr/bin/env python
"""docs/results.md, section 7: inpainting on the real Fashion-MNIST (Debian's `dataset-fashion-mnist`).

Real `ganlab train model=inpaint` runs (the context encoder and pix2pix recipes, central hole of a
quarter of the image, 28 px) on the 60,000 training images for a CPU budget each (side by side, one
thread each), then the 10,000 held-out test images with the same hole, filled by:
- the mean pixel of the training set (baseline 1);
- the blurred surroundings (baseline 2): the known pixels diffused into the hole (a 3x3 mean filter
  applied 300 times, the known pixels reset after each pass: the smoothest fill from the border);
- each trained G (`ganlab eval`'s path: composited, known pixels kept).
Scored on the hole: PSNR (dB), SSIM (torchmetrics' window, averaged over the hole's pixels), and the
Fréchet distance of the filled images to the real test images in ganlab's Fashion-MNIST classifier
features. A picture of the fills goes to docs/images/inpaint_fashion.png.

    python scripts/results_inpaint.py                    # 12 CPU minutes per recipe; writes docs/
    python scripts/results_inpaint.py --quick            # tiny budget: checks the script, not written to docs/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, write_section  # noqa: E402

BEGIN, END = "<!-- results_inpaint.py: begin -->", "<!-- results_inpaint.py: end -->"
PICTURE = REPO / "docs" / "images" / "inpaint_fashion.png"
RECIPES = {"context_encoder": [], "pix2pix": ["model.recipe=pix2pix"]}


def train(name: str, overrides: list[str], out: Path) -> float:
    """One training run (reused when it finished before); its wall time in seconds."""
    run = out / name
    done = run / "done.json"
    if done.is_file():
        return json.loads(done.read_text())["wall_s"]
    run.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ganlab", "train", *overrides, "device=cpu", "train.threads=1", "train.progress=none",
           f"hydra.run.dir={run}"]
    t0 = time.monotonic()
    with open(out / f"{name}.log", "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)} (see {out / f'{name}.log'})")
    wall = time.monotonic() - t0
    done.write_text(json.dumps({"wall_s": wall}))
    return wall


def diffuse(x, mask, passes: int = 300):
    """The blurred-surroundings fill: the hole starts at the mean known pixel, then a 3x3 mean filter
    runs `passes` times with the known pixels reset after each (replicated border)."""
    import torch
    import torch.nn.functional as F

    known = 1 - mask
    start = (x * known).sum((1, 2, 3), keepdim=True) / known.sum((1, 2, 3), keepdim=True)
    y = x * known + start * mask
    kernel = torch.full((x.shape[1], 1, 3, 3), 1 / 9)
    for _ in range(passes):
        y = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        y = x * known + y * mask
    return y


def reading(scores: dict) -> str:
    """The table read from its own numbers (which fill wins PSNR, SSIM and FD), not a sentence fixed in advance."""
    baselines = ("mean pixel of the training set", "blurred surroundings")
    best_baseline = max(scores[b]["psnr_hole"] for b in baselines)
    gans = [n for n in scores if n not in baselines]
    beat = [n for n in gans if scores[n]["psnr_hole"] > best_baseline and scores[n]["fd"] < min(scores[b]["fd"] for b in baselines)]
    first = {k: max(gans, key=lambda n: scores[n][k]) for k in ("psnr_hole", "ssim_hole")}
    first["fd"] = min(gans, key=lambda n: scores[n]["fd"])
    text = (f"Reading it: {len(beat)} of the {len(gans)} GAN fills beat both baselines on PSNR and FD. Highest PSNR: "
            f"{first['psnr_hole']}; highest SSIM: {first['ssim_hole']}; lowest FD (closest to real clothes in the "
            f"classifier's eyes): {first['fd']}. The context encoder (L2 x 0.999, adversarial x 0.001) optimises the "
            "squared error, PSNR's own measure; pix2pix (L1 x 100, adversarial x 1) gives the adversarial term more say.")
    if any(n.endswith("in eval mode") for n in gans):
        text += (" pix2pix's paper fills in train mode (dropout on, batch norm with the test image's own statistics), "
                 "which adds sample noise to every fill; the eval-mode row is the same G with its running statistics "
                 "and no dropout.")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=12.0, help="CPU minutes of training per recipe (train.max_minutes)")
    ap.add_argument("--width", type=int, default=32, help="model.width (the papers: 64)")
    ap.add_argument("--bottleneck-dim", type=int, default=512, help="the context encoder's code (the paper: 4000)")
    ap.add_argument("--root", default="data", help="dataset.root (Debian's package is looked up after it)")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "results-inpaint")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    minutes = 0.2 if args.quick else args.minutes
    out = args.out.with_name(args.out.name + "-quick") if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from omegaconf import OmegaConf

    from ganlab.data import masks as masklib
    from ganlab.data.batches import to_unit_range
    from ganlab.data.sources import build_source
    from ganlab.metrics.distances import fd
    from ganlab.metrics.restoration import psnr_hole, ssim_hole
    from ganlab.objectives.inpaint import fill, load_filler

    common = ["model=inpaint", "dataset=fashion_mnist", f"dataset.root={args.root}", "train.steps=1000000",
              f"train.max_minutes={minutes}", "train.log_every=100", "train.sample_every=1000", "train.ckpt_every=1000",
              f"model.width={args.width}", f"model.bottleneck_dim={args.bottleneck_dim}", "seed=0"]
    with ThreadPoolExecutor(len(RECIPES)) as pool:  # side by side, one thread each
        walls = dict(zip(RECIPES, pool.map(lambda kv: train(kv[0], [*common, *kv[1]], out), RECIPES.items())))

    torch.set_num_threads(os.cpu_count() or 1)
    ds = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "dataset" / "fashion_mnist.yaml"),
                         {"root": args.root, "split": "test", "download": False})
    source = build_source(ds)
    test_u8, _ = source.load()
    train_u8, _ = build_source(OmegaConf.merge(ds, {"split": "train"})).load()
    real = to_unit_range(test_u8)
    if args.quick:
        real = real[:500]
    mask = masklib.draw("center", len(real), (28, 28), 0.25)
    masked = real * (1 - mask)
    mean_pixel = to_unit_range(train_u8).mean()

    from ganlab.metrics.classifier import classifier_features

    extract, info = classifier_features(source, torch.device("cpu"))
    real_features, _ = extract(real)
    fills = {"mean pixel of the training set": masked + mean_pixel * mask, "blurred surroundings": diffuse(real, mask)}
    steps = {}
    for name in RECIPES:
        state = torch.load(out / name / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        steps[name] = int(state["step"])
        g = load_filler(state)
        fills[name] = fill(g, real, mask)
        if g.test_mode == "train":  # the paper's test protocol; the same G in eval mode beside it
            g.test_mode = "eval"
            fills[f"{name}, in eval mode"] = fill(g, real, mask)
    rows, scores = [], {}
    for name, filled in fills.items():
        f, _ = extract(filled)
        scores[name] = {"psnr_hole": psnr_hole(filled, real, mask).mean().item(),
                        "ssim_hole": ssim_hole(filled, real, mask).mean().item(), "fd": fd(f, real_features)["fd"]}
        s = scores[name]
        recipe = name.split(",")[0]
        trained = (f"ganlab {recipe} ({steps[recipe]:,} steps, {walls[recipe] / 60:.0f} min){name[len(recipe):]}"
                   if recipe in steps else name)
        rows.append(f"| {trained} | {s['psnr_hole']:.2f} | {s['ssim_hole']:.3f} | {s['fd']:.2f} |")
        print(rows[-1], flush=True)

    cmds = [f"ganlab train {' '.join([*common, *extra])} train.threads=1".replace(f"train.max_minutes={minutes}",
                                                                                  f"train.max_minutes={minutes:g}")
            for extra in RECIPES.values()]
    lines = [BEGIN, "## 7. Inpainting: the central quarter of real Fashion-MNIST test images", "",
             f"Made by `python scripts/results_inpaint.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on "
             f"{time.strftime('%Y-%m-%d')} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}). Trained on the 60,000 training images of Debian's `dataset-fashion-mnist`, "
             f"{minutes:g} CPU minutes per recipe, the two side by side with one thread each, the papers' networks and "
             f"weights at 28 px (padded to 32 inside G and D) with {args.width} channels in the first layer instead of 64 "
             f"and the context encoder's code of {args.bottleneck_dim} instead of 4,000 (for the CPU budget):", "",
             *[f"    {c}" for c in cmds], "",
             f"Scored on the {len(real):,} held-out test images with the central 14x14 hole (a quarter of the image, "
             "Pathak et al.'s setting): PSNR and SSIM on the hole (pixels in [0, 1]; SSIM's 11x11 Gaussian windows "
             "centred in the hole, torchmetrics), and the Fréchet distance of the filled images to the real test "
             f"images in ganlab's Fashion-MNIST classifier features (held-out accuracy {info['classifier_held_out_accuracy']:.4f}; "
             "the known three quarters are shared, so FDs are small for every fill). The same numbers come from "
             "`ganlab eval target=RUN_DIR dataset=fashion_mnist dataset.split=test n=10000`.", "",
             "| hole filled by | PSNR on the hole (dB) | SSIM on the hole | FD (classifier features) |",
             "|---|---|---|---|", *rows, "",
             reading(scores), "",
             "Rows: the masked test images, then one row per fill in the table's order, then the real images:", "",
             "![inpainting on Fashion-MNIST](images/inpaint_fashion.png)", "", END]
    section = "\n".join(lines) + "\n"
    print(section)
    (out / "scores.json").write_text(json.dumps({"scores": scores, "steps": steps, "walls": walls}, indent=2))
    if args.quick:
        return
    from ganlab.viz import image_grid
    from torchvision.utils import save_image

    pick = torch.arange(12) * 37
    shown = [masked[pick] + mask[pick], *(f[pick] for f in fills.values()), real[pick]]
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(torch.cat(shown), nrow=len(pick)), PICTURE)
    doc = write_section(BEGIN, END, section)
    print(f"written: {doc}, {PICTURE}")


if __name__ == "__main__":
    main()
