"""Each training trick changes what it claims to change."""

import contextlib
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

import ganlab.objectives.adversarial as objective_mod
from ganlab.objectives.adversarial import Adversarial
from ganlab.errors import GanlabError
from ganlab.losses import LOSSES
from ganlab.models import build_models, d_pack
from ganlab.models.base import MinibatchDiscrimination, MinibatchStdDev, pack_samples
from ganlab.optim import make_optimizers
from ganlab.train import train
from ganlab.tricks import (EMA, JacobianTruncation, SelfEnsemble, Snapshots, d_targets, diff_augment, instance_noise_std,
                           jacobian_norms, jacobian_truncation, parse_diff_augment, walkable)
from conftest import compose, dataset_overrides, read_events


def tricks(**kw):
    base = {"label_smoothing": 0.0, "noisy_labels": False, "flip_labels": 0.0, "instance_noise": 0.0,
            "instance_noise_anneal_steps": None, "ema": 0.0}
    return OmegaConf.create({**base, **kw})


def test_no_tricks_means_plain_targets():
    r, f = d_targets(1000, tricks())
    assert (r == 1).all() and (f == 0).all()


def test_one_sided_label_smoothing():
    r, f = d_targets(1000, tricks(label_smoothing=0.1))
    assert torch.allclose(r, torch.full_like(r, 0.9)) and (f == 0).all()  # one-sided: fakes untouched


def test_noisy_labels_ranges():
    r, f = d_targets(5000, tricks(noisy_labels=True), generator=torch.Generator().manual_seed(0))
    assert 0.7 <= r.min() and r.max() <= 1.2 and r.std() > 0.1
    assert 0.0 <= f.min() and f.max() <= 0.3 and f.std() > 0.05


def test_flipped_labels_swap_with_probability_p():
    r, f = d_targets(10000, tricks(flip_labels=0.3), generator=torch.Generator().manual_seed(0))
    flipped = r == 0
    assert flipped.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert (f[flipped] == 1).all() and (f[~flipped] == 0).all()


def test_least_squares_targets_use_its_coding():
    r, f = d_targets(10, tricks(label_smoothing=0.1), real=1.0, fake=-1.0)
    assert torch.allclose(r, torch.full_like(r, 0.8)) and (f == -1).all()


def _spy_loss(monkeypatch, name="nonsaturating"):
    seen = []
    real = LOSSES[name]

    def d(d_real, d_fake, **kw):
        seen.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kw.items()})
        return real.d(d_real, d_fake, **kw)

    spy = dataclasses.replace(real, d=d)
    orig = objective_mod.get_loss
    monkeypatch.setattr(objective_mod, "get_loss", lambda cfg: (spy, *orig(cfg)[1:]))
    return seen


def _spy_d_inputs(monkeypatch) -> list:
    """Every input D's feature extractor receives while training, recorded as it arrives."""
    seen = []
    orig = objective_mod.build_models

    def spy_build(model_cfg, source):
        g, d = orig(model_cfg, source)
        d.features.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        return g, d

    monkeypatch.setattr(objective_mod, "build_models", spy_build)
    return seen


def _run(tmp_path, *overrides):
    cfg = compose("model=gan", "dataset=ring8", "device=cpu", "train.steps=3", "train.batch_size=32",
                  "train.progress=none", "train.log_every=1", "train.sample_every=1", "train.ckpt_every=100",
                  *overrides)
    return train(cfg, tmp_path)


def test_the_d_loss_sees_the_smoothed_targets(monkeypatch, tmp_path):
    seen = _spy_loss(monkeypatch)
    _run(tmp_path, "tricks.label_smoothing=0.1")
    assert seen and all(torch.allclose(s["real_target"], torch.tensor(0.9)) for s in seen)
    assert all((s["fake_target"] == 0).all() for s in seen)


def test_the_d_loss_sees_flipped_and_noisy_targets(monkeypatch, tmp_path):
    seen = _spy_loss(monkeypatch)
    _run(tmp_path, "tricks.noisy_labels=true", "tricks.flip_labels=0.5")
    targets = torch.cat([s["real_target"] for s in seen])
    assert (targets < 0.3).any() and (targets > 0.7).any() and targets.unique().numel() > 50


def test_without_tricks_the_d_loss_sees_default_targets(monkeypatch, tmp_path):
    seen = _spy_loss(monkeypatch)
    _run(tmp_path)
    assert seen and all(s == {} for s in seen)


def test_label_tricks_are_refused_for_losses_without_targets(tmp_path):
    with pytest.raises(GanlabError, match="need a loss with targets"):
        _run(tmp_path, "loss=wasserstein", "tricks.label_smoothing=0.1")


def test_instance_noise_schedule_anneals_to_zero():
    t = tricks(instance_noise=0.5)
    assert instance_noise_std(1, t, 100) == 0.5
    assert instance_noise_std(51, t, 100) == pytest.approx(0.25)
    assert instance_noise_std(101, t, 100) == 0.0
    assert instance_noise_std(11, tricks(instance_noise=0.5, instance_noise_anneal_steps=10), 100) == 0.0
    assert instance_noise_std(1, tricks(), 100) == 0.0


def test_instance_noise_reaches_d_inputs(monkeypatch, tmp_path):
    stds = []
    orig = objective_mod.build_models

    def spy_build(model_cfg, source):
        g, d = orig(model_cfg, source)
        d.features.register_forward_pre_hook(lambda m, args: stds.append(args[0].detach().std().item()))
        return g, d

    monkeypatch.setattr(objective_mod, "build_models", spy_build)
    _run(tmp_path, "tricks.instance_noise=20.0", "train.steps=1")
    assert min(stds) > 10  # ring8 points have std ~1.4; with the noise, ~20
    stds.clear()
    _run(tmp_path / "b", "train.steps=1")
    assert max(stds) < 5
    assert "Tricks/instance_noise_std" in read_events(tmp_path / "tb").Tags()["scalars"]


def test_minibatch_stddev_appends_the_group_std():
    layer = MinibatchStdDev(group_size=4)
    same = torch.ones(8, 3, 2, 2)
    out = layer(same)
    assert out.shape == (8, 4, 2, 2) and out[:, 3].abs().max() < 1e-3
    x = torch.randn(8, 3, 2, 2)
    out = layer(x)
    groups = x.view(4, 2, 3, 2, 2)  # members of group j are samples j, j+2, j+4, j+6
    expected = groups.var(0, unbiased=False).add(1e-8).sqrt().flatten(1).mean(1)
    assert torch.allclose(out[:, 3, 0, 0], expected.repeat(4))
    flat = MinibatchStdDev(4)(torch.randn(6, 5))  # 6 is not a multiple of 4: groups of 3
    assert flat.shape == (6, 6)


def test_minibatch_stddev_in_d_sees_variety(data_root):
    cfg = compose("model=dcgan", "model.minibatch_stddev=4", "model.width=8")
    source = type("S", (), {"kind": "image", "shape": (1, 28, 28), "name": "mnist"})()
    _, d = build_models(cfg.model, source)
    assert any(isinstance(m, MinibatchStdDev) for m in d.modules())
    d.eval()
    x = torch.randn(1, 1, 28, 28)
    collapsed = d(x.repeat(8, 1, 1, 1))
    varied = d(torch.cat([x, torch.randn(7, 1, 28, 28)]))
    assert collapsed[0].item() != pytest.approx(varied[0].item(), abs=1e-6)  # same image, other batch


def test_minibatch_discrimination_is_the_papers_layer():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(12, kernels=4, dim=3)
    layer.eval()(torch.randn(6, 12))
    assert not bool(layer.initialized)  # the data-based init waits for a training batch
    x = torch.randn(6, 12)
    out = layer.train()(x)
    assert bool(layer.initialized) and out.shape == (6, 16) and torch.equal(out[:, :12], x)
    nearest = (layer.distances(x) + torch.eye(6) * 1e30).amin(dim=2).mean(dim=1)
    assert torch.allclose(nearest, torch.full((4,), 2.0), atol=1e-4)  # the init: nearest neighbours 2 apart
    w = layer.theta * layer.log_scale.exp() / layer.theta.norm(dim=0)  # weight norm over the inputs
    m = torch.einsum("na,abc->nbc", x, w)
    expected = torch.stack([sum(torch.exp(-(m[i] - m[j]).abs().sum(-1)) for j in range(6) if j != i)
                            for i in range(6)])
    assert torch.allclose(out[:, 12:], expected + layer.bias, atol=1e-5)
    collapsed = layer(x[:1].repeat(6, 1))  # every other sample at distance 0: o = 5 + bias
    assert torch.allclose(collapsed[:, 12:], 5.0 + layer.bias.expand(6, 4))
    loaded = MinibatchDiscrimination(12, kernels=4, dim=3)
    loaded.load_state_dict(layer.state_dict())
    loaded(torch.randn(6, 12) * 10)  # a resumed D keeps its scale: no second init
    assert torch.equal(loaded.log_scale, layer.log_scale)


def test_minibatch_discrimination_in_d_sees_a_collapsed_batch_and_is_refused_elsewhere():
    from ganlab.config import validate

    cfg = compose("model=dcgan", "model.minibatch_disc=10", "model.width=8")
    source = type("S", (), {"kind": "image", "shape": (1, 28, 28), "name": "mnist"})()
    _, d = build_models(cfg.model, source)
    layer = next(m for m in d.modules() if isinstance(m, MinibatchDiscrimination))
    assert d.head.in_features == layer.theta.shape[0] + 10
    x = torch.randn(1, 1, 28, 28)
    varied = d(torch.cat([x, torch.randn(7, 1, 28, 28)]))
    collapsed = d(x.repeat(8, 1, 1, 1))
    assert collapsed[0].item() != pytest.approx(varied[0].item(), abs=1e-6)  # same image, other batch
    for overrides, expected in ((("model=pggan", "model.minibatch_disc=100"), "model.minibatch_disc=0"),
                                (("model=dcgan", "model.minibatch_disc=-1"), "model.minibatch_disc=-1 is not valid"),
                                (("model=dcgan", "model.minibatch_disc=100", "model.minibatch_disc_dim=0"),
                                 "model.minibatch_disc_dim=0 is not valid")):
        with pytest.raises(GanlabError, match=expected):
            validate(compose(*overrides))


def test_ema_tracks_the_generator():
    net = torch.nn.Linear(3, 3)
    ema = EMA(net, 0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * net.weight)


def test_ema_rampup_follows_g_early_and_ends_at_the_configured_decay():
    net = torch.nn.Linear(3, 3)
    ema = EMA(net, 0.999, rampup=0.05)
    assert ema.half_life == pytest.approx(692.8, abs=0.1)
    assert ema.decay_at(1) == pytest.approx(0.5 ** 20) and ema.decay_at(1000) == pytest.approx(0.5 ** (1 / 50))
    assert ema.decay_at(13_000) < 0.999 and ema.decay_at(14_000) == 0.999  # over once 0.05 x step > 692.8
    assert EMA(net, 0.999).decay_at(1) == 0.999  # no ramp-up: the decay from the start
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(100)  # half-life 5 steps
    beta = 0.5 ** (1 / 5)
    assert torch.allclose(ema.module.weight, beta * before + (1 - beta) * net.weight)


def test_ema_weights_are_kept_and_differ(tmp_path):
    _run(tmp_path, "tricks.ema=0.9")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    key = next(k for k in state["generator"] if k.endswith("weight"))
    assert state["generator_ema"] is not None
    assert not torch.equal(state["generator_ema"][key], state["generator"][key])


def test_two_time_scale_learning_rates():
    cfg = compose("model=gan", "optimizer.lr_g=1e-4", "optimizer.lr_d=4e-4")
    g, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt_g, opt_d = make_optimizers(cfg.optimizer, g, d)
    assert opt_g.param_groups[0]["lr"] == 1e-4 and opt_d.param_groups[0]["lr"] == 4e-4
    assert opt_g.param_groups[0]["betas"] == (0.5, 0.999)


def test_pack_joins_consecutive_samples_on_channels_or_features():
    x = torch.randn(6, 3, 2, 2)
    packed = pack_samples(x, 3, "channels")
    assert packed.shape == (2, 9, 2, 2)
    assert torch.equal(packed[1], torch.cat([x[3], x[4], x[5]]))  # pack 1: samples 3, 4, 5, channel after channel
    points = torch.randn(6, 2)
    flat = pack_samples(points, 2, "flat")
    assert flat.shape == (3, 4) and torch.equal(flat[2], torch.cat([points[4], points[5]]))
    assert pack_samples(x, 1, "channels") is x
    with pytest.raises(ValueError):
        pack_samples(x, 4, "channels")


@pytest.mark.parametrize("model,shape,first", [("dcgan", (3, 28, 28), torch.nn.Conv2d), ("gan", (2,), torch.nn.Linear)])
def test_a_packed_d_takes_m_samples_and_gives_one_score_per_pack(model, shape, first):
    cfg = compose(f"model={model}", "model.pack=2", "model.width=8")
    kind = "image" if len(shape) == 3 else "points"
    source = type("S", (), {"kind": kind, "shape": shape, "name": "x"})()
    _, d = build_models(cfg.model, source)
    layer = next(m for m in d.features.modules() if isinstance(m, first))
    assert (layer.in_channels if first is torch.nn.Conv2d else layer.in_features) == 2 * shape[0]
    assert d(d_pack(cfg.model, source)(torch.randn(8, *shape))).shape == (4,)
    _, plain = build_models(compose(f"model={model}", "model.width=8").model, source)
    assert plain(torch.randn(8, *shape)).shape == (8,)


@pytest.mark.parametrize("overrides", [("tricks.label_smoothing=0.1",), ("model=wgan_gp", "train.n_critic=2")])
def test_pacgan_d_judges_packs_in_every_phase_and_penalty(monkeypatch, tmp_path, overrides):
    """With model.pack=4, every D input while training (real, fake, G's step, the gradient penalty's
    interpolates) is a pack of 4 points (8 features) made from one whole batch of 32 reals or fakes."""
    seen, batches = _spy_d_inputs(monkeypatch), []
    orig_pack = objective_mod.d_pack

    def spy_pack(model_cfg, source):
        fn = orig_pack(model_cfg, source)

        def pack(x):
            batches.append(x.detach().clone())
            return fn(x)
        return pack

    monkeypatch.setattr(objective_mod, "d_pack", spy_pack)
    _run(tmp_path, *overrides, "model.pack=4", "train.steps=2")
    assert seen and all(x.shape == (8, 8) for x in seen)  # 32 samples -> 8 packs of 4 points
    assert batches and all(b.shape == (32, 2) for b in batches)
    assert torch.equal(seen[0], batches[0].reshape(8, 8))  # the first D input: the first real batch, packed


def test_diff_augment_translation_shifts_each_image_by_at_most_an_eighth():
    x = torch.arange(1, 1 + 16 * 2 * 16 * 16, dtype=torch.float).view(16, 2, 16, 16)  # every pixel distinct, none 0
    out = diff_augment(x, ("translation",), torch.Generator().manual_seed(0))
    shifts = set()
    for i in range(16):
        found = []
        for dy in range(-2, 3):  # 1/8 of 16
            for dx in range(-2, 3):
                shifted = torch.zeros_like(x[i])
                src = x[i][:, max(0, -dy):16 - max(0, dy), max(0, -dx):16 - max(0, dx)]
                shifted[:, max(0, dy):16 - max(0, -dy), max(0, dx):16 - max(0, -dx)] = src
                if torch.equal(out[i], shifted):
                    found.append((dy, dx))
        assert len(found) == 1  # exactly one integer shift explains the image, both channels alike
        shifts.add(found[0])
    assert len(shifts) > 4  # per sample, not one shift for the batch


def test_diff_augment_cutout_zeroes_one_half_size_square_and_nothing_else():
    x = torch.rand(32, 3, 8, 8) + 1.0
    out = diff_augment(x, ("cutout",), torch.Generator().manual_seed(0))
    for i in range(32):
        zero = out[i, 0] == 0
        assert torch.equal(zero, (out[i] == 0).all(0))  # the same square on every channel
        rows, cols = zero.any(1).nonzero().view(-1), zero.any(0).nonzero().view(-1)
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4 and zero.sum() == len(rows) * len(cols)
        assert torch.equal(out[i][:, ~zero], x[i][:, ~zero])
    assert sum(int((out[i] == 0).sum() == 3 * 16) for i in range(32)) > 8  # most squares lie fully inside


def test_diff_augment_is_differentiable_and_color_changes_per_sample():
    x = torch.rand(8, 3, 8, 8, requires_grad=True)
    out = diff_augment(x * 2 - 1, parse_diff_augment("color,translation,cutout"), torch.Generator().manual_seed(0))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G's gradient passes through the augmentation
    color = diff_augment(torch.zeros(8, 3, 4, 4), ("color",), torch.Generator().manual_seed(1))
    assert color.flatten(1).mean(1).unique().numel() == 8  # brightness drawn per sample


def test_diff_augment_policy_is_read_in_the_papers_order_and_checked():
    assert parse_diff_augment(None) == ()
    assert parse_diff_augment(["cutout", "translation"]) == ("translation", "cutout")
    assert parse_diff_augment("translation,color") == ("color", "translation")
    with pytest.raises(GanlabError, match="tricks.diff_augment=\\[translation,cutout\\]"):
        parse_diff_augment(["flip"])


def test_diff_augment_reaches_every_d_input_in_both_phases(monkeypatch, tmp_path, data_root):
    calls, seen = [], _spy_d_inputs(monkeypatch)
    orig_aug = objective_mod.diff_augment

    def spy_aug(x, ops, generator=None):
        out = orig_aug(x, ops, generator)
        calls.append((ops, out.detach().clone()))
        return out

    monkeypatch.setattr(objective_mod, "diff_augment", spy_aug)
    cfg = compose("model=dcgan", "dataset=mnist", *dataset_overrides("mnist", data_root), "model.width=8",
                  "tricks.diff_augment=[translation,cutout]", "device=cpu", "train.steps=2", "train.batch_size=16",
                  "train.progress=none", "train.log_every=1", "train.sample_every=100", "train.ckpt_every=100",
                  "eval.every=null")
    train(cfg, tmp_path)
    assert len(calls) == len(seen) == 2 * 3  # per step: D's real and fake batches, then G's
    assert all(ops == ("translation", "cutout") for ops, _ in calls)
    assert all(torch.equal(x, out) for x, (_, out) in zip(seen, calls))  # D sees exactly the augmented images
    assert all((out == 0).flatten(1).any(1).all() for _, out in calls)  # every image has its cutout


def test_snapshots_keep_the_latest_and_the_sampler_takes_those_before_this_step():
    net = torch.nn.Linear(2, 2)
    snaps = Snapshots(size=3, every=2)
    for step in range(1, 8):
        with torch.no_grad():
            net.weight.fill_(step)
        snaps.take(step, net)
    assert [s for s, _ in snaps.kept] == [2, 4, 6]  # every 2 steps, the last 3
    assert all(float(w["weight"][0, 0]) == s for s, w in snaps.kept)  # copies, not views of the live weights
    assert [s for s, _ in snaps.members(7)] == [4, 6]  # size - 1 of them beside the G of step 7
    assert [s for s, _ in snaps.members(6)] == [2, 4]  # step 6's own snapshot is the current G: not twice
    again = Snapshots(size=3, every=2)
    again.load_state_dict(snaps.state_dict())
    assert [s for s, _ in again.members(7)] == [4, 6]
    assert Snapshots(size=3, every=2).members(7) == []  # nothing kept yet: the current G alone


class _Tagged(torch.nn.Module):
    """A stand-in G: outputs its tag and remembers what it was given."""

    def __init__(self, tag):
        super().__init__()
        self.tag, self.z_dim, self.num_classes, self.conditional, self.seen = tag, 2, 5, True, []

    def forward(self, z, y=None):
        self.seen.append((z, y))
        return torch.full((len(z), 1), float(self.tag))


def test_a_self_ensemble_gives_member_k_every_kth_sample():
    members = [_Tagged(0), _Tagged(1), _Tagged(2)]
    g = SelfEnsemble(members, [4, 6, 7])
    z, y = torch.randn(10, 2), torch.arange(10) % 5
    out = g(z, y)
    assert out.flatten().tolist() == [i % 3 for i in range(10)]  # exactly 4 / 3 / 3 of the 10
    for k, m in enumerate(members):
        assert torch.equal(m.seen[0][0], z[k::3]) and torch.equal(m.seen[0][1], y[k::3])
    assert g.z_dim == 2 and g.conditional and g.num_classes == 5
    assert g.describe() == "self-ensemble of the raw weights at steps 4, 6, 7"
    assert g(torch.randn(2, 2), None).flatten().tolist() == [0.0, 1.0]  # fewer samples than members


def test_a_self_ensemble_run_samples_from_its_snapshots_and_resumes_them(tmp_path):
    """tricks.self_ensemble=3 every 2 steps: the snapshots at steps 2, 4, 6 are G's weights then (step 6's
    checkpoint holds the same), the end-of-run evaluation scores the mixture of steps 4, 6 and 7, `ganlab eval`'s
    loader rebuilds it (ema=false: the raw G alone), and a resumed run continues the snapshots."""
    import json

    from ganlab.objectives import load_generator

    def run(steps, *extra):
        cfg = compose("model=gan", "dataset=ring8", "device=cpu", f"train.steps={steps}", "train.batch_size=32",
                      "train.progress=none", "train.log_every=1", "train.ckpt_every=3", "eval.every=100", "eval.n=200",
                      "tricks.self_ensemble=3", "tricks.self_ensemble_every=2", *extra)
        return train(cfg, tmp_path)

    run(7)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    snaps = state["objective"]["snapshots"]
    assert snaps["steps"] == [2, 4, 6]
    at6 = torch.load(tmp_path / "checkpoints" / "step_00000006.pt", weights_only=True)["generator"]
    assert all(torch.equal(snaps["weights"][2][k], v) for k, v in at6.items())
    assert not all(torch.equal(snaps["weights"][1][k], v) for k, v in at6.items())
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["protocol"]["generated_by"].startswith("self-ensemble of the raw weights at steps 4, 6, 7")
    g = load_generator(state)
    assert isinstance(g, SelfEnsemble) and g.steps == [4, 6, 7]
    assert all(torch.equal(g.members[1].state_dict()[k], v) for k, v in at6.items())
    assert not isinstance(load_generator(state, ema=False), SelfEnsemble)
    assert g(torch.randn(6, g.z_dim)).shape == (6, 2)
    run(9, "resume=true")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["objective"]["snapshots"]["steps"] == [4, 6, 8]
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["protocol"]["generated_by"].startswith("self-ensemble of the raw weights at steps 6, 8, 9")


@pytest.mark.parametrize("overrides,expected", [
    (("tricks.self_ensemble=-1",), "tricks.self_ensemble=-1 is not valid"),
    (("tricks.self_ensemble=3", "tricks.self_ensemble_every=0"), "tricks.self_ensemble_every=0 is not valid"),
    (("model=pggan", "tricks.self_ensemble=3"), "tricks.self_ensemble is for the one-G-one-D families"),
])
def test_bad_self_ensemble_settings_are_refused_before_training(overrides, expected):
    from ganlab.config import validate

    with pytest.raises(GanlabError, match=expected):
        validate(compose("model=gan", *overrides))


class _Cubed(torch.nn.Module):
    """G(z) = z**3 on 2D latents: ||dG/dz||_F = 3 sqrt(z0^4 + z1^4), known in closed form."""
    z_dim, conditional, num_classes = 2, False, None

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, z, y=None):
        return self.scale * z ** 3


def test_jacobian_norms_are_exact_under_no_grad():
    """Forward-mode norms equal reverse-mode Jacobians' (torch.func.jacrev), chunked, for a real G; G(z) comes too."""
    from torch.func import jacrev, vmap

    g, _ = build_models(compose("model=gan", "dataset=grid25").model, _grid25())
    g.eval()  # the family's default G has BatchNorm: its running statistics, as at sampling
    z = torch.randn(50, g.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, norms = jacobian_norms(g, z, chunk=16)
    exact = vmap(jacrev(lambda v: g(v.unsqueeze(0), None).squeeze(0)))(z).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, exact.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x, g(z, None).detach())  # the forward-mode primal: equal up to rounding
    other = _Cubed()  # through a self-ensemble (the recipes may stack both): each row its own member's norm
    with torch.no_grad():
        _, mixed = jacobian_norms(SelfEnsemble([other, _Cubed()], [1, 2]), z[:, :2])
    torch.testing.assert_close(mixed, 3 * z[:, :2].pow(4).sum(1).sqrt())


def test_a_jacobian_truncation_redraws_the_steepest_latents_and_only_those():
    g = _Cubed()
    sampler = jacobian_truncation(g, 0.2)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    steep = 3 * z.pow(4).sum(1).sqrt() > sampler.threshold
    assert 0.17 < steep.float().mean() < 0.23  # the threshold is the prior's 80th percentile
    with torch.no_grad():
        x = sampler(z)
    torch.testing.assert_close(x[~steep], g(z[~steep]).detach())  # the rest are G(z) as they were
    redrawn = torch.sign(x[steep]) * x[steep].abs().pow(1 / 3)  # the latents that made the replacements
    assert (3 * redrawn.pow(4).sum(1).sqrt() <= sampler.threshold + 1e-4).all()
    assert not torch.isclose(x[steep], g(z[steep]).detach()).all(dim=1).any()
    assert torch.equal(sampler(z), x)  # the same latents, the same samples
    assert walkable(sampler) is g and walkable(SelfEnsemble([g, g], [1, 2])) is g
    assert jacobian_truncation(g, 0) is g
    assert sampler.describe().startswith("Jacobian-truncated: latents in the prior's top 20% of ‖dG/dz‖_F redrawn")


def _grid25():
    from ganlab.data.sources import build_source

    return build_source(compose("dataset=grid25").dataset)


def test_a_jacobian_truncated_run_scores_and_loads_its_truncated_sampler(tmp_path):
    """tricks.jacobian_truncation=0.2: the end-of-run protocol names it, the loader rebuilds it, and `ganlab eval`
    / `ganlab sample` can set it on a trained run (0: the plain G; a bad value: one clear error)."""
    import json
    import subprocess
    import sys

    import numpy as np

    from ganlab.objectives import load_generator, with_truncation

    cfg = compose("experiment=grid25", "device=cpu", "train.steps=30", "train.batch_size=64", "train.progress=none",
                  "eval.n=300", "tricks.jacobian_truncation=0.2")  # the recipe's small G (z_dim 8)
    out, tmp_path = tmp_path, tmp_path / "run"  # what the commands write goes beside the run, not into it
    train(cfg, tmp_path)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["protocol"]["generated_by"].startswith("raw weights, Jacobian-truncated: latents in the prior's "
                                                         "top 20%")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    g = load_generator(state)
    assert isinstance(g, JacobianTruncation) and g.fraction == 0.2
    assert not isinstance(load_generator(with_truncation(state, 0)), JacobianTruncation)
    with pytest.raises(GanlabError, match="jacobian_truncation=1.5 is not valid"):
        with_truncation(state, 1.5)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ganlab", *args], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, cwd=out)

    done = cli("eval", f"target={tmp_path}", "n=300", "jacobian_truncation=0.3", f"out={out / 'e.json'}")
    assert done.returncode == 0, done.stderr
    made_by = json.loads((out / "e.json").read_text())["protocol"]["generated_by"]
    assert "Jacobian-truncated: latents in the prior's top 30%" in made_by
    done = cli("sample", f"run={tmp_path}", "n=50", "jacobian_truncation=0", f"out={out / 's.npz'}")
    assert done.returncode == 0, done.stderr
    plain = load_generator(with_truncation(state, 0))
    from ganlab.models import generate

    expected, _ = generate(plain, 50, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.load(out / "s.npz")["arr_0"], expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("overrides,expected", [
    (("tricks.jacobian_truncation=1.0",), "tricks.jacobian_truncation=1.0 is not valid"),
    (("tricks.jacobian_truncation=-0.1",), "tricks.jacobian_truncation=-0.1 is not valid"),
    (("model=pggan", "tricks.jacobian_truncation=0.1"), "tricks.jacobian_truncation is for the one-G-one-D families"),
])
def test_bad_jacobian_truncation_settings_are_refused_before_training(overrides, expected):
    from ganlab.config import validate

    with pytest.raises(GanlabError, match=expected):
        validate(compose("model=gan", *overrides))


class _RealBatches:
    """A stand-in for the loop's runtime: hands out one real batch and counts how often it is asked."""
    device = torch.device("cpu")

    def __init__(self, x):
        self.x, self.calls = x, 0

    def next_batch(self, n=None):
        self.calls += 1
        return self.x, None

    def autocast(self):
        return contextlib.nullcontext()

    def loss_scale(self, optimizer):
        return None


def test_feature_matching_adds_the_squared_distance_of_the_batch_mean_features_to_g_loss():
    """Salimans et al. 2016, sec. 3.1, as a term of G's loss: weight x mean over D's features (the layer its head
    reads; here of PacGAN packs) of (mean over a real batch - mean over G's batch)^2. Off, G's step draws no real
    batch (the data stream, and so every earlier run, unchanged)."""
    source = type("S", (), {"kind": "image", "shape": (1, 28, 28), "name": "mnist"})()
    cfg = compose("model=dcgan", "model.width=8", "model.pack=2", "tricks.feature_matching=2.5", "train.batch_size=8")
    obj = Adversarial(cfg, source, torch.device("cpu"))
    g, d = obj.nets["generator"], obj.nets["discriminator"]
    made = []
    hook = g.register_forward_hook(lambda module, args, out: made.append(out))
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    rt = _RealBatches(real)
    loss, logs = obj.g_loss(0, rt)
    hook.remove()
    assert rt.calls == 1 and obj.images_per_step == 8 * 4  # D's real and fake batches, G's, and this real one
    pack = d_pack(cfg.model, source)
    with torch.no_grad():
        score, h_gen = d(pack(made[0]), features=True)
        _, h_real = d(pack(real), features=True)
    assert h_gen.shape == (4, d.head.in_features)  # 4 packs of 2
    fm = (h_real.mean(0) - h_gen.mean(0)).square().mean()
    assert float(logs["Loss/feature_matching"].detach()) == pytest.approx(float(fm), rel=1e-5)
    assert float(logs["Loss/G"].detach()) == pytest.approx(float(LOSSES["nonsaturating"].g(score)), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(LOSSES["nonsaturating"].g(score) + 2.5 * fm), rel=1e-5)
    loss.backward()  # the real features carry no graph: G's gradient comes through its own batch
    assert all(p.grad is not None for p in g.parameters())

    off = Adversarial(compose("model=dcgan", "model.width=8", "train.batch_size=8"), source, torch.device("cpu"))
    rt = _RealBatches(real)
    _, logs = off.g_loss(0, rt)
    assert rt.calls == 0 and "Loss/feature_matching" not in logs and off.images_per_step == 8 * 3


def test_feature_matching_trains_logs_its_term_and_refuses_what_it_cannot_be(tmp_path):
    from ganlab.config import validate

    cfg = compose("model=gan", "dataset=ring8", "tricks.feature_matching=1.0", "device=cpu", "train.steps=4",
                  "train.progress=none", "train.log_every=2", "train.sample_every=100", "train.ckpt_every=100",
                  "eval.every=null")
    train(cfg, tmp_path)
    values = [e.value for e in read_events(tmp_path / "tb").Scalars("Loss/feature_matching")]
    assert len(values) == 2 and all(v > 0 for v in values)
    for overrides, expected in ((("model=dcgan", "tricks.feature_matching=-1"), "feature_matching=-1 is not valid"),
                                (("model=pggan", "tricks.feature_matching=1"), "tricks.feature_matching=0")):
        with pytest.raises(GanlabError, match=expected):
            validate(compose(*overrides))
