#!/usr/bin/env python
"""docs/results.md, section 5: the families beyond the canon beside dcgan on the real Fashion-MNIST
at 32 px, each given the same CPU budget (train.max_minutes, one thread per job, jobs side by side).

Every number comes from a real `ganlab train` run (the CLI in a subprocess, as scripts/results.py
runs them), scored at the end by ganlab's Fashion-MNIST classifier at 32 px (trained once and cached
before the jobs start): FD of its features, its Inception-style score, classes hit, class KL.

    python scripts/results_fashion.py                        # dcgan, pggan, lapgan and stylegan, 15 CPU minutes each
    python scripts/results_fashion.py --families dcgan pggan --minutes 10 --seeds 0 1
    python scripts/results_fashion.py --quick                # tiny budgets, not written to docs/

The section sits between markers in docs/results.md and is replaced as a whole on each run; the
rest of the file (scripts/results.py's sections) is left as it is.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml  # noqa: E402
from results import REPO, Run, cli, launch, mean_std, per_seed, scalars, slug, write_section  # noqa: E402

BEGIN, END = "<!-- results_fashion.py: begin -->", "<!-- results_fashion.py: end -->"
DEBIAN = "/usr/share/datasets/fashion-mnist"

# each family's recipe as it ships, plus what a 32 px CPU budget needs (said in the doc)
RECIPES = {
    "dcgan": (["model=dcgan"], "the paper's recipe as it ships (width 64)"),
    "pggan": (["model=pggan", "model.width=32", "model.fmap_base=1024", "model.fade_images=6000",
               "model.stable_images=6000", "model.batch_sizes=[64,64,32,4]"],
              "the paper's recipe with CPU-sized nets (32 channels at every resolution), 6k images per fade "
              "and per stabilization instead of 800k, so that G is grown to 32 px after 36k images (seed 0: 12k + 12k "
              "FD 95.6; 6k + 6k 65.1; 3k + 3k 67.3, at batch 32), and batch 4 at 32 px for more steps per CPU "
              "second (the paper's own schedule lowers the batch as the resolution grows; 2026-12-06, 15 min: "
              "batch 32 / 16 / 8 / 4 made 2,615 / 4,370 / ~7,850 / ~13,300 steps, FD 80.1 / 56.6 / 37.2-38.3 / "
              "27.8-35.7)"),
    "lapgan": (["model=lapgan", "model.widths=[16,16,600]", "model.conditional=true", "model.lrs=[0.01,0.1,0.1]"],
               "the paper's class-conditional model as its authors' code trains it (3 levels 8 -> 16 -> 32 px, SGD with "
               "momentum, dropout in D, uniform noise, batch 64 + 64) with CPU-sized conv nets (16 channels instead "
               "of 128 at the two finer levels; its 7x7 convs cost about 1 s a step at 32 channels) and a learning rate "
               "per level for 3.5 epochs instead of hundreds: 0.01 at 32 px (the authors' code's default), 0.1 at 16 "
               "and 8 px (seed 0, 2026-12-07: the paper's 0.02 everywhere FD 319; [0.02,0.1,0.1] 60.5, its 32 px level "
               "overpowered by its D from step ~1,800; [0.01,0.1,0.1] 47.9; [0.005,0.1,0.1] 65.2); conditional, so it "
               "sees the labels that dcgan does not"),
    "stylegan": (["experiment=stylegan_32px", "penalty.weight=0.5"],
                 "StyleGAN2 as the official code runs it at 32 px (its `cifar` config: 2-layer mapping, D `orig`, no "
                 "path length or style mixing; experiment=stylegan_32px) with CPU-sized nets, and R1's gamma set for "
                 "this data (1, `penalty.weight=0.5`; the cifar config's 0.01 is CIFAR-10's and scored FD 35.6-42.8 on "
                 "seeds 0-2 on 2026-12-04; seed 0 with gamma 0.1 / 0.3 / 1: 30.1 / 22.1 / 23.5; seed 2 with gamma "
                 "0.3 / 0.6 / 1: 51.8 / 26.5 / 22.9)"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--minutes", type=float, default=15.0, help="CPU minutes per run (train.max_minutes)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-n", type=int, default=10000, help="generated and real images scored per run")
    ap.add_argument("--root", default="data", help="dataset.root (Debian's package is looked up after it)")
    ap.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 2))
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "results-fashion")
    ap.add_argument("--note", default=None, help="a sentence for the doc, e.g. about the machine's load")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, numbers mean nothing")
    args = ap.parse_args()
    minutes, eval_n = (0.2, 500) if args.quick else (args.minutes, args.eval_n)
    out = args.out.with_name(args.out.name + "-quick") if args.quick else args.out
    data = [f"dataset.root={args.root}", "dataset=fashion_mnist", "dataset.resolution=32"]
    budget = ["train.steps=10000000", f"train.max_minutes={minutes}", "train.log_every=100",
              "train.sample_every=10000000", "train.ckpt_every=10000000", "eval.every=10000000", f"eval.n={eval_n}"]

    import torch

    from ganlab.data.sources import IdxSource
    from ganlab.metrics.classifier import classifier_for

    torch.set_num_threads(os.cpu_count() or 1)
    source = IdxSource("fashion_mnist", "FashionMNIST", args.root, system_dirs=[DEBIAN], download=False, resolution=32)
    _, info = classifier_for(source, torch.device("cpu"))
    print(f"Fashion-MNIST classifier at 32 px: held-out accuracy {info['held_out_accuracy']:.4f}", flush=True)

    runs = []
    for family in args.families:
        for seed in args.seeds:
            overrides = [*RECIPES[family][0], *data, *budget]
            runs.append(Run("fashion", family, seed, overrides, run_dir=out / slug(overrides) / f"seed{seed}"))
    reused = [r for r in runs if (r.run_dir / "metrics.json").is_file()]  # made by an earlier invocation
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda r: launch(r, out), runs))
    total = time.monotonic() - t0

    lines = [BEGIN, "## 5. Beyond the canon, on the real Fashion-MNIST (32 px)", "",
             f"Made by `{shlex.join(['python', 'scripts/results_fashion.py', *_shown_args(sys.argv[1:])])}` on {time.strftime('%Y-%m-%d')} "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
             f"{args.jobs} jobs at a time with one thread each; {total / 60:.0f} min in all). The full Fashion-MNIST "
             f"training set (60,000 images, Debian's `dataset-fashion-mnist`) resized to 32 px; every family gets "
             f"{minutes:g} CPU minute(s) (`train.max_minutes`). Scored at the end on {eval_n:,} samples (EMA weights "
             f"where the recipe keeps them) against {eval_n:,} real training images, in the feature space of "
             f"ganlab's Fashion-MNIST classifier at 32 px (held-out accuracy {info['held_out_accuracy']:.4f}): FD of "
             "its features, its Inception-style score (max 10), classes hit by its argmax, KL of that histogram to "
             "the real one. Commands: `" + "`; `".join(
                 f"{cli([o for o in RECIPES[f][0]] + data + budget)} seed=S" for f in args.families) + "`.", "",
             *([f"Reused from an earlier invocation of the same command (their run dirs held metrics.json; "
                f"the time above does not include them): {', '.join(f'{r.name} seed {r.seed}' for r in reused)}.", ""]
               if reused else []),
             *([args.note, ""] if args.note else []),
             "FD is given as the median over the seeds [min - max], and as the ratio of that median to dcgan's median "
             "in this same invocation.", "",
             "| family | recipe | G steps | images shown to D | classifier FD, median [min - max] | FD median / dcgan's | "
             "classifier score | classes | class KL |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_family: dict[str, list[Run]] = {}
    for r in runs:
        by_family.setdefault(r.name, []).append(r)
    fd_median = {f: _median([r.metrics.get("Metrics/fd", float("nan")) for r in rs if r.metrics])
                 for f, rs in by_family.items()}
    for family, rs in by_family.items():
        ok = [r for r in rs if r.metrics]
        m = lambda k: [r.metrics.get(f"Metrics/{k}", float("nan")) for r in ok]  # noqa: E731
        shown = [_images_shown(r) for r in ok]
        fds = [v for v in m("fd") if v == v]
        spread = f"{fd_median[family]:.2f} [{min(fds):.2f} - {max(fds):.2f}]" if fds else "n/a"
        ratio = (f"{fd_median[family] / fd_median['dcgan']:.2f}" if "dcgan" in fd_median and fds
                 and fd_median["dcgan"] == fd_median["dcgan"] else "n/a")
        lines.append(f"| {family} | {RECIPES[family][1]} | {per_seed([r.metrics['step'] for r in ok])} | "
                     f"{per_seed([f'{s:,}' for s in shown])} | {spread} | {ratio} | {mean_std(m('is'), '{:.2f}')} | "
                     f"{per_seed([int(v) for v in m('classes_captured')])} | {mean_std(m('class_kl'))} |"
                     + (f" ({len(rs) - len(ok)} failed)" if len(ok) < len(rs) else ""))
    grids = _grids(by_family, args.quick)
    if grids:
        lines += ["", "Samples of each family's seed-0 run (64 each, the sampler its recipe scores; fixed latents):", ""]
        lines += [f"![{family}, seed 0](images/{path.name})" for family, path in grids.items()]
    lines += ["", END]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.quick:
        return
    doc = write_section(BEGIN, END, section)
    print(f"written: {doc}")
    sys.exit(1 if any(r.rc != 0 for r in runs) else 0)


def _grids(by_family: dict, quick: bool) -> dict:
    """docs/images/fashion32_<family>.png: an 8 x 8 grid of the seed-0 run's samples (ganlab's own sampler)."""
    import torch
    from torchvision.utils import save_image

    from ganlab.checkpoint import load_checkpoint
    from ganlab.models import generate
    from ganlab.objectives import load_generator

    out = {}
    for family, rs in by_family.items():
        run = next((r for r in rs if r.seed == 0 and r.metrics), None)
        if run is None or quick:
            continue
        g = load_generator(load_checkpoint(run.run_dir / "checkpoints" / "last.pt"))
        torch.manual_seed(0)
        x, _ = generate(g, 64, generator=torch.Generator().manual_seed(0))
        path = REPO / "docs" / "images" / f"fashion32_{family}.png"
        save_image(x.add(1).div(2).clamp(0, 1), path, nrow=8, padding=2, pad_value=1.0)
        out[family] = path
    return out


def _median(values: list[float]) -> float:
    import statistics

    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _shown_args(argv: list[str]) -> list[str]:
    """The command line for the doc, without --note's text (it is printed as a paragraph of its own)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            out += ["--note", "TEXT"]
            skip = True
        elif arg.startswith("--note="):
            out += ["--note", "TEXT"]
        else:
            out.append(arg)
    return out


def _images_shown(run: Run) -> int:
    """Real images D saw: PG-GAN logs its running count (Schedule/kimg); the others show batch x n_critic per
    step, and StyleGAN's lazy R1 phase one more real batch every model.r1_every steps."""
    kimg = scalars(run.run_dir, "Schedule/kimg")
    if kimg:
        return int(round(kimg[-1][1] * 1000))
    conf = yaml.safe_load((run.run_dir / ".hydra" / "config.yaml").read_text())
    step, batch = int(run.metrics["step"]), int(conf["train"]["batch_size"])
    shown = step * batch * int(conf["train"]["n_critic"])
    every = conf["model"].get("r1_every") or 0
    if conf["model"].get("objective") == "stylegan" and conf["penalty"]["name"] != "none" and every > 1:
        shown += step // every * batch
    return shown

if __name__ == "__main__":
    main()
