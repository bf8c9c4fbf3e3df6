"""The GAN canon as recipes: each family's paper defaults, WGAN's clipping, spectral norm, the
ResNet backbone, conditional sampling, and the metric behind the README's mode table."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from ganlab.checkpoint import load_checkpoint
from ganlab.data.sources import MixtureSource
from ganlab.errors import GanlabError
from ganlab.metrics import mixture_metrics
from ganlab.metrics.mixture import exact_high_quality
from ganlab.models import build_models, generate
from ganlab.objectives import load_generator
from ganlab.train import train
from conftest import cli, MODELS, compose, dataset_overrides, make_idx

# family -> (loss, optimizer target, lr, betas or None, n_critic, penalty, other paper defaults)
PAPER = {
    "gan": ("nonsaturating", "Adam", 2e-4, [0.5, 0.999], 1, "none", {}),
    "dcgan": ("nonsaturating", "Adam", 2e-4, [0.5, 0.999], 1, "none",
              {"model.init_std": 0.02, "model.d_norm": "batch", "model.backbone": "dcgan"}),
    "wgan": ("wasserstein", "RMSprop", 5e-5, None, 5, "none", {"train.clip_d": 0.01}),
    "wgan_gp": ("wasserstein", "Adam", 1e-4, [0.0, 0.9], 5, "gp", {"penalty.weight": 10.0, "model.d_norm": "none"}),
    "lsgan": ("least_squares", "Adam", 2e-4, [0.5, 0.999], 1, "none", {"loss.a": 0.0, "loss.b": 1.0, "loss.c": 1.0}),
    "sngan": ("hinge", "Adam", 2e-4, [0.0, 0.9], 5, "none", {"model.spectral_norm": True, "model.d_norm": "none"}),
    "cgan": ("nonsaturating", "Adam", 2e-4, [0.5, 0.999], 1, "none", {"model.conditional": True}),
    "pggan": ("wasserstein", "Adam", 1e-3, [0.0, 0.99], 1, "gp",
              {"penalty.weight": 10.0, "model.drift": 0.001, "tricks.ema": 0.999, "model.minibatch_stddev": 4,
               "model.fade_images": 800000, "model.stable_images": 800000, "model.objective": "progressive"}),
    "stylegan": ("nonsaturating", "Adam", 2e-3, [0.0, 0.99], 1, "r1",
                 {"penalty.weight": 5.0, "model.mapping_layers": 8, "model.mapping_lr_mul": 0.01,
                  "model.mixing_prob": 0.9, "model.r1_every": 16, "model.w_avg_beta": 0.995, "model.pl_every": 4,
                  "model.pl_weight": 2.0, "model.pl_batch_shrink": 2, "model.pl_decay": 0.01,
                  "model.g_architecture": "skip", "model.d_architecture": "resnet",
                  "model.minibatch_stddev": 4, "tricks.ema": 0.999, "model.objective": "stylegan"}),
    "lapgan": ("nonsaturating", "SGD", 0.02, None, 1, "none",
               {"optimizer.momentum": 0.5, "model.lr_decay": 4e-5, "model.momentum_step": 0.0008,
                "model.momentum_max": 0.8, "model.d_dropout": 0.5, "model.widths": [128, 128, 600],
                "train.batch_size": 64, "model.levels": 3, "model.objective": "lapgan", "model.conditional": False}),
    "cyclegan": ("least_squares", "Adam", 2e-4, [0.5, 0.999], 1, "none",
                 {"model.lambda_cycle": 10.0, "model.lambda_identity": 0.5, "model.pool_size": 50, "model.blocks": 6,
                  "model.d_layers": 3, "model.width": 64, "train.batch_size": 1, "train.lr_decay_from": 0.5,
                  "dataset.name": "unpaired", "model.objective": "cyclegan"}),
    "inpaint": ("nonsaturating", "Adam", 2e-4, [0.5, 0.999], 1, "none",
                {"model.recipe": "context_encoder", "model.mask": "center", "model.mask_ratio": 0.25,
                 "model.bottleneck": "conv", "model.bottleneck_dim": 4000, "model.width": 64, "train.batch_size": 64,
                 "model.lambda_rec": None, "model.lambda_adv": None, "model.objective": "inpaint"}),
    # the theory experiment: D trains with the GAN value function against a fixed G (no G update, no paper lr)
    "optimal_d": ("minimax", "Adam", 1e-3, [0.5, 0.999], 1, "none",
                  {"model.objective": "optimal_d", "model.critic": True, "model.critic_penalty": 10.0}),
}


def test_every_family_has_its_paper_defaults():
    """Each family's own recipe (conf/model/), without a dataset's specialization of how the work is done
    (conf/model_dataset/, tested below), is its paper's."""
    assert set(PAPER) == set(MODELS)
    for family, (loss, opt, lr, betas, n_critic, penalty, extra) in PAPER.items():
        cfg = compose(f"model={family}", "~model_dataset")
        assert cfg.loss.name == loss, family
        assert cfg.optimizer._target_ == f"torch.optim.{opt}" and cfg.optimizer.lr == lr, family
        if betas is not None:
            assert list(cfg.optimizer.betas) == betas, family
        assert cfg.train.n_critic == n_critic and cfg.penalty.name == penalty, family
        for key, value in extra.items():
            assert OmegaConf.select(cfg, key) == value, (family, key)


def test_a_family_dataset_specialization_changes_only_how_the_work_is_done():
    """conf/model_dataset/<model>_<optimizer>_<dataset>.yaml: wgan_gp's batch 32 and Adam step 8e-4 on 28 px grey
    images; the paper's loss, penalty, n_critic, Adam and its betas stay; other datasets and families keep batch
    64 and the paper's 1e-4; another optimizer keeps its own step and batch; the command line still wins."""
    base = compose("model=wgan_gp", "dataset=ring8")
    for dataset in ("mnist", "fashion_mnist"):
        cfg = compose("model=wgan_gp", f"dataset={dataset}")
        assert cfg.train.batch_size == 32 and cfg.optimizer.lr == 8e-4, dataset
        for key in ("loss", "penalty", "train.n_critic", "model", "optimizer._target_", "optimizer.betas",
                    "optimizer.lr_g", "optimizer.lr_d"):
            assert OmegaConf.select(cfg, key) == OmegaConf.select(base, key), (dataset, key)
        rms = compose("model=wgan_gp", f"dataset={dataset}", "optimizer=rmsprop")  # another recipe: its own step
        assert rms.optimizer._target_ == "torch.optim.RMSprop" and rms.optimizer.lr == 5e-5, dataset
        assert rms.train.batch_size == 64, dataset
    assert base.train.batch_size == 64 and base.optimizer.lr == 1e-4
    assert compose("model=wgan_gp", "dataset=cifar10").train.batch_size == 64
    assert compose("model=wgan_gp", "dataset=cifar10").optimizer.lr == 1e-4
    assert compose("model=dcgan", "dataset=mnist").train.batch_size == 64
    assert compose("model=dcgan", "dataset=mnist").optimizer.lr == 2e-4
    restored = compose("model=wgan_gp", "dataset=mnist", "train.batch_size=64", "optimizer.lr=1e-4")
    assert restored.train.batch_size == 64 and restored.optimizer.lr == 1e-4


@pytest.mark.parametrize("family", ["wgan", "sngan", "lsgan"])
def test_cfg_job_on_the_cli_shows_the_recipe(family, tmp_path):
    import yaml

    out = cli("train", f"model={family}", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    loss, opt, lr, _, n_critic, _, _ = PAPER[family]
    assert cfg["loss"]["name"] == loss and cfg["optimizer"]["lr"] == lr and cfg["train"]["n_critic"] == n_critic


def _tiny(*extra):
    return ["device=cpu", "train.batch_size=16", "train.log_every=1", "train.sample_every=1000",
            "train.ckpt_every=1000", "train.num_workers=0", "train.progress=none", "model.width=8", *extra]


@pytest.mark.parametrize("dataset", ["ring8", "mnist"])
def test_wgan_critic_weights_lie_in_the_clip_range_after_critic_steps(dataset, data_root, tmp_path):
    cfg = compose("model=wgan", f"dataset={dataset}", "train.steps=3", *_tiny(*dataset_overrides(dataset, data_root)))
    train(cfg, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    source = type("S", (), {"kind": "points" if dataset == "ring8" else "image",
                            "shape": (2,) if dataset == "ring8" else (1, 28, 28), "name": dataset})()
    _, d = build_models(cfg.model, source)
    names = {n for n, _ in d.named_parameters()}
    params = {k: v for k, v in state["discriminator"].items() if k in names}
    assert params and all(v.abs().max() <= 0.01 + 1e-9 for v in params.values())
    assert any(v.abs().max() == pytest.approx(0.01) for v in params.values())  # the clip was active


def test_spectral_normalised_layers_have_top_singular_value_one():
    cfg = compose("model=sngan", "model.width=8")
    source = type("S", (), {"kind": "image", "shape": (1, 28, 28), "name": "mnist"})()
    _, d = build_models(cfg.model, source)
    for _ in range(50):  # power iterations run in training-mode forwards
        d(torch.randn(8, 1, 28, 28))
    d.eval()
    layers = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 3 and all(hasattr(m, "parametrizations") for m in layers)  # 2 convs + head
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


@pytest.mark.parametrize("resolution", [28, 32, 64])
def test_resnet_backbone_shapes(resolution):
    cfg = compose("model=sngan", "model.backbone=resnet", "model.width=8")
    source = type("S", (), {"kind": "image", "shape": (3, resolution, resolution), "name": "x"})()
    g, d = build_models(cfg.model, source)
    x = g(torch.randn(2, 128))
    assert x.shape == (2, 3, resolution, resolution) and d(x).shape == (2,)


@pytest.mark.parametrize("backbone", ["dcgan", "resnet"])
def test_model_d_width_widens_d_alone(backbone):
    source = type("S", (), {"kind": "image", "shape": (3, 28, 28), "name": "x"})()

    def built(*overrides):
        g, d = build_models(compose("model=dcgan", f"model.backbone={backbone}", "model.width=8", *overrides).model,
                            source)
        return g, d, [m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)]

    g, d, d_convs = built()
    g_wide_d, wide_d, wide_convs = built("model.d_width=16")
    assert [2 * c for c in d_convs] == wide_convs  # every conv of D twice as wide
    assert d_convs[0] == (8 if backbone == "dcgan" else 16)  # model.width (resnet's D: 2 x width)
    assert g.state_dict().keys() == g_wide_d.state_dict().keys()
    assert all(v.shape == g_wide_d.state_dict()[k].shape for k, v in g.state_dict().items())  # G untouched
    assert wide_d(g_wide_d(torch.randn(2, 100))).shape == (2,)


@pytest.mark.parametrize("backbone,cond_d", [("gan", "concat"), ("dcgan", "concat"), ("sngan", "projection"),
                                             ("sngan", "concat")])
def test_conditional_backbones_train(backbone, cond_d, data_root, tmp_path):
    cfg = compose(f"model={backbone}", "model.conditional=true", f"model.cond_d={cond_d}", "dataset=mnist",
                  "train.steps=2", "train.n_samples=20", *_tiny(*dataset_overrides("mnist", data_root)))
    result = train(cfg, tmp_path)
    assert result["step"] == 2
    g = load_generator(load_checkpoint(tmp_path / "checkpoints" / "last.pt"))
    images, labels = generate(g, labels=[3, 3, 7])
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [3, 3, 7]


@pytest.mark.slow
def test_conditional_generator_returns_the_requested_classes(tmp_path):
    """cgan on ring8, where a point's class is its mode: after a short run, samples asked for
    class k lie nearest to mode k."""
    cfg = compose("model=cgan", "dataset=ring8", "train.steps=1500", "train.batch_size=64", "model.g_hidden=[128,128]",
                  "model.d_hidden=[128,128]", "seed=0", *_tiny("train.log_every=500"))
    train(cfg, tmp_path)
    g = load_generator(load_checkpoint(tmp_path / "checkpoints" / "last.pt"))
    modes = MixtureSource("ring8", "ring", 8, 2.0, 0.02).modes
    wanted = torch.arange(8).repeat_interleave(50)
    points, labels = generate(g, labels=wanted, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(points, modes).argmin(dim=1)
    assert labels.tolist() == wanted.tolist()
    assert (nearest == wanted).float().mean() > 0.9


def test_generate_refuses_labels_for_unconditional_models():
    cfg = compose("model=gan")
    g, _ = build_models(cfg.model, MixtureSource("ring8", "ring", 8, 2.0, 0.02))
    with pytest.raises(GanlabError, match="not conditional"):
        generate(g, labels=[1])
    assert generate(g, 5)[0].shape == (5, 2)


def test_conditional_sample_grid_has_one_row_per_class(data_root, tmp_path):
    from conftest import read_events

    cfg = compose("model=cgan", "dataset=mnist", "train.steps=1", "train.n_samples=40", "train.sample_every=1",
                  *_tiny(*dataset_overrides("mnist", data_root)))
    train(cfg, tmp_path)
    grid = read_events(tmp_path / "tb").Images("Samples/fixed_z")[-1]
    assert (grid.height, grid.width) == (2 + 10 * 30, 2 + 4 * 30)  # 10 rows (classes) x 4 columns


def test_mixture_metrics_on_hand_made_samples():
    src = MixtureSource("grid25", "grid", 25, 4.0, 0.05)
    g = torch.Generator().manual_seed(0)
    every, _ = src.sample(2500, g, torch.device("cpu"))
    m = mixture_metrics(every, src.modes, src.std)
    assert m["modes_captured"] == 25 and m["modes_captured_strict"] == 25 and m["high_quality"] > 0.98
    assert m["reverse_kl"] < 0.02
    assert m["mode_spread"] == pytest.approx(1.0, abs=0.05)  # exact samples: the data's own spread
    # a G that squeezes every mode to a third of its width: high quality past a perfect sampler's, spread 1/3
    nearest = torch.cdist(every, src.modes).argmin(1)
    squeezed = src.modes[nearest] + (every - src.modes[nearest]) / 3
    m = mixture_metrics(squeezed, src.modes, src.std)
    assert m["high_quality"] > exact_high_quality(2) and m["mode_spread"] == pytest.approx(1 / 3, abs=0.02)
    assert mixture_metrics(src.modes.repeat(4, 1), src.modes, src.std)["mode_spread"] == 0.0
    assert exact_high_quality(2) == pytest.approx(1 - math.exp(-4.5))
    big, _ = src.sample(100_000, g, torch.device("cpu"))  # the closed forms against many exact samples
    m = mixture_metrics(big, src.modes, src.std)
    assert m["high_quality"] == pytest.approx(exact_high_quality(2), abs=0.002)
    assert m["mode_spread"] == pytest.approx(1.0, abs=0.01)
    half = src.modes[:12].repeat(209, 1)[:2500] + 0.01 * torch.randn(2500, 2, generator=g)
    m = mixture_metrics(half, src.modes, src.std)
    assert m["modes_captured"] == 12 and m["reverse_kl"] == pytest.approx(torch.log(torch.tensor(25 / 12)).item(), abs=0.01)
    off = src.modes[:25] + 1.0  # between the modes: nothing is high quality
    m = mixture_metrics(off, src.modes, src.std)
    assert m["high_quality"] == 0.0 and m["modes_captured"] == 0 and "mode_spread" not in m  # nothing to measure


@pytest.mark.slow
def test_conditional_images_are_of_the_requested_classes(tmp_path):
    """cgan (projection D) on generated MNIST-like digits: a nearest-class-mean classifier, exact
    on the real images, puts the samples asked for class k in class k."""
    from ganlab.data.sources import IdxSource

    make_idx(tmp_path / "data", n=512)
    cfg = compose("model=cgan", "model.cond_d=projection", "dataset=mnist", f"dataset.root={tmp_path / 'data'}",
                  "dataset.download=false", "train.steps=1000", "train.batch_size=64", "model.g_hidden=[256,256]",
                  "model.d_hidden=[256,256]", "seed=0", *_tiny("train.log_every=500"))
    train(cfg, tmp_path / "run")
    g = load_generator(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    x, y = IdxSource("mnist", "MNIST", tmp_path / "data", download=False).load()
    x = x.float() / 127.5 - 1
    means = torch.stack([x[y == k].mean(0) for k in range(10)]).flatten(1)
    assert (torch.cdist(x.flatten(1), means).argmin(1) == y).float().mean() > 0.99  # the classifier is sound
    wanted = torch.arange(10).repeat_interleave(20)
    images, labels = generate(g, labels=wanted, generator=torch.Generator().manual_seed(0))
    assert images.shape == (200, 1, 28, 28) and labels.tolist() == wanted.tolist()
    predicted = torch.cdist(images.flatten(1), means).argmin(1)
    assert (predicted == wanted).float().mean() > 0.9
