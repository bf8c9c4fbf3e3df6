"""LapGAN (Denton et al. 2015): the Laplacian pyramid, what each level's D and G are fed in training and
in sampling, and a real CPU run with the per-level grids in TensorBoard, sampling, eval and an exact resume."""

import contextlib

import numpy as np
import pytest
import torch

from ganlab.errors import GanlabError
from ganlab.models import lapgan as lap
from ganlab.objectives.lapgan import LapGAN
from conftest import cli, compose, make_idx, read_events
from test_reliability import _assert_same_training_state

SMALL = ("model.widths=[8,8,32]", "model.z_dim=16", "train.batch_size=6")


def _source(shape=(1, 28, 28), kind="image", num_classes=10):
    return type("S", (), {"kind": kind, "shape": shape, "name": "mnist", "num_classes": num_classes})()


class _Rt:
    device = torch.device("cpu")

    def __init__(self, x, y=None):
        self.x, self.y, self.asked = x, y, []

    def next_batch(self, n=None):
        self.asked.append(n)
        if n is None:
            return self.x, self.y
        reps = -(-n // len(self.x))
        return self.x.repeat(reps, 1, 1, 1)[:n], None if self.y is None else self.y.repeat(reps)[:n]

    def autocast(self):
        return contextlib.nullcontext()

    def loss_scale(self, optimizer):
        return None


def test_building_and_collapsing_the_pyramid_gives_the_image_back():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    pyr = lap.pyramid(x, 3)
    assert [p.shape[-1] for p in pyr] == [32, 16, 8]
    assert torch.allclose(lap.collapse(pyr), x, atol=1e-6)
    assert torch.equal(pyr[-1], lap.down(lap.down(x)))  # the low-pass top
    assert pyr[0].abs().mean() < x.abs().mean()  # a band-pass residual is small where the image is smooth
    assert torch.allclose(lap.collapse(lap.pyramid(x[:, :, :28, :28], 3)), x[:, :, :28, :28], atol=1e-6)  # 28 -> 14 -> 7


def test_the_real_residual_fed_to_d_k_is_i_k_minus_up_down_i_k():
    obj = LapGAN(compose("model=lapgan", *SMALL), _source(), torch.device("cpu"))
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    for k in range(3):
        seen = []
        d = obj.nets[f"discriminator_{k}"]
        hook = d.register_forward_hook(lambda mod, args, out: seen.append(args))
        obj.d_loss(k, 1, _Rt(x))
        hook.remove()
        real, l, _ = seen[0]  # the first D call: the reals
        i_k = x
        for _ in range(k):
            i_k = lap.down(i_k)
        if k == 2:
            assert l is None and torch.equal(real, i_k)  # the top level judges the low-pass image itself
        else:
            assert torch.equal(l, lap.up(lap.down(i_k))) and torch.equal(real, i_k - lap.up(lap.down(i_k)))
            assert torch.equal(seen[1][1], l)  # the fakes are paired with the same low-pass image


def test_each_level_g_gets_the_upsampled_coarser_image_in_training_and_sampling():
    obj = LapGAN(compose("model=lapgan", *SMALL), _source(), torch.device("cpu"))
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    seen = []
    hook = obj.nets["generator_0"].register_forward_hook(lambda mod, args, out: seen.append(args))
    obj.g_loss(0, 1, _Rt(x))
    hook.remove()
    assert torch.equal(seen[0][1], lap.up(lap.down(x.repeat(2, 1, 1, 1))))  # G's batch: twice D's
    # sampling, coarse to fine: G_k's condition is up(the image composed so far at level k + 1)
    g = obj.sampler()
    calls = {}
    hooks = [gen.register_forward_hook(lambda mod, args, out, k=k: calls.__setitem__(k, (args, out)))
             for k, gen in enumerate(g.gens)]
    with torch.no_grad():
        sample = g(torch.randn(5, 16))
    for h in hooks:
        h.remove()
    composed = {2: calls[2][1]}
    for k in (1, 0):
        (noise, low, _), h = calls[k]
        assert torch.equal(low, lap.up(composed[k + 1])), k
        assert noise.shape == (5, 1, *low.shape[2:])
        composed[k] = low + h
    assert torch.equal(sample, composed[0].clamp(-1, 1))
    assert sample.shape == (5, 1, 28, 28) and sample.min() >= -1 and sample.max() <= 1


def test_class_conditional_levels_and_refusals():
    cfg = compose("model=lapgan", *SMALL, "model.conditional=true")
    obj = LapGAN(cfg, _source(), torch.device("cpu"))
    g = obj.sampler()
    assert g.conditional and g.num_classes == 10
    with torch.no_grad():
        assert g(torch.randn(4, 16), torch.tensor([0, 1, 2, 3])).shape == (4, 1, 28, 28)
    loss, logs = obj.d_loss(1, 1, _Rt(torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)))
    assert torch.isfinite(loss) and "Loss/D_1" in logs
    cpu = torch.device("cpu")
    with pytest.raises(GanlabError, match="needs images"):
        LapGAN(compose("model=lapgan", "dataset=ring8"), _source((2,), "points"), cpu)
    with pytest.raises(GanlabError, match="halves evenly"):
        LapGAN(compose("model=lapgan", "model.levels=4", "model.widths=[8,8,8,8]"), _source(), cpu)  # 28 -> 3.5
    with pytest.raises(GanlabError, match="one positive width per level"):
        LapGAN(compose("model=lapgan", "model.widths=[8,8]"), _source(), cpu)
    with pytest.raises(GanlabError, match="needs a labelled dataset"):
        LapGAN(cfg, _source(num_classes=None), cpu)


def _args(data, run, steps, *extra):
    return ["train", "model=lapgan", f"dataset.root={data}", "dataset.download=false", "device=cpu", *SMALL,
            f"train.steps={steps}", "train.log_every=4", "train.sample_every=8", "train.ckpt_every=8",
            "train.n_samples=16", "train.progress=none", f"hydra.run.dir={run}", *extra]


@pytest.mark.slow
def test_a_cpu_run_shows_every_level_in_tensorboard_samples_and_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    make_idx(data, n=96)
    whole = tmp_path / "whole"
    out = cli(*_args(data, whole, 16), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Laplacian pyramid, 3 levels (7 -> 14 -> 28 px)" in out.stdout + out.stderr
    acc = read_events(whole / "tb")
    images = set(acc.Tags()["images"])
    assert {"Samples/fixed_z", "Samples/level_2/image", "Samples/level_1/lowpass", "Samples/level_1/residual",
            "Samples/level_1/image", "Samples/level_0/lowpass", "Samples/level_0/residual",
            "Samples/level_0/image"} <= images
    assert [e.step for e in acc.Images("Samples/level_1/residual")] == [8, 16]
    assert acc.Images("Samples/level_2/image")[-1].width == acc.Images("Samples/fixed_z")[-1].width  # shown at full size
    scalars = set(acc.Tags()["scalars"])
    assert {f"Loss/{p}_{k}" for p in "DG" for k in range(3)} <= scalars
    assert {f"Grad/{p}{k}_norm" for p in "DG" for k in range(3)} <= scalars

    out = cli("sample", f"run={whole}", "n=5", f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    samples = np.load(tmp_path / "s.npz")["arr_0"]
    assert samples.shape == (5, 28, 28, 1) and samples.dtype == np.uint8
    out = cli("eval", f"target={whole}", "n=64", "features=pixels", "metrics=[fd]", cwd=tmp_path)
    assert out.returncode == 0 and "fd" in out.stdout, out.stdout + out.stderr

    # 8 steps, then resumed to 16: every level's nets and optimizers as in the uninterrupted run
    split = tmp_path / "split"
    assert cli(*_args(data, split, 8), cwd=tmp_path).returncode == 0
    out = cli(*_args(data, split, 16), "resume=true", cwd=tmp_path)
    assert out.returncode == 0 and "resuming at step 8" in out.stdout + out.stderr, out.stdout + out.stderr
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    _assert_same_training_state(a, b, nets=[f"{net}_{k}" for net in ("generator", "discriminator") for k in range(3)],
                                optimizers=[f"opt_{opt}{k}" for opt in "gd" for k in range(3)])


def test_the_nets_are_the_authors_d_judges_h_plus_l_with_dropout_and_noise_is_uniform():
    obj = LapGAN(compose("model=lapgan", *SMALL, "model.conditional=true"), _source(), torch.device("cpu"))
    d, g = obj.nets["discriminator_0"], obj.nets["generator_0"]
    h, l, y = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.arange(4)
    d.eval()
    with torch.no_grad():  # the residual is added to its low-pass image before the first layer (section 3.1)
        assert torch.allclose(d(h, l, y), d(h + l - 0.3, torch.full_like(l, 0.3), y), atol=1e-5)
        assert not torch.allclose(d(h, l, y), d(h, l, (y + 1) % 10))  # the class plane matters
    d.train()
    with torch.no_grad():
        assert not torch.equal(d(h, l, y), d(h, l, y))  # dropout, active in training
    kernels = [m.kernel_size for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(7, 7), (7, 7), (5, 5)] and g.net[0].in_channels == 1 + 1 + 1  # noise, class plane, l
    assert [m.kernel_size for m in d.modules() if isinstance(m, torch.nn.Conv2d)] == [(5, 5), (5, 5)]
    assert [m.p for m in obj.nets["discriminator_2"].modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert obj.nets["generator_2"].net[0].out_features == 2 * 32  # the top G: twice the top D's units
    # the top G's uniform latent from the lab's normal one, exactly: u = 2 Phi(z) - 1
    seen = []
    top = obj.nets["generator_2"]
    hook = top.net[0].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    with torch.no_grad():
        top(torch.randn(20000, 16, generator=torch.Generator().manual_seed(0)), None, torch.zeros(20000, dtype=torch.long))
    hook.remove()
    u = seen[0][:, :16]
    assert u.min() > -1 and u.max() < 1
    assert abs(u.mean()) < 0.01 and abs(u.var() - 1 / 3) < 0.01
    counts = torch.histc(u, bins=10, min=-1, max=1) / u.numel()
    assert (counts - 0.1).abs().max() < 0.005
    planes = lap.noise_planes(torch.zeros(2000, 1, 8, 8))
    assert planes.shape == (2000, 1, 8, 8) and planes.min() >= -1 and planes.max() <= 1
    assert abs(planes.mean()) < 0.01 and abs(planes.var() - 1 / 3) < 0.01


def test_d_loss_is_the_mixed_batch_mean_and_g_draws_twice_the_batch():
    cfg = compose("model=lapgan", *SMALL)
    obj = LapGAN(cfg, _source(), torch.device("cpu"))
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    scores = []
    d = obj.nets["discriminator_2"]
    d.eval()  # no dropout: the two calls below see the same D
    hook = d.register_forward_hook(lambda mod, args, out: scores.append(out))
    torch.manual_seed(0)
    loss, _ = obj.d_loss(2, 1, _Rt(x))
    hook.remove()
    real, fake = scores
    mixed = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.cat([real, fake]), torch.cat([torch.ones(6), torch.zeros(6)]))
    assert torch.allclose(loss, mixed, atol=1e-6)
    rt = _Rt(x)
    obj.g_loss(0, 1, rt)
    assert rt.asked == [12]


def test_the_epoch_schedule_decays_the_lr_and_raises_the_momentum():
    cfg = compose("model=lapgan", *SMALL, "model.momentum_step=0.1", "model.lr_decay=0.5")
    obj = LapGAN(cfg, _source(), torch.device("cpu"))

    class Batches:
        size = 60

        def check(self, n, what):
            self.checked = (n, what)

    batches = Batches()
    obj.attach(batches)
    assert batches.checked[0] == 12 and "2 x train.batch_size" in batches.checked[1]
    per_epoch = 10  # 60 images / batch 6
    momenta = lambda: {round(g["momentum"], 9) for opt in obj.optimizers.values() for g in opt.param_groups}  # noqa: E731

    def lr(step):  # the one factor of every level (each makes one update a step)
        factors = obj.lr_schedule(step)
        assert set(factors) == set(obj.optimizers) and len(set(factors.values())) == 1
        return factors["g0"]

    assert lr(1) == 1.0 and momenta() == {0.5}
    assert lr(per_epoch) == 1.0  # still the first epoch
    assert lr(per_epoch + 1) == pytest.approx(1 / 1.5) and momenta() == {0.6}
    assert lr(3 * per_epoch + 1) == pytest.approx(1.5 ** -3) and momenta() == {0.8}
    assert lr(9 * per_epoch + 1) == pytest.approx(1.5 ** -9) and momenta() == {0.8}  # capped
    assert lr(1) == 1.0 and momenta() == {0.5}  # a pure function of the step (resume)
    cpu = torch.device("cpu")
    assert LapGAN(compose("model=lapgan", *SMALL, "model.momentum_step=0", "model.lr_decay=0"), _source(),
                  cpu).lr_schedule is None
    # train.lr_decay_from is not dropped: its linear decay to 0 multiplies the paper's per-epoch factor
    annealed = LapGAN(compose("model=lapgan", *SMALL, "model.lr_decay=0.5", "train.steps=40",
                              "train.lr_decay_from=0.5"), _source(), cpu)
    annealed.attach(batches)  # 10 steps an epoch
    assert annealed.lr_schedule(11)["d1"] == pytest.approx(1 / 1.5)  # epoch 1, before the decay starts at step 20
    assert annealed.lr_schedule(30)["g2"] == pytest.approx(1.5 ** -2 * 0.5)  # epoch 2, half-way down
    assert set(annealed.lr_schedule(40).values()) == {0.0}
    alone = LapGAN(compose("model=lapgan", *SMALL, "model.momentum_step=0", "model.lr_decay=0", "train.steps=40",
                           "train.lr_decay_from=0.5"), _source(), cpu).lr_schedule
    assert [alone(s) for s in (20, 30, 40)] == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(GanlabError, match="model.d_dropout"):
        LapGAN(compose("model=lapgan", *SMALL, "model.d_dropout=1.0"), _source(), cpu)
    with pytest.raises(GanlabError, match="needs at least 9 px"):
        LapGAN(compose("model=lapgan", *SMALL, "model.levels=3"), _source((1, 16, 16)), cpu)  # 16 -> 8 -> 4
    with pytest.raises(GanlabError, match="optimizer.momentum"):
        from ganlab.optim import validate_optimizer
        validate_optimizer(compose("model=lapgan", "optimizer.momentum=1.5").optimizer)


def test_model_lrs_gives_each_level_its_own_learning_rate():
    cpu = torch.device("cpu")
    obj = LapGAN(compose("model=lapgan", *SMALL, "model.lrs=[0.02,0.05,0.1]"), _source(), cpu)
    lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in obj.optimizers.items()}
    assert lrs == {"g0": [0.02], "d0": [0.02], "g1": [0.05], "d1": [0.05], "g2": [0.1], "d2": [0.1]}
    assert all(g["momentum"] == 0.5 for opt in obj.optimizers.values() for g in opt.param_groups)  # the rest as given
    default = LapGAN(compose("model=lapgan", *SMALL), _source(), cpu)
    assert {g["lr"] for opt in default.optimizers.values() for g in opt.param_groups} == {0.02}  # optimizer.lr
    for bad in ("model.lrs=[0.1,0.1]", "model.lrs=[0.1,0,0.1]", "model.lrs=[0.1,true,0.1]"):
        with pytest.raises(GanlabError, match="one learning rate > 0 per level"):
            LapGAN(compose("model=lapgan", *SMALL, bad), _source(), cpu)
    with pytest.raises(GanlabError, match="drop optimizer.lr_g"):
        LapGAN(compose("model=lapgan", *SMALL, "model.lrs=[0.1,0.1,0.1]", "optimizer.lr_d=0.01"), _source(), cpu)


def test_model_level_steps_gives_a_level_several_updates_a_step_and_its_own_epochs():
    cpu = torch.device("cpu")
    obj = LapGAN(compose("model=lapgan", *SMALL, "model.level_steps=[1,2,3]", "model.momentum_step=0.1",
                         "model.lr_decay=0.5"), _source(), cpu)
    assert [p.name for p in obj.phases] == ["D0", "G0", "D1", "G1", "D1", "G1", "D2", "G2", "D2", "G2", "D2", "G2"]
    assert obj.images_per_step == 6 * 4 * 6  # D: 6 reals + 6 fakes, G: 12, for each of the 6 updates

    class Batches:
        size = 60  # 10 batches of 6: an epoch of level 0 every 10 steps, of level 1 every 5, of level 2 every 3 1/3

    obj.attach(type("B", (Batches,), {"check": lambda self, n, what: None})())
    factors = obj.lr_schedule(5)  # level 0: 4 batches seen (epoch 0), level 1: 8 (epoch 0), level 2: 12 (epoch 1)
    assert factors["g0"] == factors["d0"] == 1.0 and factors["g1"] == 1.0 and factors["d2"] == pytest.approx(1 / 1.5)
    momenta = {name: opt.param_groups[0]["momentum"] for name, opt in obj.optimizers.items()}
    assert momenta["g0"] == momenta["d1"] == 0.5 and momenta["g2"] == pytest.approx(0.6)
    assert LapGAN(compose("model=lapgan", *SMALL), _source(), cpu).level_steps == [1, 1, 1]
    for bad in ("model.level_steps=[1,2]", "model.level_steps=[1,0,1]", "model.level_steps=[1,1.5,1]",
                "model.level_steps=[1,true,1]"):
        with pytest.raises(GanlabError, match="one whole number >= 1 per level"):
            LapGAN(compose("model=lapgan", *SMALL, bad), _source(), cpu)
