"""Train the U-Net of lesson 05 on 16x16 digits with the DDPM loop of lesson 04 and ship its EMA weights.

    .venv/bin/python tools/weights/digits_unet.py                 # CPU, one thread: about 15 minutes
    accelerate launch tools/weights/digits_unet.py                # the same run on a GPU or several

It checkpoints to runs/digits_unet.ckpt.safetensors every 250 steps and resumes from there when rerun.
"""

import argparse, os, time
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import get_dataloader
from diffcourse.schedules import Schedule
from diffcourse.training import train, ddpm_loss, save_pretrained
from diffcourse.unet import UNet

CONFIG = dict(in_channels=1, out_channels=1, channels=(16, 32, 64), attn=(False, False, True), layers=1)
COMMAND = '.venv/bin/python tools/weights/digits_unet.py'


def main(steps=4000, batch_size=64, lr=2e-3, out=None, ckpt='runs/digits_unet.ckpt.safetensors'):
    g = seed_everything(0)
    dl = get_dataloader('digits', batch_size=batch_size, split='train', size=16, generator=g, drop_last=True)
    schedule = Schedule.from_name('linear', T=1000)
    model = UNet(**CONFIG)
    loss_fn = lambda m, b: ddpm_loss(m, b[0], schedule, 'eps')
    t0 = time.time()
    st = train(model, loss_fn, dl, steps, lr, warmup=100, ema_decay=0.999, clip=1.0, ckpt=ckpt, ckpt_every=250, seed=0)
    if not st.accelerator.is_main_process:
        return
    final = sum(st.losses[-200:]) / len(st.losses[-200:])
    print(f'{st.step} steps in {time.time() - t0:.0f}s this run, mean loss of the last 200 steps {final:.4f}')
    path = save_pretrained(
        st.ema,
        out or weights_path('digits_unet.safetensors', must_exist=False),
        dataset='digits train split (1437 images), 16x16, [-1, 1]',
        schedule='linear',
        T=1000,
        objective='eps',
        steps=st.step,
        batch_size=batch_size,
        lr=lr,
        ema_decay=0.999,
        final_loss=round(final, 5),
        command=COMMAND,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=4000)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--out', default=None)
    p.add_argument('--ckpt', default='runs/digits_unet.ckpt.safetensors')
    a = p.parse_args()
    main(a.steps, a.batch_size, a.lr, a.out, a.ckpt)
