"""Plots drawn with matplotlib (Agg, no display; figures built without pyplot's global state, so
a training process or a test can draw them in any thread): to TensorBoard as C x H x W images,
or to files for docs/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def figure(width: float = 6.4, height: float = 4.0, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def to_image(fig) -> torch.Tensor:
    """3 x H x W float in [0, 1] (what SummaryWriter.add_image takes)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def optimal_d_figure(dens, d_logit, metrics: dict | None = None, title: str = ""):
    """The trained D against D* = p_r / (p_r + p_g): curves over x with both densities (1D), or
    D*, D and |D - D*| as maps (2D; the error shown where (p_r + p_g) / 2 is at least 1% of its peak)."""
    from ganlab.metrics.theory import LOG2, REGION

    modes_g = dens.scale * dens.modes + dens.shift
    allm = torch.cat([dens.modes, modes_g])
    pad = 4.0 * max(dens.std, dens.scale * dens.std)
    lo, hi = allm.min(0).values - pad, allm.max(0).values + pad
    note = ""
    if metrics:
        note = (f"max |D - D*| {metrics['d_error_max']:.3f}, JS {metrics['js']:.3f} nats, "
                f"(V(D,G) + log 4)/2 = {metrics['js_from_v']:.3f}")
    d = dens.modes.shape[1]
    with torch.no_grad():
        if d == 1:
            x = torch.linspace(float(lo[0]), float(hi[0]), 801, dtype=torch.float64)[:, None]
            pr, pg = dens.log_pr(x).exp().numpy(), dens.log_pg(x).exp().numpy()
            dstar = torch.sigmoid(dens.d_star_logit(x)).numpy()
            dx = torch.sigmoid(d_logit(x.float()).double().reshape(-1)).numpy()
            fig, ax = figure(7.0, 4.0)
            xs = x[:, 0].numpy()
            top = max(pr.max(), pg.max())
            ax.fill_between(xs, 0, pr / top, color="tab:green", alpha=0.25, label="p_r (scaled)")
            ax.fill_between(xs, 0, pg / top, color="tab:red", alpha=0.2, label="p_g (scaled)")
            ax.plot(xs, dstar, "k--", lw=2, label="D*(x) = p_r / (p_r + p_g)")
            ax.plot(xs, dx, color="tab:blue", lw=1.5, label="trained D(x)")
            ax.set_ylim(-0.02, 1.05)
            ax.set_xlabel("x")
            ax.legend(loc="best", fontsize=8)
            ax.set_title((title + "\n" if title else "") + note, fontsize=9)
            return fig
        n = 160
        gx = torch.linspace(float(lo[0]), float(hi[0]), n, dtype=torch.float64)
        gy = torch.linspace(float(lo[1]), float(hi[1]), n, dtype=torch.float64)
        pts = torch.cartesian_prod(gy, gx).flip(1)  # row-major: y rows, x columns
        dstar = torch.sigmoid(dens.d_star_logit(pts)).reshape(n, n).numpy()
        dx = torch.sigmoid(d_logit(pts.float()).double().reshape(-1)).reshape(n, n).numpy()
        log_m = (torch.logaddexp(dens.log_pr(pts), dens.log_pg(pts)) - LOG2).reshape(n, n)
        region = (log_m >= log_m.max() + np.log(REGION)).numpy()
    fig, axes = figure(12.0, 4.2, ncols=3)
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    for ax, img, name in ((axes[0], dstar, "D*(x) = p_r / (p_r + p_g)"), (axes[1], dx, "trained D(x)")):
        im = ax.imshow(img, origin="lower", extent=extent, vmin=0, vmax=1, cmap="RdBu_r")
        ax.set_title(name, fontsize=9)
    err = np.where(region, np.abs(dx - dstar), np.nan)
    im = axes[2].imshow(err, origin="lower", extent=extent, vmin=0, vmax=max(0.05, float(np.nanmax(err))), cmap="magma")
    axes[2].set_title("|D - D*| where (p_r + p_g)/2 >= 1% of its peak", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.plot(dens.modes[:, 0], dens.modes[:, 1], "g+", ms=6)
        ax.plot(modes_g[:, 0], modes_g[:, 1], "rx", ms=5)
    fig.suptitle(": ".join(t for t in (title, note) if t), fontsize=10)
    return fig


def curves_figure(curves: dict[str, list[tuple[int, float]]], tag: str, title: str = ""):
    """One line per run of `tag` over the steps (`ganlab report --plot`): {label: [(step, value), ...]}."""
    fig, ax = figure(8.0, 4.8)
    for label, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, linewidth=1.4, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(tag)
    ax.set_title(title or tag)
    ax.grid(alpha=0.3)
    if len(curves) <= 20:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
