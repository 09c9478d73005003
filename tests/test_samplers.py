"""Samplers against diffusers' schedulers, step by step, and their error paths.

The network is a small deterministic stand-in, a fixed function of (x_t, t): the exact eps (or v) for data
~ N(0, 0.25 I) plus a fixed random perturbation, so that trajectories look like real ones (they contract towards
data instead of blowing up) and a difference between two samplers is a difference of arithmetic, not of chaos.
"""

from conftest import expect_clear_error
import pytest, torch
from torch import nn
from diffusers import (
    DDPMScheduler,
    DDIMScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    DPMSolverMultistepScheduler,
)
from diffcourse.schedules import Schedule, spaced_timesteps
from diffcourse.guidance import ClassifierFreeGuidance
from diffcourse.samplers import (
    SAMPLERS,
    SIGMAS,
    Denoiser,
    default_sigmas,
    sample,
    num_evals,
    steps_for_evals,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_ddim,
    timestep_sigmas,
    ancestral_step,
    load_denoiser,
)
from diffcourse.tables import sampler_table, load_sampler_table

SCHEDULE = Schedule.from_name('linear', T=1000)
PRED = {'eps': 'epsilon', 'v': 'v_prediction', 'x0': 'sample'}


class StandIn(nn.Module):
    """eps, v or x0 of the exact denoiser for x0 ~ N(0, s^2 I), plus (nonlinear=True) 0.1 tanh(W x_t + b sin(t / 300));
    t may be fractional. Without the nonlinear part it is linear in x_t, and so is every sampler's map from its
    start."""

    def __init__(self, pred='eps', d=8, s=0.5, seed=0, abar=SCHEDULE.abar, nonlinear=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W, self.b = torch.randn(d, d, generator=g) / d**0.5, torch.randn(d, generator=g)
        self.pred, self.s, self.abar, self.nonlinear = pred, s, abar.double(), nonlinear

    def forward(self, x_t, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        i = t.floor().long().clamp(0, len(self.abar) - 2)
        w = t - i
        a = ((1 - w) * self.abar[i] + w * self.abar[i + 1]).to(x_t.dtype)[:, None]  # (B, 1)
        x0 = a.sqrt() * self.s**2 * x_t / (a * self.s**2 + 1 - a)  # E[x0 | x_t]
        if self.nonlinear:
            W, b, u = self.W.to(x_t.dtype), self.b.to(x_t.dtype), t.to(x_t.dtype)[:, None]
            x0 = x0 + 0.1 * torch.tanh(x_t @ W + b * torch.sin(u / 300))
        if self.pred == 'x0':
            return x0
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.pred == 'eps' else a.sqrt() * eps - (1 - a).sqrt() * x0


def make_scheduler(name, pred, clip=False, schedule=SCHEDULE, **extra):
    "The diffusers scheduler matching sampler `name`, in its default configuration but for the settings noted."
    cls, kw = {
        'ddpm': (DDPMScheduler, dict(clip_sample=clip)),  # our Denoiser clips x0_hat only when asked
        'ddim': (DDIMScheduler, dict(clip_sample=clip)),
        'euler': (EulerDiscreteScheduler, dict(use_karras_sigmas=True)),  # Euler and Heun on EDM's noise levels
        'heun': (HeunDiscreteScheduler, dict(use_karras_sigmas=True)),
        'dpmpp_2m': (DPMSolverMultistepScheduler, {}),
    }[name]
    return cls(
        num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy(), prediction_type=PRED[pred], **kw, **extra
    )


VP = {'ddpm', 'ddim', 'dpmpp_2m'}  # schedulers whose sample is x_t; Euler and Heun keep x = x_t * sqrt(1 + sigma^2)


def diffusers_step(name, s, net, x, t, eta, g, use_clipped):
    "One step of diffusers' scheduler `s` from its state x at timestep t."
    kw = (
        dict(generator=g)
        if name == 'ddpm'
        else dict(eta=eta, generator=g, use_clipped_model_output=use_clipped)
        if name == 'ddim'
        else {}
    )
    return s.step(net(s.scale_model_input(x, t), t), t, x, **kw).prev_sample


def run_diffusers(name, net, noise, steps, eta=0.0, clip=False, schedule=SCHEDULE, use_clipped=None, **extra):
    "diffusers' states: the start, then the sample after each full step (Heun: after each corrector), in its own space."
    s = make_scheduler(name, net.pred, clip, schedule, **extra)
    s.set_timesteps(steps)
    x = noise * s.init_noise_sigma
    xs = [x]
    for i, t in enumerate(s.timesteps):  # step i's fresh noise from its own seed, 100 + i
        # with clipping, DDIM must re-derive eps from the clipped x0_hat, as sampling in sigma space does
        g = torch.Generator().manual_seed(100 + i)
        x = diffusers_step(name, s, net, x, t, eta, g, clip if use_clipped is None else use_clipped)
        xs.append(x)
    return xs[:1] + xs[2::2] + xs[-1:] if name == 'heun' else xs


def our_sigmas(name, steps, schedule=SCHEDULE, spacing=None):
    "Our noise levels: the defaults of `name`, or (DDPM/DDIM) those of the timesteps of `spacing`."
    if spacing is None:
        return default_sigmas(name, schedule, steps)
    return timestep_sigmas(schedule, spaced_timesteps(steps, schedule.T, spacing))


def step_errors(name, pred, steps, eta=0.0, clip=False, s=0.5, schedule=SCHEDULE, spacing=None):
    """Error of each of our steps against diffusers', relative to the size of the numbers the step works with.
    Single-step samplers start each step from diffusers' state, so every step is compared on its own; the multistep
    DPM-Solver++ carries its previous evaluation and is compared along the whole trajectory."""
    net = StandIn(pred, s=s, abar=schedule.abar)
    model = Denoiser(net, schedule, pred, clip_x0=1.0 if clip else None)
    noise = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    extra = {} if spacing is None else dict(timestep_spacing=spacing)
    theirs = run_diffusers(name, net, noise, steps, eta, clip, schedule, **extra)
    sigmas = our_sigmas(name, steps, schedule, spacing)
    vp = (1 + sigmas**2).sqrt() if name in VP else torch.ones_like(sigmas)  # x = x_t * vp in sigma space
    kw = dict(eta=eta) if name == 'ddim' else {}
    if name == 'dpmpp_2m':
        ours = [theirs[0]]
        SAMPLERS[name](model, theirs[0] * vp[0], sigmas, callback=lambda d: ours.append(d['x'] / vp[d['i'] + 1]))
    else:
        ours = [theirs[0]] + [
            SAMPLERS[name](
                model, theirs[i] * vp[i], sigmas[i : i + 2], generator=torch.Generator().manual_seed(100 + i), **kw
            )
            / vp[i + 1]
            for i in range(steps)
        ]
    assert len(theirs) == len(ours) == steps + 1
    return [
        ((a - b).abs().max() / (1 + max(p.abs().max(), a.abs().max()))).item()
        for p, a, b in zip(theirs[:-1], theirs[1:], ours[1:])
    ]


# Euler and Heun are compared from 2 steps: for a single step diffusers' Karras schedule collapses to sigma_min
# (its `linspace` of one timestep is [0]), where ours starts at sigma_max.
CASES = [
    (name, pred, steps)
    for name in SAMPLERS
    for pred in PRED
    for steps in (1, 2, 5, 10, 50)
    if not (name in ('euler', 'heun') and steps == 1)
]

# Relative error allowed per step (against 1 + |x|, x of order 1 in x_t space). Each side rounds ~10 float32 operations
# (6e-8 each): ~1e-6. diffusers' alphas_cumprod is a float32 product, off by ~sqrt(t + 1) x 3e-8 (rounding as a random
# walk); where 1 - abar is small that is amplified: sqrt(1 - abar) >= sqrt((t + 1) x 1e-4) on the linear schedule, so
# sqrt(1 - abar) is off by <= 3e-8 / (2 x 0.01) = 1.5e-6 absolute, times |eps| <~ 4: 6e-6. Together ~1e-5: 2e-5 allowed.
# Heun's corrector evaluates the slope at sigma_{i+1} and multiplies it by sigma_i - sigma_{i+1}, which amplifies
# float32 rounding (ours and diffusers' alike) by up to sigma_i / sigma_{i+1} (1.6e4 for 2 steps, 157 -> 0.01):
# a bound of 1.6e4 x 6e-8 = 1e-3.
TOL = dict(ddpm=2e-5, ddim=2e-5, euler=2e-5, heun=1e-3, dpmpp_2m=2e-5)


@pytest.mark.parametrize('name,pred,steps', CASES)
def test_each_step_matches_diffusers(name, pred, steps):
    errs = step_errors(name, pred, steps, eta=0.5 if name == 'ddim' else 0.0)
    assert max(errs) < TOL[name], (errs[0], errs[-1], max(errs))  # first and last steps included


def test_long_runs_match_diffusers():
    # At t = 0 and 1, 1 - abar (1e-4, 2.2e-4) is computed by diffusers from a float32 abar rounded by up to 3e-8 and
    # 6e-8, where ours comes from float64 (lesson 02): 3e-4 relative each. DDPM's posterior coefficient of x_t,
    # (1 - abar_0) / (1 - abar_1) ~ 0.45, is then off by ~6e-4 relative, times |x_t| <~ 3, against 1 + |x_t|: 2e-4.
    for name in ('ddpm', 'dpmpp_2m'):
        assert max(step_errors(name, 'eps', 999)) < 2e-4


@pytest.mark.parametrize('name', ['ddpm', 'ddim'])
def test_clipped_x0_matches_diffusers_default_clip_sample(name):
    # data of std 2, so that x0_hat often leaves [-1, 1] and the clamp matters
    assert max(step_errors(name, 'eps', 10, eta=0.5 if name == 'ddim' else 0.0, clip=True, s=2.0)) < TOL[name]
    assert max(step_errors(name, 'eps', 10, clip=False, s=2.0)) < TOL[name]


def test_ddim_eta1_is_ddpm():
    net = Denoiser(StandIn(), SCHEDULE)
    a = sample('ddim', net, (4, 8), 10, generator=torch.Generator().manual_seed(0), eta=1.0)
    b = sample('ddpm', net, (4, 8), 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_prediction_types_give_the_same_denoiser():
    x, sigma = torch.randn(5, 8), torch.tensor([0.05, 0.5, 2.0, 20.0, 150.0])
    d_eps, d_v = Denoiser(StandIn('eps'), SCHEDULE, 'eps'), Denoiser(StandIn('v'), SCHEDULE, 'v')
    # x0_hat = x - sigma eps_hat keeps eps_hat's float32 rounding times sigma: ~8 roundings of 6e-8 x |eps_hat| <~ 4
    # x (1 + sigma): 2e-6 (1 + sigma), per sample
    tol = 2e-6 * (1 + sigma[:, None]) * (1 + x.abs().max())
    assert ((d_eps(x, sigma) - d_v(x, sigma)).abs() < tol).all()


def test_dpmpp_2m_survives_a_repeated_noise_level():
    s = torch.tensor([10.0, 5.0, 5.0, 1.0, 0.0])
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
    assert torch.equal(karras_sigmas(3, 0.1, 10.0)[[0, 2]], torch.tensor([10.0, 0.1]))


def test_bad_input_names_the_value_and_the_choices():
    net = Denoiser(StandIn(), SCHEDULE)
    with pytest.raises(
        ValueError,
        match=r"Unknown sampler 'euler_a'; valid choices are \['ddim', 'ddpm', 'dpmpp_2m', 'euler', 'heun'\]",
    ):
        sample('euler_a', net, (2, 8), 10)
    for bad in (0, -3, 1001, 2.0, True):
        with pytest.raises(ValueError, match=rf"steps must be an integer between 1 and T=1000.*got {bad!r}"):
            sample('ddim', net, (2, 8), bad)
    with pytest.raises(ValueError, match="Unknown prediction_type 'noise'"):
        Denoiser(StandIn(), SCHEDULE, 'noise')
    with pytest.raises(ValueError, match="sigmas must not increase"):
        SAMPLERS['euler'](net, torch.randn(2, 8), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="every sigma but the last must be > 0"):
        SAMPLERS['heun'](net, torch.randn(2, 8), torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="Unknown sampler 'plms'"):
        sampler_table(net, lambda x: 0.0, (2, 8), names=['plms'])
    with pytest.raises(FileNotFoundError, match="tools/tables/samplers.py"):
        load_sampler_table('/nonexistent/table.json')


def test_sample_is_reproducible_and_reports_every_step():
    net, seen = Denoiser(StandIn(), SCHEDULE), []
    a = sample('heun', net, (3, 8), 4, generator=torch.Generator().manual_seed(5), callback=seen.append)
    b = sample('heun', net, (3, 8), 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and [d['i'] for d in seen] == [0, 1, 2, 3] and seen[-1]['sigma_next'] == 0


def test_sampler_table_rows():
    rows = sampler_table(Denoiser(StandIn(), SCHEDULE), lambda x: x.std().item(), (16, 8), evals=(5, 2), progress=False)
    assert [(r['sampler'], r['evals']) for r in rows][:4] == [('ddpm', 5), ('ddpm', 2), ('ddim', 5), ('ddim', 2)]
    assert {(r['sampler'], r['steps'], r['evals']) for r in rows if r['sampler'] == 'heun'} == {
        ('heun', 3, 5),
        ('heun', 1, 1),
    }


def test_shipped_sampler_table_holds_every_seed_of_every_cell():
    import numpy as np
    from diffcourse.tables import TABLE_SEEDS, SAMPLER_SETUPS

    for name, t in load_sampler_table()['tables'].items():
        assert t['seed'] == list(TABLE_SEEDS) and t['n'] == SAMPLER_SETUPS[name]['n']
        for r in t['rows']:
            v = np.asarray(r['values'])
            assert r['seeds'] == list(TABLE_SEEDS) and len(v) == len(TABLE_SEEDS)  # the seeds pair the cells
            np.testing.assert_allclose([r['value'], r['se']], [v.mean(), v.std(ddof=1) / len(v) ** 0.5], rtol=1e-12)
        budgets = {r['budget'] for r in t['rows'] if r['sampler'] == 'ddim'}
        assert {r['sampler'] for r in t['rows']} == set(SAMPLERS) and len(budgets) >= 6


# ---- precision: steps from sigma ~ 2e4 (the cosine schedule with T = 1024, lesson 10's) ----
COSINE = Schedule.from_name('cosine', T=1024)  # sigma_max = 2.1e4 at t = 1023


def large_sigma_step(name, pred, dtype):
    "One DDIM (eta = 0) or DDPM step from sigma_max = 2.1e4 to 2.44 (a 4-step grid's first step), all in `dtype`."
    model = Denoiser(StandIn(pred, abar=COSINE.abar), COSINE, pred)
    sig = timestep_sigmas(COSINE, spaced_timesteps(4, COSINE.T, 'trailing'))[:2].to(dtype)
    x = (torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * (1 + sig[0].float() ** 2).sqrt()).to(dtype)
    return SAMPLERS[name](model, x, sig, generator=torch.Generator().manual_seed(1)), x


@pytest.mark.parametrize('pred', list(PRED))
@pytest.mark.parametrize('name', ['ddim', 'ddpm'])
def test_step_from_large_sigma_against_float64(name, pred):
    "float32 against the same step computed in float64 (the network too), from the same float32 start and fresh noise."
    y32, x = large_sigma_step(name, pred, torch.float32)
    model = Denoiser(StandIn(pred, abar=COSINE.abar), COSINE, pred)
    s = timestep_sigmas(COSINE, spaced_timesteps(4, COSINE.T, 'trailing'))[:2].double()
    with torch.no_grad():
        x0 = model(x.double(), s[0])
    s_down, s_up = ancestral_step(s[0], s[1], 1.0) if name == 'ddpm' else (s[1], 0.0)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).double()  # the sampler's fresh noise
    ref = x.double() + (s_down - s[0]) * (x.double() - x0) / s[0] + s_up * z  # eq. (D1), exact in float64
    err, size = (y32.double() - ref).abs().max().item(), ref.abs().max().item()
    if pred == 'eps':
        # x0_hat = x - sigma eps_hat carries the network's float32 rounding of eps_hat (1.2e-7 x |eps_hat| <~ 5) times
        # sigma = 2.1e4: ~1e-2, whatever the step does; intrinsic to eps-prediction (diffusers' x0_hat = (x_t -
        # sqrt(1 - abar) eps) / sqrt(abar) multiplies it by 1 / sqrt(abar) = sqrt(1 + sigma^2) the same way)
        assert err < 2e-2, err
    else:
        # no cancellation: ~20 float32 roundings (network and step) of numbers of order |ref| ~ 4: 1.2e-7 x 20 x 4
        assert err < 2.4e-6 * (1 + size), (err, size)


@pytest.mark.parametrize('pred', ['v', 'x0'])
@pytest.mark.parametrize('name', ['ddim', 'ddpm'])
def test_large_sigma_steps_match_diffusers(name, pred):
    "From sigma = 2.1e4 ('trailing' timesteps start at T - 1), every step agrees with diffusers' to float32 precision."
    assert max(step_errors(name, pred, 4, schedule=COSINE, spacing='trailing')) < TOL[name]


# ---- from raw noise, end to end: both sides get the same noise tensor and scale it their own way ----
SD = Schedule.from_name('scaled_linear', T=1000)  # Stable Diffusion's schedule: sigma_max = 14.6


def raw_noise_runs(name, pred, nonlinear, steps=10, eta=0.0, clip=False, use_clipped=False, schedule=SD):
    "(ours, diffusers', our start ratio to theirs): sample(...) and the diffusers loop, from the same raw noise."
    net = StandIn(pred, s=2.0 if clip else 0.5, abar=schedule.abar, nonlinear=nonlinear)
    model = Denoiser(net, schedule, pred, clip_x0=1.0 if clip else None)
    noise = torch.randn(6, 8, generator=torch.Generator().manual_seed(3))
    s = make_scheduler(name, pred, clip, schedule)
    s.set_timesteps(steps)
    x, g = noise * s.init_noise_sigma, torch.Generator().manual_seed(4)  # one generator for every step, as `sample`
    for t in s.timesteps:
        x = diffusers_step(name, s, net, x, t, eta, g, use_clipped)
    kw = dict(eta=eta) if name == 'ddim' else {}
    ours = sample(name, model, noise, steps, generator=torch.Generator().manual_seed(4), **kw)
    sigma0 = default_sigmas(name, schedule, steps)[0].double()
    # VP: both start at x_T = noise
    ratio = 1.0 if name in VP else ((1 + sigma0**2).sqrt() / s.init_noise_sigma).item()
    return ours, x, ratio


@pytest.mark.parametrize('name', list(SAMPLERS))
def test_from_raw_noise_end_to_end(name):
    """DDPM, DDIM and DPM-Solver++ start where diffusers' do and end where they end. Euler and Heun start from
    noise * sqrt(1 + sigma_max^2), diffusers' from noise * sigma_max: the relative difference is about
    1 / (2 sigma_max^2), 2.3e-3 on Stable Diffusion's schedule. With a stand-in linear in x_t every sampler is a
    linear map of its start, so the ends differ by exactly that factor; with the nonlinear stand-in by nearly that."""
    for pred in PRED:
        ours, theirs, ratio = raw_noise_runs(name, pred, nonlinear=False, eta=0.5 if name == 'ddim' else 0.0)
        size = 1 + theirs.abs().max().item()
        if name in VP:
            # 10 steps, each within TOL = 2e-5 of diffusers' (relative, measured from the same state): 10 x 2e-5
            assert ratio == 1 and (ours - theirs).abs().max().item() < 10 * TOL[name] * size
        else:
            s_max = SD.sigmas[-1].item()
            # sqrt(1 + s^2)/s = 1 + 1/(2s^2) - ...
            assert abs(ratio - 1 - 1 / (2 * s_max**2)) < 1 / (4 * s_max**4)
            # the difference is the start's factor, to the parity of 10 steps (10 x TOL, relative) ...
            assert (ours - ratio * theirs).abs().max().item() < 10 * TOL[name] * size
            rel = ((ours - theirs).norm() / theirs.norm()).item()
            assert abs(rel - (ratio - 1)) < 0.01 * (ratio - 1)  # ... so the measured size is the stated one
            ours_nl, theirs_nl, _ = raw_noise_runs(name, pred, nonlinear=True)
            rel = ((ours_nl - theirs_nl).norm() / theirs_nl.norm()).item()
            # the nonlinear part is 0.1 tanh(W x_t + ...), |W| ~ 1: it moves the map's slope by ~10%; allow 50%
            assert 0.5 * (ratio - 1) < rel < 1.5 * (ratio - 1), (rel, ratio - 1)


def test_ddim_clip_sample_default_differs_by_the_clamped_amount():
    """With clip_sample, diffusers' DDIM by default (use_clipped_model_output=False) keeps the network's eps for the
    direction; ours re-derives it from the clamped x0_hat, so each step differs by (sigma_down / sigma) (x0_hat -
    clamp(x0_hat)) in sigma space, exactly. With use_clipped_model_output=True the two agree."""
    # data of std 2: x0_hat often leaves [-1, 1]
    net = StandIn('eps', s=2.0)
    clipped, free = Denoiser(net, SCHEDULE, 'eps', clip_x0=1.0), Denoiser(net, SCHEDULE, 'eps')
    noise = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    theirs = run_diffusers('ddim', net, noise, 10, clip=True, use_clipped=False)
    sigmas = default_sigmas('ddim', SCHEDULE, 10)
    vp = (1 + sigmas**2).sqrt()
    worst, moved = 0.0, 0.0
    for i in range(10):
        x = theirs[i] * vp[i]
        ours = sample_ddim(clipped, x, sigmas[i : i + 2]) / vp[i + 1]
        with torch.no_grad():
            x0 = free(x, sigmas[i])
        stated = (sigmas[i + 1] / sigmas[i]) * (x0 - x0.clamp(-1, 1)) / vp[i + 1]  # x_t space: divided by vp
        size = 1 + max(theirs[i].abs().max(), theirs[i + 1].abs().max()).item()
        worst = max(worst, ((ours - theirs[i + 1]) - stated).abs().max().item() / size)
        moved = max(moved, stated.abs().max().item() / size)
    assert worst < TOL['ddim'] < 100 * TOL['ddim'] < moved, (worst, moved)  # the formula holds, and it matters
    ours_end, theirs_end, _ = raw_noise_runs(
        'ddim', 'eps', nonlinear=True, clip=True, use_clipped=True, schedule=SCHEDULE
    )
    assert (ours_end - theirs_end).abs().max() < 10 * TOL['ddim'] * (1 + theirs_end.abs().max())  # 10 steps x TOL


# ---- bad input ----
BAD = [  # (call, error, the words the message must contain)
    (
        lambda: sample('ddim', Denoiser(StandIn(), SCHEDULE), (2, 8), 10, eta=-1.0),
        ValueError,
        'eta (0: deterministic DDIM, 1: DDPM\'s variance) must be a number in [0, 1], got -1.0',
    ),
    (lambda: sample('ddim', Denoiser(StandIn(), SCHEDULE), (2, 8), 10, eta=float('nan')), ValueError, 'got nan'),
    (lambda: sample('ddim', Denoiser(StandIn(), SCHEDULE), (2, 8), 10, eta=2.0), ValueError, 'in [0, 1], got 2.0'),
    (
        lambda: sample('euler', Denoiser(StandIn(), SCHEDULE), (2, 8), 10, eta=0.5),
        TypeError,
        "sampler 'euler' takes no argument ['eta']",
    ),
    (lambda: karras_sigmas(10, 5.0, 1.0), ValueError, 'sigma_min must not exceed sigma_max'),
    (lambda: karras_sigmas(0, 0.1, 1.0), ValueError, 'n must be an integer number of steps >= 1, got 0'),
    (lambda: karras_sigmas(-2, 0.1, 1.0), ValueError, 'got -2'),
    (lambda: karras_sigmas(10, 0.1, float('inf')), ValueError, 'sigma_max must be a finite number > 0'),
    (lambda: karras_sigmas(10, 0.1, 1.0, rho=0.0), ValueError, 'rho must be a finite number > 0'),
    (
        lambda: SAMPLERS['euler'](
            Denoiser(StandIn(), SCHEDULE), torch.randn(2, 8), torch.tensor([10.0, float('nan'), 0.0])
        ),
        ValueError,
        'sigmas must be finite',
    ),
    (
        lambda: SAMPLERS['heun'](
            Denoiser(StandIn(), SCHEDULE), torch.randn(2, 8), torch.tensor([float('inf'), 1.0, 0.0])
        ),
        ValueError,
        'sigmas must be finite',
    ),
    (
        lambda: SAMPLERS['ddim'](Denoiser(StandIn(), SCHEDULE), torch.randn(2, 8), torch.tensor([10.0, 1.0, -1.0])),
        ValueError,
        'and the last >= 0',
    ),
    (
        lambda: SAMPLERS['ddim'](Denoiser(StandIn(), SCHEDULE), torch.randn(2, 8), [10.0, 1.0, 0.0]),
        TypeError,
        'sigmas must be a floating-point tensor',
    ),
    (
        lambda: sample('ddim', Denoiser(torch.nn.Linear(8, 8), SCHEDULE), torch.randn(2, 8).half(), 5),
        TypeError,
        "noise is torch.float16 on cpu, but the network's weights are torch.float32",
    ),
    (
        lambda: sample('ddim', Denoiser(StandIn(), SCHEDULE), torch.ones(2, 8, dtype=torch.long), 5),
        TypeError,
        'noise must be a floating-point tensor',
    ),
    (
        lambda: sample('ddim', Denoiser(StandIn(), SCHEDULE), torch.full((2, 8), float('nan')), 5),
        ValueError,
        'noise must be finite',
    ),
    (lambda: sample('ddim', Denoiser(StandIn(), SCHEDULE), (2.5, 8), 5), TypeError, 'the shape of the batch to draw'),
    (lambda: sample('ddim', StandIn(), (2, 8), 5), TypeError, 'model must be a denoiser that carries its schedule'),
    (
        lambda: sample('ddim', Denoiser(StandIn(), SCHEDULE), (2, 8), 5, callback=1),
        TypeError,
        'callback must be None or callable',
    ),
    (lambda: Denoiser(StandIn(), SCHEDULE.abar), TypeError, 'schedule must be a diffcourse.schedules.Schedule'),
    (
        lambda: Denoiser(StandIn(), SCHEDULE, clip_x0=-1.0),
        ValueError,
        'clip_x0 must be None (no clamp) or a finite number > 0',
    ),
    (
        lambda: Denoiser(StandIn(), SCHEDULE)(torch.randn(4, 8), -1.0),
        ValueError,
        'sigma must be a finite noise level >= 0',
    ),
    (
        lambda: Denoiser(StandIn(), SCHEDULE)(torch.randn(4, 8), torch.ones(3)),
        ValueError,
        'one per sample, (4,); got shape (3,)',
    ),
    (
        lambda: Denoiser(lambda x, t, class_labels: x, SCHEDULE)(torch.randn(4, 8), 1.0, class_labels=torch.arange(3)),
        ValueError,
        'class_labels has 3 entries for a batch of 4',
    ),
    (
        lambda: sample(
            'ddim',
            ClassifierFreeGuidance(
                Denoiser(lambda x, t, class_labels=None: x, SCHEDULE), 3.0, class_labels=torch.arange(3)
            ),
            (4, 8),
            5,
        ),
        ValueError,
        'class_labels has 3 entries for a batch of 4',
    ),
    (lambda: default_sigmas('ddim', SCHEDULE.abar, 5), TypeError, 'schedule must be a diffcourse.schedules.Schedule'),
    (
        lambda: SIGMAS['dpmpp_2m'](SCHEDULE, 0),
        ValueError,
        'steps must be an integer between 1 and T=1000 (the network\'s training timesteps), got 0',
    ),
    (
        lambda: timestep_sigmas(SCHEDULE, torch.tensor([1000, 5])),
        ValueError,
        'ts must be descending timesteps in [0, 999]',
    ),
    (
        lambda: timestep_sigmas(SCHEDULE, torch.tensor([5.0, 1.0])),
        ValueError,
        'ts must be a non-empty 1-D tensor of integer timesteps',
    ),
    (lambda: steps_for_evals('ddim', 0), ValueError, 'must be an integer >= 1, got 0'),
    (lambda: num_evals('ddim', [3]), ValueError, 'steps must be an integer'),
    (lambda: sampler_table(Denoiser(StandIn(), SCHEDULE), None, (4, 8)), TypeError, 'metric must be callable'),
    (
        lambda: sampler_table(Denoiser(StandIn(), SCHEDULE), len, (4, 8), batch_size=0),
        ValueError,
        'batch_size (None: all at once) must be an integer >= 1',
    ),
    (
        lambda: sampler_table(Denoiser(StandIn(), SCHEDULE), len, (4, 8), evals=(5, -1)),
        ValueError,
        'evals (a budget of network evaluations) must be an integer >= 1, got -1',
    ),
    (
        lambda: load_denoiser('classifier_digits'),
        ValueError,
        "'classifier_digits' is not a denoiser: it holds a diffcourse.metrics.SmallCNN",
    ),
]


def test_bad_input_gets_a_clear_error(bad_case):  # one case of BAD per test (conftest.py)
    expect_clear_error(*bad_case)
