"""Config composition: every option of every group, the recipes' paper defaults, the command line
winning over a recipe, validation before any work, and configs found from a non-editable install."""

import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml
from omegaconf import OmegaConf

from ganlab.config import validate
from ganlab.errors import GanlabError
from conftest import cli, DATASETS, LOSSES, MODELS, REPO, compose, offline_env

GROUPS = {g: sorted(p.stem for p in (REPO / "conf" / g).glob("*.yaml"))
          for g in ("dataset", "model", "loss", "optimizer", "penalty", "experiment", "debug", "model_dataset")}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_of_every_group_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if option == "image_folder":
        overrides.append("dataset.root=/somewhere")
    if option == "unpaired" or option == "cyclegan":
        overrides += ["dataset.root_a=/photos", "dataset.root_b=/paintings"]
    cfg = compose(*overrides)
    validate(cfg)
    assert OmegaConf.to_container(cfg, resolve=True)


def test_the_content_the_issue_asks_for_is_there():
    assert {"mnist", "fashion_mnist", "cifar10", "image_folder", "ring8", "grid25"} <= set(DATASETS)
    assert {"gan", "dcgan", "wgan_gp"} <= set(MODELS)
    assert {"minimax", "nonsaturating", "wasserstein", "least_squares", "hinge"} <= set(LOSSES)


def test_experiments_hold_whole_recipes_and_the_command_line_still_wins():
    assert {"ring8", "grid25"} <= set(GROUPS["experiment"])
    for name in ("ring8", "grid25"):
        cfg = compose(f"experiment={name}")
        assert cfg.dataset.name == name and cfg.penalty.name == "r1" and cfg.loss.name == "nonsaturating"
        assert cfg.train.lr_decay_from is not None and cfg.model.g_norm == "none"
        assert 0 < cfg.tricks.jacobian_truncation <= 0.1  # samples without G's steepest latents (JBT)
    cfg = compose("experiment=grid25", "train.steps=10", "penalty.weight=2", "loss=hinge")
    assert cfg.train.steps == 10 and cfg.penalty.weight == 2 and cfg.loss.name == "hinge"
    assert cfg.dataset.name == "grid25" and cfg.model.z_dim == compose("experiment=grid25").model.z_dim


def test_the_stacked_mnist_recipe_is_scored_by_the_veegan_pacgan_protocol():
    assert "stacked_mnist" in GROUPS["experiment"]
    cfg = compose("experiment=stacked_mnist")
    assert cfg.dataset.name == "stacked_mnist" and cfg.dataset.num_classes == 1000
    assert cfg.model.name == "dcgan" and cfg.model.conditional is False  # unconditional, as the benchmark is
    assert cfg.loss.name == "hinge" and cfg.tricks.ema == 0  # sampled by its self-ensemble, not an EMA
    assert cfg.tricks.self_ensemble == 3 and cfg.tricks.self_ensemble_every == 2000
    assert cfg.penalty.name == "r1" and 0 < cfg.penalty.weight  # R1 on the real packs
    assert cfg.model.pack == 2 and cfg.train.batch_size % cfg.model.pack == 0  # PacGAN's pairs
    validate(cfg)
    assert cfg.train.max_minutes == 30 and cfg.train.steps > 0
    assert cfg.eval.n == 26000 and "classes" in cfg.eval.metrics and cfg.eval.features == "classifier"
    assert cfg.eval.every == cfg.train.steps  # scored once, at the end
    assert compose("experiment=stacked_mnist", "train.steps=10").eval.every == 10


def test_wgan_gp_recipe_has_the_paper_defaults():
    cfg = compose("model=wgan_gp", "~model_dataset")  # the family's recipe; 28 px grey images specialize it
    assert cfg.loss.name == "wasserstein"
    assert cfg.penalty.name == "gp" and cfg.penalty.weight == 10.0 and cfg.penalty.center == 1.0
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optimizer.lr == 1e-4 and list(cfg.optimizer.betas) == [0.0, 0.9]
    assert cfg.train.n_critic == 5
    assert cfg.model.d_norm == "none"  # no BatchNorm in the critic


def test_dcgan_recipe_has_the_paper_defaults():
    cfg = compose("model=dcgan")
    assert cfg.loss.name == "nonsaturating" and cfg.penalty.name == "none"
    assert cfg.optimizer.lr == 2e-4 and list(cfg.optimizer.betas) == [0.5, 0.999]
    assert cfg.model.init_std == 0.02 and cfg.model.leaky_slope == 0.2 and cfg.model.g_norm == "batch"
    assert cfg.train.n_critic == 1


def test_gan_recipe_is_the_keras_mlp():
    cfg = compose("model=gan")
    assert cfg.model.z_dim == 100 and cfg.model.backbone == "mlp" and cfg.model.g_act == "leaky_relu"
    assert list(cfg.model.g_hidden) == [256, 512, 1024] and list(cfg.model.d_hidden) == [512, 256]


def test_explicit_loss_changes_only_the_loss():
    base = OmegaConf.to_container(compose("model=wgan_gp"))
    hinge = OmegaConf.to_container(compose("model=wgan_gp", "loss=hinge"))
    assert hinge["loss"] == {"name": "hinge"}
    base.pop("loss"), hinge.pop("loss")
    assert base == hinge


def test_explicit_optimizer_wins_over_the_recipe():
    cfg = compose("model=wgan_gp", "optimizer=rmsprop")
    assert cfg.optimizer._target_ == "torch.optim.RMSprop" and cfg.optimizer.lr == 5e-5
    assert cfg.penalty.name == "gp" and cfg.loss.name == "wasserstein"


@pytest.mark.parametrize("override,fragment", [
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.steps=-5", "train.steps=-5"),
    ("train.n_critic=0", "train.n_critic"),
    ("train.log_every=abc", "train.log_every='abc'"),
    ("optimizer.lr=-0.001", "optimizer.lr=-0.001"),
    ("optimizer.lr_d=0", "optimizer.lr_d"),
    ("optimizer.betas=[0.5,1.5]", "optimizer.betas"),
    ("train.max_minutes=-1", "train.max_minutes"),
    ("device=tpu", "device='tpu'"),
    ("model.d_norm=group", "model.d_norm"),
    ("model.backbone=vgg", "model.backbone"),
    ("model.cond_d=film", "model.cond_d"),
    ("tricks.label_smoothing=1.5", "tricks.label_smoothing"),
    ("tricks.ema=1", "tricks.ema"),
    ("train.clip_d=-0.01", "train.clip_d"),
    ("model.minibatch_stddev=-4", "model.minibatch_stddev"),
    ("model.pack=0", "model.pack=0"),
    ("model.d_width=0", "model.d_width=0"),
    ("model.d_width=48", None),
    ("model.pack=3", "train.batch_size divisible"),  # 64 samples do not split into packs of 3
    ("tricks.diff_augment=[flip]", "tricks.diff_augment=[translation,cutout]"),
    ("tricks.diff_augment=[translation,cutout]", None),
    ("seed=1.5", "seed=1.5"),
    ("train.progress=fancy", "train.progress"),
    ("penalty=gp", None),  # a valid one, for contrast
])
def test_bad_values_are_rejected_before_any_work(override, fragment):
    cfg = compose(override)
    if fragment is None:
        validate(cfg)
        return
    with pytest.raises(GanlabError) as err:
        validate(cfg)
    assert fragment in str(err.value)


@pytest.mark.parametrize("overrides,fragment", [
    (("model=cgan",), "model.conditional=false"),  # a conditional D judges one sample and its label
    (("model=pggan",), "objective=adversarial"),   # the families with their own D
    (("model=dcgan",), None),
])
def test_pack_is_refused_where_d_does_not_judge_plain_samples(overrides, fragment):
    cfg = compose(*overrides, "model.pack=2")
    if fragment is None:
        validate(cfg)
        return
    with pytest.raises(GanlabError) as err:
        validate(cfg)
    assert fragment in str(err.value) and "model.pack=1" in str(err.value)


def test_diff_augment_is_refused_for_families_with_their_own_d():
    with pytest.raises(GanlabError, match="set tricks.diff_augment=null"):
        validate(compose("model=stylegan", "tricks.diff_augment=[translation]"))


def test_cli_cfg_job_shows_the_recipe(tmp_path):
    out = cli("train", "model=wgan_gp", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["loss"]["name"] == "wasserstein" and cfg["penalty"] == {"name": "gp", "weight": 10.0, "center": 1.0}
    # the default dataset (28 px grey digits) picks conf/model_dataset/wgan_gp_adam_wgan_gp_mnist.yaml: Adam's step 8e-4
    assert cfg["optimizer"]["lr"] == 8e-4 and cfg["optimizer"]["betas"] == [0.0, 0.9]
    assert cfg["train"]["n_critic"] == 5 and cfg["train"]["batch_size"] == 32
    hinge = yaml.safe_load(cli("train", "model=wgan_gp", "loss=hinge", "--cfg", "job", cwd=tmp_path).stdout)
    assert hinge.pop("loss") == {"name": "hinge"}
    cfg.pop("loss")
    assert hinge == cfg


def test_user_config_dirs_join_through_hydra_searchpath(tmp_path):
    user = tmp_path / "myconf" / "model"
    user.mkdir(parents=True)
    (user / "tiny_gan.yaml").write_text(
        "# @package _global_\ndefaults:\n  - gan\n  - _self_\nmodel:\n  name: tiny_gan\n  g_hidden: [32]\n  d_hidden: [32]\n"
    )
    out = cli("train", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "model=tiny_gan", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["name"] == "tiny_gan" and cfg["model"]["g_hidden"] == [32] and cfg["model"]["z_dim"] == 100


def test_a_wheel_carries_the_configs_and_works_without_the_repo(tmp_path):
    """`pip install .` (non-editable) must find conf/: build the wheel offline with hatchling, unpack
    it as site-packages would hold it, and run the CLI from it, far from the repo."""
    pytest.importorskip("hatchling")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "data", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel"], cwd=src, check=True,
                   capture_output=True, timeout=300)
    wheel = next((src / "dist").glob("ganlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for group, options in GROUPS.items():
        for option in options:
            assert f"ganlab/conf/{group}/{option}.yaml" in names
    assert "ganlab/conf/train.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = offline_env(PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import ganlab.config as c; print(c.config_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == str(site / "ganlab" / "conf"), probe.stderr
    out = subprocess.run([sys.executable, "-m", "ganlab", "train", "model=dcgan", "--cfg", "job"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["model"]["name"] == "dcgan"
