"""Samplers against diffusers' schedulers, step by step, and their error paths.

The network is a small deterministic stand-in, a fixed function of (x_t, t): the exact eps (or v) for data
~ N(0, 0.25 I) plus a fixed random perturbation, so that trajectories look like real ones (they contract towards
data instead of blowing up) and a difference between two samplers is a difference of arithmetic, not of chaos.
"""
import pytest, torch
from torch import nn
from diffusers import (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                       DPMSolverMultistepScheduler)
from diffcourse.schedules import Schedule
from diffcourse.samplers import (SAMPLERS, SIGMAS, Denoiser, default_sigmas, sample, num_evals, steps_for_evals,
                                 karras_sigmas, sample_dpmpp_2m, sampler_table, load_sampler_table)

SCHEDULE = Schedule.from_name('linear', T=1000)
PRED = {'eps': 'epsilon', 'v': 'v_prediction'}

class StandIn(nn.Module):
    "eps or v of the exact denoiser for x0 ~ N(0, s^2 I), plus 0.1 tanh(W x + b sin(t / 300)); t may be fractional."
    def __init__(self, pred='eps', d=8, s=0.5, seed=0, abar=SCHEDULE.abar):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W, self.b = torch.randn(d, d, generator=g) / d**0.5, torch.randn(d, generator=g)
        self.pred, self.s, self.abar = pred, s, abar.double()
    def forward(self, x_t, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        i = t.floor().long().clamp(0, len(self.abar) - 2); w = t - i
        a = ((1 - w) * self.abar[i] + w * self.abar[i + 1]).to(x_t.dtype)[:, None]               # (B, 1)
        x0 = a.sqrt() * self.s**2 * x_t / (a * self.s**2 + 1 - a) + 0.1 * torch.tanh(x_t @ self.W.to(x_t.dtype) + self.b.to(x_t.dtype) * torch.sin(t.to(x_t.dtype)[:, None] / 300))
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.pred == 'eps' else a.sqrt() * eps - (1 - a).sqrt() * x0

def make_scheduler(name, pred, clip=False):
    "The diffusers scheduler matching sampler `name`, in its default configuration but for the settings noted."
    cls, kw = {'ddpm': (DDPMScheduler, dict(clip_sample=clip)),          # our Denoiser clips x0_hat only when asked
               'ddim': (DDIMScheduler, dict(clip_sample=clip)),
               'euler': (EulerDiscreteScheduler, dict(use_karras_sigmas=True)),   # Euler and Heun on EDM's noise levels
               'heun': (HeunDiscreteScheduler, dict(use_karras_sigmas=True)),
               'dpmpp_2m': (DPMSolverMultistepScheduler, {})}[name]
    return cls(num_train_timesteps=SCHEDULE.T, trained_betas=SCHEDULE.betas.numpy(), prediction_type=PRED[pred], **kw)

VP = {'ddpm', 'ddim', 'dpmpp_2m'}     # schedulers whose sample is x_t; Euler and Heun keep x = x_t * sqrt(1 + sigma^2)

def run_diffusers(name, net, noise, steps, eta=0., clip=False):
    "diffusers' states: the start, then the sample after each full step (Heun: after each corrector), in its own space."
    s = make_scheduler(name, net.pred, clip); s.set_timesteps(steps)
    x = noise * s.init_noise_sigma; xs = [x]
    for i, t in enumerate(s.timesteps):
        g = torch.Generator().manual_seed(100 + i)                           # step i's fresh noise
        # with clipping, DDIM must re-derive eps from the clipped x0_hat, as sampling in sigma space does
        kw = dict(generator=g) if name == 'ddpm' else dict(eta=eta, generator=g, use_clipped_model_output=clip) if name == 'ddim' else {}
        x = s.step(net(s.scale_model_input(x, t), t), t, x, **kw).prev_sample; xs.append(x)
    return xs[:1] + xs[2::2] + xs[-1:] if name == 'heun' else xs

def step_errors(name, pred, steps, eta=0., clip=False, s=0.5):
    """Error of each of our steps against diffusers', relative to the size of the numbers the step works with.
    Single-step samplers start each step from diffusers' state, so every step is compared on its own; the multistep
    DPM-Solver++ carries its previous evaluation and is compared along the whole trajectory."""
    net = StandIn(pred, s=s); model = Denoiser(net, SCHEDULE, pred, clip_x0=1. if clip else None)
    noise = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    theirs = run_diffusers(name, net, noise, steps, eta, clip)
    sigmas = default_sigmas(name, SCHEDULE, steps)
    vp = (1 + sigmas ** 2).sqrt() if name in VP else torch.ones_like(sigmas)    # x = x_t * vp in sigma space
    kw = dict(eta=eta) if name == 'ddim' else {}
    if name == 'dpmpp_2m':
        ours = [theirs[0]]
        SAMPLERS[name](model, theirs[0] * vp[0], sigmas, callback=lambda d: ours.append(d['x'] / vp[d['i'] + 1]))
    else:
        ours = [theirs[0]] + [SAMPLERS[name](model, theirs[i] * vp[i], sigmas[i:i + 2], generator=torch.Generator().manual_seed(100 + i), **kw) / vp[i + 1]
                              for i in range(steps)]
    assert len(theirs) == len(ours) == steps + 1
    return [((a - b).abs().max() / (1 + max(p.abs().max(), a.abs().max()))).item()
            for p, a, b in zip(theirs[:-1], theirs[1:], ours[1:])]

# Euler and Heun are compared from 2 steps: for a single step diffusers' Karras schedule collapses to sigma_min
# (its `linspace` of one timestep is [0]), where ours starts at sigma_max.
CASES = [(name, pred, steps) for name in SAMPLERS for pred in PRED for steps in (1, 2, 5, 10, 50)
         if not (name in ('euler', 'heun') and steps == 1)]

# Relative error allowed per step. Heun's corrector evaluates the slope at sigma_{i+1} and multiplies it by
# sigma_i - sigma_{i+1}, which amplifies float32 rounding (ours and diffusers' alike) by up to sigma_i / sigma_{i+1}
# (1.6e4 for 2 steps, 157 -> 0.01: a bound of 1.6e4 * 6e-8 = 1e-3); measured: 1.1e-4 for 2 steps, 2e-6 for 50.
TOL = dict(ddpm=2e-5, ddim=2e-5, euler=2e-5, heun=3e-4, dpmpp_2m=2e-5)

@pytest.mark.parametrize('name,pred,steps', CASES)
def test_each_step_matches_diffusers(name, pred, steps):
    errs = step_errors(name, pred, steps, eta=0.5 if name == 'ddim' else 0.)
    assert max(errs) < TOL[name], (errs[0], errs[-1], max(errs))          # first and last steps included

def test_long_runs_match_diffusers():
    # Near t = 0, 1 - abar is ~1e-4 and diffusers computes it from a float32 abar (relative error up to ~1e-4 there),
    # where ours comes from float64 (lesson 02); so the last few of 999 DDPM steps agree to ~5e-5 rather than 2e-5.
    for name in ('ddpm', 'dpmpp_2m'):
        assert max(step_errors(name, 'eps', 999)) < 1e-4

@pytest.mark.parametrize('name', ['ddpm', 'ddim'])
def test_clipped_x0_matches_diffusers_default_clip_sample(name):
    # data of std 2, so that x0_hat often leaves [-1, 1] and the clamp matters
    assert max(step_errors(name, 'eps', 10, eta=0.5 if name == 'ddim' else 0., clip=True, s=2.)) < 2e-5
    assert max(step_errors(name, 'eps', 10, clip=False, s=2.)) < 2e-5

def test_ddim_eta1_is_ddpm():
    net = Denoiser(StandIn(), SCHEDULE)
    a = sample('ddim', net, (4, 8), 10, generator=torch.Generator().manual_seed(0), eta=1.)
    b = sample('ddpm', net, (4, 8), 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)

def test_objectives_give_the_same_denoiser():
    x, sigma = torch.randn(5, 8), torch.tensor([0.05, 0.5, 2., 20., 150.])
    d_eps, d_v = Denoiser(StandIn('eps'), SCHEDULE, 'eps'), Denoiser(StandIn('v'), SCHEDULE, 'v')
    torch.testing.assert_close(d_eps(x, sigma), d_v(x, sigma), rtol=1e-4, atol=1e-4)

def test_dpmpp_2m_survives_a_repeated_noise_level():
    s = torch.tensor([10., 5., 5., 1., 0.])
    assert sample_dpmpp_2m(Denoiser(StandIn(), SCHEDULE), torch.randn(3, 8) * 10, s).isfinite().all()

def test_evals_and_steps():
    assert [num_evals(n, 7) for n in SAMPLERS] == [7, 7, 7, 13, 7]
    assert steps_for_evals('heun', 1000) == 500 and num_evals('heun', 500) == 999
    assert all(steps_for_evals(n, e) == e for n in ('ddpm', 'ddim', 'euler', 'dpmpp_2m') for e in (1, 5, 1000))

def test_default_sigmas_shapes_and_ends():
    for name in SAMPLERS:
        for steps in (1, 10, 1000):
            s = default_sigmas(name, SCHEDULE, steps)
            assert s.shape == (steps + 1,) and s[-1] == 0 and (s[1:] <= s[:-1]).all(), (name, steps)
    assert torch.equal(karras_sigmas(3, 0.1, 10.)[[0, 2]], torch.tensor([10., 0.1]))

def test_bad_input_names_the_value_and_the_choices():
    net = Denoiser(StandIn(), SCHEDULE)
    with pytest.raises(ValueError, match=r"Unknown sampler 'euler_a'; valid choices are \['ddpm', 'ddim', 'euler', 'heun', 'dpmpp_2m'\]"):
        sample('euler_a', net, (2, 8), 10)
    for bad in (0, -3, 1001, 2.0, True):
        with pytest.raises(ValueError, match=rf"steps must be an integer between 1 and T=1000.*got {bad!r}"):
            sample('ddim', net, (2, 8), bad)
    with pytest.raises(ValueError, match="Unknown objective 'noise'"): Denoiser(StandIn(), SCHEDULE, 'noise')
    with pytest.raises(ValueError, match="sigmas must not increase"): SAMPLERS['euler'](net, torch.randn(2, 8), torch.tensor([1., 2., 0.]))
    with pytest.raises(ValueError, match="every sigma but the last must be > 0"): SAMPLERS['heun'](net, torch.randn(2, 8), torch.tensor([1., 0., 0.]))
    with pytest.raises(ValueError, match="Unknown sampler 'plms'"): sampler_table(net, lambda x: 0., (2, 8), names=['plms'])
    with pytest.raises(FileNotFoundError, match="tools/tables/samplers.py"): load_sampler_table('/nonexistent/table.json')

def test_sample_is_reproducible_and_reports_every_step():
    net, seen = Denoiser(StandIn(), SCHEDULE), []
    a = sample('heun', net, (3, 8), 4, generator=torch.Generator().manual_seed(5), callback=seen.append)
    b = sample('heun', net, (3, 8), 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and [d['i'] for d in seen] == [0, 1, 2, 3] and seen[-1]['sigma_next'] == 0

def test_sampler_table_rows():
    rows = sampler_table(Denoiser(StandIn(), SCHEDULE), lambda x: x.std().item(), (16, 8), evals=(5, 2), progress=False)
    assert [(r['sampler'], r['evals']) for r in rows][:4] == [('ddpm', 5), ('ddpm', 2), ('ddim', 5), ('ddim', 2)]
    assert {(r['sampler'], r['steps'], r['evals']) for r in rows if r['sampler'] == 'heun'} == {('heun', 3, 5), ('heun', 1, 1)}
