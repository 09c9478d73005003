"""Train the latent U-Net of lesson 09 on glyph captions and ship it, with its text encoder, as glyph Stable Diffusion.

    .venv/bin/python tools/weights/glyph_vae.py          # first: the VAE (diffcourse/weights/glyph_vae.safetensors)
    .venv/bin/python tools/weights/glyph_sd.py           # then this; CPU, one thread: about an hour
    accelerate launch tools/weights/glyph_sd.py          # the same run on a GPU

The U-Net (a small diffusers UNet2DConditionModel) learns to predict noise on the VAE's 4x4x4 latents, conditioned by
cross-attention on the hidden states of lesson 08b's glyph CLIP text encoder (frozen), with the course's loop
(`diffcourse.training.train`) and the loss of lesson 09 (`latent_loss_fn`: captions dropped to '' with probability
0.1, style words dropped with probability 0.5). Writes diffcourse/weights/glyph_sd.safetensors: the EMA U-Net and a
copy of the text encoder in float16, the tokenizer, the configs, the accuracies measured below and this command.
Checkpoints every 250 steps and resumes when rerun.
"""

import argparse, hashlib, os, time
from pathlib import Path
import torch
from diffcourse.core import seed_everything, weights_path, load_safetensors
from diffcourse.data import load_glyphs, GLYPH_CHARS
from diffcourse.schedules import Schedule
from diffcourse.training import train
from diffcourse.clip import load_glyph_clip, clip_text_model, char_prompt, GLYPH_CLIP
from diffcourse.metrics import classifier_accuracy
from diffcourse.latent import (
    glyph_unet,
    glyph_scheduler,
    latent_dataset,
    latent_loss_fn,
    load_glyph_vae,
    save_glyph_sd,
    SDParts,
    text_to_image,
    GLYPH_SD,
    GLYPH_VAE,
)

COMMAND = '.venv/bin/python tools/weights/glyph_sd.py'


def main(
    steps=4000,
    batch_size=128,
    lr=1e-3,
    p_uncond=0.1,
    p_drop=0.5,
    vae=None,
    clip=None,
    out=None,
    ckpt='runs/glyph_sd.ckpt.safetensors',
):
    seed_everything(0)
    vae_model = load_glyph_vae(vae)
    clip_path = clip or weights_path(GLYPH_CLIP)
    clip_model, tok = load_glyph_clip(clip_path)
    te = clip_text_model(clip_model).eval().requires_grad_(False)
    _, clip_meta = load_safetensors(clip_path)
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
    inputs = dict(clip_sha256=sha(clip_path), vae_sha256=sha(vae or weights_path(GLYPH_VAE)))
    g = load_glyphs('train')
    ds = latent_dataset(vae_model, g.images)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    schedule = Schedule.from_name('scaled_linear', 1000)
    t0 = time.time()
    st = train(
        glyph_unet(te.config.hidden_size),
        latent_loss_fn(tok, te, g.captions, schedule, p_uncond, p_drop),
        dl,
        steps,
        lr,
        warmup=200,
        ema_decay=0.999,
        clip=1.0,
        ckpt=ckpt,
        ckpt_every=250,
        seed=0,
    )
    if not st.accelerator.is_main_process:
        return
    unet = st.ema.cpu().eval()
    final = sum(st.losses[-200:]) / len(st.losses[-200:])
    print(f'{st.step} steps in {time.time() - t0:.0f}s this run; mean loss of the last 200 steps {final:.4f}')
    parts = SDParts(tok, te.cpu(), unet, vae_model, glyph_scheduler())
    chars = [c for c in GLYPH_CHARS for _ in range(4)]
    labels = torch.tensor([GLYPH_CHARS.index(c) for c in chars])
    acc = {}
    for s in (1.0, 2.0, 3.0, 4.0, 6.0):
        x = text_to_image(
            parts,
            [char_prompt(c) for c in chars],
            steps=25,
            guidance_scale=s,
            generator=torch.Generator().manual_seed(1),
        )
        acc[str(s)] = round(classifier_accuracy(x, labels, 'glyphs'), 4)
    print('accuracy against the prompt by guidance scale (25 DDIM steps, 248 images):', acc)
    path = save_glyph_sd(
        unet,
        te,
        dict(vocab=clip_meta['vocab'], merges=clip_meta['merges'], model_max_length=clip_meta['model_max_length']),
        out or weights_path(GLYPH_SD, must_exist=False),
        dataset='glyphs train split (3162 images, 16x16) through glyph_vae, captions through glyph_clip',
        steps=st.step,
        batch_size=batch_size,
        lr=lr,
        ema_decay=0.999,
        p_uncond=p_uncond,
        p_drop=p_drop,
        final_loss=round(final, 5),
        accuracy_by_scale=acc,
        **inputs,
        command=COMMAND,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=4000)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--p-uncond', type=float, default=0.1)
    p.add_argument('--p-drop', type=float, default=0.5)
    p.add_argument('--vae', default=None, help='glyph VAE file (default: the shipped one)')
    p.add_argument('--clip', default=None, help='glyph CLIP file (default: the shipped one)')
    p.add_argument('--out', default=None)
    p.add_argument('--ckpt', default='runs/glyph_sd.ckpt.safetensors')
    a = p.parse_args()
    main(a.steps, a.batch_size, a.lr, a.p_uncond, a.p_drop, a.vae, a.clip, a.out, a.ckpt)
