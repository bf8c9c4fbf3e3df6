#!/usr/bin/env python
"""docs/results.md, section 6: CycleGAN on a real pair of unpaired domains, Fashion-MNIST's sneakers and
ankle boots (scripts/fashion_domains.py exports them from Debian's `dataset-fashion-mnist`).

One real `ganlab train model=cyclegan` run on the 6,000 + 6,000 training images at 32 px (a CPU budget),
then `ganlab translate` on the 1,000 + 1,000 held-out test images, both ways and back again, scored by
ganlab's Fashion-MNIST classifier at 32 px (trained once and cached):
- the share of translated sneakers it labels "ankle boot" (and of translated boots labelled "sneaker"),
  beside the same share for the untranslated test images;
- the cycle reconstruction error |G_BA(G_AB(a)) - a| and |G_AB(G_BA(b)) - b| in grey levels (0-255),
  beside how far the translation itself moved the images.
A picture of the run's TensorBoard rows goes to docs/images/cyclegan_fashion.png.

    python scripts/results_cyclegan.py                    # 15 CPU minutes, one thread; writes docs/
    python scripts/results_cyclegan.py --quick            # tiny budget: checks the script, not written to docs/
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_domains import DEBIAN, export  # noqa: E402
from results import REPO, slug, write_section  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0, help="CPU minutes for training (train.max_minutes)")
    ap.add_argument("--steps", type=int, default=5400,
                    help="train.steps: the lr decays to 0 over the second half (5,400: about 15 min on one core here)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--root", default="data", help="dataset.root (Debian's package is looked up after it)")
    ap.add_argument("--domains", type=Path, default=REPO / "data" / "fashion_domains")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "results-cyclegan")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more overrides for the train command (e.g. model.lambda_identity=0); named in the section")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    minutes, steps = (0.2, 40) if args.quick else (args.minutes, args.steps)
    out = args.out.with_name(args.out.name + "-quick") if args.quick else args.out

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
    work = out / slug(overrides)  # these overrides' run and translations: another --set never reuses them
    run = work / "run"
    t0 = time.monotonic()
    if not (run / "checkpoints" / "last.pt").is_file():
        run.parent.mkdir(parents=True, exist_ok=True)
        ganlab("train", *overrides, "device=cpu", "train.threads=1", "train.progress=none", f"hydra.run.dir={run}",
               log=work / "train.log")
    wall = time.monotonic() - t0
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)

    moved = {}
    for direction, src, back in (("a2b", "test_a", "b2a"), ("b2a", "test_b", "a2b")):
        there, home = work / f"{src}_{direction}", work / f"{src}_{direction}_{back}"
        ganlab("translate", f"run={run}", f"in={folders[src]}", f"out={there}", f"direction={direction}", "device=cpu")
        ganlab("translate", f"run={run}", f"in={there}", f"out={home}", f"direction={back}", "device=cpu")
        moved[direction] = (load_folder(folders[src]), load_folder(there), load_folder(home))

    def labels(x):
        with torch.no_grad():
            return clf(x.float().div(127.5).sub(1))[1].argmax(1)

    rows = []
    for direction, target, name in (("a2b", 9, "sneakers -> ankle boots"), ("b2a", 7, "ankle boots -> sneakers")):
        real, fake, rec = moved[direction]
        before, after = (labels(real) == target).float().mean().item(), (labels(fake) == target).float().mean().item()
        cyc = (rec.float() - real.float()).abs().mean().item()
        change = (fake.float() - real.float()).abs().mean().item()
        rows.append(f"| {name} | {len(real):,} | {100 * after:.1f}% | {100 * before:.1f}% | {cyc:.1f} | {change:.1f} |")
        print(rows[-1], flush=True)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from PIL import Image

    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    acc.Reload()
    pictures = [Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string)).convert("L")
                for tag in ("Samples/a2b", "Samples/b2a")]
    shown_step = acc.Images("Samples/a2b")[-1].step
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in ("Loss/cycle_a", "Loss/cycle_b", "D/critic_real_b",
                                                            "D/critic_fake_b")}

    steps_done = int(state["step"])
    cmd = "ganlab train " + " ".join(o.replace(str(REPO) + "/", "") for o in overrides)
    lines = [BEGIN, "## 6. CycleGAN: sneakers <-> ankle boots (unpaired, real Fashion-MNIST)", "",
             f"Made by `python scripts/results_cyclegan.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on "
             f"{time.strftime('%Y-%m-%d')} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}, one thread; training {wall / 60:.0f} min). Domains: the "
             f"{len(list(folders['train_a'].glob('*.png'))):,} sneakers (A) and "
             f"{len(list(folders['train_b'].glob('*.png'))):,} ankle boots (B) of Fashion-MNIST's training set, exported "
             "by `python scripts/fashion_domains.py` from Debian's `dataset-fashion-mnist`, no pairs; trained at 32 px: "
             f"`{cmd}` (the paper's recipe, batch 1, with {args.width} channels instead of 64; {steps_done:,} steps "
             f"of the {steps:,} planned, the lr constant for the first half of the plan, then falling linearly to 0). "
             "Scored on the held-out test images (1,000 of each class): `ganlab translate run=RUN in=TEST_A "
             "out=A2B direction=a2b`, then back with direction=b2a, labelled by ganlab's Fashion-MNIST classifier at "
             f"32 px (held-out accuracy {info['held_out_accuracy']:.4f}); the errors are mean absolute differences "
             "in grey levels (0-255) at 32 px.", "",
             "| direction | test images | labelled as the target class after translation | before (the untranslated images) "
             "| cycle reconstruction error | change made by the translation |",
             "|---|---|---|---|---|---|", *rows, "",
             f"The rows in TensorBoard at step {shown_step:,} (`Samples/a2b` above: real sneakers, their translations "
             "to boots, the reconstructions; `Samples/b2a` below: real boots, translated to sneakers, reconstructed); "
             f"last logged cycle L1 (pixels in [-1, 1]): A {scalars['Loss/cycle_a']:.3f}, B {scalars['Loss/cycle_b']:.3f}:",
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
    (work / "scores.json").write_text(json.dumps({"rows": rows, "steps": steps_done}, indent=2))
    print(f"written: {doc}, {PICTURE}")


if __name__ == "__main__":
    main()
