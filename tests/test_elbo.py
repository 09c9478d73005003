"""Lesson 03: the ELBO. Parity with diffusers' DDPMScheduler,
and the ELBO of the optimal model against the exact likelihood."""

import math
from conftest import expect_clear_error
import pytest, torch
from diffusers import DDPMScheduler
from diffcourse.schedules import Schedule, q_sample, spaced_timesteps
from diffcourse.data import GaussianMixture, gaussian_mixture
from diffcourse.elbo import (
    x0_from_eps,
    eps_from_x0,
    v_from_x0_eps,
    x0_from_v,
    eps_from_v,
    score_from_eps,
    eps_from_score,
    to_x0_eps,
    posterior_mean_var,
    reverse_variance,
    normal_kl,
    normal_log_prob,
    vlb_weight,
    vlb_term,
    vlb_terms,
    nelbo,
    prior_kl,
    optimal_eps_model,
    bits_per_dim,
    decoder_variance,
)

SCH = Schedule.from_name('linear', 1000)
U32 = 1.2e-7  # float32 machine epsilon (one rounding is at most half of it, relative)
U64 = 2.2e-16  # float64's


def x0_tol(x_t, abar_t, t):
    """Allowed difference of two float32 x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar): ~4 roundings of |x_t|, and
    diffusers' float32 abar (off by ~sqrt(t + 1) x 6e-8) through sqrt(1 - abar) times |eps| <~ 4.5, all / sqrt(abar)."""
    a = float(abar_t)
    return (4 * U32 * (1 + x_t.abs().max().item()) + 6e-8 * (t + 1) ** 0.5 * 4.5 / (2 * (1 - a) ** 0.5)) / a**0.5


def _batch(shape=(2, 3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize('variance_type', ['fixed_small', 'fixed_large'])
@pytest.mark.parametrize('t', [0, 1, 2, 10, 250, 999])
def test_posterior_and_variance_equal_ddpm_step(variance_type, t):
    x0, eps = _batch()
    ref = DDPMScheduler(num_train_timesteps=1000, variance_type=variance_type, clip_sample=False)
    x_t = q_sample(x0, t, eps, SCH.abar)
    out = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(7))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
    x0_hat, _ = to_x0_eps(eps, x_t, SCH.abar[[t, t]])
    mean, var = posterior_mean_var(x0_hat, x_t, t, SCH)
    s2 = reverse_variance(t, SCH, variance_type, x=x_t) if t > 0 else torch.zeros_like(var)
    torch.testing.assert_close(out.pred_original_sample, x0_hat, rtol=0, atol=x0_tol(x_t, SCH.abar[t], t))
    # the mean carries x0_hat's error times c0 <= 1, and sqrt(variance) diffusers' 6e-4 relative (below) x |z| <~ 4
    tol_prev = x0_tol(x_t, SCH.abar[t], t) + 6e-4 * s2.sqrt().max().item() * 4
    torch.testing.assert_close(out.prev_sample, mean + s2.sqrt() * z, rtol=0, atol=tol_prev)
    if t > 0:  # diffusers' 1 - abar from a float32 abar near 1: 6e-8 / (1 - abar_1) = 6e-8 / 1e-4 = 6e-4 relative
        torch.testing.assert_close(ref._get_variance(t).double(), s2.flatten()[0].double(), rtol=1e-3, atol=0)


def test_posterior_with_spaced_timesteps_equals_ddpm_step():
    x0, eps = _batch(seed=1)
    ref = DDPMScheduler(num_train_timesteps=1000, variance_type='fixed_small', clip_sample=False)
    ref.set_timesteps(50)
    ts = spaced_timesteps(50, 1000, 'leading')
    for i in (0, 10, 48):
        t, t_prev = ts[i].item(), ts[i + 1].item()
        x_t = q_sample(x0, t, eps, SCH.abar)
        out = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(i))
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(i))
        mean, var = posterior_mean_var(x0_from_eps(x_t, eps, SCH.abar[[t, t]]), x_t, t, SCH, t_prev=t_prev)
        tol = x0_tol(x_t, SCH.abar[t], t) + 6e-4 * var.sqrt().max().item() * 4  # as in the test above
        torch.testing.assert_close(out.prev_sample, mean + var.sqrt() * z, rtol=0, atol=tol)


def test_v_prediction_equals_diffusers():
    x0, eps = _batch(seed=2)
    t = torch.tensor([5, 900])
    ref = DDPMScheduler(num_train_timesteps=1000, prediction_type='v_prediction', clip_sample=False)
    v = v_from_x0_eps(x0, eps, SCH.abar[t])
    # at t = 5, 1 - abar = 6e-4 comes from diffusers' float32 abar (off by ~sqrt(5) x 6e-8): 2e-4 relative, 1e-4 in
    # sqrt(1 - abar) = 0.025, times |x0| <~ 4: 1e-5; 2e-5 allowed
    torch.testing.assert_close(v, ref.get_velocity(x0, eps, t), rtol=0, atol=2e-5)
    x_t = q_sample(x0, t, eps, SCH.abar)
    for i in range(2):
        out = ref.step(v[i : i + 1], t[i].item(), x_t[i : i + 1], generator=torch.Generator().manual_seed(0))
        # no division: a few float32 roundings of |x_t|, |v| <~ 6, plus abar's (sqrt(900) x 6e-8): ~1e-6; 1e-5 allowed
        ours = x0_from_v(x_t[i : i + 1], v[i : i + 1], SCH.abar[t[i : i + 1]])
        torch.testing.assert_close(out.pred_original_sample, ours, rtol=0, atol=1e-5)


def test_conversions_are_exact_inverses():
    x0, eps = (a.double() for a in _batch(seed=3))
    t = torch.tensor([0, 640])
    a = SCH.abar[t]
    x_t = q_sample(x0, t, eps, SCH.abar)
    v = v_from_x0_eps(x0, eps, a)
    # float64: a few roundings (2.2e-16) of numbers <~ 5, divided by sqrt(abar) or sqrt(1 - abar) >= 0.01 (t = 0):
    # ~1e-13; 1e-12 allowed
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    close(x0_from_eps(x_t, eps, a), x0)
    close(eps_from_x0(x_t, x0, a), eps)
    close(x0_from_v(x_t, v, a), x0)
    close(eps_from_v(x_t, v, a), eps)
    close(eps_from_score(score_from_eps(eps, a), a), eps)
    for p, out in dict(eps=eps, x0=x0, v=v).items():
        x0h, epsh = to_x0_eps(out, x_t, a, prediction_type=p)
        close(x0h, x0)
        close(epsh, eps)


def test_normal_kl_and_log_prob_match_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(4)
    m1, m2, l1, l2 = torch.randn(4, 50, generator=g, dtype=torch.float64)
    # float64, a handful of exp / log / squares of numbers <~ 4 (exp(|logvar|) <~ 50): ~1e-13 relative; 1e-12 allowed
    kl_ref = kl_divergence(Normal(m1, (l1 / 2).exp()), Normal(m2, (l2 / 2).exp()))
    torch.testing.assert_close(normal_kl(m1, l1, m2, l2), kl_ref, rtol=1e-12, atol=1e-12)
    lp_ref = Normal(m2, (l2 / 2).exp()).log_prob(m1)
    torch.testing.assert_close(normal_log_prob(m1, m2, l2), lp_ref, rtol=1e-12, atol=1e-12)


def test_kl_term_is_weighted_eps_error():
    "DDPM eq. 12: the denoising KL is w_t ||eps - eps_hat||^2 plus a model-independent constant."
    g = torch.Generator().manual_seed(5)
    x0, eps, eps_hat = torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    s = Schedule.from_name('cosine', 200)
    abar = torch.cumprod(1 - s.betas.double(), 0)
    for vt in ('fixed_small', 'fixed_large'):
        t = torch.full((6,), 17)
        x_t = q_sample(x0, t, eps, abar)
        kl_hat = vlb_term(x0, x_t, t, eps_hat, s, vt)
        kl_star = vlb_term(x0, x_t, t, eps, s, vt)
        # float64: the difference of two KLs keeps their rounding, ~20 x 2.2e-16 x their size
        tol = 20 * U64 * (kl_hat.abs().max() + kl_star.abs().max()).item()
        weighted = vlb_weight(t, s, vt) * ((eps - eps_hat) ** 2).sum(1)
        torch.testing.assert_close(kl_hat - kl_star, weighted, rtol=0, atol=tol)


def test_optimal_model_is_the_posterior_mean():
    "Tweedie via the noised mixture's score equals sum_k r_k E[x0 | x_t, k] computed directly."
    mix = gaussian_mixture()
    g = torch.Generator().manual_seed(6)
    x0 = mix.sample(300, g).double()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    model = optimal_eps_model(mix, SCH.abar)
    for t in (3, 400):
        a = SCH.abar[t].double().item()
        x_t = q_sample(x0, t, eps, SCH.abar)
        C = a * mix.covs + (1 - a) * torch.eye(2, dtype=torch.float64)
        logr = (
            torch.stack(
                [
                    torch.distributions.MultivariateNormal(a**0.5 * mix.means[k], C[k]).log_prob(x_t)
                    for k in range(mix.K)
                ],
                1,
            )
            + mix.weights.log()
        )
        r = torch.softmax(logr, 1)
        post = (
            mix.means
            + ((a**0.5 * mix.covs @ torch.linalg.inv(C)) @ (x_t[:, None] - a**0.5 * mix.means)[..., None])[..., 0]
        )
        # float64 through 2x2 inverses of condition number <= 1 / 0.1^2 (component stds 0.1 and 1) and a softmax:
        # ~100 x 2.2e-16 x |x| <~ 3, divided by sqrt(abar) >= 0.45: ~1e-13; 1e-10 allowed
        ours = x0_from_eps(x_t, model(x_t, torch.full((300,), t)), a)
        torch.testing.assert_close(ours, (r[..., None] * post).sum(1), rtol=0, atol=1e-10)


def _gap(mix, T, N, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(N, g).double()
    s = Schedule.from_name('cosine', T)
    v = vlb_terms(optimal_eps_model(mix, s.abar), x0, s, 'fixed_large', generator=g)
    gap = (nelbo(v, s) + mix.log_prob(x0)) / x0.shape[1]
    return gap.mean().item(), gap.std().item() / math.sqrt(N)


def test_elbo_of_optimal_model_approaches_exact_likelihood_gaussian():
    """Goal of lesson 03: with the optimal model the gap at T = 1000 is < 0.01 nats/dim for Gaussian data
    (MC, mean + 2 SE)."""
    ang = math.pi / 6
    R = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]], dtype=torch.float64)
    gauss = GaussianMixture(
        torch.tensor([[0.5, -0.3]]), (R @ torch.diag(torch.tensor([1.0, 0.09], dtype=torch.float64)) @ R.T)[None]
    )
    g10, se10 = _gap(gauss, 10, 1000, 0)
    g1000, se1000 = _gap(gauss, 1000, 1000, 1)
    assert g10 > 0.05 and g10 > g1000 + 4 * max(se10, se1000)  # approaches from below as T grows
    assert g1000 + 2 * se1000 < 0.01, (g1000, se1000)
    assert g1000 > -4 * se1000  # a lower bound: not significantly above log p


def test_elbo_of_optimal_model_mixture_at_t100():
    g100, se = _gap(gaussian_mixture(), 100, 500, 2)
    assert -4 * se < g100 < 0.2, (g100, se)


def test_bits_per_dim_and_decoder_variance():
    assert abs(bits_per_dim(torch.tensor([2 * math.log(2)]), 2).item() - 1) < 1e-6  # float32 tensor: 2 roundings
    s = Schedule.from_name('linear', 1000)
    a0 = 1 - s.betas.double()[0].item()
    assert abs(decoder_variance(s) - (1 - a0) / a0) < 1e-15  # the same float64 numbers (1e-4 x 2.2e-16)


# ---- bad input ----
def test_shape_mismatches():
    x = torch.zeros(4, 2)
    s = Schedule.from_name('cosine', 10)
    with pytest.raises(ValueError, match='x0 and x_t must have the same shape'):
        posterior_mean_var(x, x[:3], 1, s)
    with pytest.raises(ValueError, match='x_t and eps must have the same shape'):
        x0_from_eps(x, x[:, :1], 0.5)
    with pytest.raises(ValueError, match='abar_t must be a \\(B,\\) tensor with B=4'):
        x0_from_eps(x, x, torch.ones(3) / 2)
    with pytest.raises(ValueError, match='the model returned shape \\(4, 1\\)'):
        vlb_terms(lambda x_t, t: x_t[:, :1], x, s)
    with pytest.raises(ValueError, match='x_t and model output must have the same shape'):
        to_x0_eps(x[:2], x, 0.5)


def test_T_mismatched_with_schedule():
    x = torch.zeros(4, 2)
    s10, s1000 = Schedule.from_name('cosine', 10), Schedule.from_name('cosine', 1000)
    with pytest.raises(ValueError, match='must lie in \\[0, 9\\] for this schedule of T=10 steps'):
        vlb_term(x, x, 500, x, s10)
    with pytest.raises(ValueError, match='must lie in \\[0, 9\\]'):
        posterior_mean_var(x, x, torch.tensor([0, 1, 2, 10]), s10)
    v = vlb_terms(optimal_eps_model(gaussian_mixture(), s10.abar), x, s10)
    with pytest.raises(ValueError, match='the terms cover T=10 steps but the schedule has T=1000'):
        nelbo(v, s1000)
    with pytest.raises(ValueError, match='must lie in \\[0, 9\\]'):
        optimal_eps_model(gaussian_mixture(), s10.abar)(x, torch.full((4,), 10))


def test_unknown_names_and_types():
    x = torch.zeros(2, 2)
    s = Schedule.from_name('cosine', 10)
    with pytest.raises(ValueError, match="known: \\['fixed_large', 'fixed_small'\\]"):
        reverse_variance(1, s, 'learned_range')
    with pytest.raises(ValueError, match="Unknown prediction_type 'score'; valid choices are"):
        to_x0_eps(x, x, 0.5, prediction_type='score')
    with pytest.raises(TypeError, match='schedule must be a diffcourse.schedules.Schedule'):
        posterior_mean_var(x, x, 1, s.abar)
    with pytest.raises(ValueError, match='t_prev must satisfy'):
        posterior_mean_var(x, x, 3, s, t_prev=5)
    with pytest.raises(ValueError, match='t = 0 is the reconstruction term'):
        vlb_weight(0, s)


BAD = [  # (call, error, the words the message must contain)
    (lambda: x0_from_eps(torch.zeros(4, 2), torch.zeros(4, 2), 500), ValueError, 'abar_t must lie in (0, 1]'),
    (lambda: eps_from_x0(torch.zeros(4, 2), torch.zeros(4, 2), float('nan')), ValueError, 'got values in [nan, nan]'),
    (
        lambda: x0_from_v(torch.zeros(4, 2), torch.zeros(4, 2), torch.tensor([0.5, 0.5, 0.5, 0.0])),
        ValueError,
        'got values in [0.0, 0.5]',
    ),
    (lambda: to_x0_eps(torch.zeros(4, 2), torch.zeros(4, 2), 2.0), ValueError, 'abar_t must lie in (0, 1]'),
    (
        lambda: posterior_mean_var(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), 1, SCH),
        TypeError,
        'x0 must be a floating-point tensor',
    ),
    (
        lambda: posterior_mean_var(torch.zeros(4, 2), torch.zeros(4, 2), 5, SCH, t_prev=torch.tensor([1, 2])),
        ValueError,
        'timesteps t_prev must have shape (4,)',
    ),
    (
        lambda: posterior_mean_var(torch.zeros(4, 2), torch.zeros(4, 2), 5, SCH, t_prev=2.5),
        ValueError,
        'timesteps t_prev must be integers',
    ),
    (
        lambda: posterior_mean_var(torch.zeros(4, 2), torch.zeros(4, 2), 5, SCH, t_prev=-2),
        ValueError,
        'must lie in [-1, 999]',
    ),
    (
        lambda: reverse_variance(1, SCH, x=torch.zeros(2, 2, dtype=torch.long)),
        TypeError,
        'x must be a floating-point tensor',
    ),
    (
        lambda: vlb_terms(lambda x_t, t: [0], torch.zeros(4, 2), Schedule.from_name('linear', 5)),
        ValueError,
        'the model returned list, expected a tensor of the shape of x0 (4, 2)',
    ),
    (lambda: vlb_terms(None, torch.zeros(4, 2), SCH), TypeError, 'model must be callable'),
    (
        lambda: vlb_terms(lambda x_t, t: x_t, torch.zeros(4, 2), SCH.abar),
        TypeError,
        'schedule must be a diffcourse.schedules.Schedule',
    ),
    (lambda: decoder_variance(SCH.abar), TypeError, 'schedule must be a diffcourse.schedules.Schedule'),
    (lambda: prior_kl(torch.zeros(2, 2, dtype=torch.long), SCH), TypeError, 'x0 must be a floating-point tensor'),
    (
        lambda: nelbo({'terms': torch.zeros(2, 3)}),
        TypeError,
        "with keys 'prior', 'terms' and 'cv'; got a dict with keys ['terms']",
    ),
    (lambda: nelbo(torch.zeros(3)), TypeError, 'vlb must be the dict vlb_terms returns'),
    (lambda: bits_per_dim(torch.ones(2), 0), ValueError, 'dims must be a positive integer'),
    (lambda: optimal_eps_model(None, SCH.abar), TypeError, 'mix must be a diffcourse.data.GaussianMixture'),
    (lambda: optimal_eps_model(gaussian_mixture(), SCH), TypeError, "abar must be the schedule's (T,) table"),
    (lambda: vlb_weight(1, SCH, 'learned'), ValueError, "Unknown variance_type 'learned'"),
]


def test_bad_input_gets_a_clear_error(bad_case):  # one case of BAD per test (conftest.py)
    expect_clear_error(*bad_case)
