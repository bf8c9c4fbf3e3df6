#!/usr/bin/env python
"""docs/results.md, section 9: GANs for data augmentation on the real Fashion-MNIST (Debian's package).

1. A conditional DCGAN (`model=dcgan model.conditional=true`) on the 60,000 training images for a CPU
   budget; `ganlab augment` exports 6,000 samples per class; `ganlab eval metrics=[cas]` trains the
   fixed-recipe classifier on them and tests it on the 10,000 real test images (CAS, Ravuri & Vinyals
   2019), beside the CAS of the real training set itself (the same recipe on the 60,000 real images).
2. Scarce data: for N = 100 and 1,000 real training images (`dataset.subset=N`, class-balanced,
   `dataset.subset_seed=S`) and seeds S = 0, 1, 2: the classifier on the N real images alone, and on
   the N real images + 600 synthetic per class from a conditional DCGAN trained on THE SAME N images
   (what augmentation can honestly use), and, as a leaky upper reference, + 600 per class from the
   GAN trained on all 60,000.

    python scripts/results_augment.py                  # ~30 min on 2 cores; writes docs/
    python scripts/results_augment.py --quick          # tiny budgets: checks the script, not written to docs/
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, minutes_in_all, run_ganlab as ganlab, write_section  # noqa: E402

BEGIN, END = "<!-- results_augment.py: begin -->", "<!-- results_augment.py: end -->"
GAN = ["model=dcgan", "model.conditional=true", "dataset=fashion_mnist", "train.steps=10000000",
       "train.log_every=100", "train.sample_every=2000", "train.ckpt_every=2000"]


def train_gan(name: str, extra: list[str], minutes: float, seed: int, out: Path) -> dict:
    run = out / name
    done = run / "done.json"
    if not done.is_file():
        wall = ganlab(["train", *GAN, *extra, f"train.max_minutes={minutes}", f"seed={seed}", "device=cpu",
                       "train.threads=1", "train.progress=none", f"hydra.run.dir={run}"], out / f"{name}.log")
        step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
        done.write_text(json.dumps({"wall_s": wall, "step": step}))
    return {"run": run, **json.loads(done.read_text())}


def synthetic(run: Path, per_class: int, seed: int, out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = out / f"{run.name}-{per_class}-{seed}.npz"
    if not path.is_file():
        ganlab(["augment", f"run={run}", f"n_per_class={per_class}", f"seed={seed}", f"out={path}", "device=cpu"],
               out / f"augment-{run.name}.log")
    f = np.load(path)
    return torch.from_numpy(f["arr_0"]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(f["labels"])


def cas(npz: Path, out: Path) -> dict:
    record = npz.with_suffix(".metrics.json")
    if not record.is_file():
        ganlab(["eval", f"target={npz}", "metrics=[cas]", "dataset=fashion_mnist", "device=cpu"], out / f"cas-{npz.stem}.log")
    return json.loads(record.read_text())


def reading(rows: dict, args, cas_real: float, cas_syn: float) -> str:
    """What the tables say, from their numbers."""
    parts = [f"Reading: the GAN's samples alone train a classifier to {100 * cas_syn:.1f}% where the real images give "
             f"{100 * cas_real:.1f}%: the samples carry their class most of the time, but not the real data's variety "
             "(CAS is the gap FID does not show)."]
    for n in args.sizes:
        mean = {k: statistics.mean(rows[(n, s)][k] for s in args.seeds) for k in ("real", "own", "leak")}
        verb = "helps" if mean["own"] > mean["real"] else "hurts"
        parts.append(f"With {n:,} real images, adding the own GAN's samples {verb} "
                     f"({100 * (mean['own'] - mean['real']):+.1f} points on average), and the full-data GAN's "
                     f"{'help' if mean['leak'] > mean['real'] else 'hurt'} ({100 * (mean['leak'] - mean['real']):+.1f}).")
    parts.append("This is the plain recipe (a few CPU minutes per GAN, synthetic images simply added and outnumbering "
                 "the real ones); the table measures what it gives rather than assuming a gain.")
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "results-augment")
    ap.add_argument("--minutes", type=float, default=10.0, help="CPU minutes for the GAN on all 60,000 images")
    ap.add_argument("--scarce-minutes", type=float, default=3.0, help="CPU minutes for each GAN on N images")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.scarce_minutes, args.sizes, args.seeds = 0.3, 0.2, [100], [0]
    out = args.out / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    per_class_cas = 200 if args.quick else 6000
    per_class_aug = 60 if args.quick else 600
    t0 = time.monotonic()

    from ganlab.data.sources import IdxSource
    from ganlab.metrics.cas import accuracy, test_split
    from omegaconf import OmegaConf

    fashion = OmegaConf.create({"_target_": "ganlab.data.sources.IdxSource", "name": "fashion_mnist",
                                "folder": "FashionMNIST", "root": "data", "split": "train",
                                "system_dirs": ["/usr/share/datasets/fashion-mnist"], "download": False,
                                "resolution": 28, "channels": 1, "num_classes": 10})
    _, x_test, y_test = test_split(fashion)

    # the GANs: all 60,000 on one core, the scarce ones on the other (then both), one thread each
    jobs = [("full", [], args.minutes, 0)] + [(f"n{n}-s{s}", [f"dataset.subset={n}", f"dataset.subset_seed={s}"],
                                                args.scarce_minutes, s) for n in args.sizes for s in args.seeds]
    with ThreadPoolExecutor(2) as pool:
        gans = dict(zip([j[0] for j in jobs], pool.map(lambda j: train_gan(*j, out), jobs)))

    torch.set_num_threads(2)
    # CAS: 6,000 per class from the full GAN vs the real training set itself
    syn_npz = out / f"full-cas-{per_class_cas}.npz"
    if not syn_npz.is_file():
        ganlab(["augment", f"run={gans['full']['run']}", f"n_per_class={per_class_cas}", f"out={syn_npz}", "device=cpu"],
               out / "augment-cas.log")
    real_npz = out / "real-train.npz"
    real_x, real_y = IdxSource("fashion_mnist", "FashionMNIST", "data",
                               system_dirs=["/usr/share/datasets/fashion-mnist"], download=False).load()
    if not real_npz.is_file():
        np.savez(real_npz, arr_0=real_x.permute(0, 2, 3, 1).numpy(), labels=real_y.numpy())
    cas_syn, cas_real = cas(syn_npz, out), cas(real_npz, out)

    # scarce data
    rows = {}
    for n in args.sizes:
        for s in args.seeds:
            cache = out / f"scarce-n{n}-s{s}.json"
            if not cache.is_file():
                src = IdxSource("fashion_mnist", "FashionMNIST", "data", system_dirs=["/usr/share/datasets/fashion-mnist"],
                                download=False, subset=n, subset_seed=s)
                xr, yr = src.load()
                res = {"real": accuracy(xr, yr, x_test, y_test, 10, torch.device("cpu"))}
                for kind, run in (("own", gans[f"n{n}-s{s}"]["run"]), ("leak", gans["full"]["run"])):
                    xs, ys = synthetic(run, per_class_aug, s, out)
                    res[kind] = accuracy(torch.cat([xr, xs]), torch.cat([yr, ys]), x_test, y_test, 10, torch.device("cpu"))
                cache.write_text(json.dumps(res))
            rows[(n, s)] = json.loads(cache.read_text())

    def ms(values):
        values = [100 * v for v in values]
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

    table = ["| real images (per class) | real only | real + own GAN's synthetic | real + full-data GAN's synthetic (leaks) | own GAN's steps |",
             "|---|---|---|---|---|"]
    for n in args.sizes:
        rs = [rows[(n, s)] for s in args.seeds]
        steps = ", ".join(f"{gans[f'n{n}-s{s}']['step']:,}" for s in args.seeds)
        table.append(f"| {n:,} ({n // 10}) | {ms([r['real'] for r in rs])} | {ms([r['own'] for r in rs])} | "
                     f"{ms([r['leak'] for r in rs])} | {steps} |")
    full = gans["full"]
    per_seed = "; ".join(f"N={n}, seed {s}: real {100 * rows[(n, s)]['real']:.1f}, +own {100 * rows[(n, s)]['own']:.1f}, "
                         f"+full {100 * rows[(n, s)]['leak']:.1f}" for n in args.sizes for s in args.seeds)
    cpu = platform.processor() or platform.machine()
    section = "\n".join([
        BEGIN,
        "## 9. GANs for data augmentation: CAS and scarce real data (real Fashion-MNIST)",
        "",
        f"Made by `python scripts/results_augment.py` on {time.strftime('%Y-%m-%d')} ({cpu}, 2 CPU cores, torch "
        f"{torch.__version__}; {minutes_in_all(out, t0):.0f} min in all, reusing nothing). Every accuracy is the same "
        "fixed classifier recipe (ganlab's SmallCNN: Adam 1e-3, batch 128, max(3 epochs, 400 steps), seed 1234) "
        "trained on the named set and tested on the 10,000 real test images of Debian's `dataset-fashion-mnist`.",
        "",
        f"The conditional DCGAN on all 60,000 training images (`ganlab train {' '.join(GAN)} "
        f"train.max_minutes={args.minutes:g} train.threads=1`: {full['step']:,} steps in {args.minutes:g} CPU minutes), "
        f"then `ganlab augment run=RUN n_per_class={per_class_cas} out=syn.npz` and "
        "`ganlab eval target=syn.npz metrics=[cas] dataset=fashion_mnist`:",
        "",
        "| trained on | images | test accuracy (CAS) |",
        "|---|---|---|",
        f"| the real training set itself | {cas_real['protocol']['cas']['n_train']:,} | {100 * cas_real['metrics']['cas']:.1f}% |",
        f"| conditional DCGAN samples only | {cas_syn['protocol']['cas']['n_train']:,} | {100 * cas_syn['metrics']['cas']:.1f}% |",
        "",
        f"Scarce real data, test accuracy in % (mean ± std over seeds {', '.join(map(str, args.seeds))}: the seed picks "
        f"the N real images, `dataset.subset=N dataset.subset_seed=S`, and the GAN's seed). \"Own GAN\": a conditional "
        f"DCGAN trained on the same N images only ({args.scarce_minutes:g} CPU minutes each, `ganlab train {' '.join(GAN)} "
        f"dataset.subset=N dataset.subset_seed=S seed=S train.max_minutes={args.scarce_minutes:g}`), {per_class_aug} "
        "samples per class added to the N real ones; \"full-data GAN\": the samples of the GAN above, which saw all "
        "60,000 images, so that column leaks information the scarce setting does not have and is a reference only.",
        "",
        *table,
        "",
        f"Per seed: {per_seed}.",
        "",
        reading(rows, args, cas_real["metrics"]["cas"], cas_syn["metrics"]["cas"]),
        "",
        END,
        "",
    ])
    if args.quick:
        print(section)
        return
    print(f"wrote {write_section(BEGIN, END, section)}")


if __name__ == "__main__":
    main()
