"""Train the v-prediction teachers of lesson 10 (progressive distillation) with the course's training loop.

    .venv/bin/python tools/weights/v_teachers.py --data gaussian_mixture   # ToyMLP, CPU one thread: a few minutes
    .venv/bin/python tools/weights/v_teachers.py --data digits             # lesson 05's U-Net, CPU one thread:
                                                                           # about an hour
    accelerate launch tools/weights/v_teachers.py --data digits            # the same run on a GPU

Both use the cosine schedule with T = 1024 steps (so that halving 1024 -> 512 -> ... -> 1 sampling steps always lands
on training timesteps) and the v objective (Salimans & Ho 2022, sec. 4), and write
diffcourse/weights/toy_mlp_v_<toy>.safetensors or diffcourse/weights/digits_unet_v.safetensors.
"""

import argparse, os, time
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import get_dataloader, TOYS
from diffcourse.schedules import Schedule
from diffcourse.training import ToyMLP, train, ddpm_loss, save_pretrained

SCHEDULE, T = 'cosine', 1024
CONFIGS = {  # data -> (model class name, config, training settings, weights file name, description of the data)
    'digits': (
        'UNet',
        dict(in_channels=1, out_channels=1, channels=(16, 32, 64), attn=(False, False, True), layers=1),
        dict(steps=4000, batch_size=64, lr=2e-3, warmup=100, ema_decay=0.999),
        'digits_unet_v',
        'digits train split (1437 images), 16x16, [-1, 1]',
    ),
    **{
        toy: (
            'ToyMLP',
            dict(dim=2, hidden=128, depth=3, temb_dim=32),
            dict(steps=6000, batch_size=512, lr=2e-3, warmup=100, ema_decay=0.999),
            f'toy_mlp_v_{toy}',
            f'{toy} (2-D toy, 20000 points, seed 0)',
        )
        for toy in TOYS
    },
}


def make_model(kind, config):
    if kind == 'UNet':
        from diffcourse.unet import UNet

        return UNet(**config)
    return ToyMLP(**config)


def main(data='digits', steps=None, out=None, ckpt=None):
    if data not in CONFIGS:
        raise SystemExit(f"unknown --data {data!r}; valid: {sorted(CONFIGS)}")
    kind, config, hp, name, desc = CONFIGS[data]
    steps = steps or hp['steps']
    g = seed_everything(0)
    extra = dict(split='train', size=16) if data == 'digits' else dict(n=20_000, seed=0)
    dl = get_dataloader(data, batch_size=hp['batch_size'], generator=g, drop_last=True, **extra)
    schedule = Schedule.from_name(SCHEDULE, T=T)
    model = make_model(kind, config)
    t0 = time.time()
    st = train(
        model,
        lambda m, b: ddpm_loss(m, b[0], schedule, 'v'),
        dl,
        steps,
        hp['lr'],
        warmup=hp['warmup'],
        ema_decay=hp['ema_decay'],
        clip=1.0,
        ckpt=ckpt,
        ckpt_every=250 if ckpt else None,
        seed=0,
    )
    if not st.accelerator.is_main_process:
        return
    final = sum(st.losses[-200:]) / len(st.losses[-200:])
    print(f'{st.step} steps in {time.time() - t0:.0f}s this run, mean loss of the last 200 steps {final:.4f}')
    path = save_pretrained(
        st.ema,
        out or weights_path(f'{name}.safetensors', must_exist=False),
        dataset=desc,
        data=data,
        schedule=SCHEDULE,
        T=T,
        objective='v',
        steps=st.step,
        batch_size=hp['batch_size'],
        lr=hp['lr'],
        ema_decay=hp['ema_decay'],
        final_loss=round(final, 5),
        command=f'.venv/bin/python tools/weights/v_teachers.py --data {data}',
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='digits', help=f'one of {sorted(CONFIGS)}')
    p.add_argument('--steps', type=int, default=None)
    p.add_argument('--out', default=None)
    p.add_argument('--ckpt', default=None, help='checkpoint file to write every 250 steps and resume from')
    a = p.parse_args()
    main(a.data, a.steps, a.out, a.ckpt)
