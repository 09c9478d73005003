"Lesson 04: the DDPM loss and objectives, the training loop (resume, NaN, two processes), checkpoints and shipped weights."
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest, torch
import torch.nn as nn

from diffcourse.core import seed_everything, weights_path, load_safetensors, save_safetensors
from diffcourse.data import get_dataloader, gaussian_mixture
from diffcourse.elbo import to_x0_eps, posterior_mean_var
from diffcourse.schedules import Schedule
from diffcourse.training import (OBJECTIVES, ToyMLP, ddpm_loss, get_objective, train, save_checkpoint, load_checkpoint,
                                 save_pretrained, load_pretrained, lr_at, timestep_embedding)
from diffcourse.unet import UNet

SCHED = Schedule.from_name('linear', T=1000)
def toy_dl(n=1024, bs=128, shuffle=True): return get_dataloader('gaussian_mixture', batch_size=bs, n=n, shuffle=shuffle)
def toy_loss(m, b): return ddpm_loss(m, b[0], SCHED, 'eps')
def mean(xs): return sum(xs) / len(xs)

# --- objectives and loss -------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['eps', 'x0', 'v'])
def test_objective_targets_invert_to_x0_and_eps(name):
    g = seed_everything(0)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    abar_t = SCHED.abar[torch.tensor([0, 10, 200, 500, 900, 999])]
    a = abar_t[:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    x0_back, eps_back = to_x0_eps(OBJECTIVES[name](x0, eps, abar_t), x_t, abar_t, name)
    torch.testing.assert_close(x0_back, x0, atol=2e-3, rtol=0); torch.testing.assert_close(eps_back, eps, atol=1e-4, rtol=0)

def test_unknown_objective_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown objective 'score'; valid choices are \['eps', 'v', 'x0'\]"):
        ddpm_loss(ToyMLP(), torch.randn(4, 2), SCHED, 'score')
    with pytest.raises(ValueError, match="Unknown lr schedule 'step'"): lr_at(0, 10, 1., 'step')

def test_ddpm_loss_is_eq14_with_the_same_draws():
    model = ToyMLP(); x0 = torch.randn(16, 2)
    loss = ddpm_loss(model, x0, SCHED, 'eps', generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (16,), generator=g); eps = torch.randn(16, 2, generator=g)
    a = SCHED.abar[t][:, None]
    torch.testing.assert_close(loss, ((model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps) ** 2).mean())

def test_ddpm_loss_passes_conditioning_to_the_model():
    m = ToyMLP(num_classes=3); x0 = torch.randn(8, 2)
    l1 = ddpm_loss(m, x0, SCHED, generator=torch.Generator().manual_seed(0), class_labels=torch.zeros(8, dtype=torch.long))
    l2 = ddpm_loss(m, x0, SCHED, generator=torch.Generator().manual_seed(0), class_labels=torch.full((8,), 2))
    assert l1 != l2

def test_timestep_embedding_is_cos_then_sin():
    e = timestep_embedding(torch.tensor([0., 1.]), 4)
    torch.testing.assert_close(e[0], torch.tensor([1., 1., 0., 0.]))
    torch.testing.assert_close(e[1], torch.tensor([torch.cos(torch.tensor(1.)), torch.cos(torch.tensor(0.01)), torch.sin(torch.tensor(1.)), torch.sin(torch.tensor(0.01))]))

# --- the loop -------------------------------------------------------------------------------------------------------
def test_brief_training_on_a_toy_makes_the_loss_fall():
    torch.manual_seed(0)
    st = train(ToyMLP(hidden=64), toy_loss, toy_dl(), 300, 2e-3, warmup=20, progress=False)
    assert st.step == 300 and len(st.losses) == 300
    assert mean(st.losses[-50:]) < 0.8 * mean(st.losses[:20])

def test_train_without_extras_is_the_plain_adam_loop():
    torch.manual_seed(0); m1 = ToyMLP(hidden=32); m2 = ToyMLP(hidden=32); m2.load_state_dict(m1.state_dict())
    dl = toy_dl(shuffle=False); batches = list(dl)                       # (iterating a DataLoader draws from the global RNG)
    torch.manual_seed(0); opt = torch.optim.Adam(m1.parameters(), 1e-3)
    for step in range(12):
        loss = toy_loss(m1, batches[step % len(batches)]); opt.zero_grad(); loss.backward(); opt.step()
    train(m2, toy_loss, dl, 12, 1e-3, lr_schedule='constant', clip=None, ema_decay=0, seed=0, progress=False)
    for p1, p2 in zip(m1.parameters(), m2.parameters()): torch.testing.assert_close(p1, p2, atol=1e-5, rtol=0)

def test_resume_continues_the_same_run(tmp_path):
    kw = dict(steps=30, lr=1e-3, warmup=4, progress=False, seed=3)
    torch.manual_seed(0); straight = train(ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw)
    ck = tmp_path/'run.safetensors'
    torch.manual_seed(0)
    half = train(ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw, ckpt=ck, ckpt_every=5, callback=lambda s: s.step == 13)
    assert half.step == 13 and load_checkpoint(ck, ToyMLP(hidden=32))['step'] == 13
    torch.manual_seed(99); resumed = train(ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw, ckpt=ck)
    assert resumed.step == 30 and resumed.losses == straight.losses
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()): assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()): assert torch.equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ['run.safetensors']             # no temporary files left behind
    again = train(ToyMLP(hidden=32), toy_loss, toy_dl(n=700), **kw, ckpt=ck)  # already done: nothing to do
    assert again.step == 30 and again.losses == straight.losses

def test_nan_loss_stops_with_a_clear_message():
    calls = []
    def loss_fn(m, b):
        calls.append(1)
        return toy_loss(m, b) * (float('nan') if len(calls) == 3 else 1.)
    with pytest.raises(FloatingPointError, match=r'Loss is nan at step 2 .*training stopped'):
        train(ToyMLP(hidden=16), loss_fn, toy_dl(), 10, progress=False)

def test_empty_loader_is_a_clear_error():
    dl = get_dataloader('gaussian_mixture', batch_size=64, n=10, drop_last=True)
    with pytest.raises(ValueError, match='yields no batches'): train(ToyMLP(), toy_loss, dl, 5, progress=False)

# --- checkpoints ----------------------------------------------------------------------------------------------------
def test_checkpoint_from_another_architecture_or_a_corrupt_file(tmp_path):
    m = ToyMLP(hidden=32); ck = save_checkpoint(tmp_path/'a.safetensors', m, step=1)
    with pytest.raises(ValueError, match=r"shape mismatches .*\(32,\) in the file, \(64,\) in the model.*config"):
        load_checkpoint(ck, ToyMLP(hidden=64))
    with pytest.raises(ValueError, match=r'does not fit the model .*UNet \(it was saved from diffcourse.training.ToyMLP\); missing keys'):
        load_checkpoint(ck, UNet(channels=(8, 16), attn=(False, False)))
    (tmp_path/'bad.safetensors').write_bytes(b'{"broken": ')
    with pytest.raises(ValueError, match='is not a valid safetensors file'): load_checkpoint(tmp_path/'bad.safetensors', m)
    with pytest.raises(FileNotFoundError, match='No weights file'): load_checkpoint(tmp_path/'none.safetensors', m)
    save_safetensors({'w': torch.ones(2)}, tmp_path/'plain.safetensors')
    with pytest.raises(ValueError, match="is not a diffcourse checkpoint"): load_checkpoint(tmp_path/'plain.safetensors', m)

def test_checkpoint_round_trips_optimizer_and_ema(tmp_path):
    m = ToyMLP(hidden=16); st = train(m, toy_loss, toy_dl(), 5, progress=False, ckpt=tmp_path/'c.safetensors')
    m2 = ToyMLP(hidden=16); ema2 = ToyMLP(hidden=16); opt2 = torch.optim.AdamW(m2.parameters())
    info = load_checkpoint(tmp_path/'c.safetensors', m2, opt2, ema2)
    assert info['step'] == 5 and info['losses'] == pytest.approx(st.losses)
    for a, b in zip(m.parameters(), m2.parameters()): assert torch.equal(a, b)
    for a, b in zip(st.ema.parameters(), ema2.parameters()): assert torch.equal(a, b)
    s1, s2 = st.optimizer.state_dict()['state'], opt2.state_dict()['state']
    assert all(torch.equal(s1[i]['exp_avg'], s2[i]['exp_avg']) for i in s1)

def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    m = ToyMLP(hidden=16); ck = save_checkpoint(tmp_path/'c.safetensors', m, step=7)
    import diffcourse.core as core
    def boom(*a, **k): raise OSError('disk full')
    monkeypatch.setattr(core.os, 'replace', boom)
    with pytest.raises(OSError, match='disk full'): save_checkpoint(ck, ToyMLP(hidden=16), step=8)
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
        st = train(ToyMLP(hidden=32, depth=2), lambda m, b: ddpm_loss(m, b[0], sched), get_dataloader('gaussian_mixture', 64, n=1024),
                   12, 1e-3, progress=False, ckpt=f'{out}/ck.safetensors')
        torch.save({'model': st.model.state_dict(), 'ema': st.ema.state_dict(), 'losses': st.losses,
                    'world': st.accelerator.num_processes}, f'{out}/rank{st.accelerator.process_index}.pt')
    if __name__ == '__main__': debug_launcher(run, args=(sys.argv[1],), num_processes=2)
''')

def test_two_cpu_processes_agree_on_the_weights(tmp_path):
    "Run `train` data-parallel on 2 CPU processes (gloo, via accelerate's debug_launcher) in a fresh interpreter."
    (tmp_path/'two.py').write_text(_TWO_PROCESSES)
    r = subprocess.run([sys.executable, str(tmp_path/'two.py'), str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(tmp_path/'rank0.pt'), torch.load(tmp_path/'rank1.pt')
    assert a['world'] == b['world'] == 2
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    for k in a['ema']: assert torch.equal(a['ema'][k], b['ema'][k]), k
    assert a['losses'] == b['losses'] and len(a['losses']) == 12
    info = load_checkpoint(tmp_path/'ck.safetensors', ToyMLP(hidden=32, depth=2))
    assert info['step'] == 12 and info['rng']['cpu'].shape[0] == 2          # one RNG state per process
    assert not torch.equal(info['rng']['cpu'][0], info['rng']['cpu'][1])    # ... and they differ: different noise per process

# --- shipped weights ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name,cls', [('digits_unet', UNet), ('toy_mlp_gaussian_mixture', ToyMLP)])
def test_shipped_weights_load_with_their_metadata(name, cls):
    model, info = load_pretrained(name)
    assert type(model) is cls and not model.training
    assert info['schedule'] == 'linear' and info['T'] == 1000 and info['objective'] == 'eps'
    assert info['command'].startswith('.venv/bin/python tools/weights/') and Path(info['command'].split()[1]).name in os.listdir(Path(__file__).parent.parent/'tools'/'weights')
    assert os.path.getsize(weights_path(f'{name}.safetensors')) < 3e6

def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No shipped weights named 'nope.safetensors'"): load_pretrained('nope')
    save_checkpoint(tmp_path/'ck.safetensors', ToyMLP())
    with pytest.raises(ValueError, match='is not a diffcourse weights file'): load_pretrained(tmp_path/'ck.safetensors')
    p = save_pretrained(ToyMLP(hidden=32), tmp_path/'w.safetensors', objective='eps')
    t, meta = load_safetensors(p); meta['config'] = json.dumps({**json.loads(meta['config']), 'hidden': 64})
    save_safetensors(t, p, meta)                                           # config says 64, weights are 32 wide
    with pytest.raises(ValueError, match='does not fit the model'): load_pretrained(p)
    with pytest.raises(ValueError, match='needs a model with a `config`'): save_pretrained(nn.Linear(2, 2), tmp_path/'x.safetensors')

def test_shipped_toy_model_samples_the_mixture():
    "Ancestral sampling (1000 steps) from the shipped toy model: mean log-density close to that of real data."
    model, info = load_pretrained('toy_mlp_gaussian_mixture')
    sched = Schedule.from_name(info['schedule'], T=info['T'])
    g = seed_everything(0); x = torch.randn(1000, 2, generator=g)
    with torch.no_grad():
        for t in range(999, -1, -1):
            tb = torch.full((1000,), t)
            x0_hat, _ = to_x0_eps(model(x, tb), x, sched.abar[tb], info['objective'])
            mu, var = posterior_mean_var(x0_hat, x, tb, sched)
            x = mu + var.sqrt() * torch.randn(x.shape, generator=g) if t > 0 else mu
    gm = gaussian_mixture()
    ll_data, ll_model = gm.log_prob(gm.sample(1000, seed_everything(1))).mean(), gm.log_prob(x).mean()
    assert abs(ll_model - ll_data) < 0.3, (ll_model, ll_data)

def test_retraining_the_shipped_digits_unet_briefly_lowers_the_loss():
    _, info = load_pretrained('digits_unet')
    torch.manual_seed(0)
    dl = get_dataloader('digits', batch_size=32, generator=seed_everything(0))
    st = train(UNet(**info['config']), lambda m, b: ddpm_loss(m, b[0], SCHED, info['objective']), dl, 12, 2e-3, warmup=2, progress=False)
    assert mean(st.losses[-4:]) < mean(st.losses[:4])
