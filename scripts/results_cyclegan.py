#!/usr/bin/env python
"""docs/results.md, section 6: CycleGAN on a real pair of unpaired domains, Fashion-MNIST's sneakers and
ankle boots (scripts/fashion_domains.py exports them from Debian's `dataset-fashion-mnist`).

One real `ganlab train model=cyclegan` run per seed (--seeds, --jobs at a time, one thread each; a rerun
reuses finished runs) on the 6,000 + 6,000 training images at 32 px (a CPU budget), then `ganlab translate`
on the 1,000 + 1,000 held-out test images, both ways and back again, scored by ganlab's Fashion-MNIST
classifier at 32 px (trained once and cached):
- the share of translated sneakers it labels "ankle boot" (and of translated boots labelled "sneaker"),
  per seed and as the median [min - max] over the seeds, beside the same share for the untranslated images;
- the cycle reconstruction error |G_BA(G_AB(a)) - a| and |G_AB(G_BA(b)) - b| in grey levels (0-255),
  beside how far the translation itself moved the images.
A picture of the first seed's TensorBoard rows goes to docs/images/cyclegan_fashion.png.

    python scripts/results_cyclegan.py                    # seeds 0 1 2, 15 CPU minutes each, one thread; writes docs/
    python scripts/results_cyclegan.py --quick            # tiny budget: checks the script, not written to docs/
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_domains import DEBIAN, export  # noqa: E402
from results import REPO, per_seed, slug, write_section  # noqa: E402

BEGIN, END = "<!-- results_cyclegan.py: begin -->", "<!-- results_cyclegan.py: end -->"
PICTURE = REPO / "docs" / "images" / "cyclegan_fashion.png"


def ganlab(*args: str, log: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "ganlab", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") if log else open(os.devnull, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}" + (f" (see {log})" if log else ""))


def load_folder(folder: Path):
    """uint8 N x 1 x 32 x 32 (resized as the Fashion source resizes), from a folder of 28 px PNGs."""
    import numpy as np
    import torch
    from PIL import Image

    from ganlab.data.sources import _resize_uint8

    files = sorted(folder.glob("*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L")) for f in files]))[:, None]
    return _resize_uint8(x, 32)


def train_and_translate(overrides: list[str], work: Path, folders: dict) -> float:
    """One seed's run (reused when its last checkpoint is there) and its translations there and back (a reused
    run's complete translations are reused too); the minutes its training took in this invocation (NaN: reused)."""
    run = work / "run"
    t0, trained = time.monotonic(), False
    if not (run / "checkpoints" / "last.pt").is_file():
        run.parent.mkdir(parents=True, exist_ok=True)
        ganlab("train", *overrides, "device=cpu", "train.threads=1", "train.progress=none", f"hydra.run.dir={run}",
               log=work / "train.log")
        trained = True
    minutes = (time.monotonic() - t0) / 60 if trained else float("nan")
    for direction, src, back in (("a2b", "test_a", "b2a"), ("b2a", "test_b", "a2b")):
        there, home = work / f"{src}_{direction}", work / f"{src}_{direction}_{back}"
        n = len(list(folders[src].glob("*.png")))
        if not trained and all(len(list(f.glob("*.png"))) == n for f in (there, home)):
            continue  # a reused run's translations, complete
        for args in ((folders[src], there, direction), (there, home, back)):  # a new run's replace any older ones
            ganlab("translate", f"run={run}", f"in={args[0]}", f"out={args[1]}", f"direction={args[2]}", "device=cpu",
                   "overwrite=true")
    return minutes


DIRECTIONS = (("a2b", "test_a", 9, "sneakers -> ankle boots"), ("b2a", "test_b", 7, "ankle boots -> sneakers"))


def untranslated(folders: dict, labels) -> dict:
    """Per direction: the share of the untranslated test images that the judge already labels the target class
    (the same images for every seed, so labelled once)."""
    return {direction: (labels(load_folder(folders[src])) == target).float().mean().item()
            for direction, src, target, _ in DIRECTIONS}


def scores(work: Path, folders: dict, labels, before: dict) -> dict:
    """Per direction: (images, share labelled the target class after, before (from `untranslated`), cycle error,
    change), in grey levels."""
    out = {}
    for direction, src, target, _ in DIRECTIONS:
        back = "b2a" if direction == "a2b" else "a2b"
        real, fake = load_folder(folders[src]), load_folder(work / f"{src}_{direction}")
        rec = load_folder(work / f"{src}_{direction}_{back}")
        out[direction] = (len(real), (labels(fake) == target).float().mean().item(), before[direction],
                          (rec.float() - real.float()).abs().mean().item(), (fake.float() - real.float()).abs().mean().item())
    return out


def table_rows(per_seed_scores: list[dict]) -> list[str]:
    """The section's rows, one per direction: the share labelled the target class per seed and its median
    [min - max] over the seeds, the untranslated share, cycle error and change per seed."""
    rows = []
    for direction, _, _, name in DIRECTIONS:
        n, after, before, cyc, change = ([got[direction][i] for got in per_seed_scores] for i in range(5))
        spread = f"{100 * statistics.median(after):.1f}% [{100 * min(after):.1f} - {100 * max(after):.1f}]"
        rows.append(f"| {name} | {n[0]:,} | {' / '.join(f'{100 * a:.1f}%' for a in after)} | {spread} | "
                    f"{100 * before[0]:.1f}% | {per_seed(cyc, '{:.1f}')} | {per_seed(change, '{:.1f}')} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0, help="CPU minutes for training (train.max_minutes)")
    ap.add_argument("--steps", type=int, default=5400,
                    help="train.steps: the lr decays to 0 over the second half (5,400: about 15 min on one core here)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="one run per seed (seeds of one setting differ by up to six points here)")
    ap.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1), help="runs at a time, one thread each")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--root", default="data", help="dataset.root (Debian's package is looked up after it)")
    ap.add_argument("--domains", type=Path, default=REPO / "data" / "fashion_domains")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "results-cyclegan")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more overrides for the train command (e.g. model.lambda_identity=0); named in the section")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if any(o.startswith("seed=") for o in args.set):
        raise SystemExit("give the seeds with --seeds S [S ...], not with --set seed=S")
    minutes, steps = (0.2, 40) if args.quick else (args.minutes, args.steps)
    out = args.out.with_name(args.out.name + "-quick") if args.quick else args.out
    seeds = list(dict.fromkeys(args.seeds))

    import torch

    from ganlab.data.sources import IdxSource
    from ganlab.metrics.classifier import classifier_for

    torch.set_num_threads(os.cpu_count() or 1)
    folders = export(args.domains, 7, 9, args.root)
    source = IdxSource("fashion_mnist", "FashionMNIST", args.root, system_dirs=[DEBIAN], download=False, resolution=32)
    clf, info = classifier_for(source, torch.device("cpu"))
    clf.eval()
    print(f"Fashion-MNIST classifier at 32 px: held-out accuracy {info['held_out_accuracy']:.4f}", flush=True)

    overrides = ["model=cyclegan", f"dataset.root_a={folders['train_a']}", f"dataset.root_b={folders['train_b']}",
                 "dataset.resolution=32", "dataset.channels=1", f"model.width={args.width}", f"model.blocks={args.blocks}",
                 f"train.steps={steps}", f"train.max_minutes={minutes}", "train.log_every=50",
                 f"train.sample_every={max(1, steps // 4)}", f"train.ckpt_every={steps}", *args.set]
    per_seed_overrides = {seed: overrides + [f"seed={seed}"] for seed in seeds}
    # these overrides' run and translations: another --set never reuses them
    works = {seed: out / slug(o) for seed, o in per_seed_overrides.items()}
    t0 = time.monotonic()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        walls = dict(zip(seeds, pool.map(lambda seed: train_and_translate(per_seed_overrides[seed], works[seed], folders),
                                         seeds)))
    total = (time.monotonic() - t0) / 60

    def labels(x):
        with torch.no_grad():
            return clf(x.float().div(127.5).sub(1))[1].argmax(1)

    before = untranslated(folders, labels)
    got = {seed: scores(works[seed], folders, labels, before) for seed in seeds}
    steps_done = [int(torch.load(works[s] / "run" / "checkpoints" / "last.pt", map_location="cpu",
                                 weights_only=True)["step"]) for s in seeds]
    rows = table_rows([got[seed] for seed in seeds])
    print("\n".join(rows), flush=True)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from PIL import Image

    shown = seeds[0]
    acc = EventAccumulator(str(works[shown] / "run" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    pictures = [Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string)).convert("L")
                for tag in ("Samples/a2b", "Samples/b2a")]
    shown_step = acc.Images("Samples/a2b")[-1].step
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in ("Loss/cycle_a", "Loss/cycle_b")}

    cmd = "ganlab train " + " ".join(o.replace(str(REPO) + "/", "") for o in overrides) + " seed=S"
    trained = [f"{w:.0f} min" if w == w else "reused" for w in walls.values()]
    settings = f" and the settings of --set: {' '.join(args.set)}" if args.set else ""
    lines = [BEGIN, "## 6. CycleGAN: sneakers <-> ankle boots (unpaired, real Fashion-MNIST)", "",
             f"Made by `python scripts/results_cyclegan.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on "
             f"{time.strftime('%Y-%m-%d')} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}, {min(args.jobs, len(seeds))} run(s) at a time with one thread each; training "
             f"per seed {per_seed(trained)} (\"reused\": a finished run of the same command from an earlier "
             f"invocation), {total:.0f} min in this invocation). Domains: the "
             f"{len(list(folders['train_a'].glob('*.png'))):,} sneakers (A) and "
             f"{len(list(folders['train_b'].glob('*.png'))):,} ankle boots (B) of Fashion-MNIST's training set, exported "
             "by `python scripts/fashion_domains.py` from Debian's `dataset-fashion-mnist`, no pairs; trained at 32 px: "
             f"`{cmd}` for seeds {per_seed(seeds)} (the paper's recipe, batch 1, with {args.width} channels instead of "
             f"64{settings}; {per_seed([f'{d:,}' for d in steps_done])} steps of the {steps:,} planned, the lr constant "
             "for the first half of the plan, then falling linearly to 0). Scored on the held-out test images (1,000 of each "
             "class): `ganlab translate run=RUN in=TEST_A out=A2B direction=a2b`, then back with direction=b2a, "
             "labelled by ganlab's Fashion-MNIST classifier at "
             f"32 px (held-out accuracy {info['held_out_accuracy']:.4f}); the errors are mean absolute differences "
             "in grey levels (0-255) at 32 px. Cells with `a / b / c` are the seeds in order.", "",
             "| direction | test images | labelled as the target class after translation, per seed | median [min - max] "
             "| before (the untranslated images) | cycle reconstruction error | change made by the translation |",
             "|---|---|---|---|---|---|---|", *rows, "",
             f"Seed {shown}'s rows in TensorBoard at step {shown_step:,} (`Samples/a2b` above: real sneakers, their "
             "translations to boots, the reconstructions; `Samples/b2a` below: real boots, translated to sneakers, "
             f"reconstructed); last logged cycle L1 (pixels in [-1, 1]): A {scalars['Loss/cycle_a']:.3f}, "
             f"B {scalars['Loss/cycle_b']:.3f}:",
             "", "![CycleGAN rows on sneakers and ankle boots](images/cyclegan_fashion.png)", "", END]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.quick:
        return
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    w = max(p.width for p in pictures)
    canvas = Image.new("L", (w, sum(p.height for p in pictures) + 6), 255)
    canvas.paste(pictures[0], (0, 0))
    canvas.paste(pictures[1], (0, pictures[0].height + 6))
    canvas.save(PICTURE)
    doc = write_section(BEGIN, END, section)
    for seed in seeds:
        (works[seed] / "scores.json").write_text(json.dumps({"scores": got[seed], "steps": steps_done[seeds.index(seed)]},
                                                             indent=2))
    print(f"written: {doc}, {PICTURE}")


if __name__ == "__main__":
    main()
