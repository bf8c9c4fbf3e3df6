"""Golden values for every loss (hand-computed), and the gradient penalty against critics whose
input gradients are known in closed form."""

import math

import pytest
import torch

from ganlab.losses import LOSSES, gradient_penalty, get_loss
from conftest import LOSSES as LOSS_CONFIGS, compose

R = torch.tensor([2.0, -1.0])   # D's raw scores on reals
F = torch.tensor([0.5, -3.0])   # ... on fakes


def sp(x):  # softplus, by hand
    return math.log1p(math.exp(x))


def test_every_configured_loss_is_registered():
    assert set(LOSS_CONFIGS) == set(LOSSES)
    for name in LOSS_CONFIGS:
        loss, _, _ = get_loss(compose(f"loss={name}").loss)
        assert loss.name == name


def test_bce_discriminator_golden():
    # -log sigmoid(r) = softplus(-r);  -log(1 - sigmoid(f)) = softplus(f)
    expected = (sp(-2.0) + sp(1.0)) / 2 + (sp(0.5) + sp(-3.0)) / 2
    for name in ("minimax", "nonsaturating"):
        assert LOSSES[name].d(R, F).item() == pytest.approx(expected, rel=1e-6)


def test_bce_discriminator_soft_targets_golden():
    # target t: -(t log s + (1-t) log(1-s)) = t softplus(-x) + (1-t) softplus(x)
    expected = sum(0.9 * sp(-r) + 0.1 * sp(r) for r in (2.0, -1.0)) / 2 + sum(sp(f) for f in (0.5, -3.0)) / 2
    assert LOSSES["nonsaturating"].d(R, F, real_target=0.9).item() == pytest.approx(expected, rel=1e-6)


def test_bce_hard_labels_match_pytorch_bce_with_logits_in_value_and_gradient():
    """The softplus form taken for labels 1/0 is PyTorch's BCE-with-logits, far into both tails too."""
    import torch.nn.functional as nnf

    x = torch.tensor([-40.0, -12.0, -1.5, 0.0, 0.3, 7.0, 35.0], dtype=torch.float64)
    for target in (1.0, 0.0):
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours = LOSSES["nonsaturating"].d(a, a.detach() * 0 + 100, real_target=target, fake_target=0.0)
        ref = nnf.binary_cross_entropy_with_logits(b, torch.full_like(b, target)) + \
            nnf.binary_cross_entropy_with_logits(b.detach() * 0 + 100, torch.zeros_like(b))
        ours.backward()
        ref.backward()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
        assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-15)


def test_bce_per_sample_tensor_targets_golden():
    # noisy labels arrive as one target per sample
    real_t, fake_t = torch.tensor([1.0, 0.8]), torch.tensor([0.0, 0.3])
    expected = (sp(-2.0) + 0.8 * sp(1.0) + 0.2 * sp(-1.0)) / 2 + (sp(0.5) + 0.7 * sp(-3.0) + 0.3 * sp(3.0)) / 2
    assert LOSSES["nonsaturating"].d(R, F, real_target=real_t, fake_target=fake_t).item() == \
        pytest.approx(expected, rel=1e-6)


def test_minimax_generator_golden():
    # E[log(1 - sigmoid(f))] = -E[softplus(f)]
    assert LOSSES["minimax"].g(F).item() == pytest.approx(-(sp(0.5) + sp(-3.0)) / 2, rel=1e-6)


def test_nonsaturating_generator_golden():
    # -E[log sigmoid(f)] = E[softplus(-f)]
    assert LOSSES["nonsaturating"].g(F).item() == pytest.approx((sp(-0.5) + sp(3.0)) / 2, rel=1e-6)


def test_minimax_gradient_vanishes_where_nonsaturating_does_not():
    # D confidently rejects the fakes (logit -8): the saturating loss barely moves G.
    f = torch.tensor([-8.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(LOSSES["minimax"].g(f), f)
    (g_ns,) = torch.autograd.grad(LOSSES["nonsaturating"].g(f), f)
    assert abs(g_mm.item()) < 1e-3 < abs(g_ns.item())


def test_wasserstein_golden():
    assert LOSSES["wasserstein"].d(R, F).item() == pytest.approx((0.5 - 3.0) / 2 - (2.0 - 1.0) / 2)
    assert LOSSES["wasserstein"].g(F).item() == pytest.approx(-(0.5 - 3.0) / 2)


def test_least_squares_golden():
    expected_d = 0.5 * ((2 - 1) ** 2 + (-1 - 1) ** 2) / 2 + 0.5 * (0.5 ** 2 + 3.0 ** 2) / 2
    assert LOSSES["least_squares"].d(R, F, a=0.0, b=1.0).item() == pytest.approx(expected_d)
    assert LOSSES["least_squares"].g(F, c=1.0).item() == pytest.approx(0.5 * ((0.5 - 1) ** 2 + (-3 - 1) ** 2) / 2)
    # a=-1, b=1, c=0 coding (Mao et al. eq. 8 variant)
    expected = 0.5 * ((2 - 1) ** 2 + (-1 - 1) ** 2) / 2 + 0.5 * ((0.5 + 1) ** 2 + (-3 + 1) ** 2) / 2
    assert LOSSES["least_squares"].d(R, F, a=-1.0, b=1.0).item() == pytest.approx(expected)


def test_least_squares_params_come_from_config():
    loss, d_kw, g_kw = get_loss(compose("loss=least_squares", "loss.a=-1", "loss.c=0").loss)
    assert d_kw == {"a": -1.0, "b": 1.0} and g_kw == {"c": 0.0}


def test_hinge_golden():
    # relu(1 - r): relu(-1)=0, relu(2)=2 ; relu(1 + f): relu(1.5)=1.5, relu(-2)=0
    assert LOSSES["hinge"].d(R, F).item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert LOSSES["hinge"].g(F).item() == pytest.approx(-(0.5 - 3.0) / 2)


def test_gradient_penalty_linear_critic():
    # D(x) = <w, x>: grad = w everywhere, so the penalty is (||w|| - 1)^2 whatever the samples.
    torch.manual_seed(0)
    w = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 1, 2, 2)
    critic = lambda x: (x * w).flatten(1).sum(1)
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx((5.0 - 1.0) ** 2, rel=1e-6)


def test_gradient_penalty_per_sample_interpolation_and_norm():
    # D(x) = 0.5 ||x||^2 per sample: grad at x_hat is x_hat itself, so each sample's norm is
    # ||alpha_i r_i + (1 - alpha_i) f_i||, one alpha PER SAMPLE, the norm over all of its dims.
    critic = lambda x: 0.5 * x.flatten(1).pow(2).sum(1)
    real = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    fake = torch.tensor([[0.0, 0.0, 4.0], [0.0, -2.0, 0.0]])
    alpha = torch.tensor([0.25, 0.75])
    x_hat = torch.stack([0.25 * real[0] + 0.75 * fake[0], 0.75 * real[1] + 0.25 * fake[1]])
    norms = x_hat.norm(dim=1)  # [sqrt(0.0625 + 9), 1.0]
    expected = ((norms - 1) ** 2).mean()
    got = gradient_penalty(critic, real, fake, alpha=alpha)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # a batch-wide norm (the classic bug) would give a different number
    wrong = (x_hat.norm() - 1) ** 2
    assert abs(got.item() - wrong.item()) > 1e-2


def test_gradient_penalty_draws_one_alpha_per_sample():
    torch.manual_seed(0)
    seen = {}

    def critic(x):
        seen["x_hat"] = x.detach().clone()
        return x.flatten(1).sum(1)

    real, fake = torch.ones(64, 3, 2, 2), torch.zeros(64, 3, 2, 2)
    gradient_penalty(critic, real, fake)
    x_hat = seen["x_hat"]
    per_sample = x_hat.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))  # one alpha inside a sample
    assert per_sample[:, 0].unique().numel() == 64  # a different alpha for every sample
    assert 0 <= per_sample.min() and per_sample.max() <= 1


def test_gradient_penalty_trains_the_critic():
    lin = torch.nn.Linear(2, 1)
    pen = gradient_penalty(lambda x: lin(x).view(-1), torch.randn(8, 2), torch.randn(8, 2))
    pen.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_r1_penalty_golden_values():
    from ganlab.losses import get_penalty, r1_penalty

    w = torch.tensor([3.0, -4.0])
    linear = lambda x: x @ w + 1.0  # noqa: E731  grad = w everywhere: ||w||^2 = 25
    real, fake = torch.randn(16, 2), torch.randn(16, 2) * 100
    assert r1_penalty(linear, real, fake).item() == pytest.approx(25.0)
    quadratic = lambda x: 0.5 * x.pow(2).sum(1)  # noqa: E731  grad = x: the mean squared norm of the REALS only
    assert r1_penalty(quadratic, real, fake).item() == pytest.approx(float(real.pow(2).sum(1).mean()), rel=1e-6)
    # differentiable w.r.t. D's weights, and the config's weight is gamma / 2
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    r1_penalty(lambda x: x @ v, real).backward()
    assert torch.allclose(v.grad, 2 * v.detach())
    from omegaconf import OmegaConf

    fn, weight, kw = get_penalty(OmegaConf.load("conf/penalty/r1.yaml"))
    assert fn is r1_penalty and weight == 5.0 and kw == {}
