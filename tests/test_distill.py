"""Tests of diffcourse.distill (lesson 10): the target against the paper's formula, DDIM against diffusers,
errors, training."""

import json, math
import pytest, torch
from torch import nn
from diffcourse.distill import (
    distill_sigmas,
    sample_steps,
    distill_target,
    teacher_steps2,
    loss_weight,
    distill_loss,
    check_halving,
    distill_round,
    progressive_distillation,
    teacher_pairs,
    distill_direct,
    direct_loss,
    student_name,
    load_denoiser,
    load_student,
    METHODS,
    ddim_step,
)
from diffcourse.samplers import Denoiser, SAMPLERS
from diffcourse.tables import (
    load_distill_table,
    table_value,
    DISTILL_ROWS,
    DISTILL_SETUPS,
    distill_table,
    stale_rows,
    row_name,
    weights_id,
)
from diffcourse.schedules import Schedule
from diffcourse.data import get_dataloader, gaussian_mixture
from diffcourse.core import weights_path
from diffcourse.training import load_pretrained

SCHED = Schedule.from_name('cosine', T=1024)


class ConstantX0(nn.Module):
    """A v-network whose clean estimate is the constant `c` at every (x_t, t):
    its probability-flow ODE paths are straight."""

    def __init__(self, c, abar):
        super().__init__()
        self.c, self.abar = c, abar
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        ab = self.abar[t.round().long()].view(-1, *[1] * (x_t.ndim - 1))
        return (ab.sqrt() * x_t - self.c) / (1 - ab).sqrt() + self.w  # x0_from_v(x_t, v) = c


@pytest.fixture(scope='module')
def toy():
    return load_denoiser('toy_mlp_v_gaussian_mixture')


def test_target_matches_paper_formula_float64():
    "Alg. 2 in z-space (alpha, sigma_vp), written independently, against the sigma-space eq. (T1)."
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a_t, a_n = sorted(torch.rand(2, generator=g, dtype=torch.float64).tolist())  # abar_t < abar_t''
        x0, z_n_dir = (
            torch.randn(3, 4, generator=g, dtype=torch.float64),
            torch.randn(3, 4, generator=g, dtype=torch.float64),
        )
        z_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * torch.randn(3, 4, generator=g, dtype=torch.float64)
        z_n = z_n_dir  # any teacher result at t''
        r = math.sqrt(1 - a_n) / math.sqrt(1 - a_t)
        paper = (z_n - r * z_t) / (math.sqrt(a_n) - r * math.sqrt(a_t))
        sig = lambda a: torch.full((3,), math.sqrt((1 - a) / a), dtype=torch.float64)
        ours = distill_target(z_t / math.sqrt(a_t), z_n / math.sqrt(a_n), sig(a_t), sig(a_n))
        # float64: ~10 roundings (2.2e-16) of numbers of order 1, divided by 1 - r (>= ~1e-3 for these draws): ~1e-12
        torch.testing.assert_close(ours, paper, rtol=1e-9, atol=1e-9)


def test_straight_paths_need_no_distillation():
    "With a constant clean estimate DDIM is exact at any number of steps: every sampler gives c and the loss is 0."
    c = torch.tensor([0.5, -1.0])
    model = Denoiser(ConstantX0(c, SCHED.abar), SCHED, 'v')
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    # each step lands on the network's float32 x0_hat = c: ~10 roundings of 6e-8 x (|c| + |v| <~ 3) = 2e-6, the last
    # step's in full and the earlier ones scaled by sigma' / sigma < 1 (a geometric sum, <= 2x): 4e-6; 1e-5 allowed
    for n in (1, 4, 64):
        torch.testing.assert_close(sample_steps(model, noise, n), c.expand(64, 2), atol=1e-5, rtol=0)
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    # x_tilde - c: the teacher's 2e-6 (above) divided by 1 - r >= 0.58 on a 4-step grid: <= 4e-6, squared 1.6e-11,
    # weighted by max(SNR, 1) <= 1 / 0.425^2 = 5.5: ~1e-10; 1e-9 allowed
    assert distill_loss(model, model, x0, 4, generator=torch.Generator().manual_seed(2)).item() < 1e-9


def test_sample_steps_matches_diffusers_ddim(toy):
    "Our DDIM on the trailing grid = diffusers' DDIMScheduler (v_prediction, squaredcos_cap_v2, trailing, alpha_one)."
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(
        num_train_timesteps=1024,
        beta_schedule='squaredcos_cap_v2',
        prediction_type='v_prediction',
        timestep_spacing='trailing',
        set_alpha_to_one=True,
        clip_sample=False,
    )
    # diffusers' float32 product of T = 1024 factors (T x 6e-8 at worst) and its 1 - beta of a float32 beta = 0.999
    # (6e-8 x 0.999 / 0.001 = 6e-5 relative)
    torch.testing.assert_close(sch.alphas_cumprod.float(), SCHED.abar, atol=0, rtol=1024 * 6e-8 + 6e-5)
    noise = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    for n in (1, 2, 8, 64):
        sch.set_timesteps(n)
        x = noise.clone()
        with torch.no_grad():
            for t in sch.timesteps:
                x = sch.step(toy.net(x, t.expand(len(x)).float()), t, x).prev_sample
        # per step ~10 float32 roundings on diffusers' side (6e-8 each) and its abar off by ~sqrt(t) x 3e-8 relative:
        # ~2e-6 x (1 + |x|), adding up like a random walk over n steps
        tol = 2e-6 * n**0.5 * (1 + x.abs().max().item())
        torch.testing.assert_close(sample_steps(toy, noise, n), x, atol=tol, rtol=0)


def test_ddim_step_is_lesson_07s_ddim(toy):
    "eq. (D) is one step of lesson 07's deterministic DDIM sampler."
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    D = lambda x, s: toy(x.float(), torch.as_tensor(s).float()).double()
    sig = torch.tensor([3.0, 0.7], dtype=torch.float64)
    with torch.no_grad():
        # the same arithmetic
        assert torch.equal(ddim_step(x, D(x, sig[0]), sig[0], sig[1]), SAMPLERS['ddim'](D, x, sig))


def test_teacher_two_steps_land_where_the_student_step_lands(toy):
    sig = distill_sigmas(SCHED, 16)
    x0 = gaussian_mixture().sample(32, torch.Generator().manual_seed(0))
    e = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    i = torch.randint(0, 8, (32,), generator=torch.Generator().manual_seed(2))
    s, sm, sn = sig[2 * i], sig[2 * i + 1], sig[2 * i + 2]
    x = x0 + s[:, None] * e
    with torch.no_grad():
        xt = teacher_steps2(toy, x, s, sm, sn)
    xt, x, s, sn = xt.double(), x.double(), s.double(), sn.double()
    x_tilde = distill_target(x, xt, s, sn)
    # float64 algebra on x up to ~|e| sigma_max = 6e4: 2.2e-16 x 6e4 x a few = 1e-10; 1e-8 allowed
    torch.testing.assert_close(x_tilde + (sn / s)[:, None] * (x - x_tilde), xt, atol=1e-8, rtol=1e-8)


def test_errors(toy):
    dl = get_dataloader('gaussian_mixture', batch_size=64, n=256, seed=0)
    with pytest.raises(ValueError, match='student_steps must be teacher_steps / 2 = 8; got student_steps=5'):
        distill_round(toy, dl, 16, 5, 1)
    with pytest.raises(ValueError, match='student_steps must be teacher_steps / 2 = 8'):
        check_halving(16, 4)
    with pytest.raises(ValueError, match="needs a v-prediction teacher .* got prediction_type 'epsilon'"):
        distill_round(Denoiser(toy.net, SCHED, 'eps'), dl, 8, 4, 1)
    with pytest.raises(ValueError, match="needs a v-prediction teacher"):
        distill_direct(Denoiser(toy.net, SCHED, 'x0'), torch.zeros(8, 2), torch.zeros(8, 2), 1)
    with pytest.raises(TypeError, match='must be a diffcourse.samplers.Denoiser'):
        distill_round(toy.net, dl, 8, 4, 1)
    with pytest.raises(ValueError, match='divides T=1024'):
        distill_sigmas(SCHED, 6)
    with pytest.raises(ValueError, match='divides T=1024'):
        distill_round(toy, dl, 12, 6, 1)
    with pytest.raises(ValueError, match="Unknown weighting 'snr2'"):
        loss_weight(torch.ones(2), 'snr2')
    with pytest.raises(ValueError, match="Unknown weighting 'snr2'"):
        distill_round(toy, dl, 8, 4, 1, weighting='snr2')
    with pytest.raises(ValueError, match="valid choices are \\['direct', 'progressive'\\]"):
        student_name('x', 4, 'gan')
    with pytest.raises(ValueError, match='final_steps must be teacher_steps / 2'):
        progressive_distillation(toy, dl, 8, final_steps=3)
    with pytest.raises(FileNotFoundError, match='tools/tables/distill.py'):
        load_distill_table('nowhere.json')
    with pytest.raises(ValueError, match="Unknown table 'cifar'; valid choices are \\['digits', 'toy'\\]"):
        distill_table('cifar')


def test_weights():
    assert loss_weight(torch.tensor([0.5, 2.0])).tolist() == [4.0, 1.0]  # max(SNR, 1), SNR = 1 / sigma^2
    assert loss_weight(torch.tensor([2.0]), 'snr_plus_one').tolist() == [1.25]  # exact in float32: 1 + 1/4


def test_progressive_distillation_rounds_reduce_the_loss(toy):
    dl = get_dataloader('gaussian_mixture', batch_size=256, n=4096, seed=0, generator=torch.Generator().manual_seed(0))
    seen = []
    students = progressive_distillation(
        toy, dl, 4, 1, steps=40, lr=3e-4, callback=lambda n, s, st: seen.append((n, st.losses)), progress=False, seed=0
    )
    assert sorted(students) == [1, 2] and [n for n, _ in seen] == [2, 1]
    for n, losses in seen:
        assert sum(losses[-10:]) < sum(losses[:10]), (n, losses)
    assert toy.prediction_type == 'v_prediction' and all(s.prediction_type == 'v_prediction' for s in students.values())


def test_direct_distillation_loss_falls(toy):
    noise, x = teacher_pairs(toy, (512, 2), 8, generator=torch.Generator().manual_seed(0))
    student, st = distill_direct(
        toy, noise, x, 40, lr=3e-4, batch_size=128, generator=torch.Generator().manual_seed(1), progress=False, seed=0
    )
    assert sum(st.losses[-10:]) < sum(st.losses[:10])
    with torch.no_grad():
        assert direct_loss(student, noise, x) < direct_loss(toy, noise, x)


@pytest.mark.parametrize('setup', list(DISTILL_SETUPS))
def test_shipped_students(setup):
    "Every round's student ships, with the command that made it, and names its teacher: the chain 64 -> 1 is complete."
    teacher = DISTILL_SETUPS[setup]['teacher']
    prev = teacher
    for n in (32, 16, 8, 4, 2, 1):
        _, info = load_pretrained(student_name(teacher, n))
        assert info['prediction_type'] == 'v_prediction' and info['T'] == 1024 and info['student_steps'] == n
        assert (
            info['teacher'] == prev
            and info['teacher_steps'] == 2 * n
            and info['command'] == f'python tools/weights.py {student_name(teacher, n)}'
        )
        prev = student_name(teacher, n)
    _, info = load_pretrained(student_name(teacher, 1, 'direct'))
    assert info['method'] == 'direct' and info['teacher'] == teacher
    assert weights_path(f'{student_name(teacher, 1)}.safetensors').stat().st_size < 3e6


def test_shipped_table_is_complete():
    tab = load_distill_table()
    assert 'tools/tables/distill.py' in tab['command']
    for setup in DISTILL_SETUPS:
        rows = tab['tables'][setup]['rows']
        assert [(r['method'], r['steps']) for r in rows] == [tuple(r) for r in DISTILL_ROWS]
        assert all(math.isfinite(r['value']) and r['value'] >= 0 for r in rows)
        assert table_value(rows, 'progressive', 4) < table_value(rows, 'ddim', 4)
    assert stale_rows(tab) == []  # every row was computed from the weights that ship now


def test_stale_rows_are_caught(tmp_path):
    "A row whose recorded sha256 is not that of the shipped weights (or that records none) is reported."
    tab = load_distill_table()
    rows = [dict(r) for r in tab['tables']['toy']['rows']]
    rows[0]['weights'] = '000000000000'
    del rows[-1]['weights']
    bad = dict(tables={'toy': dict(rows=rows)})
    assert stale_rows(bad) == [('toy', *DISTILL_ROWS[0]), ('toy', *DISTILL_ROWS[-1])]
    assert (
        row_name('digits', 'ddim', 64) == 'digits_unet_v'
        and row_name('digits', 'progressive', 4) == 'digits_unet_v_pd4'
    )
    assert len(weights_id('digits_unet_v')) == 12


def test_live_table_row_matches_shipped():
    "A cheap row recomputed by the shipped code gives the shipped number (the 2-D table, 1-step rows)."
    tab = load_distill_table()['tables']['toy']['rows']
    for r in distill_table('toy', rows=(('ddim', 1), ('progressive', 1)), progress=False):
        # SW is 1-Lipschitz in the samples; a 1-step sample is the MLP's float32 output, whose summation order differs
        # between CPUs (AVX2, AVX-512): ~30 roundings of 6e-8 x |x| <~ 3 = 5e-6; 1e-5 allowed
        assert (
            abs(r['value'] - table_value(tab, r['method'], r['steps'])) < 1e-5
            and r['weights'] == [x['weights'] for x in tab if (x['method'], x['steps']) == (r['method'], r['steps'])][0]
        )


# ---- bad input: every argument is checked before anything trains or samples ----
def _bad(toy, dl):
    x = torch.zeros(8, 2)
    return [  # (call, error, the words the message must contain)
        (lambda: progressive_distillation(toy, dl, 64, final_steps=16, steps={32: 2}), ValueError, 'missing [16]'),
        (
            lambda: progressive_distillation(toy, dl, 64, final_steps=16, steps={32: 2, 16: 2, 8: 2}),
            ValueError,
            'not a round [8]',
        ),
        (lambda: progressive_distillation(toy, dl, 64, final_steps=64), ValueError, 'one of [32, 16, 8, 4, 2, 1]'),
        (lambda: progressive_distillation(toy, dl, 64, final_steps=1.5), ValueError, 'got final_steps=1.5'),
        (
            lambda: progressive_distillation(toy, dl, 4, steps=-3),
            ValueError,
            'steps must be an integer number of optimizer steps >= 1, got -3',
        ),
        (lambda: progressive_distillation(toy, dl, 4, steps={2: 5, 1: 0}), ValueError, 'steps[1] must be an integer'),
        (
            lambda: progressive_distillation(toy, dl, 4, steps=1, lr=-1.0),
            ValueError,
            'lr must be a finite learning rate > 0, got -1.0',
        ),
        (lambda: progressive_distillation(toy, dl, 4, steps=1, lr=float('nan')), ValueError, 'got nan'),
        (
            lambda: progressive_distillation(toy, dl, 4, steps=1, callback=1),
            TypeError,
            'callback must be None or callable',
        ),
        (lambda: progressive_distillation(toy, dl, 4, steps=1, weighting='p2'), ValueError, "Unknown weighting 'p2'"),
        (lambda: progressive_distillation(toy, dl, 4, steps=1, foo=1), TypeError, "passed to `train` in every round"),
        (
            lambda: distill_round(toy, dl, 4, 2, 0),
            ValueError,
            'steps must be an integer number of optimizer steps >= 1, got 0',
        ),
        (lambda: distill_sigmas(SCHED.abar, 4), TypeError, 'schedule must be a diffcourse.schedules.Schedule'),
        (
            lambda: sample_steps(toy, x.half(), 4),
            TypeError,
            "noise is torch.float16 on cpu, but the network's weights are torch.float32",
        ),
        (lambda: sample_steps(toy, x.long(), 4), TypeError, 'noise must be a floating-point tensor'),
        (lambda: sample_steps(toy.net, x, 4), TypeError, 'model must be a denoiser that carries its schedule'),
        (
            lambda: distill_loss(toy, toy, x, 3),
            ValueError,
            'student_steps must be a positive integer N with 2N dividing T=1024',
        ),
        (lambda: teacher_pairs(toy, (8, 2), 4, batch_size=0), ValueError, 'batch_size must be an integer >= 1, got 0'),
        (lambda: distill_direct(toy, x, x[:7], 1), ValueError, 'noise and x_teacher must be pairs of one shape'),
        (lambda: distill_direct(toy, x, x, 1, batch_size=64), ValueError, 'batch_size must be an integer in [1, 8]'),
        (
            lambda: student_name('digits_unet_v', 2.5),
            ValueError,
            "steps must be the student's number of sampling steps",
        ),
        (
            lambda: row_name('toy', 'euler', 4),
            ValueError,
            "Unknown method 'euler'; valid choices are ['consistency_distillation', 'consistency_training', 'ddim',",
        ),
        (
            lambda: distill_table('toy', rows=(('progressive', 3),)),
            FileNotFoundError,
            "No shipped weights named 'toy_mlp_v_gaussian_mixture_pd3.safetensors'",
        ),
        (lambda: distill_table('toy', rows=(('ddim', 0),)), ValueError, 'rows must be (method, steps) pairs'),
        (lambda: distill_table('toy', n=0), ValueError, 'n must be an integer >= 1, got 0'),
        (lambda: distill_table('toy', batch_size=0), ValueError, 'batch_size must be an integer >= 1, got 0'),
        (lambda: load_denoiser('classifier_digits'), ValueError, "'classifier_digits' is not a denoiser"),
    ]


def test_bad_input_gets_a_clear_error_before_any_work(toy, monkeypatch):
    "Each bad call fails with a message naming the argument, and none of them reaches `train`."
    import inspect
    import diffcourse.distill as d

    def no_train(*a, **k):
        pytest.fail('train was called before the arguments were checked')

    no_train.__signature__ = inspect.signature(d.train)  # so that unknown keyword arguments are still caught
    monkeypatch.setattr(d, 'train', no_train)
    dl = get_dataloader('gaussian_mixture', batch_size=64, n=256, seed=0)
    for call, err, words in _bad(toy, dl):
        with pytest.raises(err) as e:
            call()
        assert words in str(e.value), (words, str(e.value))
