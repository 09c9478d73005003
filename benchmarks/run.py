#!/usr/bin/env python3
"""The course's benchmarks: `.venv/bin/python benchmarks/run.py` (not part of the test run; it takes minutes).

1. notebooks: wall time of every notebook in nbs/, each executed by nbclient in a fresh kernel, two ways:
   `ci`, with IN_TEST=1 and one thread, two at a time (as CI runs them on 2 cores), and `learner`, the way a learner
   runs a lesson: alone, in one kernel with all cores, not under IN_TEST (so with the budgets and cells a learner
   gets), plots rendered inline; and the whole curriculum each way. Goals on a 2-core CPU: every lesson <= 3 min
   in both modes, the curriculum <= 15 min as CI runs it. After a run into the default results file, every lesson's
   cost cell (its "time on a 2-core CPU" item, see tools/course.py `headers`) is regenerated from it.
2. samplers: time per network evaluation of each of our samplers against the diffusers scheduler loop it matches,
   same network (a 1x1 convolution, so that the sampler's own bookkeeping is what is measured), same number of
   evaluations, timed alternately in this one run. Goal: ratio ours / diffusers <= 1.0. For scale, the digits
   U-Net's own time per evaluation at the same batch size is printed beside it.
3. unet: training throughput (images/s of forward + backward + AdamW step) of our U-Net against diffusers'
   UNet2DModel built to the same widths, depths and attention levels, timed alternately in this one run.
4. peak memory of every sampler and U-Net measurement, in a fresh process each: on CPU the peak resident set above
   the set-up's (Linux /proc/self VmHWM, reset first), on GPU torch.cuda.max_memory_allocated above the set-up's.
5. budget: the course's digits recipes against the Hugging Face course's, each trained for --budget CPU seconds on
   one thread (seeds 0, 1, 2); FID of 500 DDIM samples at 10, 20, 50 and 100 steps, compared pair by pair.
6. levers: issue 19's recipe levers, one change each to the v-on-cosine recipe, at the same budget, beside the
   shipped digits U-Net; resumable (runs in the results file are kept), --sides picks some.

Where a CUDA GPU is present, 2-4 are measured on it too; every row names its device. The table is printed and
written to benchmarks/results.json (a partial run, e.g. --only unet, replaces only its own part; --nbs or --modes
replace only the rows they measured). Options: --only notebooks,samplers,unet,budget,levers (default: all but levers)
--nbs 00_core,01_data  --modes ci,learner
--jobs 2 (CI mode)  --out FILE (then the lessons are left alone)
"""

import argparse, datetime, importlib.util, inspect, json, os, platform, re, statistics, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'benchmarks' / 'results.json'
NB_GOAL_S, COURSE_GOAL_S, RATIO_GOAL = 180, 900, 1.0
SAMPLER_STEPS = 50


# ---------------------------------------------------------------- 1. notebooks
def execute_notebook(path):
    "(child process) Execute a notebook in memory, in a fresh kernel, as CI does; never writes it."
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=1800, kernel_name='python3', resources={'metadata': {'path': str(Path(path).parent)}}
    ).execute()


def mode_env(mode, threads):
    "The environment a notebook runs under: as CI runs it, or as a learner does (all cores, no IN_TEST, inline plots)."
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore::DeprecationWarning'}  # no downloads
    if mode == 'ci':
        ci = {'IN_TEST': '1', 'OMP_NUM_THREADS': str(threads), 'MPLBACKEND': 'Agg', 'TOKENIZERS_PARALLELISM': 'false'}
        return {**env, **ci}
    for k in ('IN_TEST', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'TOKENIZERS_PARALLELISM'):
        env.pop(k, None)
    return {**env, 'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}


def time_notebook(nb, mode, threads):
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, __file__, '--_execute', str(nb)], env=mode_env(mode, threads), capture_output=True, text=True
    )
    s = time.perf_counter() - t0
    err = (
        re.sub(r'\x1b\[[0-9;]*m', '', r.stderr.strip().splitlines()[-1])[:300] if r.returncode else None
    )  # the exception line
    goal = NB_GOAL_S if nb.name != 'index.ipynb' else None
    return dict(
        notebook=nb.name,
        mode=mode,
        device='cpu',
        seconds=round(s, 1),
        ok=not r.returncode,
        error=err,
        goal_s=goal,
        met=None if goal is None or r.returncode else s <= goal,  # a failed run proves nothing
        threads=threads if mode == 'ci' else 'all',
        date=datetime.date.today().isoformat(),
    )


# How each mode runs the notebooks: CI two at a time (--jobs) on one thread each (--threads); a learner one at a time.
MODES = dict(ci=lambda args: (args.jobs, args.threads), learner=lambda args: (1, None))


def bench_notebooks(args, old=()):
    "Time the notebooks in each mode; rows of notebooks (or modes) not run now are kept from `old`."
    nbs = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    if args.nbs:
        nbs = [p for p in nbs if any(p.stem.startswith(n) for n in args.nbs.split(','))]
    rows = []
    for mode in args.modes.split(','):
        jobs, threads = MODES[mode](args)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as ex:
            new = list(ex.map(lambda p: time_notebook(p, mode, threads), nbs))
        wall = time.perf_counter() - t0
        rows += new
        if args.nbs:
            continue  # a curriculum row only for a run of every notebook
        ok = all(r['ok'] for r in new)
        goal = COURSE_GOAL_S if mode == 'ci' else None
        rows.append(
            dict(
                notebook=f'curriculum ({len(nbs)} notebooks, {jobs} at a time)',
                mode=mode,
                device='cpu',
                seconds=round(wall, 1),
                ok=ok,
                error=None,
                goal_s=goal,
                met=wall <= goal if goal and ok else None,
                sum_seconds=round(sum(r['seconds'] for r in new), 1),
                date=datetime.date.today().isoformat(),
            )
        )
    done = {row_key(r) for r in rows}
    kept = [r for r in old if row_key(r) not in done]
    return sorted(kept + rows, key=lambda r: (row_key(r)[1], r['notebook'].startswith('curriculum'), r['notebook']))


def row_key(r):
    "(notebook, mode) of a notebooks row; one curriculum row per mode."
    return 'curriculum' if r['notebook'].startswith('curriculum') else r['notebook'], r.get('mode', 'ci')


def refresh_lessons(results):
    "Regenerate the time item of every lesson's cost cell from `results` (tools/course.py's `headers`); clean them."
    spec = importlib.util.spec_from_file_location('course', ROOT / 'tools' / 'course.py')
    course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course)
    have = [p for p in course.lessons() if course.COST_HEAD in p.read_text()]
    return course.headers(*have, results=results) if have else []


# ---------------------------------------------------------------- 2. samplers against diffusers' schedulers
def _sync(device):
    import torch

    if device == 'cuda':
        torch.cuda.synchronize()


def sampler_pair(name, device, batch):
    "Two thunks that sample with the same counting network: ours (diffcourse.samplers) and diffusers' scheduler loop."
    import torch, diffusers
    from diffcourse.schedules import Schedule
    from diffcourse.samplers import Denoiser, sample

    net = torch.nn.Conv2d(1, 1, 1).to(device)  # the cheapest network: what remains is the sampler's cost
    calls = dict(n=0)

    def eps_net(x, t, **kw):
        calls['n'] += 1
        return net(x)

    schedule = Schedule.from_name('linear', T=1000)
    model = Denoiser(eps_net, schedule, 'eps')
    cls, kw = DIFFUSERS[name]
    sch = getattr(diffusers, cls)(num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy(), **kw)
    noise = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)  # (B, 1, 16, 16)

    @torch.no_grad()
    def ours():
        return sample(name, model, noise, SAMPLER_STEPS, generator=torch.Generator(device).manual_seed(1))

    @torch.no_grad()
    def theirs():
        kw = (
            dict(generator=torch.Generator(device).manual_seed(1))
            if 'generator' in inspect.signature(sch.step).parameters
            else {}
        )
        sch.set_timesteps(SAMPLER_STEPS, device=device)
        x = noise * sch.init_noise_sigma
        for t in sch.timesteps:
            x = sch.step(eps_net(sch.scale_model_input(x, t), t), t, x, **kw).prev_sample
        return x

    return calls, ours, theirs


# The diffusers scheduler each sampler matches, configured as tests/test_samplers.py checks they agree step by step.
DIFFUSERS = dict(
    ddpm=('DDPMScheduler', dict(clip_sample=False)),
    ddim=('DDIMScheduler', dict(clip_sample=False)),
    euler=('EulerDiscreteScheduler', dict(use_karras_sigmas=True)),
    heun=('HeunDiscreteScheduler', dict(use_karras_sigmas=True)),
    dpmpp_2m=('DPMSolverMultistepScheduler', {}),
)


def time_alternately(fns, device, rounds):
    "Median seconds of each thunk, run in turn `rounds` times after one warm-up each (so drifts hit both alike)."
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for f, ts in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def bench_samplers(args, devices):
    import torch
    from diffcourse.unet import UNet

    rows = []
    for device in devices:
        batch = 1 if device == 'cpu' else 64
        net = UNet(**digits_config()).to(device).eval()  # what a real evaluation costs, to set the overhead against
        x, t = torch.randn(batch, 1, 16, 16, device=device), torch.full((batch,), 500.0, device=device)
        with torch.no_grad():
            (unet_s,) = time_alternately([lambda: [net(x, t) for _ in range(10)]], device, args.rounds)
        for name in DIFFUSERS:
            calls, ours, theirs = sampler_pair(name, device, batch)
            evals = []
            for f in (ours, theirs):
                calls['n'] = 0
                f()
                evals.append(calls['n'])
            t_ours, t_theirs = time_alternately([ours, theirs], device, args.rounds)
            mem = [peak_memory('sampler', name, device, side) for side in ('ours', 'diffusers')]
            rows.append(
                dict(
                    sampler=name,
                    diffusers=DIFFUSERS[name][0],
                    device=device,
                    batch=batch,
                    steps=SAMPLER_STEPS,
                    evals_ours=evals[0],
                    evals_diffusers=evals[1],
                    ms_per_eval_ours=round(1e3 * t_ours / evals[0], 3),
                    ms_per_eval_diffusers=round(1e3 * t_theirs / evals[1], 3),
                    ratio=round(ratio := (t_ours / evals[0]) / (t_theirs / evals[1]), 2),
                    goal=RATIO_GOAL,
                    met=ratio <= RATIO_GOAL,
                    peak_mb_ours=mem[0],
                    peak_mb_diffusers=mem[1],
                    unet_ms_per_eval=round(1e3 * unet_s / 10, 2),
                )
            )
    return rows


# ---------------------------------------------------------------- 3. U-Net training throughput
def digits_config():
    "The shipped digits U-Net's configuration, as lesson 00b declares it for digits_unet."
    from diffcourse.artifacts import ARTIFACTS

    return dict(ARTIFACTS['digits_unet'].config)


def unet_pair(device):
    """Our U-Net in the shipped digits U-Net's configuration (fresh weights),
    and diffusers' UNet2DModel of the same shape."""
    from diffusers import UNet2DModel
    from diffcourse.unet import UNet

    ours = UNet(**digits_config())
    cfg = ours.config
    down = tuple('AttnDownBlock2D' if a else 'DownBlock2D' for a in cfg['attn'])
    up = tuple('AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(cfg['attn']))
    theirs = UNet2DModel(
        sample_size=16,
        in_channels=cfg['in_channels'],
        out_channels=cfg['out_channels'],
        block_out_channels=cfg['channels'],
        layers_per_block=cfg['layers'],
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg['groups'],
        attention_head_dim=cfg['channels'][-1] // cfg['heads'],
    )
    return dict(
        ours=(ours.to(device), lambda m, x, t: m(x, t)), diffusers=(theirs.to(device), lambda m, x, t: m(x, t).sample)
    ), cfg


def train_thunk(model, call, device, batch, steps, channels_last=False, bf16=False):
    """A thunk doing `steps` training steps (forward, MSE loss, backward, AdamW step) on a fixed random batch;
    optionally in channels-last memory format, or under bfloat16 autocast (the weights and the step stay float32)."""
    import contextlib
    import torch

    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(2, batch, 1, 16, 16, generator=g).to(device)  # (B, 1, 16, 16) each
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)  # (B,)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def run():
        for _ in range(steps):
            with cast():
                loss = (call(model, x, t).float() - target).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


UNET_LEVERS = dict(  # the throughput levers of issue 19, each on a fresh copy of our U-Net
    channels_last=dict(channels_last=True),
    bf16_autocast=dict(bf16=True),
    compiled=dict(),
)


def _compiled(model):
    "torch.compile(model), and whether it worked: one forward and backward compiles it, or says why it cannot."
    import torch

    try:
        m = torch.compile(model)
        m(torch.randn(2, 1, 16, 16), torch.tensor([1, 2])).square().mean().backward()
        return m, None
    except Exception as e:  # no C++ compiler, an unsupported op...: the lever is unavailable here, not fatal
        return None, f'{type(e).__name__}: {str(e).splitlines()[0][:120]}'


def _unet_models(device):
    "name -> (model, call, lever options, why unavailable): ours, ours with each lever, diffusers' UNet2DModel."
    import copy

    pair, cfg = unet_pair(device)
    (ours, call), (theirs, call_d) = pair['ours'], pair['diffusers']
    models = dict(ours=(ours, call, {}, None))
    for lever, opts in UNET_LEVERS.items():
        m, why = _compiled(copy.deepcopy(ours)) if lever == 'compiled' else (copy.deepcopy(ours), None)
        models[f'ours, {lever}'] = (m, call, opts, why)
    models['diffusers'] = (theirs, call_d, {}, None)
    return models, cfg


def bench_unet(args, devices):
    "Training images per second of our U-Net, with and without each lever, and of UNet2DModel, timed in turn."
    rows = []
    for device in devices:
        batch, steps = (64, 3) if device == 'cpu' else (256, 20)
        models, cfg = _unet_models(device)
        live = {k: v for k, v in models.items() if v[3] is None}
        fns = [train_thunk(m, call, device, batch, steps, **opts) for m, call, opts, _ in live.values()]
        ips = dict(zip(live, (batch * steps / s for s in time_alternately(fns, device, args.rounds))))
        for name, (m, _, _, why) in models.items():
            rows.append(
                dict(
                    model=name,
                    device=device,
                    batch=batch,
                    params=sum(p.numel() for p in (models['ours'][0] if m is None else m).parameters()),
                    images_per_s=round(ips[name], 1) if name in ips else None,
                    ratio=round(ips[name] / ips['diffusers'], 2) if name in ips and name != 'diffusers' else None,
                    goal=2.0 if name != 'diffusers' else None,
                    peak_mb=peak_memory('unet', name, device, batch) if name in ('ours', 'diffusers') else None,
                    unavailable=why,
                    config=cfg if name == 'ours' else None,
                )
            )
    return rows


# ---------------------------------------------------------------- 5. quality at a fixed CPU budget
BUDGET_S = 240.0  # CPU seconds of training per run, one thread
BUDGET_SEEDS = (0, 1, 2)  # one training run per seed and side; a seed fixes the init, the data order and the noise
BUDGET_STEPS = (10, 20, 50, 100)  # DDIM steps the FIDs are measured at
HF_LR = 4e-4  # the Hugging Face course's recipe: AdamW at a constant 4e-4, no warm-up, no EMA, no clipping
BUDGET_RECIPES = dict(  # the course's sides: the declared recipe each follows (lesson 00b), one lever apart
    course='digits_unet',  # epsilon on the linear schedule (lesson 04)
    course_v='digits_unet_v',  # v on the cosine schedule (lesson 10's teacher): issue 19's first recipe lever
)


LEVERS = dict(  # issue 19's recipe levers, each one change to course_v (v on the cosine schedule, 240 CPU-s)
    v_base=dict(),  # course_v itself, measured beside its levers
    v_min_snr=dict(snr_gamma=5.0),  # min-SNR-5 weighting (Hang et al. 2023): lesson 04's ddpm_loss(snr_gamma=)
    v_lognormal=dict(t_dist='lognormal'),  # EDM's training noise distribution (Karras et al. 2022)
    v_lr4e3=dict(lr=4e-3),  # twice the peak learning rate
    v_bs32=dict(batch_size=32),  # more, smaller steps
    v_bs128=dict(batch_size=128),  # fewer, larger steps
    v_bf16=dict(autocast='bf16'),  # bfloat16 autocast: the throughput lever, for its quality
)
SHIPPED = dict(shipped_eps='digits_unet', shipped_v='digits_unet_v')  # the references: what the course ships
LEVER_STEPS = (20, 100)  # DDIM steps the levers' FIDs are measured at


def _digits_batches(seed, batch_size=64):
    "The shipped digits recipes' data: the train split at 16x16 in batches of `batch_size`, shuffled by `seed`."
    from diffcourse.core import seed_everything
    from diffcourse.data import get_dataloader

    g = seed_everything(seed)
    return get_dataloader('digits', batch_size=batch_size, split='train', size=16, generator=g, drop_last=True)


def _lognormal_loss(schedule, prediction_type, p_mean=-1.2, p_std=1.2):
    """Lesson 04's `ddpm_loss` with EDM's training noise levels (Karras et al. 2022) in place of a uniform t:
    ln sigma ~ N(p_mean, p_std^2), sigma^2 = (1 - abar) / abar, taken to the first level of the schedule at or above
    it. (The other levers are arguments `ddpm_loss` and `train` already take.)"""
    import torch
    from diffcourse.schedules import q_sample, prediction_target

    abar = schedule.abar
    log_sigma = -0.5 * (abar / (1 - abar)).log()  # (T,) -log(SNR) / 2, increasing in t

    def loss_fn(model, batch):
        x0 = batch[0]
        t = torch.searchsorted(log_sigma, torch.randn(len(x0)) * p_std + p_mean).clamp(0, len(abar) - 1)
        eps = torch.randn_like(x0)
        x_t = q_sample(x0, t, eps, abar)
        per = (model(x_t, t) - prediction_target(x0, eps, abar[t], prediction_type)).pow(2).flatten(1).mean(1)
        return per.mean()

    return loss_fn


def _train_course(seed, budget, t0, name='digits_unet', lever=None):
    """A course digits recipe (lesson 04's loss and loop, as declared for `name`, changed by `lever`): its learning-rate
    decay is planned for the steps the budget allows, from a median step time measured on a copy (which the budget
    pays for)."""
    import copy
    import torch
    from diffcourse.artifacts import ARTIFACTS, architecture
    from diffcourse.samplers import Denoiser, sample
    from diffcourse.schedules import Schedule
    from diffcourse.training import ddpm_loss, train

    lever = dict(lever or {})
    a = ARTIFACTS[name]
    p = {**a.args, **{k: lever.pop(k) for k in ('lr', 'batch_size', 'warmup', 'ema_decay') if k in lever}}
    schedule = Schedule.from_name(a.schedule, T=a.T)
    config = {**a.config, **lever.pop('config', {})}
    bf16 = lever.pop('autocast', None) == 'bf16'
    gamma = lever.pop('snr_gamma', None)
    if lever.pop('t_dist', None) == 'lognormal':
        loss_fn = _lognormal_loss(schedule, a.prediction_type)
    else:
        loss_fn = lambda m, b: ddpm_loss(m, b[0], schedule, a.prediction_type, snr_gamma=gamma)
    if lever:
        raise ValueError(f'unknown lever settings {sorted(lever)}')
    if bf16:
        plain = loss_fn

        def loss_fn(m, b):
            with torch.autocast('cpu', dtype=torch.bfloat16):
                return plain(m, b).float()

    model = architecture(a.arch)(**config)
    marks = []
    bs = p['batch_size']
    train(copy.deepcopy(model), loss_fn, _digits_batches(seed, bs), 8, p['lr'], progress=False,
          callback=lambda s: marks.append(time.process_time()))  # fmt: skip
    per_step = statistics.median(b - a for a, b in zip(marks, marks[1:]))
    steps = max(1, int((budget - (time.process_time() - t0)) / per_step))
    stop = lambda s: time.process_time() - t0 >= budget
    kw = dict(warmup=p['warmup'], ema_decay=p['ema_decay'], clip=1.0, seed=seed, progress=False, callback=stop)
    st = train(model, loss_fn, _digits_batches(seed, bs), steps, p['lr'], **kw)
    den = Denoiser(st.ema.eval(), schedule, a.prediction_type)
    return lambda n, N, g: sample('ddim', den, (N, 1, 16, 16), n, generator=g), st.step


def _train_diffusers(seed, budget, t0):
    """The Hugging Face course's recipe: UNet2DModel of the same shape, DDPMScheduler's noise, MSE on the noise,
    AdamW at a constant 4e-4; sampled with DDIMScheduler built from the same config."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler, DDPMScheduler

    torch.manual_seed(seed)
    model = unet_pair('cpu')[0]['diffusers'][0].train()
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=HF_LR)
    g, steps, dl = torch.Generator().manual_seed(seed), 0, _digits_batches(seed)
    while time.process_time() - t0 < budget:
        for x0, _ in dl:
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=g)
            loss = F.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if time.process_time() - t0 >= budget:
                break
    model.eval()
    ddim = DDIMScheduler.from_config(sched.config)

    def draw(n, N, g):
        ddim.set_timesteps(n)
        x = torch.randn(N, 1, 16, 16, generator=g)
        for t in ddim.timesteps:
            x = ddim.step(model(x, t).sample, t, x).prev_sample
        return x

    return draw, steps


def _shipped(name):
    "Sampling a shipped digits model (no training): the quality the fast recipe is measured against."
    from diffcourse.samplers import load_denoiser, sample

    den = load_denoiser(name, 'cpu')
    return lambda n, N, g: sample('ddim', den, (N, 1, 16, 16), n, generator=g), 0


def budget_child(side, seed, budget, at=BUDGET_STEPS):
    "(child process, one thread) Train `side` for `budget` CPU-seconds; the FID of 500 DDIM samples per step count."
    import torch
    from diffcourse.metrics import FID_N, fid

    torch.set_num_threads(1)
    t0 = time.process_time()
    if side in BUDGET_RECIPES:
        draw, steps = _train_course(seed, budget, t0, BUDGET_RECIPES[side])
    elif side in LEVERS:
        draw, steps = _train_course(seed, budget, t0, 'digits_unet_v', LEVERS[side])
    elif side in SHIPPED:
        draw, steps = _shipped(SHIPPED[side])
    else:
        draw, steps = _train_diffusers(seed, budget, t0)
    train_s = time.process_time() - t0
    with torch.no_grad():
        x = {n: draw(n, FID_N, torch.Generator().manual_seed(1000 + seed)).clamp(-1, 1) for n in at}
    return dict(side=side, seed=seed, optimizer_steps=steps, train_cpu_s=round(train_s, 1),
                fid={str(n): round(fid(v), 4) for n, v in x.items()})  # fmt: skip


def bench_budget(args, devices):
    """Both recipes, every seed, each in a fresh one-thread process, two at a time; per step count, the FIDs' mean and
    standard error over seeds, the ratio of the means, and lesson 06's paired rule (a seed pairs the sampling noise)."""
    from diffcourse.core import compare, mean_se
    from diffcourse.metrics import fid_floor

    sides = [*BUDGET_RECIPES, 'diffusers']
    jobs = [(side, s) for s in BUDGET_SEEDS for side in sides]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'IN_TEST': '1'}

    def run(job):
        cmd = [sys.executable, __file__, '--_budget', job[0], str(job[1]), str(args.budget)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            raise RuntimeError(f'{job}: {r.stderr.strip()[-500:]}')
        return json.loads(r.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(run, jobs))
    floor = fid_floor()
    fids = lambda side, n: [r['fid'][n] for r in runs if r['side'] == side]  # in seed order: the pairs
    rows = []
    for n in map(str, BUDGET_STEPS):
        md, sd = mean_se(fids('diffusers', n))
        for side in BUDGET_RECIPES:
            (mc, sc), c = mean_se(fids(side, n)), compare(fids(side, n), fids('diffusers', n), paired=True)
            row = dict(
                ddim_steps=int(n), recipe=side, fid=f'{mc:.3f} +- {sc:.3f}', fid_diffusers=f'{md:.3f} +- {sd:.3f}'
            )
            interval = [round(float(c.lo), 3), round(float(c.hi), 3)]
            row.update(ratio=round(md / mc, 2), verdict=c.verdict, interval=interval)
            rows.append(row)
    steps = {side: [r['optimizer_steps'] for r in runs if r['side'] == side] for side in sides}
    rows[0].update(budget_cpu_s=args.budget, seeds=len(BUDGET_SEEDS), optimizer_steps=steps, runs=runs)
    rows[0].update(floor=f"{floor['mean']:.3f} +- {floor['std']:.3f}", recipes=BUDGET_RECIPES, hf_lr=HF_LR)
    return rows


def bench_levers(args, devices):
    """Issue 19's levers: each recipe of LEVERS trained for the budget, and the shipped models sampled, every seed of
    BUDGET_SEEDS in a fresh one-thread process, two at a time; FID at LEVER_STEPS. Runs already in the results file
    (same side, seed and budget) are kept, so an interrupted part resumes; the rows compare each side at 100 steps
    with course_v's recipe (v_base) and with the shipped eps model, pairing by seed (the same sampling noise)."""
    from diffcourse.core import compare, mean_se

    sides = args.sides.split(',') if args.sides else [*LEVERS, *SHIPPED]
    bad = set(sides) - set(LEVERS) - set(SHIPPED)
    if bad:
        raise SystemExit(f'unknown --sides {sorted(bad)}; valid choices are {[*LEVERS, *SHIPPED]}')
    old = json.loads(Path(args.out).read_text()).get('levers', []) if Path(args.out).exists() else []
    kept = {
        (r['side'], r['seed']): r for r in (old[0].get('runs', []) if old else []) if r.get('budget') == args.budget
    }
    # a trained run that used under 95% of its budget planned its learning-rate decay from a step time measured under
    # more load than it then ran with: it is kept aside (with the reason) and run again
    short = [r for r in kept.values() if r['side'] in LEVERS and r['train_cpu_s'] < 0.95 * args.budget]
    superseded = (old[0].get('superseded', []) if old else []) + [
        dict(r, why='used < 95% of the budget') for r in short
    ]
    kept = {k: r for k, r in kept.items() if r not in short}
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'IN_TEST': '1'}
    at = ','.join(map(str, LEVER_STEPS))

    def run(job):
        cmd = [sys.executable, __file__, '--_budget', job[0], str(job[1]), str(args.budget), at]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            raise RuntimeError(f'{job}: {r.stderr.strip()[-500:]}')
        last = r.stdout.strip().splitlines()[-1].lstrip('\u2588')  # a progress bar's blocks can precede the JSON
        return dict(json.loads(last), budget=args.budget)

    seeds = [int(s) for s in args.seeds.split(',')] if args.seeds else list(BUDGET_SEEDS)
    jobs = [(side, s) for s in seeds for side in sides if (side, s) not in kept]
    with ThreadPoolExecutor(args.jobs) as pool:
        kept.update({(r['side'], r['seed']): r for r in pool.map(run, jobs)})
    runs = sorted(kept.values(), key=lambda r: ([*LEVERS, *SHIPPED].index(r['side']), r['seed']))
    fid = {(r['side'], r['seed'], n): r['fid'][n] for r in runs for n in r['fid']}
    seeds_of = lambda side: [r['seed'] for r in runs if r['side'] == side]
    rows = []
    for side in dict.fromkeys(r['side'] for r in runs):  # a side with fewer than 3 seeds is a screen: no rule
        row = dict(side=side, lever=json.dumps(LEVERS.get(side, SHIPPED.get(side))), seeds=seeds_of(side))
        full = len(seeds_of(side)) >= 3
        for n in map(str, LEVER_STEPS):
            v = [fid[(side, s, n)] for s in seeds_of(side)]
            row[f'fid_{n}'] = '{:.3f} +- {:.3f}'.format(*mean_se(v)) if full else f'{v} (screen)'
        row['optimizer_steps'] = [r['optimizer_steps'] for r in runs if r['side'] == side]
        for ref in ('v_base', 'shipped_eps'):
            common = [s for s in seeds_of(side) if s in seeds_of(ref)]  # pairs: the same seed, the same noise
            if full and side != ref and len(common) >= 3:
                a, b = ([fid[(x, s, '100')] for s in common] for x in (ref, side))
                c = compare(a, b, paired=True)
                said = {'a > b': 'lower', 'a < b': 'higher'}.get(c.verdict, c.verdict)  # this side against `ref`
                row[f'vs_{ref}'] = f'{said} (difference in [{c.lo:.3f}, {c.hi:.3f}], {len(common)} seeds)'
        rows.append(row)
    if rows:
        rows[0].update(budget_cpu_s=args.budget, runs=runs, superseded=superseded)
    return rows


# ---------------------------------------------------------------- 4. peak memory, in a fresh process per measurement
def peak_memory(kind, name, device, extra):
    r = subprocess.run(
        [sys.executable, __file__, '--_peak', kind, name, device, str(extra)],
        capture_output=True,
        text=True,
        env={**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')},
    )
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else f'failed: {r.stderr.strip()[-200:]}'


def measure_peak(kind, name, device, extra):
    "(child process) Peak memory in MB of one sampling run or 3 training steps, above what set-up used."
    import torch

    if kind == 'sampler':
        _, ours, theirs = sampler_pair(name, device, 1 if device == 'cpu' else 64)
        fn = ours if extra == 'ours' else theirs
    else:
        pair, _ = unet_pair(device)
        m, call = pair[name]
        fn = train_thunk(m, call, device, int(extra), 3)
    if device == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    # CPU: reset the kernel's peak-RSS mark (VmHWM) to the current RSS, run, read the mark: the peak the run added.
    # (tracemalloc does not see torch's allocator, and ru_maxrss cannot be reset: set-up often peaks higher.)
    kb = lambda key: int(re.search(rf'{key}:\s+(\d+) kB', Path('/proc/self/status').read_text())[1])
    Path('/proc/self/clear_refs').write_text('5')
    base = kb('VmRSS')
    fn()
    return round((kb('VmHWM') - base) / 1024, 1)


# ---------------------------------------------------------------- report
def machine():
    import torch, diffusers

    cpu = (
        next(
            (
                l.split(':', 1)[1].strip()
                for l in Path('/proc/cpuinfo').read_text().splitlines()
                if l.startswith('model name')
            ),
            platform.processor(),
        )
        if Path('/proc/cpuinfo').exists()
        else platform.processor()
    )
    return dict(
        date=datetime.date.today().isoformat(),
        cpu=cpu,
        cores=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )


def table(rows, cols):
    if not rows:
        return ''
    cells = [[str(r.get(c, ''))[:70] if r.get(c) is not None else '' for c in cols] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    line = lambda xs: '  '.join(x.ljust(n) for x, n in zip(xs, w))
    return '\n'.join([line(cols), line(['-' * n for n in w])] + [line(x) for x in cells])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--only', default='notebooks,samplers,unet,budget', help='comma-separated parts to run')
    p.add_argument('--nbs', default='', help='only notebooks whose name starts with one of these (comma-separated)')
    p.add_argument(
        '--modes',
        default='ci,learner',
        help='how the notebooks run: ci (IN_TEST=1, --jobs at a time, '
        '--threads each), learner (one at a time, all cores, not under IN_TEST)',
    )
    p.add_argument('--jobs', type=int, default=2, help='notebooks executed at a time in CI mode (CI: 2)')
    p.add_argument('--threads', type=int, default=1, help='OMP_NUM_THREADS of each notebook kernel in CI mode (CI: 1)')
    p.add_argument('--rounds', type=int, default=5, help='timed repetitions of each sampler / training measurement')
    p.add_argument('--budget', type=float, default=BUDGET_S, help='CPU seconds of training per run in the budget part')
    p.add_argument('--sides', default='', help='levers part: the sides to run (default: all of LEVERS and SHIPPED)')
    p.add_argument('--seeds', default='', help='levers part: the seeds to run, e.g. 3,4 (default: 0,1,2)')
    p.add_argument('--out', default=str(RESULTS), help='results file (lessons\' cost cells follow only the default)')
    args = p.parse_args()
    if set(args.modes.split(',')) - set(MODES):
        p.error(f'unknown modes in --modes {args.modes!r}; valid choices are {list(MODES)}')
    import torch

    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    torch.set_num_threads(max(1, args.threads))
    exe = os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}  # parts not run now keep their last results
    last = res.get('measured', {}).get('notebooks', {}).get('date') or res.get('machine', {}).get('date')
    for r in res.get('notebooks', []):  # rows from before each row had a mode and a date
        r.setdefault('mode', 'ci')
        r.setdefault('date', last)
    res.update(machine=machine(), command=' '.join([exe, os.path.relpath(__file__, ROOT), *sys.argv[1:]]))
    nb_cols = ['notebook', 'mode', 'device', 'seconds', 'goal_s', 'met', 'ok', 'sum_seconds', 'error']
    parts = dict(
        notebooks=(bench_notebooks, nb_cols),
        samplers=(
            bench_samplers,
            [
                'sampler',
                'diffusers',
                'device',
                'batch',
                'evals_ours',
                'evals_diffusers',
                'ms_per_eval_ours',
                'ms_per_eval_diffusers',
                'ratio',
                'goal',
                'met',
                'unet_ms_per_eval',
                'peak_mb_ours',
                'peak_mb_diffusers',
            ],
        ),
        unet=(
            bench_unet,
            ['model', 'device', 'batch', 'params', 'images_per_s', 'ratio', 'goal', 'peak_mb', 'unavailable'],
        ),
        budget=(
            bench_budget,
            ['ddim_steps', 'recipe', 'fid', 'fid_diffusers', 'ratio', 'verdict', 'interval', 'floor'],
        ),
        levers=(
            bench_levers,
            ['side', 'seeds', 'fid_100', 'fid_20', 'vs_v_base', 'vs_shipped_eps', 'optimizer_steps'],
        ),
    )
    bad = set(args.only.split(',')) - set(parts)
    if bad:
        p.error(f'unknown parts {sorted(bad)}; valid choices are {list(parts)}')
    print(json.dumps(res['machine']))
    for part in args.only.split(','):
        fn, cols = parts[part]
        res[part] = fn(args, res.get('notebooks', [])) if part == 'notebooks' else fn(args, devices)
        res.setdefault('measured', {})[part] = dict(date=res['machine']['date'], command=res['command'])
        print(f'\n## {part}\n' + table(res[part], cols), flush=True)
    out.write_text(json.dumps(res, indent=1) + '\n')
    print(f'\nwrote {args.out}')
    if 'notebooks' in args.only.split(',') and out.resolve() == RESULTS.resolve():
        print(f'lesson cost cells regenerated: {[p.name for p in refresh_lessons(res)]}')


if __name__ == '__main__':
    if sys.argv[1:2] == ['--_execute']:
        execute_notebook(sys.argv[2])
    elif sys.argv[1:2] == ['--_budget']:
        at = tuple(map(int, sys.argv[5].split(','))) if len(sys.argv) > 5 else BUDGET_STEPS
        print(json.dumps(budget_child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), at)))
    elif sys.argv[1:2] == ['--_peak']:
        print(json.dumps(measure_peak(*sys.argv[2:6])))
    else:
        main()
