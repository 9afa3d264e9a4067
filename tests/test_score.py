"""Tests for lesson_lib.score: exact densities and scores of a noised Gaussian mixture, Langevin."""

import math

import pytest
import torch

from lesson_lib.denoiser import MLPDenoiser
from lesson_lib.loop import TrainConfig, train
from lesson_lib.losses import diffusion_loss
from lesson_lib.mixture import GaussianMixture, exact_eps_model
from lesson_lib.param import eps_from_score
from lesson_lib.samplers import ddim_sample
from lesson_lib.schedules import NoiseSchedule
from lesson_lib.score import annealed_langevin, langevin

ALPHA_BARS = [1.0, 0.9, 0.5, 0.1, 1e-3, 0.0]


def skewed_mixture(d: int = 2) -> GaussianMixture:
    """Three components with unequal weights and diagonal, per-coordinate stds."""
    g = torch.Generator().manual_seed(1)
    means = 2 * torch.randn(3, d, generator=g, dtype=torch.float64)
    stds = 0.3 + torch.rand(3, d, generator=g, dtype=torch.float64)
    return GaussianMixture.create(means, stds, weights=[0.5, 0.3, 0.2])


def numerical_score(gm: GaussianMixture, x: torch.Tensor, alpha_bar: float, h: float = 1e-5):
    """Central finite differences of log_prob, one coordinate at a time."""
    cols = []
    for i in range(x.shape[-1]):
        e = torch.zeros_like(x)
        e[..., i] = h
        cols.append((gm.log_prob(x + e, alpha_bar) - gm.log_prob(x - e, alpha_bar)) / (2 * h))
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("alpha_bar", ALPHA_BARS)
@pytest.mark.parametrize("d", [2, 3])
def test_score_is_the_gradient_of_log_prob(alpha_bar, d):
    gm = skewed_mixture(d)
    x = 2.5 * torch.randn(50, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = gm.score(x, alpha_bar)
    assert exact.shape == x.shape
    torch.testing.assert_close(exact, numerical_score(gm, x, alpha_bar), rtol=1e-6, atol=1e-6)


def test_score_is_the_gradient_by_autograd_too():
    gm = GaussianMixture.example()
    x = torch.randn(30, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, 0.3).sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), 0.3), grad)


@pytest.mark.parametrize("alpha_bar", [1.0, 0.5, 0.05])
def test_noised_density_integrates_to_one(alpha_bar):
    gm = GaussianMixture.example()  # 8 modes on a ring of radius 2, std 0.25
    h = 0.05  # the midpoint rule is very accurate for Gaussians wider than h
    u = torch.arange(-5, 5, h, dtype=torch.float64) + h / 2
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1)  # (200, 200, 2)
    mass = gm.log_prob(grid, alpha_bar).exp().sum() * h * h
    assert abs(mass.item() - 1) < 1e-4


@pytest.mark.parametrize("alpha_bar", [1.0, 0.3])
def test_log_prob_agrees_with_torch_distributions(alpha_bar):
    gm = skewed_mixture(3)
    m = gm.noised(alpha_bar)
    D = torch.distributions
    ref = D.MixtureSameFamily(
        D.Categorical(probs=m.weights), D.Independent(D.Normal(m.means, m.stds), 1)
    )
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(gm.log_prob(x, alpha_bar), ref.log_prob(x))


def test_noised_has_the_forward_process_parameters():
    gm = skewed_mixture()
    m = gm.noised(0.36)
    torch.testing.assert_close(m.means, 0.6 * gm.means)
    torch.testing.assert_close(m.stds**2, 0.36 * gm.stds**2 + 0.64)
    torch.testing.assert_close(m.weights, gm.weights)
    pure_noise = torch.distributions.Normal(0.0, 1.0)
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(gm.log_prob(x, 0.0), pure_noise.log_prob(x).sum(-1).double())


def test_alpha_bar_may_be_a_one_element_tensor():
    gm = GaussianMixture.example()
    x = torch.randn(5, 2, dtype=torch.float64)
    ab = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)[3]  # like schedule.alpha_bar[t]
    torch.testing.assert_close(gm.score(x, ab), gm.score(x, ab.item()))


def mixture_moments(gm: GaussianMixture):
    w, mu, var = gm.weights, gm.means, gm.stds**2
    mean = w @ mu
    second = (w[:, None, None] * (torch.diag_embed(var) + mu[:, :, None] * mu[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


@pytest.mark.parametrize("alpha_bar", [1.0, 0.4])
def test_samples_have_the_mixture_mean_and_covariance(alpha_bar):
    gm = skewed_mixture()
    x = gm.sample(200_000, torch.Generator().manual_seed(4), alpha_bar, dtype=torch.float64)
    assert x.shape == (200_000, 2) and x.dtype == torch.float64
    mean, cov = mixture_moments(gm.noised(alpha_bar))
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(x.T.cov(), cov, atol=0.04, rtol=0.02)


def test_noised_samples_match_noising_clean_samples():
    gm = skewed_mixture()
    g = torch.Generator().manual_seed(5)
    x0 = gm.sample(200_000, g, dtype=torch.float64)
    x_t = math.sqrt(0.2) * x0 + math.sqrt(0.8) * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    mean, cov = mixture_moments(gm.noised(0.2))
    torch.testing.assert_close(x_t.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(x_t.T.cov(), cov, atol=0.02, rtol=0.02)


def test_sampling_is_reproducible_with_a_generator():
    gm = GaussianMixture.example()
    a = gm.sample(10, torch.Generator().manual_seed(7))
    b = gm.sample(10, torch.Generator().manual_seed(7))
    assert a.dtype == torch.get_default_dtype() and torch.equal(a, b)


def test_langevin_converges_to_a_gaussian():
    mu, sigma = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5
    gm = GaussianMixture.create(mu[None], sigma)
    g = torch.Generator().manual_seed(6)
    x0 = torch.zeros(2000, 2, dtype=torch.float64)
    x = langevin(gm.score, x0, step_size=0.01, n_steps=400, generator=g)
    torch.testing.assert_close(x.mean(0), mu, atol=0.03, rtol=0)
    # unadjusted Langevin's stationary std is sigma / sqrt(1 - step / (4 sigma^2)): 0.5% high here
    torch.testing.assert_close(x.std(0), torch.full((2,), sigma, dtype=x.dtype), atol=0.02, rtol=0)


def test_langevin_trajectory_and_reproducibility():
    gm = GaussianMixture.example()
    x0 = torch.zeros(7, 2)
    path = langevin(gm.score, x0, 0.01, 5, torch.Generator().manual_seed(0), return_trajectory=True)
    assert path.shape == (6, 7, 2) and torch.equal(path[0], x0)
    last = langevin(gm.score, x0, 0.01, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(path[-1], last)
    levels = [0.1, 0.5, 0.9]
    path = annealed_langevin(gm.score, x0, levels, 0.01, 4, torch.Generator(), True)
    assert path.shape == (1 + 3 * 4, 7, 2)


def test_annealed_langevin_finds_the_mode_weights_that_plain_langevin_misses():
    """Song & Ermon 2019, Fig. 3: separated modes with weights 0.2 / 0.8."""
    gm = GaussianMixture.create([[-4.0, 0.0], [4.0, 0.0]], 0.5, weights=[0.2, 0.8])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    plain = langevin(gm.score, x0, 0.05, 320, g)
    sigmas = torch.logspace(1, -2, 8, dtype=torch.float64)  # 10 ... 0.01
    annealed = annealed_langevin(gm.score, x0, 1 / (1 + sigmas**2), 1e-4, 40, g)
    right = (annealed[:, 0] > 0).double().mean().item()
    assert 0.4 < (plain[:, 0] > 0).double().mean().item() < 0.62  # stuck where it started
    assert 0.7 < right < 0.9
    torch.testing.assert_close(
        annealed[annealed[:, 0] > 0].std(0), torch.full((2,), 0.5).double(), atol=0.05, rtol=0
    )


def test_example_is_a_ring():
    gm = GaussianMixture.example(n_modes=6, radius=3.0, std=0.1)
    assert gm.means.shape == (6, 2) and gm.dim == 2
    torch.testing.assert_close(gm.means.norm(dim=1), torch.full((6,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(gm.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda gm: gm.score(torch.zeros(4, 3)), "x"),
        (lambda gm: gm.log_prob([[0.0, 0.0]]), "x"),
        (lambda gm: gm.score(torch.zeros(4, 2), alpha_bar=1.5), "alpha_bar"),
        (lambda gm: gm.noised(-0.1), "alpha_bar"),
        (lambda gm: gm.sample(-1), "n"),
        (lambda gm: GaussianMixture.create([[0.0, 0.0]], stds=-1.0), "stds"),
        (lambda gm: GaussianMixture.create([[0.0, 0.0]], stds=[1.0, 2.0]), "stds"),
        (lambda gm: GaussianMixture.create([[0.0], [1.0]], weights=[1.0]), "weights"),
        (lambda gm: GaussianMixture.create([0.0, 1.0]), "means"),
        (lambda gm: GaussianMixture.example(n_modes=0), "n_modes"),
        (lambda gm: langevin(gm.score, torch.zeros(3, 2), -0.1, 5), "step_size"),
        (lambda gm: langevin(gm.score, torch.zeros(3, 2), 0.1, 2.5), "n_steps"),
        (
            lambda gm: annealed_langevin(gm.score, torch.zeros(3, 2), [0.5, 1.0], 0.1, 5),
            "alpha_bars",
        ),
        (lambda gm: annealed_langevin(gm.score, torch.zeros(3, 2), [], 0.1, 5), "alpha_bars"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call(GaussianMixture.example())


# ----------------------------------------------------------------------------- noise predictors


def test_exact_eps_model_is_minus_sqrt_one_minus_alpha_bar_times_the_score():
    gm, schedule = skewed_mixture(), NoiseSchedule.linear(100)
    model = exact_eps_model(gm, schedule)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    t = torch.tensor([0, 99, 50, 50, 7, 0])  # a different noise level per row
    eps = model(x, t)
    assert eps.shape == x.shape
    for i, step in enumerate(t.tolist()):
        ab = schedule.alpha_bar[step]
        torch.testing.assert_close(eps[i], -(1 - ab).sqrt() * gm.score(x[i], ab))
    torch.testing.assert_close(
        eps[2:4], eps_from_score(schedule, gm.score(x[2:4], schedule.alpha_bar[50]), 50)
    )


def test_exact_eps_model_is_the_posterior_mean_of_the_noise():
    """E[eps | x_t] by Bayes' rule over clean samples (self-normalised importance weights
    q(x_t | x0_i)), no mixture formula: the minimiser of the training loss."""
    gm, schedule = skewed_mixture(), NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(9)
    t, ab = 300, schedule.alpha_bar[300].item()
    x0 = gm.sample(200_000, g, dtype=torch.float64)
    x_t = gm.sample(4, g, ab, torch.float64)
    eps_i = (x_t[:, None] - math.sqrt(ab) * x0[None]) / math.sqrt(1 - ab)  # (4, N, 2)
    w = torch.softmax(-0.5 * (eps_i**2).sum(-1), dim=1)
    mc = (w[..., None] * eps_i).sum(1)
    exact = exact_eps_model(gm, schedule)(x_t, torch.full((4,), t))
    torch.testing.assert_close(mc, exact, atol=0.03, rtol=0)


def test_probability_flow_with_the_exact_score_samples_the_mixture():
    """DDIM with eta = 0 on the exact eps follows the probability-flow ODE, whose marginal at the
    end is the data distribution: the samples have the mixture's mean and covariance."""
    gm, schedule = skewed_mixture(), NoiseSchedule.linear(1000)
    x_T = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    x = ddim_sample(exact_eps_model(gm, schedule), schedule, x_T, steps=100, spacing="trailing")
    mean, cov = mixture_moments(gm)
    torch.testing.assert_close(x.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(x.T.cov(), cov, atol=0.1, rtol=0.05)


def test_mlp_denoiser_shapes_and_determinism():
    model = MLPDenoiser(dim=3, hidden=32, depth=1, T=50, fourier=8)
    x, t = torch.randn(5, 3), torch.tensor([0, 1, 2, 48, 49])
    assert model(x, t).shape == (5, 3)
    assert torch.equal(MLPDenoiser(seed=4).freqs, MLPDenoiser(seed=4).freqs)
    assert not torch.equal(MLPDenoiser(seed=4).freqs, MLPDenoiser(seed=5).freqs)
    no_fourier = MLPDenoiser(dim=2, hidden=16, fourier=0)
    assert no_fourier(torch.randn(4, 2), torch.zeros(4, dtype=torch.long)).shape == (4, 2)
    x_T = torch.randn(7, 3)
    assert ddim_sample(model.eval(), NoiseSchedule.linear(50), x_T, steps=5).shape == (7, 3)


def test_mlp_denoiser_learns_the_mixture_noise():
    """A short run brings the loss well below that of predicting zero (= 1) and the network
    towards the exact eps at a mid noise level."""
    gm, schedule = GaussianMixture.example(), NoiseSchedule.linear(1000)
    torch.manual_seed(0)
    data = gm.sample(5000, torch.Generator().manual_seed(11))
    result = train(
        MLPDenoiser(hidden=64),
        lambda m, batch, g: diffusion_loss(m, schedule, batch[0], generator=g),
        [data],
        TrainConfig(
            steps=400, batch_size=128, lr=2e-3, warmup=20, ema_decay=0.99, checkpoint_every=0
        ),
        progress=False,
    )
    assert result.losses[-1][1] < 0.6
    x = gm.sample(2000, torch.Generator().manual_seed(12), schedule.alpha_bar[400])
    t = torch.full((2000,), 400)
    with torch.no_grad():
        eps = result.model(x, t)
    exact = exact_eps_model(gm, schedule)(x, t)
    assert ((eps - exact).norm() / exact.norm()).item() < 0.2


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: MLPDenoiser()(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), "x_t"),
        (lambda: MLPDenoiser()(torch.zeros(4, 2), torch.zeros(4)), "t"),
        (lambda: MLPDenoiser(T=10)(torch.zeros(2, 2), torch.tensor([0, 10])), "t"),
        (lambda: MLPDenoiser(fourier_scale=0.0), "fourier_scale"),
        (lambda: MLPDenoiser(hidden=0), "hidden"),
        (
            lambda: exact_eps_model(GaussianMixture.example(), NoiseSchedule.linear(10))(
                torch.zeros(2, 2), torch.tensor([0, 10])
            ),
            "t",
        ),
        (
            lambda: exact_eps_model(GaussianMixture.example(), NoiseSchedule.linear(10))(
                torch.zeros(2, 3), torch.tensor([0, 1])
            ),
            "x",
        ),
    ],
)
def test_noise_predictors_name_bad_arguments(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
