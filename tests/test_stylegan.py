"""StyleGAN2 (Karras et al. 2020) as the official code defines it: FIR resampling against a direct convolution,
modulation/demodulation against a hand computation, truncation, style mixing, the lazy R1 phase counted in D
steps and its Adam adjustment, path-length regularization's running mean and lazy scaling, and a real CPU run
at 32 px with the three StyleGAN grids in TensorBoard, killed with SIGKILL and resumed bit-identically."""

import contextlib
import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganlab.errors import GanlabError
from ganlab.models import stylegan as sg
from ganlab.objectives.stylegan import StyleGAN, d_steps_cross
from conftest import cli, compose, make_idx, read_events, run_cli
from test_reliability import _assert_same_training_state, _last_step, _popen, _wait_for

SMALL = ("model.channel_max=16", "model.channel_base=128", "model.z_dim=32", "model.w_dim=32")


def _g(resolution=16, **extra):
    cfg = compose("model=stylegan", *SMALL, *[f"model.{k}={v}" for k, v in extra.items()])
    torch.manual_seed(0)
    return sg.build(cfg.model, (3, resolution, resolution), resolution)[0]


def _source(shape=(1, 32, 32), kind="image", num_classes=10):
    return type("S", (), {"kind": kind, "shape": shape, "name": "mnist", "num_classes": num_classes})()


# ------------------------------------------------------------------------------------ FIR resampling
def _reference_upfirdn(x: np.ndarray, f: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int],
                       gain: float) -> np.ndarray:
    """The definition, by scipy: zeros inserted, padded (or cropped), a full 2D convolution with the filter
    kept where it overlaps the signal wholly ('valid'), every down-th pixel."""
    from scipy.signal import convolve2d

    h, w = x.shape
    u = np.zeros((h * up, w * up))
    u[::up, ::up] = x
    x0, x1, y0, y1 = pad
    u = np.pad(u, ((max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    u = u[max(-y0, 0):u.shape[0] - max(-y1, 0), max(-x0, 0):u.shape[1] - max(-x1, 0)]
    return convolve2d(u, f * gain, mode="valid")[::down, ::down]


@pytest.mark.parametrize("up,down,pad,gain", [
    (1, 1, (1, 2, 0, 3), 1.0),       # pad only (uneven)
    (2, 1, (2, 1, 2, 1), 4.0),       # x2 up, as G's skip image
    (1, 2, (1, 1, 1, 1), 1.0),       # /2 down, as D
    (2, 2, (1, 1, 1, 1), 4.0),       # both
    (1, 1, (-1, 0, 0, -1), 1.0),     # negative padding crops
])
def test_upfirdn2d_equals_a_direct_convolution_with_up_and_downsampling(up, down, pad, gain):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 6))
    taps = np.array([1.0, 3.0, 1.0, 5.0])  # asymmetric: a flipped filter would show
    f2 = np.outer(taps, taps[::-1]) / np.outer(taps, taps[::-1]).sum()
    got = sg.upfirdn2d(torch.tensor(x), torch.tensor(f2), up=up, down=down, padding=pad, gain=gain).numpy()
    for n in range(2):
        for c in range(3):
            want = _reference_upfirdn(x[n, c], f2, up, down, pad, gain)
            assert got[n, c].shape == want.shape
            np.testing.assert_allclose(got[n, c], want, atol=1e-10)


def test_the_resampling_convolutions_keep_sizes_and_are_the_filter_composed_with_the_conv():
    f = sg.setup_filter([1, 3, 3, 1])
    assert torch.allclose(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    x, w = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    down = sg.conv2d_resample(x, w, f=f.double(), down=2, padding=1)
    assert down.shape == (2, 5, 4, 4)
    # down: the filter (padded so that the conv's own padding is kept), then the strided conv
    assert torch.allclose(down, F.conv2d(sg.upfirdn2d(x, f.double(), padding=(2, 2, 2, 2)), w, stride=2))
    up = sg.conv2d_resample(x, w, f=f.double(), up=2, padding=1)
    assert up.shape == (2, 5, 16, 16)
    # up: a true convolution (the official flip_weight=False) of the zero-stuffed input, then the filter x 4
    stuffed = sg.upfirdn2d(x, None, up=2, padding=(2, 1, 2, 1))
    conv = F.conv2d(stuffed, w.flip([2, 3]))
    assert torch.allclose(up, sg.upfirdn2d(conv, f.double(), padding=(1, 1, 1, 1), gain=4), atol=1e-10)
    assert sg.upsample2d(x, f.double()).shape == (2, 4, 16, 16) and sg.downsample2d(x, f.double()).shape == (2, 4, 4, 4)
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)  # unit DC gain inside the image
    assert torch.allclose(sg.upsample2d(ones, f.double())[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12, dtype=torch.float64))


# ------------------------------------------------------------------------ modulation, demodulation
def test_a_synthesis_layer_is_the_hand_computed_modulated_demodulated_convolution():
    torch.manual_seed(1)
    layer = sg.SynthesisLayer(5, 8, w_dim=6, resolution=8)
    with torch.no_grad():
        layer.bias.normal_()
        layer.noise_strength.fill_(0.3)
    x, w = torch.randn(4, 5, 8, 8), torch.randn(4, 6)
    with torch.no_grad():
        s = w @ (layer.affine.weight.t() / math.sqrt(6)) + layer.affine.bias  # the affine: equalized lr, bias 1
        ref = torch.empty(4, 8, 8, 8)
        for n in range(4):  # each sample: weight x style per input channel, each output filter to unit L2 norm
            wn = layer.weight * s[n][None, :, None, None]
            wn = wn / wn.square().sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
            assert torch.allclose(wn.square().sum(dim=(1, 2, 3)), torch.ones(8), atol=1e-5)
            ref[n] = F.conv2d(x[n:n + 1], wn, padding=1)[0]
        ref = ref + 0.3 * layer.noise_const  # the stored noise image times the layer's one strength
        ref = F.leaky_relu(ref + layer.bias[None, :, None, None], 0.2) * math.sqrt(2)
        for fused in (False, True):  # the official training path and its eval path
            assert torch.allclose(layer(x, w, noise_mode="const", fused=fused), ref, atol=1e-4)
    g = _g()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())


def test_psi_0_gives_the_average_w_image_for_every_z():
    g = _g()
    with torch.no_grad():
        g.mapping(torch.randn(64, 32), update_w_avg=True)  # w_avg = 0.005 * this batch's mean w
        assert g.mapping.w_avg.abs().sum() > 0
        z = torch.randn(6, 32)
        out = g(z, psi=0.0, noise_mode="const")
        avg = g.synthesis(g.mapping.w_avg.expand(1, g.num_ws, -1), "const")
        assert torch.allclose(out, avg.expand_as(out), atol=1e-5)
        assert not torch.allclose(g(z, noise_mode="const")[0], g(z, noise_mode="const")[1])  # psi 1: they differ
        half = g.mapping(z, psi=0.5)
        assert torch.allclose(half, g.mapping.w_avg + 0.5 * (g.mapping(z) - g.mapping.w_avg), atol=1e-6)
        cut = g.mapping(z, psi=0.0, cutoff=2)  # truncation_cutoff: only the first two ws
        assert torch.allclose(cut[:, :2], g.mapping.w_avg.expand(6, 2, -1)) and torch.equal(cut[:, 2:], g.mapping(z)[:, 2:])


def test_style_mixing_at_crossover_k_feeds_w1_below_k_and_w2_from_k_on():
    g = _g(resolution=32)
    assert g.num_ws == 8  # two convs per resolution but the first's one, plus the last toRGB
    z1, z2 = torch.randn(3, 32), torch.randn(3, 32)
    w1, w2 = g.mapping(z1)[:, 0], g.mapping(z2)[:, 0]
    for k in range(1, g.num_ws):
        ws = g.ws(z1, mix_z=z2, mix_cutoff=torch.tensor(k))
        for i in range(g.num_ws):
            assert torch.equal(ws[:, i], w1 if i < k else w2), (k, i)
    cfg = compose("model=stylegan", *SMALL, "train.batch_size=4")
    obj = StyleGAN(cfg, _source(), torch.device("cpu"))
    torch.manual_seed(0)
    cuts = torch.stack([obj._mixing(torch.zeros(4, 32))["mix_cutoff"] for _ in range(2000)])
    assert cuts.min() == 1 and cuts.max() == 8
    assert (cuts == 8).float().mean().item() == pytest.approx(0.1, abs=0.03)


# ------------------------------------------------------------------------------- regularization
class _Rt:
    device = torch.device("cpu")

    def __init__(self, x):
        self.x = x

    def next_batch(self, n=None):
        return self.x, None

    def autocast(self):
        return contextlib.nullcontext()

    def loss_scale(self, optimizer):
        return None


class _LinearD(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, x, c=None):
        return x.flatten(1) @ self.a + 0.3


def test_lazy_r1_matches_a_hand_computed_value_counts_d_steps_and_adam_is_adjusted():
    cfg = compose("model=stylegan", *SMALL, "penalty.weight=2.5", "model.pl_weight=0")  # gamma 5
    obj = StyleGAN(cfg, _source(), torch.device("cpu"))
    a = torch.randn(32 * 32)
    obj.nets["discriminator"] = _LinearD(a)
    loss, logs = obj.d_reg(16, _Rt(torch.randn(8, 1, 32, 32)))
    # grad_x D = a for every sample: R1 = ||a||^2; the lazy phase's loss = gamma / 2 * R1 * 16
    assert logs["Loss/r1"].item() == pytest.approx(a.square().sum().item(), rel=1e-5)
    assert loss.item() == pytest.approx(2.5 * a.square().sum().item() * 16, rel=1e-5)
    [reg] = [p for p in obj.phases if p.name == "D_reg"]
    assert [p.name for p in obj.phases] == ["D", "D_reg", "G"]
    assert [s for s in range(1, 65) if reg.runs_at(s)] == [16, 32, 48, 64]  # n_critic 1: every 16 loop steps
    group = obj.optimizers["d"].param_groups[0]
    assert group["lr"] == pytest.approx(2e-3 * 16 / 17) and group["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert obj.optimizers["g"].param_groups[0]["lr"] == pytest.approx(2e-3)  # no lazy G phase: untouched
    # counted in D steps: with 3 D steps a loop step, R1 after D steps 16, 32, 48, ... (loop steps 6, 11, 16, ...)
    three = StyleGAN(compose("model=stylegan", *SMALL, "train.n_critic=3"), _source(), torch.device("cpu"))
    [reg3] = [p for p in three.phases if p.name == "D_reg"]
    due = [s for s in range(1, 33) if reg3.runs_at(s)]
    assert due == [6, 11, 16, 22, 27, 32] and all(d_steps_cross(s, 3, 16) for s in due)
    assert [s for s in range(17, 33) if reg3.runs_at(s)] == [22, 27, 32]  # a pure function of the step: a resume
    # r1_every=1: R1 inside the D phase at every step, no adjustment
    eager = StyleGAN(compose("model=stylegan", *SMALL, "model.r1_every=1"), _source(), torch.device("cpu"))
    assert [p.name for p in eager.phases] == ["D", "G", "G_reg"]
    assert eager.optimizers["d"].param_groups[0]["lr"] == pytest.approx(2e-3)


def test_path_length_penalty_tracks_its_running_mean_and_is_scaled_by_its_interval():
    cfg = compose("model=stylegan", *SMALL, "train.batch_size=8")  # the paper's pl_weight 2, every 4 G steps
    obj = StyleGAN(cfg, _source(), torch.device("cpu"))
    assert [p.name for p in obj.phases] == ["D", "D_reg", "G", "G_reg"]
    [reg] = [p for p in obj.phases if p.name == "G_reg"]
    assert [s for s in range(1, 13) if reg.runs_at(s)] == [4, 8, 12] and obj.pl_batch == 4
    assert obj.optimizers["g"].param_groups[0]["lr"] == pytest.approx(2e-3 * 4 / 5)
    torch.manual_seed(0)
    loss, logs = obj.g_reg(4, _Rt(None))
    first = logs["Loss/path_length_mean"].item()
    assert first > 0 and obj.pl_mean.item() == pytest.approx(first)
    assert loss.item() == pytest.approx(logs["Loss/path_length"].item() * 2 * 4, rel=1e-6)  # weight 2, interval 4
    loss.backward()  # differentiable w.r.t. G
    assert obj.nets["generator"].mapping.fc0.weight.grad is not None
    # the running mean: a <- a + decay (mean length - a), from 0: the first is decay x the batch's mean length
    torch.manual_seed(1)
    before = obj.pl_mean.clone()
    from ganlab.objectives.stylegan import path_length_penalty

    z = torch.randn(4, 32)
    torch.manual_seed(2)
    _, mean = path_length_penalty(obj.nets["generator"], z, None, before, 0.01, {})
    torch.manual_seed(2)
    g = obj.nets["generator"]
    ws = g.ws(z, update_w_avg=True)
    img = g.synthesis(ws)
    y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * y).sum(), ws)
    lengths = grad.square().sum(2).mean(1).sqrt()
    assert mean.item() == pytest.approx((before + 0.01 * (lengths.mean() - before)).item(), rel=1e-5)
    assert obj.state_dict()["pl_mean"].item() == obj.pl_mean.item()


def test_stylegan_refuses_points_unlabelled_conditioning_other_penalties_and_bad_values():
    cpu = torch.device("cpu")
    with pytest.raises(GanlabError, match="needs images"):
        StyleGAN(compose("model=stylegan", "dataset=ring8"), _source((2,), "points"), cpu)
    with pytest.raises(GanlabError, match="needs a labelled dataset"):
        StyleGAN(compose("model=stylegan", "model.conditional=true"), _source(num_classes=None), cpu)
    with pytest.raises(GanlabError, match="penalty=r1"):
        StyleGAN(compose("model=stylegan", "penalty=gp"), _source(), cpu)
    with pytest.raises(GanlabError, match="model.g_architecture='stylegan3' is not valid"):
        StyleGAN(compose("model=stylegan", "model.g_architecture=stylegan3"), _source(), cpu)
    with pytest.raises(GanlabError, match="model.r1_every"):
        StyleGAN(compose("model=stylegan", "model.r1_every=-2"), _source(), cpu)
    cond = StyleGAN(compose("model=stylegan", *SMALL, "model.conditional=true"), _source(), cpu)  # the official CIFAR-10
    assert cond.c_dim == 10 and hasattr(cond.nets["discriminator"], "mapping")
    x = cond.sampler()(torch.randn(3, 32), torch.tensor([1, 2, 3]))
    assert x.shape == (3, 1, 32, 32)


# ------------------------------------------------------------------- a real run, killed and resumed

STEPS = 64


def _args(data, run, *extra):
    return ["train", "model=stylegan", f"dataset.root={data}", "dataset.download=false", "device=cpu", *SMALL,
            f"train.steps={STEPS}", "train.batch_size=8", "train.log_every=1", "train.sample_every=32",
            "train.ckpt_every=5", "train.n_samples=16", "train.progress=none", f"hydra.run.dir={run}", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One StyleGAN run uninterrupted and one SIGKILLed after step 20 and resumed, side by side."""
    root = tmp_path_factory.mktemp("stylegan")
    data = root / "data"
    make_idx(data, n=128)
    whole = _popen(_args(data, root / "whole"), root)
    killed = root / "killed"
    proc = _popen(_args(data, killed), root)
    _wait_for(lambda: _last_step(killed) >= 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["step"]
    resumed = run_cli(*_args(data, killed), "resume=true", cwd=root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming at step {saved}" in resumed.stdout + resumed.stderr
    out, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, out
    return {"root": root, "whole": root / "whole", "killed": killed, "saved": saved, "log": out}


@pytest.mark.slow
def test_a_cpu_run_shows_the_three_stylegan_grids_in_tensorboard(runs):
    assert ("StyleGAN2 32 px, 8 ws, mixing 0.9 | loss nonsaturating + r1 (lazy, every 16 D steps) + path length 2 "
            "(every 4 G steps)") in runs["log"]
    acc = read_events(runs["whole"] / "tb")
    images = acc.Tags()["images"]
    assert {"Samples/fixed_z", "Samples/style_mixing", "Samples/noise_resampling", "Samples/truncation"} <= set(images)
    cell = 28 + 2  # samples cropped back to the data's 28 px, 2 px padding
    mixing = acc.Images("Samples/style_mixing")
    assert [e.step for e in mixing] == [32, 64]
    assert (mixing[-1].width, mixing[-1].height) == (5 * cell + 2, 5 * cell + 2)  # 4 x 4 mixes + sources
    noise = acc.Images("Samples/noise_resampling")[-1]
    assert (noise.width, noise.height) == (8 * cell + 2, 3 * cell + 2)  # 7 draws + the std, 3 ws
    trunc = acc.Images("Samples/truncation")[-1]
    assert (trunc.width, trunc.height) == (8 * cell + 2, 4 * cell + 2)  # psi 1 .. 0, 4 latents
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(trunc.encoded_image_string)).convert("L"), dtype=np.int16)
    last_column = [pixels[2 + r * cell:r * cell + cell, 2 + 7 * cell:7 * cell + cell] for r in range(4)]
    assert all(np.array_equal(last_column[0], c) for c in last_column)  # psi 0: the same image in every row
    first_column = [pixels[2 + r * cell:r * cell + cell, 2:cell] for r in range(4)]
    assert not all(np.array_equal(first_column[0], c) for c in first_column)


@pytest.mark.slow
def test_killed_and_resumed_it_ends_bit_identical_with_lazy_phases_on_schedule(runs):
    assert 20 <= runs["saved"] < 32
    a = torch.load(runs["whole"] / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(runs["killed"] / "checkpoints" / "last.pt", weights_only=True)
    _assert_same_training_state(a, b)
    for key in a["generator_ema"]:
        assert torch.equal(a["generator_ema"][key], b["generator_ema"][key]), key
    assert torch.equal(a["objective"]["pl_mean"], b["objective"]["pl_mean"]) and a["objective"]["pl_mean"] > 0
    assert torch.equal(a["generator"]["mapping.w_avg"], b["generator"]["mapping.w_avg"])
    for run in ("whole", "killed"):  # the lazy phases ran exactly on their steps (in D and G steps), across the resume
        acc = read_events(runs[run] / "tb")
        assert [e.step for e in acc.Scalars("Loss/r1")] == [16, 32, 48, 64], run
        assert [e.step for e in acc.Scalars("Loss/path_length")] == list(range(4, STEPS + 1, 4)), run
        assert [e.step for e in acc.Scalars("Loss/D")] == list(range(1, STEPS + 1)), run


@pytest.mark.slow
def test_ganlab_sample_with_truncation_noise_and_given_latents(runs, tmp_path):
    run = runs["whole"]
    spread = {}
    for psi in (1.0, 0.0):
        out = cli("sample", f"run={run}", "n=16", f"out={tmp_path / f's{psi}.npz'}", f"truncation={psi}",
                  "noise=const", cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        x = np.load(tmp_path / f"s{psi}.npz")["arr_0"]
        assert x.shape == (16, 28, 28, 1) and x.dtype == np.uint8
        spread[psi] = x.astype(np.float32).std(axis=0).mean()
    assert spread[0.0] == 0  # psi 0 and the stored noise: every sample is the average w's image
    assert spread[1.0] > 0
    z = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    for name in ("a", "b"):  # z=FILE: those latents in that order, the same images every time with const noise
        out = cli("sample", f"run={run}", f"z={tmp_path / 'z.npy'}", "noise=const", f"out={tmp_path / (name + '.npz')}",
                  cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    a, b = np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"]
    assert a.shape == (5, 28, 28, 1) and np.array_equal(a, b)
    np.save(tmp_path / "z2.npy", z[::-1].copy())
    cli("sample", f"run={run}", f"z={tmp_path / 'z2.npy'}", "noise=const", f"out={tmp_path / 'c.npz'}", cwd=tmp_path)
    assert np.array_equal(np.load(tmp_path / "c.npz")["arr_0"], a[::-1])
    for bad, message in (("truncation=strong", "truncation='strong' is not valid"), ("noise=loud", "noise='loud'"),
                         (f"z={tmp_path / 'nothing.npy'}", "z=")):
        out = cli("sample", f"run={run}", "n=4", f"out={tmp_path / 'x.npz'}", bad, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    np.save(tmp_path / "wide.npy", np.zeros((3, 7), np.float32))
    out = cli("sample", f"run={run}", f"z={tmp_path / 'wide.npy'}", f"out={tmp_path / 'x.npz'}", cwd=tmp_path)
    assert out.returncode == 2 and "N x 32" in out.stderr
