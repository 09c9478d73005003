"""Lesson 10b: multistep consistency sampling in LCM's form against diffusers' LCMScheduler, step by step; the
exact consistency function of Gaussian data; the losses, the curriculum and the trainers' error paths."""

import math

import pytest
import torch
from diffusers import LCMScheduler

from conftest import expect_clear_error
from test_samplers import PRED, SCHEDULE, StandIn
from diffcourse.consistency import (
    LCMConsistency,
    consistency_distillation,
    consistency_loss,
    consistency_skip_out,
    consistency_training,
    grid_steps_at,
    lcm_skip_out,
    lcm_timesteps,
    load_consistency,
    sample_consistency,
)
from diffcourse.distill import distill_sigmas
from diffcourse.samplers import Denoiser, load_denoiser, timestep_sigmas
from diffcourse.schedules import Schedule, skip_out


def lcm_scheduler(pred, original_steps=50, schedule=SCHEDULE):
    return LCMScheduler(
        num_train_timesteps=schedule.T,
        trained_betas=schedule.betas.numpy(),
        prediction_type=PRED[pred],
        original_inference_steps=original_steps,
    )


@pytest.mark.parametrize(
    'steps, original_steps', [(1, 50), (2, 50), (3, 50), (4, 50), (7, 50), (8, 50), (4, 64), (6, 100)]
)
def test_lcm_timesteps_are_diffusers(steps, original_steps):
    s = lcm_scheduler('eps', original_steps)
    s.set_timesteps(steps)
    assert lcm_timesteps(steps, SCHEDULE.T, original_steps).tolist() == s.timesteps.tolist()


def test_lcm_grid_is_the_students_grid():
    "With N dividing M dividing T, LCM's timesteps are lesson 10's trailing grid: the table's rows share their levels."
    cosine = Schedule.from_name('cosine', T=1024)
    for n in (1, 2, 4, 8):
        sig = timestep_sigmas(cosine, lcm_timesteps(n, 1024, 64))
        assert torch.equal(sig, distill_sigmas(cosine, n))


def lcm_step_errors(pred, steps):
    "Each of our steps from diffusers' state, against diffusers' LCMScheduler step, relative to the numbers' size."
    net = StandIn(pred)
    model = LCMConsistency(Denoiser(net, SCHEDULE, pred))
    s = lcm_scheduler(pred)
    s.set_timesteps(steps)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    sigmas = timestep_sigmas(SCHEDULE, s.timesteps).float()  # float32, as diffusers' states and noise draws
    vp = (1 + sigmas**2).sqrt()  # our x = x_t * sqrt(1 + sigma^2)
    errs = []
    for i, t in enumerate(s.timesteps):
        out = s.step(net(x, t), t, x, generator=torch.Generator().manual_seed(100 + i))
        seen = {}
        ours = sample_consistency(
            model,
            x * vp[i],
            sigmas[i : i + 2],
            generator=torch.Generator().manual_seed(100 + i),
            callback=seen.update,
        )
        size = 1 + max(x.abs().max(), out.prev_sample.abs().max())
        errs.append(((ours / vp[i + 1] - out.prev_sample).abs().max() / size).item())
        errs.append(((seen['x0_hat'] - out.denoised).abs().max() / size).item())
        x = out.prev_sample
    return errs


# As lesson 07's DDIM parity (tests/test_samplers.py, TOL): ~10 float32 operations a side (1e-6), and diffusers'
# float32 alphas_cumprod, off by up to 1.5e-6 in sqrt(1 - abar) times |eps| <~ 4: together ~1e-5, 2e-5 allowed.
# c_skip and c_out are evaluated at our t = sigma_to_t(sigma), equal to diffusers' integer t within 1e-9.
@pytest.mark.parametrize('pred', ['eps', 'v', 'x0'])
@pytest.mark.parametrize('steps', [1, 2, 4, 8])
def test_each_lcm_step_matches_diffusers(pred, steps):
    errs = lcm_step_errors(pred, steps)
    assert max(errs) < 2e-5, errs


def test_lcm_scalings_are_diffusers():
    s = lcm_scheduler('eps')
    for t in (0, 1, 15, 259, 999):
        assert lcm_skip_out(t) == pytest.approx(s.get_scalings_for_boundary_condition_discrete(t), rel=1e-12)


def test_v_denoiser_is_a_consistency_parameterisation():
    "The v-denoiser's c_skip is Song et al.'s with sigma_data = 1, sigma_min = 0; its c_out the same up to sign."
    sigma = torch.logspace(-3, 4, 50, dtype=torch.float64)
    c_skip, c_out = skip_out(sigma, 'v')
    cm_skip, cm_out = consistency_skip_out(sigma)
    torch.testing.assert_close(c_skip, cm_skip, rtol=1e-12, atol=0)
    torch.testing.assert_close(-c_out, cm_out, rtol=1e-12, atol=0)
    assert consistency_skip_out(0.0) == (1.0, 0.0)


def _per_sample(sigma, x):
    "sigma (a number, 0-d or (B,)) shaped to broadcast on x (B, ...)."
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    return sigma.reshape(-1, *[1] * (x.ndim - 1)) if sigma.ndim else sigma


def exact_gaussian_f(s):
    "The consistency function of data ~ N(0, s^2 I): the probability-flow ODE scales x by sqrt(s^2 + sigma^2)."
    return lambda x, sigma: x * s / (s**2 + _per_sample(sigma, x) ** 2).sqrt()


def exact_gaussian_denoiser(s):
    "E[x0 | x] for data ~ N(0, s^2 I) and x = x0 + sigma z."
    return lambda x, sigma: x * s**2 / (s**2 + _per_sample(sigma, x) ** 2)


@pytest.mark.parametrize('levels', [[80.0, 0.0], [80.0, 1.0, 0.0], [80.0, 10.0, 2.0, 0.5, 0.1, 0.0]])
def test_exact_consistency_function_samples_the_data(levels):
    "With the exact f, one step or several give data of the right spread (std s): only sampling noise remains."
    s, n = 0.5, 200_000
    sigmas = torch.tensor(levels, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    noise = sigmas[0] * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = sample_consistency(exact_gaussian_f(s), noise, sigmas, generator=g)
    # the std of a sample std of n normals is s / sqrt(2n) = 8e-4; 5 of those allowed
    assert abs(x.std().item() - s) < 5 * s / math.sqrt(2 * n)


def test_losses_of_the_exact_function_shrink_with_the_grid():
    "CT's loss of the exact f falls like 1/N^2 (its target is noisy to first order), CD's (Euler error) faster."
    s = 0.5
    f = exact_gaussian_f(s)
    teacher = exact_gaussian_denoiser(s)
    x0 = s * torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sched = Schedule.from_name('cosine', T=1024)

    def loss(N, teacher_=None):
        sig = distill_sigmas(sched, N).double()
        g = torch.Generator().manual_seed(1)
        return consistency_loss(f, f, x0, sig, teacher_, 'l2', 'uniform', generator=g).item()

    ct = [loss(N) for N in (16, 64, 256)]
    cd = [loss(N, teacher) for N in (16, 64, 256)]
    assert ct[0] > ct[1] > ct[2] and cd[0] > cd[1] > cd[2]
    # 4x finer: CT 16x (its target differs from the exact one to first order in 1/N: the squared loss 1/N^2);
    # CD 256x (Euler's local error is second order, squared 1/N^4); 8 and 64 allowed
    assert ct[1] / ct[2] > 8 and cd[1] / cd[2] > 64
    assert all(c < t for c, t in zip(cd, ct))  # the teacher's step is a better target than the same noise


def test_curriculum_doubles_in_equal_stages():
    assert [grid_steps_at(k, 400, (16, 128)) for k in (0, 99, 100, 199, 200, 300, 399)] == [
        16,
        16,
        32,
        32,
        64,
        128,
        128,
    ]
    assert grid_steps_at(123, 400, 64) == 64


def test_shipped_consistency_models_sample_in_one_step():
    "The shipped toy CD model in one step is far better than the teacher's one DDIM step, and near its 64."
    from diffcourse.tables import sw_to_mixture
    from diffcourse.distill import sample_steps

    teacher, cm = load_denoiser('toy_mlp_v_gaussian_mixture'), load_consistency('toy_mlp_v_gaussian_mixture')
    metric = sw_to_mixture()
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    sig = distill_sigmas(cm.schedule, 1)
    one = metric(sample_consistency(cm, z * (1 + sig[0] ** 2).sqrt(), sig))
    assert one < 0.5 * metric(sample_steps(teacher, z, 1)) and one < 2 * metric(sample_steps(teacher, z, 64))


def _tiny_run(**kw):
    teacher = load_denoiser('toy_mlp_v_gaussian_mixture')
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    return consistency_distillation(teacher, [(x0,)], 3, progress=False, **kw)


def test_a_short_distillation_runs_and_is_reproducible():
    a, st = _tiny_run(generator=torch.Generator().manual_seed(3))
    b, _ = _tiny_run(generator=torch.Generator().manual_seed(3))
    assert st.step == 3 and all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))


TEACHER = lambda: load_denoiser('toy_mlp_v_gaussian_mixture')
EPS_TEACHER = lambda: load_denoiser('toy_mlp_gaussian_mixture')
DL = [(torch.zeros(4, 2),)]
BAD = [
    (lambda: consistency_distillation(EPS_TEACHER(), DL, 1), ValueError, "needs a v-prediction teacher"),
    (
        lambda: consistency_distillation(TEACHER(), DL, 1, grid=48),
        ValueError,
        "grid must be a positive integer that divides T=1024",
    ),
    (
        lambda: consistency_distillation(TEACHER(), DL, 1, grid=(16, 48)),
        ValueError,
        "grid must be a number of steps dividing T=1024",
    ),
    (
        lambda: consistency_distillation(TEACHER(), DL, 1, mu=1.0),
        ValueError,
        "mu (the target network's EMA decay) must be a number in [0, 1), got 1.0",
    ),
    (
        lambda: consistency_distillation(TEACHER(), DL, 1, distance='l1'),
        ValueError,
        "valid choices are ['l2', 'pseudo_huber']",
    ),
    (lambda: consistency_distillation(TEACHER(), DL, 1, mu=0.9, ema_decay=0.99), ValueError, 'ema_decay must be mu'),
    (lambda: consistency_training('net', TEACHER().schedule, DL, 1), TypeError, 'net must be an nn.Module'),
    (
        lambda: consistency_training(TEACHER().net, TEACHER().schedule, DL, 1, weighting='snr'),
        ValueError,
        "valid choices are ['inverse_gap', 'uniform']",
    ),
    (
        lambda: lcm_timesteps(8, 1000, 2000),
        ValueError,
        'original_steps (the distillation grid, at most T) must be an integer >= 1 and <= 1000, got 2000',
    ),
    (
        lambda: lcm_timesteps(60, 1000, 50),
        ValueError,
        'steps (at most original_steps = 50) must be an integer >= 1 and <= 50, got 60',
    ),
    (
        lambda: load_consistency('toy_mlp_v_gaussian_mixture', 'lcm'),
        ValueError,
        "valid choices are ['consistency_distillation', 'consistency_training']",
    ),
    (
        lambda: sample_consistency(TEACHER(), torch.zeros(2, 2), torch.tensor([1.0, 2.0])),
        ValueError,
        'sigmas must not increase',
    ),
]


def test_bad_input_gets_a_clear_error(bad_case):
    expect_clear_error(*bad_case)
