"""The one training loop, in process on the real composed configs: every model on every dataset
it supports, checkpoints, the wall-clock budget, divergence, and what reaches TensorBoard."""

import json
import math

import pytest
import torch

from ganlab.errors import GanlabError
from ganlab.models import build_models
from ganlab.device import resolve_device
from ganlab.train import train
from conftest import DATASETS, MODELS, compose, dataset_overrides, read_events

IMAGE_SETS = {"mnist", "fashion_mnist", "cifar10", "image_folder", "stacked_mnist"}
CONV_ONLY = {"dcgan", "pggan", "stylegan", "lapgan", "inpaint"}
CONDITIONAL = {"cgan"}
POINT_SETS = {"ring8", "grid25", "mix1d"}


def unsupported(model: str, dataset: str) -> str | None:
    """The error a model x dataset pair must end in, or None when it must train."""
    if dataset == "generated":  # what it holds follows the family: every one trains on it
        return None
    if (model == "cyclegan") != (dataset == "unpaired"):  # translation between two domains, and only that
        return "translates between two image domains" if model == "cyclegan" else "two unpaired image domains"
    if model == "optimal_d" and dataset not in POINT_SETS:
        return "generator of known density"
    if model in CONV_ONLY and dataset not in IMAGE_SETS:
        return "needs images"
    if model in CONDITIONAL and dataset == "image_folder":
        return "needs a labelled dataset"
    return None


def tiny(*overrides):
    return ["device=cpu", "train.steps=3", "train.batch_size=8", "train.log_every=1", "train.sample_every=2",
            "train.ckpt_every=2", "train.n_samples=16", "train.num_workers=0", "train.progress=none",
            "model.width=8", "model.g_hidden=[32,32]", "model.d_hidden=[32,32]", "eval.n=400", "health.diversity_n=16",
            *overrides]


# each family's own size knobs, small (model.width is every family's common one, in tiny()); pggan's batches fit
# the tiny sets (24 images and more)
SMALLER = {"pggan": ["model.batch_sizes=[8]"], "lapgan": ["model.widths=[8,8,32]"], "cyclegan": ["model.blocks=1"],
           "optimal_d": ["model.eval_points=4096", "model.d_hidden=[32,32]"]}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_model_on_every_dataset(model, dataset, data_root, tmp_path):
    extra = SMALLER.get(model, [])
    cfg = compose(f"model={model}", f"dataset={dataset}", *tiny(*dataset_overrides(dataset, data_root), *extra))
    if unsupported(model, dataset):
        with pytest.raises(GanlabError, match=unsupported(model, dataset)):
            train(cfg, tmp_path)
        assert not (tmp_path / "checkpoints").exists()
        return
    result = train(cfg, tmp_path)
    d, g = ("D_0", "G_0") if model == "lapgan" else ("D", "G")  # LapGAN: a D and a G per pyramid level
    if model == "optimal_d":  # G is fixed: D and a critic train, the plot of D against D* is shown
        d, g = "D", "critic"
    assert result["step"] == 3 and math.isfinite(result[f"Loss/{d}"]) and math.isfinite(result[f"Loss/{g}"])
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3
    tags = read_events(tmp_path / "tb").Tags()
    assert {f"Loss/{d}", f"Loss/{g}", f"Grad/{d.replace('_', '').upper()}_norm", f"Grad/{g.replace('_', '').upper()}_norm",
            "Perf/images_per_s"} <= set(tags["scalars"])
    shown = {**{name: "Samples/scatter" for name in POINT_SETS}, "unpaired": "Samples/a2b",
             "generated": "Samples/a2b" if model == "cyclegan" else "Samples/fixed_z"}
    if model in ("inpaint", "optimal_d"):
        shown = {dataset: {"inpaint": "Samples/inpaint", "optimal_d": "Theory/D_vs_Dstar"}[model]}
    assert shown.get(dataset, "Samples/fixed_z") in tags["images"]


@pytest.mark.parametrize("resolution", [28, 32, 64])
def test_dcgan_shapes_at_every_size(resolution):
    cfg = compose("model=dcgan", "model.width=8")
    source = type("S", (), {"kind": "image", "shape": (3, resolution, resolution)})()
    g, d = build_models(cfg.model, source)
    x = g(torch.randn(4, 100))
    assert x.shape == (4, 3, resolution, resolution) and x.abs().max() <= 1
    assert d(x).shape == (4,)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs[:-1])
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    # DCGAN init: N(0, 0.02)
    assert abs(convs[1].weight.std().item() - 0.02) < 0.005


def test_dcgan_refuses_other_sizes():
    cfg = compose("model=dcgan")
    source = type("S", (), {"kind": "image", "shape": (3, 48, 48)})()
    with pytest.raises(GanlabError, match="28, 32 or 64"):
        build_models(cfg.model, source)


def test_wgan_gp_critic_has_no_batchnorm_on_any_data():
    cfg = compose("model=wgan_gp")
    for source in (type("S", (), {"kind": "image", "shape": (1, 28, 28)})(),
                   type("S", (), {"kind": "points", "shape": (2,)})()):
        _, d = build_models(cfg.model, source)
        assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in d.modules())


def test_checkpoint_is_one_plain_dict(data_root, tmp_path):
    cfg = compose("model=wgan_gp", "dataset=mnist", *tiny(*dataset_overrides("mnist", data_root)))
    train(cfg, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert {"generator", "discriminator", "opt_g", "opt_d", "step", "config", "rng", "data"} <= set(state)
    assert state["config"]["model"]["name"] == "wgan_gp" and isinstance(state["config"], dict)
    assert state["opt_d"]["param_groups"][0]["lr"] == cfg.optimizer.lr == 8e-4  # the 28 px grey recipe's step
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # atomic write left nothing behind
    g, _ = build_models(cfg.model, type("S", (), {"kind": "image", "shape": (1, 28, 28)})())
    g.load_state_dict(state["generator"])


def test_a_run_dir_with_a_checkpoint_is_never_overwritten(tmp_path):
    cfg = compose("dataset=ring8", *tiny())
    train(cfg, tmp_path)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(GanlabError, match="already holds a run"):
        train(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_max_minutes_stops_cleanly_with_a_checkpoint(tmp_path):
    cfg = compose("model=gan", "dataset=ring8", *tiny("train.steps=100000", "train.max_minutes=0.002",
                                                       "train.log_every=1000", "train.ckpt_every=1000"))
    result = train(cfg, tmp_path)
    assert 1 <= result["step"] < 100000
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == result["step"]


def test_divergence_stops_with_a_clear_message(tmp_path):
    cfg = compose("model=gan", "dataset=ring8", "loss=least_squares", "optimizer.lr=1e6",
                  *tiny("train.steps=200", "train.log_every=5", "train.ckpt_every=1000"))
    with pytest.raises(GanlabError, match="diverged"):
        train(cfg, tmp_path)


def test_same_seed_same_result(tmp_path):
    runs = []
    for k in range(2):
        cfg = compose("model=gan", "dataset=ring8", *tiny("seed=7"))
        result = train(cfg, tmp_path / str(k))
        runs.append({k: v for k, v in result.items() if k not in ("wall_s", "cpu_s") and not k.startswith("Perf/")})  # timings vary
    assert runs[0] == runs[1]


def test_logged_scalars_are_means_over_the_log_window(tmp_path):
    cfg = compose("model=gan", "dataset=ring8", *tiny("train.steps=6", "train.log_every=3"))
    train(cfg, tmp_path)
    acc = read_events(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("Loss/D")] == [3, 6]
    d_x = [e.value for e in acc.Scalars("D/D(x)")]
    assert all(0 < v < 1 for v in d_x)  # sigmoid losses log probabilities


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(GanlabError, match="no CUDA device"):
            resolve_device("cuda")


def test_lr_schedule_is_constant_then_linear_to_zero():
    from ganlab.train import lr_factor

    assert [lr_factor(s, 100, 0.6) for s in (1, 60)] == [1.0, 1.0]
    assert lr_factor(80, 100, 0.6) == pytest.approx(0.5) and lr_factor(100, 100, 0.6) == 0.0
    assert lr_factor(1, 10, 0.0) == pytest.approx(0.9)


def test_lr_decay_reaches_the_optimizers_and_tensorboard(tmp_path):
    cfg = compose("model=gan", "dataset=ring8", *tiny("train.steps=40", "train.log_every=10", "train.lr_decay_from=0.5"))
    train(cfg, tmp_path)
    lrs = dict((e.step, e.value) for e in read_events(tmp_path / "tb").Scalars("Train/lr_g"))
    base = cfg.optimizer.lr
    assert lrs[10] == pytest.approx(base) and lrs[20] == pytest.approx(base)
    assert lrs[30] == pytest.approx(base * 0.5, rel=1e-5) and lrs[40] == 0.0
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["opt_d"]["param_groups"][0]["lr"] == 0.0


@pytest.mark.slow
def test_the_stacked_mnist_recipe_trains_and_is_scored(data_root, tmp_path):
    """experiment=stacked_mnist as a whole (packs of 2, hinge + R1 on the real packs, the self-ensemble), shrunk:
    it trains, and the end-of-run evaluation counts the 1,000 modes with the per-channel classifier on the
    samples of the mixture (snapshots every step here, so steps 1, 2 and 3)."""
    cfg = compose("experiment=stacked_mnist", *tiny(*dataset_overrides("stacked_mnist", data_root)), "eval.n=64",
                  "tricks.self_ensemble_every=1")
    assert cfg.eval.every == 3  # the recipe's own end-of-run evaluation (its settings: test_config)
    result = train(cfg, tmp_path)
    assert result["step"] == 3 and math.isfinite(result["Loss/D"]) and math.isfinite(result["Loss/G"])
    assert 1 <= result["Metrics/classes_captured"] <= 64 and result["Metrics/class_kl_uniform"] > 0
    assert result["Metrics/class_kl_uniform_se"] >= 0
    assert "Metrics/fd" in result
    protocol = json.loads((tmp_path / "metrics.json").read_text())["protocol"]
    assert protocol["generated_by"].startswith("self-ensemble of the raw weights at steps 1, 2, 3")
