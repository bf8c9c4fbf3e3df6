"""The speed options produce finite losses on CPU, the gradient penalty stays right under a loss
scale, and the benchmark's ratio machinery runs (its speed goals live in scripts/benchmark.py)."""

import math
import subprocess
import sys

import pytest
import torch

from ganlab.losses import gradient_penalty
from ganlab.train import train
from conftest import REPO, compose, dataset_overrides


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


@pytest.mark.parametrize("model", ["gan", "wgan_gp"])
def test_compile_gives_finite_losses(model, tmp_path):
    result = _few_steps(tmp_path, f"model={model}", "dataset=ring8", "train.compile=true", "train.amp=bf16")
    assert result["step"] == 4 and math.isfinite(result["Loss/D"]) and math.isfinite(result["Loss/G"])


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


def test_benchmark_script_reports_an_overhead_ratio(tmp_path):
    """One tiny case of the real script: the table and the final `overhead_ratio X` line."""
    code = ("import sys; sys.argv = ['benchmark.py', '--quick', '--repeats', '1']; sys.path.insert(0, %r); "
            "import benchmark as b; b.CASES_OVERRIDE = [('dcgan', 'mnist', 'none', False)]; b.STEPS_OVERRIDE = 3; "
            "b.main()") % str(REPO / "scripts")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("overhead_ratio ") and float(last.split()[1]) > 0
