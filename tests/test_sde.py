"""Lesson 07b: scores, the VP-SDE and the probability-flow ODE. The SDE against Song et al.'s closed form, DDIM as
Euler on the ODE, the ODE likelihood of the exact score against the exact log-likelihood, and bad input."""

import math
from conftest import expect_clear_error
import torch
from diffcourse.schedules import Schedule
from diffcourse.data import GaussianMixture, gaussian_mixture
from diffcourse.samplers import load_denoiser, euler_step, sample_ddpm, timestep_sigmas
from diffcourse.schedules import spaced_timesteps
from diffcourse.sde import (
    VPSDE,
    get_sde,
    pf_ode_drift,
    mixture_score,
    denoiser_score,
    ode_likelihood,
    ode_times,
    sample_pc,
    sample_reverse_sde,
    divergence_exact,
    divergence_hutchinson,
    dequantize,
    discrete_bpd,
    _score_x0,
)

SCH = Schedule.from_name('linear', 1000)
SDE = VPSDE(SCH)


def _toy():
    return load_denoiser('toy_mlp_gaussian_mixture')


def test_vp_sde_is_song_et_al_linear_beta():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    # the schedule's betas are float32 (6e-8 relative) times T: beta <~ 20 off by <~ 1.2e-6; 1e-5 allowed
    assert torch.allclose(SDE.beta(t), 0.1 + 19.9 * t, atol=1e-5, rtol=0)
    assert torch.allclose(SDE.int_beta(t), 0.1 * t + 19.9 * t**2 / 2, atol=1e-5, rtol=0)
    assert torch.allclose(SDE.t_of_sigma(SDE.sigma(t)), t, atol=1e-10, rtol=0)  # float64 quadratic root


def test_ddim_step_is_euler_on_the_pf_ode_in_sigma():
    den = _toy()
    t, t_next = 0.5, 0.45
    a, s, s_next = SDE.abar(t).item(), SDE.sigma(t).item(), SDE.sigma(t_next).item()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    xs = x / math.sqrt(a)
    with torch.no_grad():
        D = den(xs, s)
        score, _ = _score_x0(den, SDE, x, t)
        dx_dt = pf_ode_drift(SDE, x, t, score) / math.sqrt(a) + 0.5 * SDE.beta(t).item() * xs
        dx_dsigma = dx_dt / (SDE.beta(t).item() / (2 * s * a))
    # float32: roundings (1.2e-7) of terms <~ 30 over ~10 operations, divided by d sigma / dt ~ 10: ~4e-6; 1e-4 allowed
    assert torch.allclose(dx_dsigma, (xs - D) / s, atol=1e-4, rtol=0)
    assert torch.allclose(euler_step(xs, D, s, s_next), xs + (s_next - s) * dx_dsigma, atol=1e-4, rtol=0)


def test_ode_likelihood_of_the_exact_gaussian_score_is_exact():
    S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    gauss = GaussianMixture(torch.tensor([[0.5, -0.3]], dtype=torch.float64), S[None])
    x = gauss.sample(64, torch.Generator().manual_seed(1)).double()
    r = ode_likelihood(mixture_score(gauss, SDE), SDE, x, ode_times(60))
    a1 = SDE.abar(1.0).item()
    prior_share = r['prior'] - gauss.noised(a1**0.5, (1 - a1) ** 0.5).log_prob(r['z'])
    # RK4 with 60 steps on this smooth flow: ~1e-6 (the lesson's step study); 1e-4 allowed
    assert (r['logp'] - prior_share - gauss.log_prob(x)).abs().max() < 1e-4


def test_hutchinson_is_unbiased_and_exact_divergence_matches_jacobian():
    W = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def f(x):
        return torch.tanh(x @ W)

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    J = torch.stack([torch.autograd.functional.jacobian(f, xi[None])[0, :, 0] for xi in x])
    _, div = divergence_exact(f, x)
    assert torch.allclose(div, J.diagonal(dim1=1, dim2=2).sum(1), atol=1e-12)  # float64, same derivatives
    g = torch.Generator().manual_seed(4)
    est = torch.stack(
        [divergence_hutchinson(f, x, torch.randn(x.shape, generator=g, dtype=x.dtype))[1] for _ in range(4000)]
    )
    assert ((est.mean(0) - div).abs() < 5 * est.std(0) / 4000**0.5).all()  # unbiased, within 5 standard errors


def test_samplers_run_and_pc_without_corrector_is_ddpm():
    den = _toy()
    sig = timestep_sigmas(SCH, spaced_timesteps(5, 1000, 'leading'))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    a = sample_pc(den, x, sig, corrector_steps=0, generator=torch.Generator().manual_seed(6))
    b = sample_ddpm(den, x, sig, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(a, b, atol=1e-6)  # the same float32 operations, ~1e-7 x |x| <~ 3
    out = sample_reverse_sde(den, x, SDE.t_of_sigma(sig.double()).float(), generator=torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.isfinite().all()


def test_dequantize_and_bpd():
    assert abs(discrete_bpd(torch.tensor([256 * math.log(2)]), 256).item() - 8.0) < 1e-6  # uniform: 8 bits
    x = dequantize(torch.linspace(-1, 1, 256), torch.Generator().manual_seed(8))
    k = torch.arange(256)
    assert ((x >= 2 * k / 256 - 1) & (x < 2 * (k + 1) / 256 - 1)).all()


_MIX = gaussian_mixture()
_X = torch.zeros(3, 2)
BAD = [  # (call, error, the words the message must contain)
    (lambda: SDE.abar(1.5), ValueError, "t must lie in the SDE's time range [0, 1], got values in [1.5, 1.5]"),
    (lambda: SDE.beta(-0.1), ValueError, "time range [0, 1]"),
    (lambda: SDE.t_of_sigma(1e4), ValueError, 'sigma must lie in [0, sigma(1)'),
    (lambda: VPSDE(SCH.abar), TypeError, 'schedule must be a diffcourse.schedules.Schedule'),
    (lambda: get_sde('ve', SCH), ValueError, "Unknown sde 've'; valid choices are ['vp']"),
    (
        lambda: ode_likelihood(mixture_score(_MIX, SDE), SDE, _X, ode_times(2), solver='rk45'),
        ValueError,
        "Unknown solver 'rk45'; valid choices are ['euler', 'heun', 'rk4']",
    ),
    (
        lambda: ode_likelihood(mixture_score(_MIX, SDE), SDE, _X, ode_times(2), probe='normal'),
        ValueError,
        "Unknown probe 'normal'; valid choices are ['gaussian', 'rademacher']",
    ),
    (
        lambda: ode_likelihood(mixture_score(_MIX, SDE), SDE, _X, ode_times(2), divergence='approx'),
        ValueError,
        "Unknown divergence 'approx'; valid choices are ['exact', 'hutchinson']",
    ),
    (
        lambda: ode_likelihood(mixture_score(_MIX, SDE), SDE, _X, torch.tensor([0.5, 0.2])),
        ValueError,
        'ts must be a 1-D tensor of at least 2 increasing times',
    ),
    (
        lambda: ode_likelihood(mixture_score(_MIX, SDE), SDE, _X, torch.tensor([0.5, 1.2])),
        ValueError,
        "ts must lie in the SDE's time range [0, 1]",
    ),
    (lambda: ode_times(0), ValueError, 'steps must be an integer >= 1, got 0'),
    (lambda: ode_times(2.5), TypeError, 'steps must be an integer >= 1, got 2.5'),
    (lambda: ode_times(4, 0.5, 0.5), ValueError, 't0 must be below t1'),
    (lambda: ode_times(4, -0.5), ValueError, "t0 must lie in the SDE's time range"),
    (lambda: sample_reverse_sde(_toy(), _X, torch.tensor([1.2, 0.0])), ValueError, "ts must lie in"),
    (
        lambda: sample_reverse_sde(_toy().net, _X, torch.tensor([1.0, 0.0])),
        TypeError,
        'model must be a diffcourse.samplers.Denoiser',
    ),
    (lambda: sample_pc(_toy(), _X, torch.tensor([1.0, 0.0]), snr=0.0), ValueError, 'snr must be a finite number > 0'),
    (
        lambda: sample_pc(_toy(), _X, torch.tensor([1.0, 0.0]), corrector_steps=-1),
        ValueError,
        'corrector_steps must be an integer >= 0',
    ),
    (lambda: sample_pc(_toy(), _X, torch.tensor([0.1, 1.0])), ValueError, 'sigmas must decrease strictly'),
    (lambda: denoiser_score(_toy(), SDE, 'v'), ValueError, "the network was trained to predict 'epsilon'"),
    (
        lambda: denoiser_score(load_denoiser('toy_mlp_v_gaussian_mixture'), SDE, 'eps'),
        ValueError,
        "the network was trained to predict 'v_prediction'",
    ),
    (lambda: denoiser_score(_toy(), SDE, 'score'), ValueError, "Unknown prediction_type 'score'"),
    (lambda: mixture_score(SCH, SDE), TypeError, 'mix must be a diffcourse.data.GaussianMixture'),
    (lambda: dequantize(_X, levels=1), ValueError, 'levels must be an integer >= 2, got 1'),
    (lambda: discrete_bpd(torch.zeros(1), 0), ValueError, 'dims must be an integer >= 1'),
]


def test_bad_input_gets_a_clear_error(bad_case):  # one case of BAD per test (conftest.py)
    expect_clear_error(*bad_case)
