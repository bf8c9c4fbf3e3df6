"""The canon's theory as experiments (model=optimal_d, ganlab.metrics.theory): the closed forms
against independent computations, a trained D against D*, JS from V(D, G), and the G gradients'
ordering as the supports separate, through the real CLI."""

import json
import math

import numpy as np
import pytest
import torch

from ganlab.errors import GanlabError
from ganlab.metrics.theory import Densities, divergences, expectation_points, theory_metrics
from ganlab.train import train
from conftest import cli, compose, read_events

SIGMA = 0.3


def gaussian(shift: float, dim: int = 1, scale: float = 1.0) -> Densities:
    return Densities(torch.zeros(1, dim), SIGMA, scale, torch.tensor([shift] + [0.0] * (dim - 1)))


def js_reference(shift: float, scale: float = 1.0) -> float:
    """JS of N(0, s^2) and N(shift, (scale s)^2) by numpy's trapezoid rule on its own wide grid."""
    x = np.linspace(-12, 12 + shift, 400001)

    def log_pdf(m, s):
        return -0.5 * ((x - m) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))

    lp, lq = log_pdf(0, SIGMA), log_pdf(shift, scale * SIGMA)
    lm = np.logaddexp(lp, lq) - math.log(2)
    return 0.5 * np.trapezoid(np.exp(lp) * (lp - lm), x) + 0.5 * np.trapezoid(np.exp(lq) * (lq - lm), x)


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.15, 1.0), (0.6, 1.0), (3.0, 1.0), (0.3, 1.7)])
def test_js_and_kl_match_independent_computations(shift, scale):
    dens = gaussian(shift, scale=scale)
    got = divergences(dens, *expectation_points(dens))
    assert got["js"] == pytest.approx(js_reference(shift, scale), abs=1e-6)
    if scale == 1.0:  # equal variances: KL(p_g || p_r) = shift^2 / (2 sigma^2) exactly
        assert got["kl_g_r"] == pytest.approx(shift ** 2 / (2 * SIGMA ** 2), rel=1e-6, abs=1e-9)
    # 2D: the second coordinate is the same Gaussian in both, so JS is the 1D one (Monte Carlo, +-0.01)
    dens2 = gaussian(shift, dim=2, scale=1.0)
    if scale == 1.0:
        assert divergences(dens2, *expectation_points(dens2))["js"] == pytest.approx(js_reference(shift), abs=0.01)


def test_at_d_star_v_gives_js_and_the_minimax_gradient_is_twice_js_prime():
    """V(D*, G) = -log 4 + 2 JS (Goodfellow et al., Thm 1); d/dtheta of the minimax G loss at D* is
    2 dJS/dtheta (the envelope theorem), checked by finite differences of the numeric JS; the
    non-saturating one is d/dtheta [KL(p_g||p_r) - 2 JS] (Arjovsky & Bottou, Thm 2.5)."""
    for shift in (0.2, 0.6, 1.5):
        dens = gaussian(shift)
        u, w = expectation_points(dens)
        m = theory_metrics(dens, u, w, lambda x: dens.d_star_logit(x.double()).float())
        assert m["d_error_max"] < 1e-5 and m["js_from_v"] == pytest.approx(m["js"], abs=1e-6)
        h = 1e-4
        f = {s: divergences(gaussian(shift + s), u, w) for s in (-h, h)}
        djs = (f[h]["js"] - f[-h]["js"]) / (2 * h)
        dkl = (f[h]["kl_g_r"] - f[-h]["kl_g_r"]) / (2 * h)
        assert m["grad_g_minimax_at_dstar"] == pytest.approx(2 * abs(djs), rel=1e-3)
        assert m["grad_g_nonsaturating_at_dstar"] == pytest.approx(abs(dkl - 2 * djs), rel=1e-3)


def test_optimal_d_refuses_what_would_change_d_star(data_root):
    cases = [(["loss=wasserstein"], "loss=minimax"), (["dataset=mnist", f"dataset.root={data_root}"], "known density"),
             (["model.g_shift=[1,2,3]"], "model.g_shift"), (["model.g_scale=0"], "model.g_scale"),
             (["penalty=gp"], "drop penalty"), (["tricks.label_smoothing=0.1"], "tricks"),
             (["model.eval_points=10"], "model.eval_points")]
    for overrides, message in cases:
        cfg = compose("experiment=optimal_d", "train.steps=2", "train.progress=none", *overrides)
        with pytest.raises(GanlabError, match=message):
            train(cfg, data_root / "never")
    assert not (data_root / "never").exists()


@pytest.mark.slow
def test_a_trained_d_is_within_tolerance_of_d_star_and_v_gives_js(tmp_path):
    """experiment=optimal_d through the real CLI: two overlapping 1D mixtures; after 1,500 D steps
    |D - D*| <= 0.15 wherever (p_r + p_g)/2 >= 1% of its peak (0.01 on average under it), and
    (V(D, G) + log 4) / 2 is within 0.01 of the numeric JS (and not above it: V(D) <= V(D*))."""
    run = tmp_path / "run"
    r = cli("train", "experiment=optimal_d", "train.steps=1500", "train.progress=none", "train.sample_every=750",
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    m = {k.split("/", 1)[1]: v for k, v in m.items()}
    assert m["d_error_max"] <= 0.15 and m["d_error_mean"] <= 0.01, m
    assert abs(m["js_from_v"] - m["js"]) <= 0.01 and m["js_from_v"] <= m["js"] + 1e-3, m
    assert 0.1 < m["js"] < 0.5  # overlapping, not identical
    ev = read_events(run / "tb")
    assert [e.step for e in ev.Images("Theory/D_vs_Dstar")] == [750, 1500]
    assert ev.Scalars("Metrics/js")[-1].value == pytest.approx(m["js"], rel=1e-6)
    assert {"Loss/D", "Loss/critic", "Critic/W1_estimate", "D/D(x)"} <= set(ev.Tags()["scalars"])
    # ganlab eval on the run prints the same measurements; ganlab sample draws from the known p_g
    r = cli("eval", f"target={run}", cwd=tmp_path)
    assert r.returncode == 0 and "d_error_max" in r.stdout and "js_from_v" in r.stdout, r.stderr
    r = cli("sample", f"run={run}", "n=20000", f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    x = np.load(tmp_path / "s.npz")["arr_0"][:, 0]
    assert x.mean() == pytest.approx(0.5, abs=0.05)  # 1.5 * (+-1 mixture, mean 0) + 0.5
    assert x.std() == pytest.approx(1.5 * math.sqrt(1 + SIGMA ** 2), rel=0.03)


@pytest.mark.slow
def test_the_minimax_gradient_vanishes_as_the_supports_separate(tmp_path):
    """A sweep over the distance between two 1D Gaussians (1 and 10 std apart) through `ganlab train -m`:
    with the trained D the minimax G gradient collapses (x100 smaller) while the non-saturating one
    stays large and the Wasserstein critic's stays near dW_1/dtheta = 1; at D* the minimax one is ~0."""
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", "experiment=optimal_d", "dataset.n_modes=1", "model.g_scale=1",
                "model.g_shift=0.3,3.0", "train.steps=1000", "train.progress=none", f"hydra.sweep.dir={sweep}",
                cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr
    runs = {}
    for d in sweep.iterdir():
        if (d / "metrics.json").is_file():
            m = json.loads((d / "metrics.json").read_text())["metrics"]
            runs[d.name.split("g_shift=")[1].split(",")[0]] = {k.split("/", 1)[1]: v for k, v in m.items()}
    near, far = runs["0.3"], runs["3.0"]
    assert far["js"] == pytest.approx(math.log(2), abs=1e-6) and near["js"] < 0.2
    assert far["grad_g_minimax"] < 0.01 * near["grad_g_minimax"]
    assert far["grad_g_minimax"] < 0.01 * far["grad_g_nonsaturating"]
    assert far["grad_g_minimax_at_dstar"] < 1e-4 * near["grad_g_minimax_at_dstar"]  # 2 dJS/dtheta ~ 0 at 10 std
    for m in (near, far):
        assert 0.7 < m["grad_g_wasserstein"] < 1.3, m
        assert m["w1_critic"] == pytest.approx(m["w1"], rel=0.3)
    r = cli("report", str(sweep), cwd=tmp_path)
    assert r.returncode == 0 and "grad_g_minimax" in r.stdout, r.stdout + r.stderr
