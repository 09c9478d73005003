"""Distil lesson 10's v-teachers into few-step students and ship every one of them.

    .venv/bin/python tools/weights/distill_students.py --data gaussian_mixture  # 6 rounds, 64 -> 1 step: minutes
    .venv/bin/python tools/weights/distill_students.py --data gaussian_mixture --method direct
    .venv/bin/python tools/weights/distill_students.py --data digits            # CPU, one thread: about an hour
    .venv/bin/python tools/weights/distill_students.py --data digits --method direct

`--method progressive` (Salimans & Ho 2022) runs the rounds 64 -> 32 -> ... -> 1 steps with
`diffcourse.distill.distill_round`; each student is saved as diffcourse/weights/<teacher>_pd<N>.safetensors and the
next round starts from that file, so an interrupted run resumes at the first missing student (delete the files to
start over). `--method direct` (Luhman & Luhman 2021) samples pairs (noise, 64-step DDIM sample) from the teacher and
regresses a one-step student on them: <teacher>_direct1.safetensors. U-Net students are stored in float16 (half the
size; the tables are computed from the shipped files, so every number is of what ships).
"""

import argparse, copy, os, time
from pathlib import Path
import torch
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import get_dataloader
from diffcourse.distill import distill_round, distill_direct, teacher_pairs, load_denoiser, student_name
from diffcourse.training import save_pretrained

START = 64  # the teacher's DDIM steps the chain starts from
CONFIGS = {
    'digits': dict(
        teacher='digits_unet_v',
        batch_size=32,
        lr=1e-4,
        half=True,
        loader=dict(split='train', size=16),
        rounds={32: 300, 16: 400, 8: 600, 4: 800, 2: 1200, 1: 1600},
        direct=dict(pairs=4096, steps=2000, lr=1e-4, batch_size=32),
    ),
    'gaussian_mixture': dict(
        teacher='toy_mlp_v_gaussian_mixture',
        batch_size=512,
        lr=3e-4,
        half=False,
        loader=dict(n=20_000, seed=0),
        rounds={32: 300, 16: 300, 8: 300, 4: 300, 2: 300, 1: 2000},
        direct=dict(pairs=20_000, steps=1800, lr=3e-4, batch_size=512),
    ),
}


def ship(model, name, cfg, data, method, **info):
    net = copy.deepcopy(model.net).cpu()
    if cfg['half']:
        net = net.half()
    path = save_pretrained(
        net,
        weights_path(f'{name}.safetensors', must_exist=False),
        data=data,
        schedule='cosine',
        T=model.schedule.T,
        objective='v',
        method=method,
        dtype='float16' if cfg['half'] else 'float32',
        command=f'.venv/bin/python tools/weights/distill_students.py --data {data} --method {method}',
        **info,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB', flush=True)


def progressive(data, cfg, device):
    dl = get_dataloader(
        data, batch_size=cfg['batch_size'], generator=seed_everything(0), drop_last=True, **cfg['loader']
    )
    teacher_name, N = cfg['teacher'], START
    while N > 1:
        name = student_name(cfg['teacher'], N // 2)
        if weights_path(f'{name}.safetensors', must_exist=False).is_file():
            print(f'{name} exists: skipping the round {N} -> {N // 2}')
            teacher_name, N = name, N // 2
            continue
        teacher = load_denoiser(teacher_name, device)
        t0 = time.time()
        student, st = distill_round(
            teacher,
            dl,
            N,
            N // 2,
            cfg['rounds'][N // 2],
            cfg['lr'],
            warmup=0,
            seed=0,
            ckpt=f'runs/distill_{name}.ckpt.safetensors',
            ckpt_every=100,
        )
        first = sum(st.losses[:50]) / 50
        final = sum(st.losses[-50:]) / len(st.losses[-50:])
        print(f'round {N} -> {N // 2}: {st.step} steps in {time.time() - t0:.0f}s, loss {first:.5f} -> {final:.5f}')
        ship(
            student,
            name,
            cfg,
            data,
            'progressive',
            teacher=teacher_name,
            teacher_steps=N,
            student_steps=N // 2,
            steps=st.step,
            batch_size=cfg['batch_size'],
            lr=cfg['lr'],
            weighting='truncated_snr',
            final_loss=round(final, 6),
        )
        teacher_name, N = name, N // 2


def direct(data, cfg, device):
    d = cfg['direct']
    teacher = load_denoiser(cfg['teacher'], device)
    shape = (1, 16, 16) if data == 'digits' else (2,)
    cache = Path(f'runs/distill_pairs_{data}_{d["pairs"]}.pt')
    if cache.is_file():
        noise, x = torch.load(cache, weights_only=True)  # tensors only: unpickles no code
    else:
        t0 = time.time()
        noise, x = teacher_pairs(
            teacher, (d['pairs'], *shape), START, generator=torch.Generator().manual_seed(1234), progress=True
        )
        cache.parent.mkdir(exist_ok=True)
        torch.save((noise.cpu(), x.cpu()), cache)
        print(f'{d["pairs"]} pairs from the {START}-step teacher in {time.time() - t0:.0f}s', flush=True)
    student, st = distill_direct(
        teacher,
        noise.to(device),
        x.to(device),
        d['steps'],
        d['lr'],
        d['batch_size'],
        generator=torch.Generator().manual_seed(0),
        warmup=0,
        seed=0,
        ckpt=f'runs/distill_direct_{data}.ckpt.safetensors',
        ckpt_every=100,
    )
    final = sum(st.losses[-50:]) / len(st.losses[-50:])
    print(f'direct: {st.step} steps, loss {sum(st.losses[:50]) / 50:.5f} -> {final:.5f}')
    ship(
        student,
        student_name(cfg['teacher'], 1, 'direct'),
        cfg,
        data,
        'direct',
        teacher=cfg['teacher'],
        teacher_steps=START,
        student_steps=1,
        pairs=d['pairs'],
        steps=st.step,
        batch_size=d['batch_size'],
        lr=d['lr'],
        final_loss=round(final, 6),
    )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='digits', choices=sorted(CONFIGS))
    p.add_argument('--method', default='progressive', choices=['progressive', 'direct'])
    p.add_argument('--device', default='cpu')
    a = p.parse_args()
    (progressive if a.method == 'progressive' else direct)(a.data, CONFIGS[a.data], a.device)
