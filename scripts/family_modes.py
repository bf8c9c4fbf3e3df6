#!/usr/bin/env python
"""Mode coverage of every model family on a 2D mixture after a fixed number of generator steps.

Trains each family with the real CLI (`ganlab train model=F dataset=grid25 ...`), rebuilds G from
checkpoints/last.pt, draws 2,500 samples and scores them with ganlab.metrics.mixture_metrics
(VEEGAN/PacGAN protocol). Prints a markdown table (the README's table comes from here).

    python scripts/family_modes.py --dataset grid25 --steps 2000 --seeds 0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganlab.checkpoint import load_checkpoint
from ganlab.metrics import mixture_metrics
from ganlab.models import generate, load_generator

FAMILIES = ["gan", "lsgan", "wgan", "wgan_gp", "sngan", "cgan"]  # those with an MLP backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="grid25", choices=["grid25", "ring8"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--families", nargs="+", default=FAMILIES)
    ap.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temp dir)")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = ap.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="ganlab-modes-"))
    rows = []
    for family in args.families:
        for seed in args.seeds:
            run = root / f"{family}-{args.dataset}-s{seed}"
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "ganlab", "train", f"model={family}", f"dataset={args.dataset}",
                   f"train.steps={args.steps}", f"seed={seed}", "device=cpu", "train.progress=none",
                   f"train.log_every={max(1, args.steps // 4)}", f"hydra.run.dir={run}", *args.extra]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.monotonic() - t0
            state = load_checkpoint(run / "checkpoints" / "last.pt")
            g = load_generator(state)
            samples, _ = generate(g, 2500, generator=torch.Generator().manual_seed(1234))
            source_cfg = state["config"]["dataset"]
            from hydra.utils import instantiate
            source = instantiate(source_cfg)
            m = mixture_metrics(samples, source.modes, source.std)
            rows.append((family, seed, m, wall))
            print(f"{family:8s} seed {seed}: {m['modes_captured']}/{m['n_modes']} modes (strict "
                  f"{m['modes_captured_strict']}), {100 * m['high_quality']:.1f}% high quality, "
                  f"reverse KL {m['reverse_kl']:.3f}, {wall:.0f}s", flush=True)

    print(f"\n{args.dataset}, {args.steps} generator steps, 2,500 samples, CPU; overrides: {' '.join(args.extra) or 'none'}\n")
    print("| family | seed | modes (papers' rule) | modes (strict, >= 1%) | high quality | reverse KL | wall |")
    print("|---|---|---|---|---|---|---|")
    for family, seed, m, wall in rows:
        print(f"| `{family}` | {seed} | {m['modes_captured']}/{m['n_modes']} | {m['modes_captured_strict']}/{m['n_modes']} "
              f"| {100 * m['high_quality']:.1f}% | {m['reverse_kl']:.3f} | {wall:.0f}s |")
    print(f"\nrun dirs: {root}")


if __name__ == "__main__":
    main()
