"""Lesson 04: the DDPM loss and objectives, the training loop (resume, NaN, two processes),
checkpoints and shipped weights."""

import json, math, os, subprocess, sys, textwrap
from pathlib import Path

import pytest, torch
import torch.nn as nn

from diffcourse.core import seed_everything, weights_path, load_safetensors, save_safetensors, get_device
from diffcourse.data import get_dataloader, gaussian_mixture
from diffcourse.elbo import to_x0_eps, posterior_mean_var
from diffcourse.schedules import Schedule, prediction_target
from diffcourse.core import timestep_embedding
from diffcourse.training import (
    ToyMLP,
    ddpm_loss,
    train,
    save_checkpoint,
    load_checkpoint,
    save_pretrained,
    load_pretrained,
    lr_at,
    min_snr_weight,
    FAST_DIGITS,
)
from diffcourse.unet import UNet

SCHED = Schedule.from_name('linear', T=1000)


def toy_dl(n=1024, bs=128, shuffle=True):
    return get_dataloader('gaussian_mixture', batch_size=bs, n=n, shuffle=shuffle)


def toy_loss(m, b):
    return ddpm_loss(m, b[0], SCHED, 'eps')


def mean(xs):
    return sum(xs) / len(xs)


# --- prediction types and loss -------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['eps', 'x0', 'v'])
def test_prediction_targets_invert_to_x0_and_eps(name):
    g = seed_everything(0)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    abar_t = SCHED.abar[torch.tensor([0, 10, 200, 500, 900, 999])]
    a = abar_t[:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    x0_back, eps_back = to_x0_eps(prediction_target(x0, eps, abar_t, name), x_t, abar_t, name)
    # float32 rounds x_t (|x_t| < 4) by ~5e-7; the inversions divide by sqrt(abar_999) = 6.4e-3 (x0 from eps) and by
    # sqrt(1 - abar_0) = 1e-2 (eps from x0), so errors reach ~1.6e-4 and ~1e-4 at worst: 2e-3 and 1e-3 allowed
    torch.testing.assert_close(x0_back, x0, atol=2e-3, rtol=0)
    torch.testing.assert_close(eps_back, eps, atol=1e-3, rtol=0)


def test_unknown_prediction_type_is_a_clear_error():
    valid = r"\['epsilon', 'sample', 'v_prediction'\] \(or the short names \['eps', 'x0', 'v'\]\)"
    with pytest.raises(ValueError, match=r"Unknown prediction_type 'score'; valid choices are " + valid):
        ddpm_loss(ToyMLP(), torch.randn(4, 2), SCHED, 'score')
    with pytest.raises(ValueError, match="Unknown lr schedule 'step'"):
        lr_at(0, 10, 1.0, 'step')


def test_ddpm_loss_is_eq14_with_the_same_draws():
    model = ToyMLP()
    x0 = torch.randn(16, 2)
    loss = ddpm_loss(model, x0, SCHED, 'eps', generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (16,), generator=g)
    eps = torch.randn(16, 2, generator=g)
    a = SCHED.abar[t][:, None]
    # q_sample's formula, so equal today; a re-association would move x_t (< 4) by ~5e-7 and the MSE (~1) of the
    # MLP's output by a few 1e-7: 1e-5 allowed
    want = ((model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps) ** 2).mean()
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=0)


def test_min_snr_loss_is_each_sample_weighted_by_min_snr_gamma_with_the_same_draws():
    model, x0, sched = ToyMLP(), torch.randn(16, 2), Schedule.from_name('cosine', T=1024)
    for name, per_x0 in (('eps', lambda s: s), ('x0', lambda s: torch.ones_like(s)), ('v', lambda s: s + 1)):
        loss = ddpm_loss(model, x0, sched, name, generator=torch.Generator().manual_seed(5), snr_gamma=5.0)
        g = torch.Generator().manual_seed(5)
        t = torch.randint(0, 1024, (16,), generator=g)
        eps = torch.randn(16, 2, generator=g)
        a = sched.abar[t]
        snr = a / (1 - a)
        err = (model(a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * eps, t) - prediction_target(x0, eps, a, name))
        # Hang et al. 2023: min(SNR, gamma) on the x0 error, divided by what the target's loss puts on it
        want = (torch.minimum(snr, torch.tensor(5.0)) / per_x0(snr) * err.pow(2).mean(1)).mean()
        torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)  # the same draws: summation order only


@pytest.mark.parametrize('gamma', [0, -1.0, float('inf'), float('nan'), True, '5'])
def test_bad_snr_gamma_is_a_clear_error(gamma):
    with pytest.raises((ValueError, TypeError), match='snr_gamma'):
        ddpm_loss(ToyMLP(), torch.randn(4, 2), SCHED, 'v', snr_gamma=gamma)
    with pytest.raises((ValueError, TypeError), match='snr_gamma'):
        min_snr_weight(SCHED.abar[:4], 'v', gamma)


def test_fast_digits_recipe_trains_with_its_own_settings():
    # lesson 04's live run, a few steps: every field is one train or ddpm_loss accepts
    fd = FAST_DIGITS
    sched = Schedule.from_name(fd['schedule'], T=fd['T'])
    dl = get_dataloader('digits', fd['batch_size'], size=16, generator=seed_everything(0), drop_last=True)
    loss = lambda m, b: ddpm_loss(m, b[0], sched, fd['prediction_type'], snr_gamma=fd['snr_gamma'])
    kw = dict(warmup=fd['warmup'], ema_decay=fd['ema_decay'], progress=False)
    st = train(UNet(channels=(8, 16), attn=(False, True), groups=4), loss, dl, 3, fd['lr'], **kw)
    assert st.step == 3 and all(math.isfinite(v) for v in st.losses)


def test_ddpm_loss_passes_conditioning_to_the_model():
    m = ToyMLP(num_classes=3)
    x0 = torch.randn(8, 2)
    l1 = ddpm_loss(
        m, x0, SCHED, generator=torch.Generator().manual_seed(0), class_labels=torch.zeros(8, dtype=torch.long)
    )
    l2 = ddpm_loss(m, x0, SCHED, generator=torch.Generator().manual_seed(0), class_labels=torch.full((8,), 2))
    assert l1 != l2


def test_timestep_embedding_is_cos_then_sin():
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    assert torch.equal(e[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))  # cos 0 and sin 0: exact
    # the angles are 1 and exp(-ln 1e4 / 2) = 0.01 in float32 (relative error ~1e-7); cos and sin within 1 ulp: 1e-6
    want = torch.tensor([math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)])
    torch.testing.assert_close(e[1], want, atol=1e-6, rtol=0)


# --- the loop -------------------------------------------------------------------------------------------------------
def test_brief_training_on_a_toy_makes_the_loss_fall():
    torch.manual_seed(0)
    st = train(ToyMLP(hidden=64), toy_loss, toy_dl(), 300, 2e-3, warmup=20, progress=False)
    assert st.step == 300 and len(st.losses) == 300
    assert mean(st.losses[-50:]) < 0.8 * mean(st.losses[:20])


def test_train_without_extras_is_the_plain_adam_loop():
    "Equal bit for bit: the same kernels in the same order on the device train picks (AdamW with no decay is Adam)."
    dev = get_device()
    torch.manual_seed(0)
    m1, m2 = ToyMLP(hidden=32).to(dev), ToyMLP(hidden=32)
    m2.load_state_dict(m1.state_dict())
    dl = toy_dl(shuffle=False)
    batches = [[x.to(dev) for x in b] for b in dl]  # (iterating a DataLoader draws from the global RNG)
    torch.manual_seed(0)
    opt = torch.optim.Adam(m1.parameters(), 1e-3)
    for step in range(12):
        loss = toy_loss(m1, batches[step % len(batches)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train(m2, toy_loss, dl, 12, 1e-3, lr_schedule='constant', clip=None, ema_decay=0, seed=0, progress=False)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_resume_continues_the_same_run(tmp_path):
    kw = dict(steps=30, lr=1e-3, warmup=4, progress=False, seed=3)
    torch.manual_seed(0)
    straight = train(ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw)
    ck = tmp_path / 'run.safetensors'
    torch.manual_seed(0)
    half = train(
        ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw, ckpt=ck, ckpt_every=5, callback=lambda s: s.step == 13
    )
    assert half.step == 13 and load_checkpoint(ck, ToyMLP(hidden=32))['step'] == 13
    torch.manual_seed(99)
    resumed = train(ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw, ckpt=ck)
    assert resumed.step == 30 and resumed.losses == straight.losses
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ['run.safetensors']  # no temporary files left behind
    again = train(ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw, ckpt=ck)  # already done: nothing to do
    assert again.step == 30 and again.losses == straight.losses


def test_nan_loss_stops_with_a_clear_message():
    calls = []

    def loss_fn(m, b):
        calls.append(1)
        return toy_loss(m, b) * (float('nan') if len(calls) == 3 else 1.0)

    with pytest.raises(FloatingPointError, match=r'Loss is nan at step 2 .*training stopped'):
        train(ToyMLP(hidden=16), loss_fn, toy_dl(), 10, progress=False)


def test_empty_loader_is_a_clear_error():
    dl = get_dataloader('gaussian_mixture', batch_size=64, n=10, drop_last=True)
    with pytest.raises(ValueError, match='yields no batches'):
        train(ToyMLP(), toy_loss, dl, 5, progress=False)


# --- checkpoints ----------------------------------------------------------------------------------------------------
def test_checkpoint_from_another_architecture_or_a_corrupt_file(tmp_path):
    m = ToyMLP(hidden=32)
    ck = save_checkpoint(tmp_path / 'a.safetensors', m, step=1)
    with pytest.raises(ValueError, match=r"shape mismatches .*\(32,\) in the file, \(64,\) in the model.*config"):
        load_checkpoint(ck, ToyMLP(hidden=64))
    with pytest.raises(
        ValueError,
        match=r'does not fit the model .*UNet \(it was saved from diffcourse.training.ToyMLP\); missing keys',
    ):
        load_checkpoint(ck, UNet(channels=(8, 16), attn=(False, False)))
    (tmp_path / 'bad.safetensors').write_bytes(b'{"broken": ')
    with pytest.raises(ValueError, match='is not a valid safetensors file'):
        load_checkpoint(tmp_path / 'bad.safetensors', m)
    with pytest.raises(FileNotFoundError, match='No weights file'):
        load_checkpoint(tmp_path / 'none.safetensors', m)
    save_safetensors({'w': torch.ones(2)}, tmp_path / 'plain.safetensors')
    with pytest.raises(ValueError, match="is not a diffcourse checkpoint"):
        load_checkpoint(tmp_path / 'plain.safetensors', m)


def test_checkpoint_round_trips_optimizer_and_ema(tmp_path):
    m = ToyMLP(hidden=16)
    st = train(m, toy_loss, toy_dl(), 5, progress=False, ckpt=tmp_path / 'c.safetensors')
    m2 = ToyMLP(hidden=16)
    ema2 = ToyMLP(hidden=16)
    opt2 = torch.optim.AdamW(m2.parameters())
    info = load_checkpoint(tmp_path / 'c.safetensors', m2, opt2, ema2)
    assert info['step'] == 5 and info['losses'] == st.losses  # float32 values: stored and read back exactly
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(st.ema.parameters(), ema2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = st.optimizer.state_dict()['state'], opt2.state_dict()['state']
    assert all(torch.equal(s1[i]['exp_avg'], s2[i]['exp_avg']) for i in s1)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    m = ToyMLP(hidden=16)
    ck = save_checkpoint(tmp_path / 'c.safetensors', m, step=7)
    import diffcourse.core as core

    def boom(*a, **k):
        raise OSError('disk full')

    monkeypatch.setattr(core.os, 'replace', boom)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(ck, ToyMLP(hidden=16), step=8)
    monkeypatch.undo()
    assert load_checkpoint(ck, ToyMLP(hidden=16))['step'] == 7
    assert os.listdir(tmp_path) == ['c.safetensors']


# --- several processes ----------------------------------------------------------------------------------------------
_TWO_PROCESSES = textwrap.dedent('''
    import sys, torch
    from accelerate import debug_launcher
    from diffcourse.data import get_dataloader
    from diffcourse.schedules import Schedule
    from diffcourse.training import ToyMLP, train, ddpm_loss
    def run(out):
        sched = Schedule.from_name('linear', T=1000)
        torch.manual_seed(torch.distributed.get_rank())       # a different init per process: DDP must sync them
        st = train(ToyMLP(hidden=32, depth=2), lambda m, b: ddpm_loss(m, b[0], sched),
                   get_dataloader('gaussian_mixture', 64, n=1024), 12, 1e-3, progress=False,
                   ckpt=f'{out}/ck.safetensors')
        torch.save({'model': st.model.state_dict(), 'ema': st.ema.state_dict(), 'losses': st.losses,
                    'world': st.accelerator.num_processes}, f'{out}/rank{st.accelerator.process_index}.pt')
    if __name__ == '__main__': debug_launcher(run, args=(sys.argv[1],), num_processes=2)
''')


def test_two_cpu_processes_agree_on_the_weights(tmp_path):
    "Run `train` data-parallel on 2 CPU processes (gloo, via accelerate's debug_launcher) in a fresh interpreter."
    (tmp_path / 'two.py').write_text(_TWO_PROCESSES)
    r = subprocess.run(
        [sys.executable, str(tmp_path / 'two.py'), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path / f'rank{i}.pt', weights_only=True) for i in (0, 1))  # tensors and lists: no code
    assert a['world'] == b['world'] == 2
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    for k in a['ema']:
        assert torch.equal(a['ema'][k], b['ema'][k]), k
    assert a['losses'] == b['losses'] and len(a['losses']) == 12
    info = load_checkpoint(tmp_path / 'ck.safetensors', ToyMLP(hidden=32, depth=2))
    assert info['step'] == 12 and info['rng']['cpu'].shape[0] == 2  # one RNG state per process
    assert not torch.equal(
        info['rng']['cpu'][0], info['rng']['cpu'][1]
    )  # ... and they differ: different noise per process


# --- shipped weights ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name,cls', [('digits_unet', UNet), ('toy_mlp_gaussian_mixture', ToyMLP)])
def test_shipped_weights_load_with_their_metadata(name, cls):
    model, info = load_pretrained(name)
    assert type(model) is cls and not model.training
    assert info['schedule'] == 'linear' and info['T'] == 1000 and info['prediction_type'] == 'epsilon'
    assert info['command'] == f'python tools/weights.py {name}'
    assert (Path(__file__).parent.parent / 'tools' / 'weights.py').is_file()
    assert os.path.getsize(weights_path(f'{name}.safetensors')) < 3e6


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No shipped weights named 'nope.safetensors'"):
        load_pretrained('nope')
    save_checkpoint(tmp_path / 'ck.safetensors', ToyMLP())
    with pytest.raises(ValueError, match='is not a diffcourse weights file'):
        load_pretrained(tmp_path / 'ck.safetensors')
    p = save_pretrained(ToyMLP(hidden=32), tmp_path / 'w.safetensors', prediction_type='epsilon')
    t, meta = load_safetensors(p)
    spec = json.loads(meta['models'])['']
    meta['models'] = json.dumps({'': {**spec, 'config': {**spec['config'], 'hidden': 64}}})
    save_safetensors(t, p, meta)  # config says 64, weights are 32 wide
    with pytest.raises(ValueError, match='does not fit the model'):
        load_pretrained(p)
    with pytest.raises(ValueError, match='needs a model with a `config`'):
        save_pretrained(nn.Linear(2, 2), tmp_path / 'x.safetensors')


def test_shipped_toy_model_samples_the_mixture():
    "Ancestral sampling (1000 steps) from the shipped toy model: mean log-density close to that of real data."
    model, info = load_pretrained('toy_mlp_gaussian_mixture')
    sched = Schedule.from_name(info['schedule'], T=info['T'])
    g = seed_everything(0)
    x = torch.randn(1000, 2, generator=g)
    with torch.no_grad():
        for t in range(999, -1, -1):
            tb = torch.full((1000,), t)
            x0_hat, _ = to_x0_eps(model(x, tb), x, sched.abar[tb], info['prediction_type'])
            mu, var = posterior_mean_var(x0_hat, x, tb, sched)
            x = mu + var.sqrt() * torch.randn(x.shape, generator=g) if t > 0 else mu
    gm = gaussian_mixture()
    ll_data, ll_model = gm.log_prob(gm.sample(1000, seed_everything(1))).mean(), gm.log_prob(x).mean()
    assert abs(ll_model - ll_data) < 0.3, (ll_model, ll_data)


def test_retraining_the_shipped_digits_unet_briefly_lowers_the_loss():
    _, info = load_pretrained('digits_unet')
    torch.manual_seed(0)
    dl = get_dataloader('digits', batch_size=32, generator=seed_everything(0))
    st = train(
        UNet(**info['config']),
        lambda m, b: ddpm_loss(m, b[0], SCHED, info['prediction_type']),
        dl,
        12,
        2e-3,
        warmup=2,
        progress=False,
    )
    assert mean(st.losses[-4:]) < mean(st.losses[:4])


# --- bad input gets a clear error, before the first step ----------------------------------------------------------
def counting_loss():
    "A toy loss that counts its calls: a bad argument must stop `train` before the first one."
    calls = []

    def loss_fn(m, b):
        calls.append(1)
        return toy_loss(m, b)

    return loss_fn, calls


@pytest.mark.parametrize(
    'kw,err,match',
    [
        (dict(steps=0), ValueError, r'steps must be an integer >= 1, got 0'),
        (dict(steps=-3), ValueError, r'steps must be an integer >= 1, got -3'),
        (dict(steps=2.5), TypeError, r'steps must be an integer >= 1, got 2.5 of type float'),
        (dict(steps=True), TypeError, r'got True of type bool'),
        (dict(lr=0.0), ValueError, r'lr must be a finite number > 0, got 0.0'),
        (dict(lr=-1e-3), ValueError, r'lr must be a finite number > 0'),
        (dict(lr=float('nan')), ValueError, r'lr must be a finite number > 0, got nan'),
        (dict(lr='1e-3'), TypeError, r"lr must be a finite number > 0, got '1e-3' of type str"),
        (dict(ema_decay=-0.5), ValueError, r'ema_decay must be a finite number >= 0 and < 1, got -0.5'),
        (dict(ema_decay=1.0), ValueError, r'ema_decay must be a finite number >= 0 and < 1, got 1.0'),
        (dict(warmup=-1), ValueError, r'warmup must be an integer >= 0, got -1'),
        (dict(clip=0.0), ValueError, r'clip \(None: no clipping\) must be a finite number > 0, got 0.0'),
        (dict(clip=-1.0), ValueError, r'clip \(None: no clipping\) must be a finite number > 0'),
        (dict(weight_decay=-0.1), ValueError, r'weight_decay must be a finite number >= 0'),
        (dict(lr_schedule='step'), ValueError, r"Unknown lr_schedule 'step'; valid choices are \['constant', 'cos"),
        (dict(ckpt_every=0), ValueError, r'ckpt_every must be an integer >= 1, got 0'),
        (dict(seed=-1), ValueError, r'seed must be an integer >= 0, got -1'),
        (dict(generator=0), TypeError, r'wants generator as a torch.Generator or None, got int'),
        (dict(callback='stop'), TypeError, r'wants loss_fn \(and callback, if given\) to be functions'),
    ],
)
def test_bad_arguments_stop_train_before_the_first_step(kw, err, match):
    loss_fn, calls = counting_loss()
    with pytest.raises(err, match=match):
        train(ToyMLP(hidden=16), loss_fn, toy_dl(), progress=False, **{'steps': 5, **kw})
    assert calls == []


def test_bad_model_data_or_loss_are_clear_errors():
    with pytest.raises(TypeError, match='train wants model as an nn.Module, got function'):
        train(lambda x: x, toy_loss, toy_dl(), 5, progress=False)
    with pytest.raises(TypeError, match=r'wants dl as a DataLoader or a list of batches .*got generator'):
        train(ToyMLP(), toy_loss, (b for b in toy_dl()), 5, progress=False)
    with pytest.raises(TypeError, match=r'loss_fn must return a scalar tensor, got a float'):
        train(ToyMLP(), lambda m, b: 1.0, toy_dl(), 5, progress=False)
    with pytest.raises(TypeError, match=r'loss_fn must return a scalar tensor, got a Tensor of shape \(128, 2\)'):
        train(ToyMLP(), lambda m, b: m(b[0], 0), toy_dl(), 5, progress=False)


def test_a_checkpoint_path_that_cannot_be_written_fails_before_the_first_step(tmp_path, monkeypatch):
    (tmp_path / 'notes.txt').write_text('keep me')
    loss_fn, calls = counting_loss()
    with pytest.raises(ValueError, match=r"ckpt '.*notes.txt/runs/a.safetensors' cannot be written: '.*txt' is a file"):
        train(
            ToyMLP(hidden=16),
            loss_fn,
            toy_dl(),
            5,
            progress=False,
            ckpt=tmp_path / 'notes.txt' / 'runs' / 'a.safetensors',
        )
    with pytest.raises(ValueError, match=r"ckpt '.*' is a folder; it must name a file"):
        train(ToyMLP(hidden=16), loss_fn, toy_dl(), 5, progress=False, ckpt=tmp_path)
    import diffcourse.core as core

    def read_only(folder, name):
        raise PermissionError(13, 'Permission denied')  # as root, chmod would not stop us

    monkeypatch.setattr(core, '_new_temp', read_only)
    with pytest.raises(ValueError, match=r"cannot be written: no file can be created in .* \(Permission denied\)"):
        train(ToyMLP(hidden=16), loss_fn, toy_dl(), 5, progress=False, ckpt=tmp_path / 'sub' / 'a.safetensors')
    assert calls == [] and sorted(os.listdir(tmp_path)) == ['notes.txt']  # no folder made, nothing written


def test_toymlp_checks_its_config_and_inputs():
    m = ToyMLP()
    for kw, match in [
        (dict(dim=0), 'ToyMLP: dim must be an integer >= 1, got 0'),
        (dict(hidden=2.0), 'got 2.0 of type float'),
        (dict(depth=-1), 'ToyMLP: depth must be an integer >= 0'),
        (dict(temb_dim=1), 'temb_dim must be an integer >= 2'),
        (dict(num_classes=0), r'num_classes must be an integer >= 1, got 0'),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            ToyMLP(**kw)
    with pytest.raises(ValueError, match=r'ToyMLP\(dim=2\) wants x of shape \(B, 2\), or .* 2 features, got \(5, 3\)'):
        m(torch.randn(5, 3), 0)
    with pytest.raises(TypeError, match=r'wants x of dtype torch.float32 \(that of its weights\), got torch.float64'):
        m(torch.randn(5, 2, dtype=torch.float64), 0)
    with pytest.raises(TypeError, match=r'wants x as a floating-point tensor \(B, ...\), got a torch.int64 tensor'):
        m(torch.ones(5, 2, dtype=torch.long), 0)
    with pytest.raises(TypeError, match=r'got list'):
        m([[0.0, 0.0]], 0)
    with pytest.raises(ValueError, match=r'a \(B,\) tensor of times with B = 5, got a torch.int64 of shape \(3,\)'):
        m(torch.randn(5, 2), torch.arange(3))
    with pytest.raises(ValueError, match=r'shape \(5, 1\)'):
        m(torch.randn(5, 2), torch.zeros(5, 1))
    with pytest.raises(ValueError, match='built with num_classes=None'):
        m(torch.randn(5, 2), 0, class_labels=torch.zeros(5, dtype=torch.long))
    mc = ToyMLP(num_classes=3)
    with pytest.raises(TypeError, match='class_labels must be integers, got torch.float32'):
        mc(torch.randn(2, 2), 0, class_labels=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r'one per sample, \(B,\) with B = 2, got shape \(3,\)'):
        mc(torch.randn(2, 2), 0, class_labels=torch.arange(3))
    assert mc(torch.randn(2, 2), torch.tensor([5]), class_labels=1).shape == (2, 2)  # one t, one label for the batch


def test_ddpm_loss_rejects_integer_data():
    with pytest.raises(TypeError, match=r'ddpm_loss wants x0 as a floating-point tensor .*got a torch.int64 tensor'):
        ddpm_loss(ToyMLP(), torch.ones(4, 2, dtype=torch.long), SCHED)


# --- nothing left behind, nothing lost ------------------------------------------------------------------------------
def test_train_removes_the_temporary_files_a_killed_save_left(tmp_path):
    ck = tmp_path / 'run.safetensors'
    stale = [tmp_path / '.run.safetensors.0badc0de.tmp', tmp_path / '.run.safetensors.deadbeef.tmp']  # two killed saves
    keep = [
        tmp_path / n
        for n in (
            '.other.safetensors.0badc0de.tmp',
            '.run.safetensors.bak.0badc0de.tmp',
            'run.safetensors.0badc0de.tmp',
        )
    ]
    for p in stale + keep:
        p.write_bytes(b'x' * 100)
    train(ToyMLP(hidden=16), toy_loss, toy_dl(), 3, progress=False, ckpt=ck)
    assert sorted(os.listdir(tmp_path)) == sorted([p.name for p in keep] + ['run.safetensors'])


def gen_loss(g):
    "A loss that draws t and eps from the explicit generator `g`."
    return lambda m, b: ddpm_loss(m, b[0], SCHED, 'eps', generator=g)


def test_resume_with_an_explicit_generator_is_the_uninterrupted_run_bit_for_bit(tmp_path):
    kw = dict(steps=24, lr=1e-3, warmup=3, progress=False, seed=2)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    straight = train(ToyMLP(hidden=32), gen_loss(g), toy_dl(n=700), **kw, generator=g)
    ck = tmp_path / 'run.safetensors'
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    half = train(
        ToyMLP(hidden=32),
        gen_loss(g),
        toy_dl(n=700),
        **kw,
        generator=g,
        ckpt=ck,
        ckpt_every=4,
        callback=lambda s: s.step == 10,
    )
    assert half.step == 10
    g = torch.Generator().manual_seed(12345)  # a new process: its own seed, overwritten from the checkpoint
    torch.manual_seed(99)
    resumed = train(ToyMLP(hidden=32), gen_loss(g), toy_dl(n=700), **kw, generator=g, ckpt=ck)
    assert resumed.step == 24 and resumed.losses == straight.losses
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ['run.safetensors']


def test_a_loss_generator_train_does_not_know_is_refused_with_a_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    loss_fn, calls = counting_loss()
    for fn in (gen_loss(g), lambda m, b, g=g: ddpm_loss(m, b[0], SCHED, generator=g)):
        with pytest.raises(ValueError, match=r"Generator that train was not given.*train\(\.\.\., generator=g\)"):
            train(ToyMLP(hidden=16), fn, toy_dl(), 5, progress=False, ckpt=tmp_path / 'a.safetensors')
    import functools

    with pytest.raises(ValueError, match='was not given'):
        fn = functools.partial(lambda m, b, generator: ddpm_loss(m, b[0], SCHED, generator=generator), generator=g)
        train(ToyMLP(hidden=16), fn, toy_dl(), 5, progress=False, ckpt=tmp_path / 'a.safetensors')
    assert os.listdir(tmp_path) == []
    train(ToyMLP(hidden=16), gen_loss(g), toy_dl(), 2, progress=False)  # no checkpoint: nothing to resume


def test_resuming_with_or_without_the_generator_of_the_first_run_is_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    train(ToyMLP(hidden=16), gen_loss(g), toy_dl(), 2, progress=False, ckpt=tmp_path / 'with.safetensors', generator=g)
    train(ToyMLP(hidden=16), toy_loss, toy_dl(), 2, progress=False, ckpt=tmp_path / 'without.safetensors')
    with pytest.raises(ValueError, match=r"was written by a run with a loss generator .*pass resume=False"):
        train(ToyMLP(hidden=16), toy_loss, toy_dl(), 4, progress=False, ckpt=tmp_path / 'with.safetensors')
    with pytest.raises(ValueError, match=r"was written by a run without a loss generator"):
        train(
            ToyMLP(hidden=16),
            gen_loss(g),
            toy_dl(),
            4,
            progress=False,
            ckpt=tmp_path / 'without.safetensors',
            generator=g,
        )
    st = train(
        ToyMLP(hidden=16), toy_loss, toy_dl(), 3, progress=False, ckpt=tmp_path / 'with.safetensors', resume=False
    )
    assert st.step == 3


def test_resuming_with_another_ema_setting_is_a_clear_error(tmp_path):
    train(ToyMLP(hidden=16), toy_loss, toy_dl(), 2, progress=False, ckpt=tmp_path / 'c.safetensors', ema_decay=0)
    with pytest.raises(ValueError, match=r"holds no EMA weights \(its run had ema_decay=0\)"):
        train(ToyMLP(hidden=16), toy_loss, toy_dl(), 4, progress=False, ckpt=tmp_path / 'c.safetensors')
