"Lesson 02: schedules, the forward process and timestep spacings, cross-checked against diffusers."

import math
from conftest import expect_clear_error
import pytest, torch
from diffusers import DDPMScheduler, DDIMScheduler
from diffcourse.schedules import (
    SCHEDULES,
    SPACINGS,
    Schedule,
    get_betas,
    q_sample,
    q_step,
    spaced_timesteps,
    abar_to_sigma,
    sigma_to_abar,
    abar_to_logsnr,
    logsnr_to_abar,
    sigma_to_logsnr,
    logsnr_to_sigma,
    t_to_sigma,
    sigma_to_t,
    t_to_logsnr,
    logsnr_to_t,
)

# our name -> (diffusers' beta_schedule, kwargs passed to both)
DIFFUSERS = {
    'linear': ('linear', {}),
    'sigmoid': ('sigmoid', {}),
    'scaled_linear': ('scaled_linear', dict(beta_start=0.00085, beta_end=0.012)),
    'cosine': ('squaredcos_cap_v2', {}),
}


def test_every_schedule_has_a_diffusers_twin():
    assert set(DIFFUSERS) == set(SCHEDULES)


@pytest.mark.parametrize('name', sorted(DIFFUSERS))
@pytest.mark.parametrize('T', [1, 10, 100, 1000, 4000])
def test_betas_and_alphas_cumprod_match_diffusers(name, T):
    dname, kw = DIFFUSERS[name]
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=dname, **kw)
    ours = Schedule.from_name(name, T=T, **kw)
    assert ours.betas.dtype == torch.float32 and ours.abar.dtype == torch.float32
    # diffusers builds betas in float32 (linspace, square, sigmoid): a few roundings of 6e-8 relative; 2e-6 allowed
    torch.testing.assert_close(ours.betas, ref.betas, rtol=2e-6, atol=0)
    # 1 - beta: the betas' 2e-6 relative error is 2e-6 x beta absolute, plus one float32 rounding (<= 6e-8)
    b_max = ref.betas.max().item()
    torch.testing.assert_close(ours.alphas, ref.alphas, rtol=0, atol=2e-6 * b_max + 6e-8)
    # diffusers multiplies T float32 numbers (each product rounds by up to 6e-8 relative: T x 6e-8 at worst), we
    # multiply in float64; and its 1 - beta of a float32 beta is off by 6e-8 beta / (1 - beta) relative (6e-5 at
    # cosine's 0.999)
    torch.testing.assert_close(ours.abar, ref.alphas_cumprod, rtol=T * 6e-8 + 6e-8 * b_max / (1 - b_max) + 2e-6, atol=0)
    torch.testing.assert_close(get_betas(name, T, **kw), ref.betas, rtol=2e-6, atol=0)


def test_defaults_of_linear_match_diffusers_defaults():
    torch.testing.assert_close(get_betas('linear', 1000), DDPMScheduler().betas, rtol=2e-6, atol=0)  # as above


@pytest.mark.parametrize('shape', [(16, 2), (8, 3, 16, 16)])
def test_q_sample_equals_add_noise(shape):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.randint(0, 1000, (shape[0],), generator=g)
    for name, (dname, kw) in DIFFUSERS.items():
        ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=dname, **kw)
        # diffusers' float32 cumprod is off by ~sqrt(t) x 6e-8 (rounding as a random walk), which sqrt(1 - abar) >=
        # sqrt(t beta_min) turns into <= 6e-8 / (2 sqrt(beta_min)) = 5e-6 (cosine: beta_min = 4e-5), times |eps| <~ 4
        ours, theirs = q_sample(x0, t, eps, Schedule.from_name(name, 1000, **kw).abar), ref.add_noise(x0, eps, t)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


@pytest.mark.parametrize('spacing', sorted(SPACINGS))
@pytest.mark.parametrize('T', [1000, 100])
def test_spacings_equal_diffusers_for_every_step_count(spacing, T):
    ddim = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ddpm = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)

    def ref(sched, n):
        sched.set_timesteps(n)
        ts = sched.timesteps
        # diffusers 0.42's 'trailing' sometimes returns n + 1 timesteps ending in -1 (np.arange overshoot); we return n
        if spacing == 'trailing' and len(ts) == n + 1 and ts[-1] == -1:
            ts = ts[:-1]
        return ts

    for n in range(1, T + 1):
        ours = spaced_timesteps(n, T, spacing)
        assert ours.dtype == torch.int64 and len(ours) == n and torch.equal(ours, ref(ddim, n)), (spacing, n)
        if n % 37 == 1:
            assert torch.equal(ours, ref(ddpm, n)), (spacing, n)
        assert ours.min() >= 0 and ours.max() < T and (ours[:-1] > ours[1:]).all()


@pytest.mark.parametrize('n', [10, 50, 999])
def test_leading_with_steps_offset(n):
    ref = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing='leading')
    ref.set_timesteps(n)
    assert torch.equal(spaced_timesteps(n, 1000, 'leading', offset=1), ref.timesteps)


def test_composed_single_steps_match_the_closed_form():
    "Standardised residuals of T single steps are N(0, 1) to within 5 standard errors."
    g = torch.Generator().manual_seed(1)
    N = 20_000
    s = Schedule.from_name('cosine', 200)
    abar64 = torch.cumprod(1 - s.betas.double(), 0)
    x0 = torch.randn(N, 2, generator=g, dtype=torch.float64) + 3
    x = x0
    for t in range(200):
        x = q_step(x, t, torch.randn(N, 2, generator=g, dtype=torch.float64), s.betas.double())
        if t in (0, 50, 199):
            r = (x - abar64[t].sqrt() * x0) / (1 - abar64[t]).sqrt()
            assert r.mean(0).abs().max() < 5 / math.sqrt(N)
            assert (r.var(0) - 1).abs().max() < 5 * math.sqrt(2 / N)


def test_conversions_round_trip():
    abar = torch.linspace(1e-5, 1 - 1e-5, 50, dtype=torch.float64)
    # float64 (1.1e-16) through a sqrt, a log or an exp of numbers with |log| <= 12, and 1 / (1 - abar) <= 1e5 where
    # 1 - abar is formed: ~1e-11 relative at worst; 1e-10 allowed
    torch.testing.assert_close(sigma_to_abar(abar_to_sigma(abar)), abar, rtol=1e-10, atol=0)
    torch.testing.assert_close(logsnr_to_abar(abar_to_logsnr(abar)), abar, rtol=1e-10, atol=0)
    sigma = abar_to_sigma(abar)
    torch.testing.assert_close(logsnr_to_sigma(sigma_to_logsnr(sigma)), sigma, rtol=1e-10, atol=0)
    s = Schedule.from_name('scaled_linear', 1000)
    # from a float32 abar near 1 (rounded by up to 6e-8), 1 - abar is off by 6e-8 / (1 - abar) <= 6e-8 / 8.5e-4 = 7e-5
    # relative (beta_0 = 8.5e-4), sigma by half of that: 3.5e-5; 1e-4 allowed
    torch.testing.assert_close(s.sigmas, abar_to_sigma(s.abar.double()).float(), rtol=1e-4, atol=0)
    t = torch.tensor([0.0, 0.5, 17.25, 998.9])
    # float64: log-SNR values |logsnr| <= 12 rounded by 1.1e-16, times dt/dlogsnr <= 100 steps per unit near t = T:
    # ~1e-13; 1e-9 allowed
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t, s.abar), s.abar), t.double(), rtol=0, atol=1e-9)
    torch.testing.assert_close(logsnr_to_t(t_to_logsnr(t, s.abar), s.abar), t.double(), rtol=0, atol=1e-9)


def test_from_abar_inverts_from_betas():
    s = Schedule.from_name('cosine', 100)
    # float64 round trip of float32 betas: beta_t back to 2e-16 absolute (5e-12 relative at beta >= 4e-5), then one
    # float32 rounding: the same float32 betas, 1 ulp (1.2e-7 relative) allowed
    back = Schedule.from_abar(torch.cumprod(1 - s.betas.double(), 0)).betas
    torch.testing.assert_close(back, s.betas, rtol=1.2e-7, atol=0)


# ---- bad input ----
def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"Unknown schedule 'quadratic'.*\['cosine', 'linear', 'scaled_linear', 'sigmoid'\]"
    ):
        get_betas('quadratic', 10)
    with pytest.raises(ValueError, match='known schedules'):
        Schedule.from_name('nope')


@pytest.mark.parametrize('T', [0, -3, 2.5, '10', True])
def test_bad_T(T):
    with pytest.raises(ValueError, match='T must be'):
        get_betas('linear', T)


@pytest.mark.parametrize('betas', [[0.1, 0.0, 0.2], [0.1, 1.0], [-0.1, 0.2], [0.1, float('nan')]])
def test_betas_outside_open_unit_interval(betas):
    with pytest.raises(ValueError, match=r'betas must lie in \(0, 1\)'):
        Schedule.from_betas(torch.tensor(betas))


def test_betas_from_kwargs_outside_range():
    with pytest.raises(ValueError, match=r'betas must lie in \(0, 1\)'):
        get_betas('linear', 10, beta_end=1.2)


def test_non_monotone_abar():
    with pytest.raises(ValueError, match=r'strictly decreasing.*abar\[2\] = 0.6'):
        Schedule.from_abar(torch.tensor([0.9, 0.5, 0.6]))
    with pytest.raises(ValueError, match=r'abar must lie in \(0, 1\)'):
        Schedule.from_abar(torch.tensor([1.0, 0.5]))


def test_t_out_of_range_and_shapes():
    s = Schedule.from_name('linear', 100)
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r'must lie in \[0, 99\].*got values in \[0, 100\]'):
        q_sample(x0, torch.tensor([0, 5, 100]), x0, s.abar)
    with pytest.raises(ValueError, match=r'must lie in \[0, 99\]'):
        q_sample(x0, -1, x0, s.abar)
    with pytest.raises(ValueError, match='must be integers'):
        q_sample(x0, torch.tensor([0.0, 1.0, 2.0]), x0, s.abar)
    with pytest.raises(ValueError, match=r'must have shape \(3,\)'):
        q_sample(x0, torch.tensor([0, 1]), x0, s.abar)
    with pytest.raises(ValueError, match='eps must have the shape of x0'):
        q_sample(x0, 1, x0[:2], s.abar)
    with pytest.raises(ValueError, match=r't must lie in \[0, 99\]'):
        t_to_sigma(torch.tensor([99.5]), s.abar)


def test_bad_spacing_arguments():
    with pytest.raises(ValueError, match=r"known spacings: \['leading', 'linspace', 'trailing'\]"):
        spaced_timesteps(10, 1000, 'uniform')
    with pytest.raises(ValueError, match=r'num_steps must be an integer in \[1, T=100\]'):
        spaced_timesteps(0, 100)
    with pytest.raises(ValueError, match=r'num_steps must be an integer in \[1, T=100\]'):
        spaced_timesteps(101, 100)
    with pytest.raises(ValueError, match='outside'):
        spaced_timesteps(100, 100, offset=1)


def test_device_follows_input():
    s = Schedule.from_name('linear', 10)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    out = q_sample(x0, torch.tensor([1, 2]), torch.ones_like(x0), s.abar)
    assert out.dtype == torch.float64 and out.device == x0.device


BAD = [  # (call, error, the words the message must contain)
    (lambda: Schedule.from_name('linear', T=0), ValueError, 'T must be >= 1'),
    (lambda: Schedule.from_name('linear', T=-5), ValueError, 'got T=-5'),
    (lambda: Schedule.from_name(['linear'], T=10), ValueError, "Unknown schedule ['linear']"),
    (lambda: Schedule.from_name('cosine', T=10, s=-1.0), ValueError, 'betas[0] = nan'),
    (
        lambda: t_to_logsnr(torch.tensor([float('nan')]), Schedule.from_name('linear', 10).abar),
        ValueError,
        't must lie in [0, 9]',
    ),
    (
        lambda: sigma_to_t(torch.tensor([-1.0]), Schedule.from_name('linear', 10).abar),
        ValueError,
        'sigma must be a noise level >= 0',
    ),
    (lambda: sigma_to_t(float('nan'), Schedule.from_name('linear', 10).abar), ValueError, 'got values in [nan, nan]'),
    (
        lambda: logsnr_to_t(torch.tensor([0.0, float('nan')]), Schedule.from_name('linear', 10).abar),
        ValueError,
        'logsnr must not be NaN',
    ),
    (
        lambda: t_to_sigma(torch.tensor([1.0]), Schedule.from_name('linear', 10)),
        ValueError,
        'abar must be a 1-D table (schedule.abar)',
    ),
    (
        lambda: q_sample(torch.zeros(2, 3), 1, torch.zeros(2, 3), Schedule.from_name('linear', 10)),
        TypeError,
        "abar must be the schedule's (T,) table `schedule.abar`, got Schedule",
    ),
    (
        lambda: q_sample(
            torch.zeros(2, 3, dtype=torch.long), 1, torch.zeros(2, 3), Schedule.from_name('linear', 10).abar
        ),
        TypeError,
        'x0 must be a floating-point tensor',
    ),
    (
        lambda: q_sample(
            torch.zeros(2, 3), torch.tensor([True, False]), torch.zeros(2, 3), Schedule.from_name('linear', 10).abar
        ),
        ValueError,
        'timesteps t must be integers',
    ),
    (
        lambda: q_step(torch.zeros(2, 3), 1, torch.zeros(2, 3), Schedule.from_name('linear', 10).abar[None]),
        TypeError,
        "betas must be the schedule's (T,) table",
    ),
    (lambda: spaced_timesteps(10, 1000, offset=0.5), ValueError, 'offset must be an integer'),
    (lambda: spaced_timesteps(10, 1000, spacing=None), ValueError, 'Unknown spacing None'),
]


def test_bad_input_gets_a_clear_error(bad_case):  # one case of BAD per test (conftest.py)
    expect_clear_error(*bad_case)


def test_numpy_integers_are_integers():
    import numpy as np

    assert Schedule.from_name('linear', T=np.int64(10)).T == 10
    assert torch.equal(spaced_timesteps(np.int64(5), np.int32(100)), spaced_timesteps(5, 100))
