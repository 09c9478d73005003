"Lesson 02: schedules, the forward process and timestep spacings, cross-checked against diffusers."
import math
import pytest, torch
from diffusers import DDPMScheduler, DDIMScheduler
from diffcourse.schedules import (SCHEDULES, SPACINGS, Schedule, get_betas, q_sample, q_step, spaced_timesteps,
                                  abar_to_sigma, sigma_to_abar, abar_to_logsnr, logsnr_to_abar, sigma_to_logsnr,
                                  logsnr_to_sigma, t_to_sigma, sigma_to_t, t_to_logsnr, logsnr_to_t)

# our name -> (diffusers' beta_schedule, kwargs passed to both)
DIFFUSERS = {'linear': ('linear', {}), 'sigmoid': ('sigmoid', {}),
             'scaled_linear': ('scaled_linear', dict(beta_start=0.00085, beta_end=0.012)),
             'cosine': ('squaredcos_cap_v2', {})}

def test_every_schedule_has_a_diffusers_twin(): assert set(DIFFUSERS) == set(SCHEDULES)

@pytest.mark.parametrize('name', sorted(DIFFUSERS))
@pytest.mark.parametrize('T', [1, 10, 100, 1000, 4000])
def test_betas_and_alphas_cumprod_match_diffusers(name, T):
    dname, kw = DIFFUSERS[name]
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=dname, **kw)
    ours = Schedule.from_name(name, T=T, **kw)
    assert ours.betas.dtype == torch.float32 and ours.abar.dtype == torch.float32
    torch.testing.assert_close(ours.betas, ref.betas, rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas, ref.alphas, rtol=2e-6, atol=6e-8)   # float32 resolution of 1 - beta near 1
    # diffusers multiplies T float32 numbers; we multiply in float64: agree to float32 precision
    torch.testing.assert_close(ours.abar, ref.alphas_cumprod, rtol=3e-5, atol=1e-9)
    torch.testing.assert_close(get_betas(name, T, **kw), ref.betas, rtol=2e-6, atol=1e-9)

def test_defaults_of_linear_match_diffusers_defaults():
    torch.testing.assert_close(get_betas('linear', 1000), DDPMScheduler().betas, rtol=2e-6, atol=1e-9)

@pytest.mark.parametrize('shape', [(16, 2), (8, 3, 16, 16)])
def test_q_sample_equals_add_noise(shape):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.randint(0, 1000, (shape[0],), generator=g)
    for name, (dname, kw) in DIFFUSERS.items():
        ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=dname, **kw)
        torch.testing.assert_close(q_sample(x0, t, eps, Schedule.from_name(name, 1000, **kw).abar), ref.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize('spacing', sorted(SPACINGS))
@pytest.mark.parametrize('T', [1000, 100])
def test_spacings_equal_diffusers_for_every_step_count(spacing, T):
    ddim = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ddpm = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    def ref(sched, n):
        sched.set_timesteps(n); ts = sched.timesteps
        # diffusers 0.42's 'trailing' sometimes returns n + 1 timesteps ending in -1 (np.arange overshoot); we return n
        if spacing == 'trailing' and len(ts) == n + 1 and ts[-1] == -1: ts = ts[:-1]
        return ts
    for n in range(1, T + 1):
        ours = spaced_timesteps(n, T, spacing)
        assert ours.dtype == torch.int64 and len(ours) == n and torch.equal(ours, ref(ddim, n)), (spacing, n)
        if n % 37 == 1: assert torch.equal(ours, ref(ddpm, n)), (spacing, n)
        assert ours.min() >= 0 and ours.max() < T and (ours[:-1] > ours[1:]).all()

@pytest.mark.parametrize('n', [10, 50, 999])
def test_leading_with_steps_offset(n):
    ref = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing='leading'); ref.set_timesteps(n)
    assert torch.equal(spaced_timesteps(n, 1000, 'leading', offset=1), ref.timesteps)

def test_composed_single_steps_match_the_closed_form():
    "Standardised residuals of T single steps are N(0, 1) to within 5 standard errors."
    g = torch.Generator().manual_seed(1); N = 20_000
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
    torch.testing.assert_close(sigma_to_abar(abar_to_sigma(abar)), abar)
    torch.testing.assert_close(logsnr_to_abar(abar_to_logsnr(abar)), abar)
    torch.testing.assert_close(logsnr_to_sigma(sigma_to_logsnr(abar_to_sigma(abar))), abar_to_sigma(abar))
    s = Schedule.from_name('scaled_linear', 1000)
    torch.testing.assert_close(s.sigmas, abar_to_sigma(s.abar.double()).float(), rtol=2e-3, atol=0)
    t = torch.tensor([0., 0.5, 17.25, 998.9])
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t, s.abar), s.abar), t.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(logsnr_to_t(t_to_logsnr(t, s.abar), s.abar), t.double(), rtol=0, atol=1e-6)

def test_from_abar_inverts_from_betas():
    s = Schedule.from_name('cosine', 100)
    torch.testing.assert_close(Schedule.from_abar(torch.cumprod(1 - s.betas.double(), 0)).betas, s.betas)

# ---- bad input ----
def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown schedule 'quadratic'.*\['cosine', 'linear', 'scaled_linear', 'sigmoid'\]"):
        get_betas('quadratic', 10)
    with pytest.raises(ValueError, match='known schedules'): Schedule.from_name('nope')

@pytest.mark.parametrize('T', [0, -3, 2.5, '10', True])
def test_bad_T(T):
    with pytest.raises(ValueError, match='T must be'): get_betas('linear', T)

@pytest.mark.parametrize('betas', [[0.1, 0.0, 0.2], [0.1, 1.0], [-0.1, 0.2], [0.1, float('nan')]])
def test_betas_outside_open_unit_interval(betas):
    with pytest.raises(ValueError, match=r'betas must lie in \(0, 1\)'): Schedule.from_betas(torch.tensor(betas))

def test_betas_from_kwargs_outside_range():
    with pytest.raises(ValueError, match=r'betas must lie in \(0, 1\)'): get_betas('linear', 10, beta_end=1.2)

def test_non_monotone_abar():
    with pytest.raises(ValueError, match=r'strictly decreasing.*abar\[2\] = 0.6'): Schedule.from_abar(torch.tensor([0.9, 0.5, 0.6]))
    with pytest.raises(ValueError, match=r'abar must lie in \(0, 1\)'): Schedule.from_abar(torch.tensor([1.0, 0.5]))

def test_t_out_of_range_and_shapes():
    s = Schedule.from_name('linear', 100); x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r'must lie in \[0, 99\].*got values in \[0, 100\]'): q_sample(x0, torch.tensor([0, 5, 100]), x0, s.abar)
    with pytest.raises(ValueError, match=r'must lie in \[0, 99\]'): q_sample(x0, -1, x0, s.abar)
    with pytest.raises(ValueError, match='must be integers'): q_sample(x0, torch.tensor([0., 1., 2.]), x0, s.abar)
    with pytest.raises(ValueError, match=r'must have shape \(3,\)'): q_sample(x0, torch.tensor([0, 1]), x0, s.abar)
    with pytest.raises(ValueError, match='eps must have the shape of x0'): q_sample(x0, 1, x0[:2], s.abar)
    with pytest.raises(ValueError, match=r't must lie in \[0, 99\]'): t_to_sigma(torch.tensor([99.5]), s.abar)

def test_bad_spacing_arguments():
    with pytest.raises(ValueError, match=r"known spacings: \['leading', 'linspace', 'trailing'\]"): spaced_timesteps(10, 1000, 'uniform')
    with pytest.raises(ValueError, match=r'num_steps must be an integer in \[1, T=100\]'): spaced_timesteps(0, 100)
    with pytest.raises(ValueError, match=r'num_steps must be an integer in \[1, T=100\]'): spaced_timesteps(101, 100)
    with pytest.raises(ValueError, match='outside'): spaced_timesteps(100, 100, offset=1)

def test_device_follows_input():
    s = Schedule.from_name('linear', 10)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    out = q_sample(x0, torch.tensor([1, 2]), torch.ones_like(x0), s.abar)
    assert out.dtype == torch.float64 and out.device == x0.device
