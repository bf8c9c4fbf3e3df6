"""StyleGAN (Karras et al. 2019, 2020): AdaIN and weight demodulation, truncation, style mixing, the lazy
R1 phase and its Adam adjustment, path-length regularization, and a real CPU run at 32 px with the
three StyleGAN grids in TensorBoard, killed with SIGKILL and resumed bit-identically."""

import contextlib
import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganlab.errors import GanlabError
from ganlab.models import stylegan as sg
from ganlab.objectives.stylegan import StyleGAN
from conftest import compose, make_idx, read_events, run_cli
from test_reliability import _assert_same_training_state, _last_step, _popen, _wait_for

SMALL = ("model.width=16", "model.fmap_base=128", "model.z_dim=32", "model.w_dim=32")


def _g(style="demod", resolution=16):
    cfg = compose("model=stylegan", f"model.style={style}", *SMALL)
    torch.manual_seed(0)
    return sg.build(cfg.model, (3, resolution, resolution), resolution)[0]


def _source(shape=(1, 32, 32), kind="image"):
    return type("S", (), {"kind": kind, "shape": shape, "name": "mnist"})()


def test_adain_output_per_channel_has_the_styles_mean_and_std():
    x = torch.randn(4, 6, 8, 8) * 3 + 2
    scale, shift = torch.rand(4, 6) * 2 + 0.5, torch.randn(4, 6)
    out = sg.adain(x, scale, shift)
    assert torch.allclose(out.mean(dim=(2, 3)), shift, atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), scale, atol=1e-4)
    # and in G: every AdaIN layer's output has its style's statistics
    g = _g("adain")
    layer = g.synthesis.layers[2]
    w = g.mapping(torch.randn(4, 32))[:, 2]
    scale, shift = layer.affine(w).chunk(2, dim=1)
    out = layer(torch.randn(4, 16, 8, 8), w)
    assert torch.allclose(out.mean(dim=(2, 3)), shift, atol=1e-4)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), scale.abs(), atol=1e-3)


def test_demodulated_weights_have_unit_l2_norm_per_output_channel_and_the_layer_convolves_with_them():
    weight, styles = torch.randn(8, 5, 3, 3), torch.rand(4, 5) * 3
    w = sg.modulated_weight(weight, styles)
    assert w.shape == (4, 8, 5, 3, 3)
    assert torch.allclose(w.square().sum(dim=(2, 3, 4)).sqrt(), torch.ones(4, 8), atol=1e-5)
    assert torch.allclose(sg.demodulation(weight, styles), 1 / sg.modulated_weight(weight, styles, False)
                          .square().sum(dim=(2, 3, 4)).sqrt(), rtol=1e-5)
    # a synthesis layer (no noise) = LeakyReLU(grouped conv with each sample's demodulated weight + bias),
    # the input taken with the previous activation's sqrt(2) gain
    g = _g("demod")
    layer = g.synthesis.layers[2]
    x, w_in = torch.randn(4, 16, 8, 8), g.mapping(torch.randn(4, 32))[:, 2]
    with torch.no_grad():
        layer.bias.normal_()
        s = layer.affine(w_in)
        per_sample = sg.modulated_weight(layer.weight * layer.weight_gain, s)
        ref = F.conv2d((x * layer.in_gain).reshape(1, -1, 8, 8), per_sample.reshape(-1, 16, 3, 3), padding=1, groups=4)
        ref = F.leaky_relu(ref.reshape(4, 16, 8, 8) + layer.bias[None, :, None, None], 0.2)
        assert layer.in_gain == pytest.approx(math.sqrt(2))
        assert torch.allclose(layer(x, w_in, noise_mode="none"), ref, atol=1e-5)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())


def test_psi_0_gives_the_average_w_image_for_every_z():
    g = _g()
    with torch.no_grad():
        g.mapping(torch.randn(64, 32), update_w_avg=True)  # w_avg = 0.005 * this batch's mean w
        assert g.mapping.w_avg.abs().sum() > 0
        z = torch.randn(6, 32)
        out = g(z, psi=0.0, noise_mode="const")
        avg = g.synthesis(g.mapping.w_avg.expand(1, g.n_ws, -1), "const")
        assert torch.allclose(out, avg.expand_as(out), atol=1e-6)
        assert not torch.allclose(g(z, noise_mode="const")[0], g(z, noise_mode="const")[1])  # psi 1: they differ
        half = g.mapping(z, psi=0.5)
        assert torch.allclose(half, g.mapping.w_avg + 0.5 * (g.mapping(z) - g.mapping.w_avg), atol=1e-6)


def test_style_mixing_at_crossover_k_feeds_w1_below_k_and_w2_from_k_on():
    g = _g(resolution=32)
    assert g.n_ws == sg.num_ws(32) == 8
    z1, z2 = torch.randn(3, 32), torch.randn(3, 32)
    w1, w2 = g.mapping(z1)[:, 0], g.mapping(z2)[:, 0]
    seen = {}  # w index -> the ws that the layers reading it were given
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: seen.setdefault(i, []).append(args[1]))
             for i, m in enumerate(g.synthesis.layers)]  # conv k reads index k
    hooks += [m.register_forward_pre_hook(lambda mod, args, b=b: seen.setdefault(2 * b + 1, []).append(args[1]))
              for b, m in enumerate(g.synthesis.to_rgb)]  # the toRGB after conv k reads index k + 1
    for k in range(1, g.n_ws):
        seen.clear()
        with torch.no_grad():
            g(z1, mix_z=z2, mix_cutoff=torch.tensor(k), noise_mode="const")
        assert sorted(seen) == list(range(g.n_ws))
        for index, given in seen.items():
            assert all(torch.equal(w, w1 if index < k else w2) for w in given), (k, index)
    for h in hooks:
        h.remove()
    # the objective draws the crossover on the device: 1 .. num_ws - 1, or num_ws (no mixing) with probability 0.1
    cfg = compose("model=stylegan", *SMALL, "train.batch_size=4")
    obj = StyleGAN(cfg, _source(), torch.device("cpu"))
    torch.manual_seed(0)
    cuts = torch.stack([obj._mixing(torch.zeros(4, 32))["mix_cutoff"] for _ in range(2000)])
    assert cuts.min() == 1 and cuts.max() == 8
    assert (cuts == 8).float().mean().item() == pytest.approx(0.1, abs=0.03)


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

    def forward(self, x, y=None):
        return x.flatten(1) @ self.a + 0.3


def test_lazy_r1_matches_a_hand_computed_value_for_a_linear_d_and_adam_is_adjusted():
    cfg = compose("model=stylegan", *SMALL, "penalty.weight=2.5")  # gamma 5
    obj = StyleGAN(cfg, _source(), torch.device("cpu"))
    a = torch.randn(32 * 32)
    obj.nets["discriminator"] = _LinearD(a)
    loss, logs = obj.d_reg(16, _Rt(torch.randn(8, 1, 32, 32)))
    # grad_x D = a for every sample: R1 = ||a||^2; the lazy phase's loss = gamma / 2 * R1 * 16
    assert logs["Loss/r1"].item() == pytest.approx(a.square().sum().item(), rel=1e-5)
    assert loss.item() == pytest.approx(2.5 * a.square().sum().item() * 16, rel=1e-5)
    [reg] = [p for p in obj.phases if p.name == "D_reg"]
    assert reg.every == 16 and reg.optimizer == "d" and [p.name for p in obj.phases] == ["D", "D_reg", "G"]
    group = obj.optimizers["d"].param_groups[0]
    assert group["lr"] == pytest.approx(2e-3 * 16 / 17) and group["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert obj.optimizers["g"].param_groups[0]["lr"] == pytest.approx(2e-3)  # no lazy G phase: untouched
    # r1_every=1: R1 inside the D phase at every step, no adjustment
    eager = StyleGAN(compose("model=stylegan", *SMALL, "model.r1_every=1"), _source(), torch.device("cpu"))
    assert [p.name for p in eager.phases] == ["D", "G"]
    assert eager.optimizers["d"].param_groups[0]["lr"] == pytest.approx(2e-3)


def test_path_length_penalty_tracks_its_running_mean():
    cfg = compose("model=stylegan", *SMALL, "model.pl_weight=2", "train.batch_size=8")
    obj = StyleGAN(cfg, _source(), torch.device("cpu"))
    assert [p.name for p in obj.phases] == ["D", "D_reg", "G", "G_reg"]
    assert obj.optimizers["g"].param_groups[0]["lr"] == pytest.approx(2e-3 * 4 / 5)
    torch.manual_seed(0)
    loss, logs = obj.g_reg(4, _Rt(None))
    first = logs["Loss/path_length_mean"].item()
    assert first > 0 and obj.pl_mean.item() == pytest.approx(first)
    loss.backward()  # differentiable w.r.t. G
    assert obj.nets["generator"].mapping.fcs[0].weight.grad is not None
    obj.g_reg(8, _Rt(None))
    assert obj.pl_mean.item() != first and obj.state_dict()["pl_mean"].item() == obj.pl_mean.item()


def test_stylegan_refuses_points_conditioning_other_penalties_and_unknown_styles():
    cpu = torch.device("cpu")
    with pytest.raises(GanlabError, match="needs images"):
        StyleGAN(compose("model=stylegan", "dataset=ring8"), _source((2,), "points"), cpu)
    with pytest.raises(GanlabError, match="unconditional"):
        StyleGAN(compose("model=stylegan", "model.conditional=true"), _source(), cpu)
    with pytest.raises(GanlabError, match="penalty=r1"):
        StyleGAN(compose("model=stylegan", "penalty=gp"), _source(), cpu)
    with pytest.raises(GanlabError, match="model.style='stylegan3' is unknown"):
        StyleGAN(compose("model=stylegan", "model.style=stylegan3"), _source(), cpu)
    with pytest.raises(GanlabError, match="model.r1_every"):
        StyleGAN(compose("model=stylegan", "model.r1_every=-2"), _source(), cpu)


# ------------------------------------------------------------------- a real run, killed and resumed

STEPS = 64


def _args(data, run, *extra):
    return ["train", "model=stylegan", f"dataset.root={data}", "dataset.download=false", "device=cpu", *SMALL,
            f"train.steps={STEPS}", "train.batch_size=8", "train.log_every=1", "train.sample_every=32",
            "train.ckpt_every=5", "train.n_samples=16", "train.progress=none", "model.pl_weight=2",
            f"hydra.run.dir={run}", *extra]


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


def test_a_cpu_run_shows_the_three_stylegan_grids_in_tensorboard(runs):
    assert "StyleGAN2 (demodulation) 32 px, 8 ws, mixing 0.9 | loss nonsaturating + r1 (lazy, every 16 steps)" \
        in runs["log"]
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


def test_killed_and_resumed_it_ends_bit_identical_with_lazy_phases_on_schedule(runs):
    assert 20 <= runs["saved"] < 32
    a = torch.load(runs["whole"] / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(runs["killed"] / "checkpoints" / "last.pt", weights_only=True)
    _assert_same_training_state(a, b)
    for key in a["generator_ema"]:
        assert torch.equal(a["generator_ema"][key], b["generator_ema"][key]), key
    assert torch.equal(a["objective"]["pl_mean"], b["objective"]["pl_mean"]) and a["objective"]["pl_mean"] > 0
    assert torch.equal(a["generator"]["mapping.w_avg"], b["generator"]["mapping.w_avg"])
    for run in ("whole", "killed"):  # the lazy phases ran exactly on their steps, across the resume too
        acc = read_events(runs[run] / "tb")
        assert [e.step for e in acc.Scalars("Loss/r1")] == [16, 32, 48, 64], run
        assert [e.step for e in acc.Scalars("Loss/path_length")] == list(range(4, STEPS + 1, 4)), run
        assert [e.step for e in acc.Scalars("Loss/D")] == list(range(1, STEPS + 1)), run


def test_ganlab_sample_with_truncation(runs):
    root, run = runs["root"], runs["whole"]
    spread = {}
    for psi in (1.0, 0.0):
        out = run_cli("sample", f"run={run}", "n=16", f"out={root / f's{psi}.npz'}", f"truncation={psi}", cwd=root)
        assert out.returncode == 0, out.stdout + out.stderr
        x = np.load(root / f"s{psi}.npz")["arr_0"]
        assert x.shape == (16, 28, 28, 1) and x.dtype == np.uint8
        spread[psi] = x.astype(np.float32).std(axis=0).mean()
    assert spread[0.0] < 0.5 * spread[1.0]  # psi 0: one w for all; only the noise inputs differ
    out = run_cli("sample", f"run={run}", "n=4", f"out={root / 'x.npz'}", "truncation=strong", cwd=root)
    assert out.returncode != 0 and "truncation='strong' is not valid" in out.stderr
