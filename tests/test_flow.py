"""Lesson 07c (flow matching): the flow samplers against diffusers' FlowMatchEuler/HeunDiscreteScheduler,
deterministic DDIM against flow Euler, the conversions of diffusion predictions, and the error paths.

The networks are lesson 04's ToyMLP, random (seeded) or shipped: a random network is a fixed function of (x, t), so a
difference between two samplers is a difference of arithmetic.
"""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from diffcourse.elbo import v_from_x0_eps
from diffcourse.flow import (
    FLOW_SAMPLERS,
    DiffusionVelocity,
    FlowModel,
    diffusers_flow_times,
    flow_abar,
    flow_logsnr,
    flow_matching_loss,
    flow_num_evals,
    flow_times,
    interpolate,
    load_flow,
    sample_flow_euler,
    sample_flow_heun,
    sample_times,
    shift_time,
    sigma_to_flow_t,
    time_density,
    velocity_from_prediction,
)
from diffcourse.samplers import Denoiser, ddim_sigmas, load_denoiser, sample_ddim
from diffcourse.schedules import Schedule
from diffcourse.training import ToyMLP


def _random_net(seed=0):
    torch.manual_seed(seed)
    return ToyMLP().eval()


def _noise(n=64, seed=1):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('shift', [1.0, 3.0, 0.5])
@pytest.mark.parametrize('steps', [1, 2, 10, 50])
def test_set_timesteps_matches_diffusers(steps, shift):
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    ours = diffusers_flow_times(steps, shift)
    assert ours.shape == ref.sigmas.shape
    # both are float64 computations rounded to float32 at the end: 6e-8 x |t| <= 1; 2e-7 allowed
    torch.testing.assert_close(ours, ref.sigmas, atol=2e-7, rtol=0)
    # the network's input, 1000 x sigma in float32: 6e-8 x 1000 -> 6e-5; 1e-4 allowed
    torch.testing.assert_close(ours[:-1] * 1000, ref.timesteps, atol=1e-4, rtol=0)


@pytest.mark.parametrize('shift', [1.0, 3.0])
@pytest.mark.parametrize('shipped', [False, True])
def test_euler_matches_diffusers_step_by_step(shift, shipped):
    model = load_flow('toy_mlp_flow_gaussian_mixture') if shipped else FlowModel(_random_net())
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(12)
    x0 = _noise()
    xd, theirs = x0.clone(), []
    with torch.no_grad():
        for t in ref.timesteps:
            xd = ref.step(model.net(xd, t.expand(len(xd))), t, xd).prev_sample
            theirs.append(xd)
    ours = []
    sample_flow_euler(model, x0, ref.sigmas, callback=lambda d: ours.append(d['x']))
    assert len(ours) == len(theirs) == 12
    for i, (a, b) in enumerate(zip(ours, theirs)):
        # the same float32 operations: t * 1000, the network, x + dt v; ~1 rounding of 6e-8 x |x| <~ 5 per step,
        # carried over 12 steps: ~4e-6; 1e-5 allowed
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f'step {i}')


@pytest.mark.parametrize('shift', [1.0, 3.0])
def test_heun_matches_diffusers(shift):
    model = FlowModel(_random_net())
    ref = FlowMatchHeunDiscreteScheduler(shift=shift)
    ref.set_timesteps(8)
    x0 = _noise()
    xd = x0.clone()
    with torch.no_grad():
        for t in ref.timesteps:  # two calls per step but the last, as ours
            xd = ref.step(model.net(xd, t.expand(len(xd))), t, xd).prev_sample
    ours = sample_flow_heun(model, x0, diffusers_flow_times(8, shift))
    # diffusers goes through x0 = x - sigma v and back, (x - x0) / sigma: ~3 roundings of 6e-8 x |x| <~ 5 divided
    # by sigma >= 0.1 per step, over 8 steps: ~2e-5; 1e-4 allowed
    torch.testing.assert_close(ours, xd, atol=1e-4, rtol=0)


def _ddim_and_flow_euler(model, steps, noise):
    sigmas = ddim_sigmas(model.schedule, steps)
    x = noise * (1 + sigmas[0] ** 2).sqrt()
    ddim, euler = [], []
    out_ddim = sample_ddim(model, x, sigmas, callback=lambda d: ddim.append(d['x'] / (1 + d['sigma_next'])))
    ts = sigma_to_flow_t(sigmas.double())
    out_flow = sample_flow_euler(
        DiffusionVelocity(model), x / (1 + sigmas[0]), ts, callback=lambda d: euler.append(d['x'])
    )
    return out_ddim, out_flow, ddim, euler


@pytest.mark.parametrize(
    'which', ['shipped eps', 'shipped v', 'random eps', 'random v', 'random x0', 'random eps cosine']
)
@pytest.mark.parametrize('steps', [1, 5, 25])
def test_ddim_is_flow_euler(which, steps):
    if which == 'shipped eps':
        model = load_denoiser('toy_mlp_gaussian_mixture')
    elif which == 'shipped v':
        model = load_denoiser('toy_mlp_v_gaussian_mixture')
    else:
        schedule = Schedule.from_name('cosine' if 'cosine' in which else 'linear', T=1000)
        model = Denoiser(_random_net(), schedule, which.split()[1])
    out_ddim, out_flow, ddim, euler = _ddim_and_flow_euler(model, steps, _noise())
    for i, (a, b) in enumerate(zip(ddim, euler)):
        # flow coordinates |z| <~ 5 (a random x0-network may give |x0_hat| ~10): ~20 float32 roundings (6e-8) per
        # step on either side, carried over <= 25 steps: ~1e-4 x magnitude at worst; 2e-4 x (1 + |z|) allowed
        torch.testing.assert_close(b, a, atol=2e-4 * (1 + a.abs().max().item()), rtol=0, msg=f'step {i}')
    torch.testing.assert_close(out_flow, out_ddim, atol=2e-4 * (1 + out_ddim.abs().max().item()), rtol=0)


def test_velocity_from_prediction_and_path_quantities():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 500, 2, generator=g)
    abar = torch.rand(500, generator=g).clamp(0.01, 0.99)
    a, b = abar.sqrt()[:, None], (1 - abar).sqrt()[:, None]
    x_t = a * x0 + b * eps
    for kind, pred in (('epsilon', eps), ('v_prediction', v_from_x0_eps(x0, eps, abar)), ('x0', x0)):
        # dividing by a, b >= 0.1 the roundings of x_t (6e-8 x |x| <~ 5): ~3e-6; 1e-5 allowed
        torch.testing.assert_close(velocity_from_prediction(x_t, pred, abar, kind), eps - x0, atol=1e-5, rtol=0)
    # the point x_t / (a + b) lies on the straight path at t = b / (a + b) (eq. D1)
    t = (b / (a + b)).squeeze(1)
    z, u = interpolate(x0, eps, t)
    torch.testing.assert_close(z, x_t / (a + b), atol=1e-6, rtol=0)  # a few float32 roundings of |x| <~ 5
    tt = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    # float64 identities: ~10 roundings of 1e-16 x |logsnr| <~ 10
    torch.testing.assert_close(torch.log(flow_abar(tt) / (1 - flow_abar(tt))), flow_logsnr(tt), atol=1e-12, rtol=0)


def test_samplers_count_and_agree_on_straight_paths():
    assert [flow_num_evals(n, 6) for n in FLOW_SAMPLERS] == [6, 12, 11]

    class Straight(torch.nn.Module):  # v = eps - x0 with x0 = 0.5: every path is straight, every method exact
        prediction_type = 'flow'

        def forward(self, x, t):
            t = float(t)
            return (x - 0.5) / t if t > 0 else torch.zeros_like(x)

    x = _noise()
    for name, fn in FLOW_SAMPLERS.items():
        out = fn(Straight(), x, flow_times(3))
        # a few float32 roundings of |x| <~ 4: 1e-5 allowed
        torch.testing.assert_close(out, torch.full_like(x, 0.5), atol=1e-5, rtol=0, msg=name)


def test_time_sampling_density_and_shift():
    for name, shift in (('uniform', 1.0), ('uniform', 3.0), ('logit_normal', 1.0), ('logit_normal', 0.3)):
        draws = sample_times(200_000, name, shift=shift, generator=torch.Generator().manual_seed(0))
        assert draws.min() >= 0 and draws.max() <= 1
        edges = torch.linspace(0, 1, 11, dtype=torch.float64)
        counts = torch.histc(draws.double(), bins=10, min=0, max=1) / len(draws)
        grid = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
        dens = time_density(grid, name, shift=shift)
        mass = torch.stack(
            [dens[(grid >= lo) & (grid < hi)].sum() * (grid[1] - grid[0]) for lo, hi in zip(edges[:-1], edges[1:])]
        )
        # bin frequencies of 2e5 draws: standard error <= sqrt(0.25 / 2e5) = 1.1e-3; 5 of them, plus the rule's 1e-4
        torch.testing.assert_close(counts, mass, atol=6e-3, rtol=0)
    torch.testing.assert_close(shift_time(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))


def test_loss_trains_with_the_course_loop():
    from diffcourse.training import train

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(256, 2, generator=g) * 0.3 + 1.0,) for _ in range(4)]
    net = ToyMLP(hidden=32, depth=1)
    st = train(net, lambda m, b: flow_matching_loss(m, b[0]), data, 60, 3e-3, progress=False)
    assert sum(st.losses[-10:]) / 10 < 0.8 * sum(st.losses[:10]) / 10


def test_bad_input_is_refused_clearly():
    net = _random_net()
    flow = FlowModel(net)
    x = _noise(4)
    with pytest.raises(ValueError, match=r"Unknown path 'straight'; valid choices are \['cosine', 'linear'\]"):
        interpolate(x, x, 0.5, 'straight')
    with pytest.raises(ValueError, match=r"Unknown path 'ot'"):
        FlowModel(net, path='ot')
    with pytest.raises(ValueError, match=r"Unknown time_sampling 'lognormal'; valid choices are"):
        sample_times(4, 'lognormal')
    with pytest.raises(ValueError, match=r"Unknown time_sampling 'lognormal'"):
        flow_matching_loss(net, x, time_sampling='lognormal')
    with pytest.raises(ValueError, match=r't must lie in \[0, 1\] \(1: noise, 0: data\), got values in \[1.5, 1.5\]'):
        flow(x, 1.5)
    with pytest.raises(ValueError, match=r'ts must lie in \[0, 1\]'):
        sample_flow_euler(flow, x, torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match=r'ts must decrease'):
        sample_flow_heun(flow, x, torch.tensor([0.0, 1.0]))
    for bad in (0, -2.0, math.inf):
        with pytest.raises(ValueError, match=r'shift must be a finite number > 0'):
            sample_times(4, shift=bad)
        with pytest.raises(ValueError, match=r'shift must be a finite number > 0'):
            flow_times(4, shift=bad)
        with pytest.raises(ValueError, match=r'shift must be a finite number > 0'):
            time_density(0.5, shift=bad)
    with pytest.raises(TypeError, match=r'shift must be a finite number > 0'):
        shift_time(0.5, '3')
    # a model of another parameterisation: a diffusion denoiser, a raw network, a loaded eps or v file
    eps_model = load_denoiser('toy_mlp_gaussian_mixture')
    with pytest.raises(
        TypeError,
        match=r"wants a velocity model \(prediction_type 'flow'\).*Denoiser with (objective|prediction_type) 'eps",
    ):
        sample_flow_euler(eps_model, x, flow_times(4))
    with pytest.raises(TypeError, match=r'wants a velocity model'):
        FLOW_SAMPLERS['midpoint'](net, x, flow_times(4))
    with pytest.raises(ValueError, match=r"records prediction_type 'epsilon', not 'flow'"):
        load_flow('toy_mlp_gaussian_mixture')
    with pytest.raises(ValueError, match=r"records prediction_type 'v_prediction', not 'flow'"):
        load_flow('toy_mlp_v_gaussian_mixture')
    dv = DiffusionVelocity(eps_model)
    with pytest.raises(ValueError, match=r'DiffusionVelocity wants one time t in \(0, 0.99'):
        dv(x, 1.0)
    with pytest.raises(ValueError, match=r'DiffusionVelocity wants one time t'):
        dv(x, 0.0)
    with pytest.raises(ValueError, match=r"Unknown prediction_type 'score'"):
        velocity_from_prediction(x, x, 0.5, 'score')
    with pytest.raises(ValueError, match=r'sigma must be a noise level >= 0'):
        sigma_to_flow_t(-1.0)
