"""Train the glyph VAE of lesson 09 (a small diffusers AutoencoderKL, 16x16x1 -> 4x4x4) and ship it.

    .venv/bin/python tools/weights/glyph_vae.py          # CPU, one thread: about 30-40 minutes
    accelerate launch tools/weights/glyph_vae.py         # the same run on a GPU

Trains with the course's loop (`diffcourse.training.train`) on the loss of lesson 09 (`vae_loss_fn`: L1 + 1e-5 KL),
fits the latent scaling factor, and writes diffcourse/weights/glyph_vae.safetensors (float16 weights; the config,
the held-out L1 and this command in the metadata). Checkpoints every 250 steps and resumes when rerun.
"""

import argparse, os, time
import torch
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import load_glyphs
from diffcourse.training import train
from diffcourse.latent import (
    glyph_vae,
    vae_loss_fn,
    fit_scaling_factor,
    save_glyph_vae,
    encode_images,
    decode_latents,
    GLYPH_VAE,
)

COMMAND = '.venv/bin/python tools/weights/glyph_vae.py'


def main(steps=2000, batch_size=32, lr=1e-3, kl_weight=1e-5, out=None, ckpt='runs/glyph_vae.ckpt.safetensors'):
    seed_everything(0)
    x = load_glyphs('train').images
    dl = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    t0 = time.time()
    st = train(
        glyph_vae(),
        vae_loss_fn(kl_weight),
        dl,
        steps,
        lr,
        warmup=50,
        ema_decay=0.0,
        clip=1.0,
        ckpt=ckpt,
        ckpt_every=250,
        seed=0,
    )
    if not st.accelerator.is_main_process:
        return
    vae = st.model.cpu().eval()
    scale = fit_scaling_factor(vae, x)
    test = load_glyphs('test').images
    with torch.no_grad():
        l1 = (decode_latents(vae, encode_images(vae, test)) - test).abs().mean().item()
    final = sum(st.losses[-100:]) / len(st.losses[-100:])
    print(
        f'{st.step} steps in {time.time() - t0:.0f}s this run; last-100 loss {final:.4f}; held-out L1 {l1:.4f};'
        f' scaling_factor {scale:.4f}'
    )
    path = save_glyph_vae(
        vae,
        out or weights_path(GLYPH_VAE, must_exist=False),
        dataset='glyphs train split (3162 images, 16x16, [-1, 1])',
        steps=st.step,
        batch_size=batch_size,
        lr=lr,
        kl_weight=kl_weight,
        final_loss=round(final, 5),
        test_l1=round(l1, 5),
        command=COMMAND,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=2000)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--kl-weight', type=float, default=1e-5)
    p.add_argument('--out', default=None)
    p.add_argument('--ckpt', default='runs/glyph_vae.ckpt.safetensors')
    a = p.parse_args()
    main(a.steps, a.batch_size, a.lr, a.kl_weight, a.out, a.ckpt)
