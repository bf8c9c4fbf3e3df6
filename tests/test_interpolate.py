"""`ganlab interpolate`: slerp/lerp between latents, strips from a real run (conditional rows keep their
class), the PNG and the run's TensorBoard image, and the refusals."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ganlab.checkpoint import load_checkpoint
from ganlab.errors import GanlabError
from ganlab.interpolate import interpolate_run, lerp, slerp
from ganlab.models import sample_z
from ganlab.objectives import load_generator
from ganlab.train import train
from conftest import cli, compose, dataset_overrides, read_events, run_cli


def test_slerp_keeps_the_ends_and_the_norm_where_lerp_shrinks_it():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(64, 128, generator=g), torch.randn(64, 128, generator=g)
    t = torch.linspace(0, 1, 5)
    s, l = slerp(z0, z1, t), lerp(z0, z1, t)
    for path in (s, l):
        assert torch.allclose(path[:, 0], z0, atol=1e-5) and torch.allclose(path[:, -1], z1, atol=1e-5)
    # two independent 128-d Gaussians are nearly orthogonal: the line's midpoint has ~1/sqrt(2) of the norm
    mid_ratio = lambda p: float((p[:, 2].norm(dim=1) / ((z0.norm(dim=1) + z1.norm(dim=1)) / 2)).mean())
    assert mid_ratio(s) == pytest.approx(1.0, abs=0.02) and mid_ratio(l) == pytest.approx(2 ** -0.5, abs=0.05)
    same = slerp(z0[:2], z0[:2], t)  # parallel ends: the straight line, no division by zero
    assert torch.isfinite(same).all() and torch.allclose(same[:, 3], z0[:2])


def _tiny(tmp_path, *overrides):
    cfg = compose(*overrides, "device=cpu", "train.steps=4", "train.batch_size=16", "train.progress=none",
                  "train.sample_every=4", "train.ckpt_every=4")
    train(cfg, tmp_path)
    return tmp_path


def test_a_conditional_strip_keeps_each_rows_class_and_lands_in_tensorboard(data_root, tmp_path):
    run = _tiny(tmp_path / "cgan", "model=cgan", "dataset=mnist", *dataset_overrides("mnist", data_root))
    out = tmp_path / "strip.png"
    r = run_cli("interpolate", f"run={run}", "n=3", "steps=4", f"out={out}", "seed=5", cwd=tmp_path)
    assert r.returncode == 0 and "3 rows x 4 steps (slerp, class k mod 10 in row k)" in r.stdout, r.stderr
    strip = np.asarray(Image.open(out).convert("L"), dtype=np.float32) / 255
    assert strip.shape == (3 * 30 + 2, 4 * 30 + 2)  # 28 px images, 2 px padding
    # the strip's ends are G's images of the two latents, each row with its own class
    g = load_generator(load_checkpoint(run / "checkpoints" / "last.pt"), ema=True)
    gen = torch.Generator().manual_seed(5)
    z0, z1 = sample_z(3, g.z_dim, generator=gen), sample_z(3, g.z_dim, generator=gen)
    with torch.no_grad():
        ends = {0: g(z0, torch.arange(3)), 3: g(z1, torch.arange(3))}
    for col, imgs in ends.items():
        for row in range(3):
            cell = strip[2 + 30 * row: 30 + 30 * row, 2 + 30 * col: 30 + 30 * col]
            want = (imgs[row, 0].clamp(-1, 1).numpy() + 1) / 2
            assert np.abs(cell - want).max() <= 1.5 / 255, (row, col)
    images = read_events(run / "tb").Images("Interpolation/slerp")
    assert [e.step for e in images] == [4] and (images[0].height, images[0].width) == strip.shape


def test_interpolate_refuses_points_and_bad_values(tmp_path):
    run = _tiny(tmp_path / "ring", "model=gan", "dataset=ring8")
    base = {"run": str(run), "n": 2, "steps": 3, "mode": "slerp", "out": str(tmp_path / "s.png"), "tensorboard": False,
            "ema": True, "checkpoint": "last", "device": "cpu", "seed": 0}
    for change, message in (({}, "trained on points"), ({"steps": 1}, "steps=1"), ({"n": 0}, "n=0"),
                            ({"mode": "spline"}, "mode='spline'"), ({"out": str(tmp_path / "s.txt")}, "out=")):
        with pytest.raises(GanlabError, match=message):
            interpolate_run(OmegaConf.create({**base, **change}))
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("shape,nrow", [((5, 1, 7, 9), 3), ((16, 3, 8, 8), 4), ((3, 3, 4, 4), 8), ((1, 1, 5, 5), 2)])
def test_the_grid_and_its_png_are_torchvisions(shape, nrow, tmp_path):
    """ganlab.viz draws grids without importing torchvision (2 s of every CLI start); same pixels as torchvision."""
    from torchvision.utils import make_grid as tv_grid
    from torchvision.utils import save_image

    from ganlab.viz import make_grid, save_png

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ours, theirs = make_grid(x, nrow=nrow, padding=2, pad_value=1.0), tv_grid(x, nrow=nrow, padding=2, pad_value=1.0)
    assert torch.equal(ours, theirs)
    save_png(ours, tmp_path / "ours.png")
    save_image(theirs, tmp_path / "theirs.png")
    assert (np.array(Image.open(tmp_path / "ours.png")) == np.array(Image.open(tmp_path / "theirs.png"))).all()
