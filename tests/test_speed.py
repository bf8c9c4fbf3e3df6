"""The speed options produce finite losses on CPU, the gradient penalty stays right under a loss
scale, and the benchmark's ratio machinery runs (its speed goals live in scripts/benchmark.py)."""

import math
from collections import Counter
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ganlab
from ganlab.errors import GanlabError
from ganlab.losses import gradient_penalty
from ganlab.optim import make_optimizers
from ganlab.train import train
from conftest import REPO, compose, dataset_overrides


SMALL_MLP = ["model.g_hidden=[64,64]", "model.d_hidden=[64,64]"]  # the 2D recipes' nets, small: the same code paths


def _few_steps(tmp_path, *overrides):
    cfg = compose("device=cpu", "train.steps=4", "train.batch_size=16", "train.progress=none", "train.log_every=2",
                  "train.sample_every=4", "train.num_workers=0", "model.width=8", *overrides)
    return train(cfg, tmp_path)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("model,dataset", [("dcgan", "mnist"), ("wgan_gp", "mnist"), ("wgan_gp", "ring8")])
def test_mixed_precision_gives_finite_losses(amp, model, dataset, data_root, tmp_path):
    result = _few_steps(tmp_path, f"model={model}", f"dataset={dataset}", f"train.amp={amp}",
                        *dataset_overrides(dataset, data_root))
    assert result["step"] == 4
    assert all(math.isfinite(v) for k, v in result.items() if k.startswith("Loss/"))
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["scaler_d"] if amp == "fp16" else True  # the grad scaler's state travels with the run


@pytest.mark.parametrize("penalty", ["gp", "r1"])
def test_an_fp16_overflow_the_grad_scaler_absorbs_is_no_divergence(penalty, data_root, tmp_path):
    """With n_critic 1, the first steps' penalties of scaled scores overflow in fp16 (scale 65536):
    the scaler skips those updates and lowers its scale, as AMP intends; the run goes on."""
    result = _few_steps(tmp_path, "model=dcgan", "dataset=mnist", f"penalty={penalty}", "model.d_norm=none",
                        "train.amp=fp16", *dataset_overrides("mnist", data_root))
    assert result["step"] == 4
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["scaler_d"]["scale"] < 65536.0  # it did absorb overflows


def test_a_real_divergence_under_fp16_is_still_caught(tmp_path):
    with pytest.raises(GanlabError, match="diverged"):
        _few_steps(tmp_path, "model=gan", "dataset=ring8", "loss=least_squares", "optimizer.lr=1e6", "train.amp=fp16",
                   "train.steps=200", "train.log_every=5", "train.ckpt_every=1000", *SMALL_MLP)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gan", "wgan_gp"])
def test_compile_gives_finite_losses(model, tmp_path):
    result = _few_steps(tmp_path, f"model={model}", "dataset=ring8", "train.compile=true", "train.amp=bf16", *SMALL_MLP)
    assert result["step"] == 4 and math.isfinite(result["Loss/D"]) and math.isfinite(result["Loss/G"])


@pytest.mark.parametrize("model", ["dcgan", "wgan_gp"])
def test_channels_last_trains_like_the_default_layout(model, data_root, tmp_path):
    """train.channels_last (auto: on for conv models on CUDA) forced on here: the same run in
    NHWC memory gives the same losses as NCHW, up to the convolution algorithms' rounding."""
    runs = [_few_steps(tmp_path / layout, f"model={model}", "dataset=mnist", f"train.channels_last={layout}",
                       *dataset_overrides("mnist", data_root)) for layout in ("false", "true")]
    for key in ("Loss/D", "Loss/G"):
        assert math.isfinite(runs[1][key]) and runs[1][key] == pytest.approx(runs[0][key], rel=1e-3, abs=1e-4), key


HOST_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


def _ganlab_host_syncs(monkeypatch) -> list:
    """Every tensor-to-host read (`.item()`, `float(t)`, `if t:`, `.cpu()`, ...) that ganlab's own code makes."""
    calls, pkg = [], str(Path(ganlab.__file__).parent)
    for name in HOST_SYNCS:
        def spy(self, *args, _orig=getattr(torch.Tensor, name), _name=name, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(pkg):
                calls.append(f"{_name} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
            return _orig(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


@pytest.mark.parametrize("recipe", [
    ["model=gan", "dataset=ring8", "tricks.noisy_labels=true", "tricks.flip_labels=0.1", "tricks.instance_noise=0.1",
     "tricks.ema=0.99", "train.lr_decay_from=0.5", *SMALL_MLP],
    ["model=wgan", "dataset=ring8", *SMALL_MLP],  # weight clipping, n_critic 5, RMSprop
    ["model=wgan_gp", "dataset=mnist", "model.width=8"],  # gradient penalty on images
    ["model=dcgan", "dataset=mnist", "model.width=8", "train.amp=fp16"],  # grad scaler + fused Adam
], ids=["gan-tricks", "wgan", "wgan_gp", "dcgan-fp16"])
def test_the_hot_loop_reads_nothing_back_between_logging_steps(recipe, data_root, tmp_path, monkeypatch):
    """Host syncs come from logging, sampling and checkpoint steps only: 3x the steps between them
    make exactly as many reads of device values (NaN tracking and loss means stay on the device)."""
    def syncs(steps: int, where: Path) -> list:
        calls = _ganlab_host_syncs(monkeypatch)
        cfg = compose("device=cpu", f"train.steps={steps}", f"train.log_every={steps}", f"train.sample_every={steps}",
                      f"train.ckpt_every={steps}", "train.batch_size=16", "train.progress=none", *recipe,
                      *dataset_overrides(recipe[1].split("=")[1], data_root))
        train(cfg, where)
        monkeypatch.undo()
        return calls

    few, many = syncs(4, tmp_path / "few"), syncs(12, tmp_path / "many")
    assert few, "the spy saw no reads at all: it is not watching ganlab's code"
    assert len(many) == len(few), f"reads that grow with the steps: {Counter(many) - Counter(few)}"


def test_adam_is_fused_where_it_pays():
    """Adam's fused kernel for CPU MLPs (no per-parameter Python loop, no per-step `.item()` of the
    step count), not for CPU conv models (measured slower); optimizer.fused=true|false decides by hand."""
    cpu = torch.device("cpu")
    mlp_g, mlp_d = torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.Sequential(torch.nn.Linear(2, 1))
    conv_g, conv_d = torch.nn.ConvTranspose2d(4, 1, 4), torch.nn.Conv2d(1, 1, 4)
    fused = lambda opt: bool(opt.defaults.get("fused"))
    opt_cfg = compose("model=wgan_gp").optimizer
    assert all(map(fused, make_optimizers(opt_cfg, mlp_g, mlp_d, cpu)))
    assert not any(map(fused, make_optimizers(opt_cfg, conv_g, conv_d, cpu)))
    assert all(map(fused, make_optimizers(compose("model=dcgan", "optimizer.fused=true").optimizer, conv_g, conv_d, cpu)))
    assert not any(map(fused, make_optimizers(compose("model=gan", "optimizer.fused=false").optimizer, mlp_g, mlp_d, cpu)))
    assert not any(map(fused, make_optimizers(compose("model=wgan").optimizer, mlp_g, mlp_d, cpu)))  # RMSprop


def test_gradient_penalty_is_unchanged_by_a_loss_scale():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    real, fake, alpha = torch.randn(8, 6), torch.randn(8, 6), torch.rand(8)
    f = lambda x: critic(x).view(-1)
    plain = gradient_penalty(f, real, fake, alpha=alpha)
    scaled = gradient_penalty(f, real, fake, alpha=alpha, scale=torch.tensor(1024.0))
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-5)


def test_fp16_gradient_penalty_under_autocast_matches_fp32():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    real, fake, alpha = torch.randn(32, 6), torch.randn(32, 6), torch.rand(32)
    f = lambda x: critic(x).view(-1)
    exact = gradient_penalty(f, real, fake, alpha=alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gradient_penalty(f, real, fake, alpha=alpha, scale=torch.tensor(256.0))
    assert low.dtype == torch.float32 and low.item() == pytest.approx(exact.item(), rel=0.05)


@pytest.mark.slow
def test_benchmark_script_reports_an_overhead_ratio(tmp_path):
    """One tiny case of the real script: the table and the final `overhead_ratio X` line."""
    code = ("import sys; sys.argv = ['benchmark.py', '--quick', '--repeats', '1']; sys.path.insert(0, %r); "
            "import benchmark as b; b.CASES_OVERRIDE = [('dcgan', 'mnist', 'none', False)]; b.STEPS_OVERRIDE = 3; "
            "b.main()") % str(REPO / "scripts")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("overhead_ratio ") and float(last.split()[1]) > 0
    assert "ratio " in out.stdout and "(pairs " in out.stdout  # the per-case line with its spread
