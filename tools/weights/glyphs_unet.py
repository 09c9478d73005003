"""Train an unconditional U-Net on the 16x16 glyphs (lesson 08b guides it with CLIP) and ship its EMA weights.

    .venv/bin/python tools/weights/glyphs_unet.py      # CPU, one thread: about 15 minutes uncontended
    accelerate launch tools/weights/glyphs_unet.py     # the same run on a GPU

The U-Net of lesson 05, the DDPM loss and loop of lesson 04, on all 62 characters of the glyphs train split,
without labels or captions: the model draws "some glyph", and guidance picks which.
Checkpoints to runs/glyphs_unet.ckpt.safetensors every 250 steps and resumes from there when rerun.
"""

import argparse, copy, os, time
import torch
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import get_dataloader
from diffcourse.schedules import Schedule
from diffcourse.training import train, ddpm_loss, save_pretrained
from diffcourse.unet import UNet

CONFIG = dict(in_channels=1, out_channels=1, channels=(32, 64, 64), attn=(False, False, True), layers=1)
COMMAND = '.venv/bin/python tools/weights/glyphs_unet.py'


def main(steps=3000, batch_size=32, lr=2e-3, out=None, ckpt='runs/glyphs_unet.ckpt.safetensors'):
    seed_everything(0)
    dl = get_dataloader(
        'glyphs',
        batch_size=batch_size,
        split='train',
        size=16,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    schedule = Schedule.from_name('linear', T=1000)
    model = UNet(**CONFIG)
    t0 = time.time()
    st = train(
        model,
        lambda m, b: ddpm_loss(m, b[0], schedule, 'eps'),
        dl,
        steps,
        lr,
        warmup=100,
        ema_decay=0.999,
        clip=1.0,
        ckpt=ckpt,
        ckpt_every=250,
        seed=0,
    )
    if not st.accelerator.is_main_process:
        return
    final = sum(st.losses[-200:]) / len(st.losses[-200:])
    print(f'{st.step} steps in {time.time() - t0:.0f}s this run, mean loss of the last 200 steps {final:.4f}')
    half = copy.deepcopy(
        st.ema
    ).half()  # stored in float16 (2.2 MB instead of 4.5); load_pretrained loads it into float32
    path = save_pretrained(
        half,
        out or weights_path('glyphs_unet.safetensors', must_exist=False),
        dataset='glyphs train split (3162 images, 62 characters), 16x16, [-1, 1], unconditional',
        schedule='linear',
        T=1000,
        objective='eps',
        steps=st.step,
        batch_size=batch_size,
        lr=lr,
        ema_decay=0.999,
        final_loss=round(final, 5),
        dtype='float16 (loaded into float32)',
        command=COMMAND,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=3000)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--out', default=None)
    p.add_argument('--ckpt', default='runs/glyphs_unet.ckpt.safetensors')
    a = p.parse_args()
    main(a.steps, a.batch_size, a.lr, a.out, a.ckpt)
