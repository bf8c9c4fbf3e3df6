#!/usr/bin/env python
"""docs/results.md, section 8: the optimal discriminator, JS from V(D, G), and the vanishing minimax
gradient, measured with `ganlab train experiment=optimal_d` (ganlab/objectives/optimal_d.py).

1. experiment=optimal_d as shipped (1D: two Gaussians vs the same mixture widened 1.5x and shifted by
   0.5): the trained D over D* -> docs/images/optimal_d_1d.png;
2. a 2D case (ring8 widened to std 0.2, p_g shifted by (0.4, 0.2)) -> docs/images/optimal_d_2d.png;
3. a sweep of the distance between two 1D Gaussians (std 0.3) with `ganlab train -m`: JS from V(D, G)
   vs the numeric JS, and the three G gradients (trained D and critic, and at D*) against the
   distance -> docs/images/optimal_d_sweep.png and a table; the same sweep on ring8 (std 0.02) as a table.

    python scripts/results_theory.py            # ~6 CPU minutes; writes docs/
    python scripts/results_theory.py --quick    # 300 steps: checks the script, not written to docs/
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, minutes_in_all, run_ganlab as ganlab, write_section  # noqa: E402

BEGIN, END = "<!-- results_theory.py: begin -->", "<!-- results_theory.py: end -->"
IMAGES = REPO / "docs" / "images"
SHIFTS_1D = [0.075, 0.15, 0.3, 0.6, 1.2, 2.4, 4.8]      # 0.25 .. 16 std
SHIFTS_RING = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]    # 0.5 .. 50 std
TWO_D = ["dataset=ring8", "dataset.std=0.2", "model.g_scale=1", "model.g_shift=[0.4,0.2]"]


def metrics_of(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    return {k.split("/", 1)[1]: v for k, v in m.items()}


def figure_of(run: Path, title: str, path: Path) -> None:
    """The run's final D over D* (the same figure TensorBoard shows), with its measurements."""
    from omegaconf import OmegaConf

    from ganlab.data.sources import build_source
    from ganlab.objectives.optimal_d import OptimalD
    from ganlab.plots import optimal_d_figure, save

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    cfg = OmegaConf.create(state["config"])
    nets = OptimalD.build_nets(cfg, build_source(cfg.dataset))
    for name, net in nets.items():
        net.load_state_dict(state[name])
    fig = optimal_d_figure(nets["generator"].densities(), nets["discriminator"].eval(), metrics_of(run), title)
    save(fig, path)


def sweep(name: str, overrides: list[str], shifts: list[float], out: Path) -> tuple[dict, float]:
    folder = out / name
    if not (folder / "done").is_file():
        wall = ganlab(["train", "-m", "experiment=optimal_d", *overrides, "model.g_scale=1",
                       "model.g_shift=" + ",".join(map(str, shifts)), "device=cpu", "train.threads=1",
                       "train.progress=none", f"hydra.sweep.dir={folder}"], out / f"{name}.log")
        (folder / "done").write_text(str(wall))
    runs = {}
    for run in folder.iterdir():
        if (run / "metrics.json").is_file():
            shift = float(run.name.split("model.g_shift=")[1].split(",")[0])
            runs[shift] = metrics_of(run)
    return dict(sorted(runs.items())), float((folder / "done").read_text())


def sweep_figure(runs: dict, sigma: float, path: Path) -> None:
    from ganlab.plots import figure, save

    fig, (ax1, ax2) = figure(12.0, 4.2, ncols=2)
    d = [s / sigma for s in runs]
    ax1.plot(d, [m["js"] for m in runs.values()], "k-", lw=2, label="JS(p_r || p_g), numeric")
    ax1.plot(d, [m["js_from_v"] for m in runs.values()], "o--", color="tab:blue", label="(V(D, G) + log 4) / 2, trained D")
    ax1.axhline(0.6931, color="grey", lw=0.8, ls=":")
    ax1.set_xscale("log")
    ax1.set_xlabel("distance between the Gaussians (std)")
    ax1.set_ylabel("nats")
    ax1.set_title("JS from the trained D's value vs the numeric JS (log 2 dotted)", fontsize=9)
    ax1.legend(fontsize=8)
    for key, style, label in (("grad_g_minimax", "o-", "minimax, trained D"),
                              ("grad_g_minimax_at_dstar", "k--", "minimax at D* (= 2 dJS/dθ)"),
                              ("grad_g_nonsaturating", "s-", "non-saturating, trained D"),
                              ("grad_g_nonsaturating_at_dstar", ":", "non-saturating at D*"),
                              ("grad_g_wasserstein", "^-", "Wasserstein, trained critic (dW1/dθ = 1)")):
        ax2.plot(d, [max(m[key], 1e-30) for m in runs.values()], style, label=label)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_ylim(1e-12, 1e4)
    ax2.set_xlabel("distance between the Gaussians (std)")
    ax2.set_ylabel("|d G loss / d G's position|")
    ax2.set_title("G's gradient as the supports separate", fontsize=9)
    ax2.legend(fontsize=7)
    save(fig, path)


def table(runs: dict, sigma: float) -> list[str]:
    lines = ["| distance (std) | JS numeric | JS from V(D) | max \\|D - D*\\| | minimax: trained D | minimax: D* | "
             "non-sat.: trained D | non-sat.: D* | Wasserstein: critic | W1 / critic's estimate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for shift, m in runs.items():
        lines.append(f"| {shift / sigma:g} | {m['js']:.4f} | {m['js_from_v']:.4f} | {m['d_error_max']:.3f} | "
                     f"{m['grad_g_minimax']:.3g} | {m['grad_g_minimax_at_dstar']:.3g} | {m['grad_g_nonsaturating']:.3g} | "
                     f"{m['grad_g_nonsaturating_at_dstar']:.3g} | {m['grad_g_wasserstein']:.3f} | "
                     f"{m['w1']:g} / {m['w1_critic']:.3f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "results-theory")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = args.out / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    steps = ["train.steps=300"] if args.quick else []
    images = out if args.quick else IMAGES
    t0 = time.monotonic()

    runs = {"1d": [], "2d": TWO_D}
    walls = {}
    for name, overrides in runs.items():
        run = out / name
        if not (run / "metrics.json").is_file():
            walls[name] = ganlab(["train", "experiment=optimal_d", *overrides, *steps, "device=cpu", "train.threads=1",
                                  "train.progress=none", f"hydra.run.dir={run}"], out / f"{name}.log")
        figure_of(run, "experiment=optimal_d" + ("" if name == "1d" else " " + " ".join(overrides)),
                  images / f"optimal_d_{name}.png")
    one, wall_1d = sweep("sweep_1d", ["dataset.n_modes=1", *steps], SHIFTS_1D, out)
    ring, wall_ring = sweep("sweep_ring8", ["dataset=ring8", *steps], SHIFTS_RING, out)
    sweep_figure(one, 0.3, images / "optimal_d_sweep.png")
    m1, m2 = metrics_of(out / "1d"), metrics_of(out / "2d")
    cpu = platform.processor() or platform.machine()

    section = "\n".join([
        BEGIN,
        "## 8. The optimal discriminator, JS, and the vanishing minimax gradient (`experiment=optimal_d`)",
        "",
        "G is fixed and its density known (the law of `g_scale * X + g_shift`, X from the dataset's Gaussian "
        "mixture); D trains with the GAN value function and a Wasserstein critic (one-sided Lipschitz penalty) "
        "trains beside it, 3,000 steps of batch 512 each; every number is computed against the closed forms "
        "(`ganlab/metrics/theory.py`: a 4,001-point grid in 1D, 65,536 Monte Carlo points in 2D). "
        f"Made by `python scripts/results_theory.py` on {cpu}, one thread per run, "
        f"{minutes_in_all(out, t0):.1f} min in all, reusing nothing.",
        "",
        "`ganlab train experiment=optimal_d` (two Gaussians at +-1, std 0.3, against the same mixture widened 1.5x "
        f"and shifted by 0.5): max |D - D*| {m1['d_error_max']:.3f} where (p_r + p_g)/2 is at least 1% of its peak "
        f"(mean {m1['d_error_mean']:.4f}); JS {m1['js']:.4f} nats, (V(D, G) + log 4)/2 = {m1['js_from_v']:.4f}.",
        "",
        "![D vs D* in 1D](images/optimal_d_1d.png)",
        "",
        "2D (`" + " ".join(TWO_D) + f"`): max |D - D*| {m2['d_error_max']:.3f}, mean {m2['d_error_mean']:.4f}; "
        f"JS {m2['js']:.4f}, from V(D, G) {m2['js_from_v']:.4f}; W1 {m2['w1']:.3f}, the critic's estimate "
        f"{m2['w1_critic']:.3f}.",
        "",
        "![D vs D* in 2D](images/optimal_d_2d.png)",
        "",
        "The distance between the supports, swept: `ganlab train -m experiment=optimal_d dataset.n_modes=1 "
        "model.g_scale=1 model.g_shift=" + ",".join(map(str, SHIFTS_1D)) + f"` (two 1D Gaussians, std 0.3; "
        f"{wall_1d:.0f} s). |d loss / d theta| is the norm of the G loss's gradient w.r.t. G's position theta; "
        "\"D*\" columns take it at the optimal D (minimax: 2 dJS/dtheta; non-saturating: d/dtheta [KL(p_g||p_r) - "
        "2 JS], Arjovsky & Bottou 2017, Thm 2.5); for a translation dW1/dtheta = 1 at every distance.",
        "",
        *table(one, 0.3),
        "",
        "![JS and the G gradients against the distance](images/optimal_d_sweep.png)",
        "",
        "The same on ring8 (eight Gaussians of std 0.02 on a circle of radius 2, p_g = ring8 shifted along x; "
        f"`dataset=ring8`, {wall_ring:.0f} s). Narrow modes are harder for a 3,000-step D: its max error is large at "
        "the distances where p_r and p_g overlap, and JS from V(D) is a loose lower bound there.",
        "",
        *table(ring, 0.02),
        "",
        "Reading: as the supports separate, JS saturates at log 2 and the minimax G gradient collapses: at D* "
        f"the closed form falls to {one[max(one)]['grad_g_minimax_at_dstar']:.2g} at {max(one) / 0.3:g} std (1D) and "
        f"{ring[max(ring)]['grad_g_minimax_at_dstar']:.2g} on ring8 at {max(ring) / 0.02:g} std, and with the trained D "
        "it falls by orders of magnitude too (the trained D is not saturated as hard as D*). The non-saturating "
        "gradient does not vanish (at D* it grows with the distance, as KL(p_g || p_r) does; the trained D's is "
        "smaller, bounded by its finite slope). The Wasserstein critic's gradient stays near dW1/dtheta = 1 at every "
        "distance; its one-sided penalty is soft, so at large distances its slope, and its W1 estimate, drift above "
        "1 (the last column).",
        "",
        END,
        "",
    ])
    if args.quick:
        print(section)
        return
    doc = write_section(BEGIN, END, section)
    print(f"wrote {doc} and {IMAGES}/optimal_d_*.png")


if __name__ == "__main__":
    main()
